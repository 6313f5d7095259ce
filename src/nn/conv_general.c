/* The general convolution of an imported graph: any kernel (kh x kw), strides, asymmetric pads,
 * dilations, groups (depthwise included) and a bias. Forward only: imported graphs are evaluated
 * and their statistics estimated, not trained. Group 1 goes through im2col + SGEMM per sample;
 * a depthwise convolution (one input channel per group) through a direct loop. A convolution
 * that the ResNet kernel covers (square, one stride, equal pads, no dilation, group 1, no bias)
 * should be built with bl_net_conv_param instead: it is fused with BN at inference. */
#include "nn/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    bl_conv_spec s;
    int cin, ho, wo, w, b; /* b < 0: no bias */
} gconv_state;

/* col: (ho * wo, kh * kw * cg) of one sample and one group's channels [c0, c0 + cg): columns
 * (ky, kx, ci), the OHWI weight's order. */
static void im2col_general(const float *x, int h, int w, int cin, const bl_conv_spec *s, int c0,
                           int cg, int ho, int wo, float *col)
{
    const size_t kd = (size_t)s->kh * s->kw * cg;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < ho * wo; r++) {
        const int oy = r / wo, ox = r % wo;
        float *c = col + (size_t)r * kd;
        for (int ky = 0; ky < s->kh; ky++) {
            const int iy = oy * s->sh - s->pad[0] + ky * s->dh;
            for (int kx = 0; kx < s->kw; kx++, c += cg) {
                const int ix = ox * s->sw - s->pad[1] + kx * s->dw;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                    memset(c, 0, sizeof(float) * cg);
                else
                    memcpy(c, x + ((size_t)iy * w + ix) * cin + c0, sizeof(float) * cg);
            }
        }
    }
}

static bl_status gconv_depthwise(const gconv_state *st, const bl_tensor *x, const float *wt,
                                 float *y, int n)
{
    const bl_conv_spec *s = &st->s;
    const int H = x->h, W = x->w, C = st->cin, mult = s->cout / C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < st->ho; oy++)
            for (int ox = 0; ox < st->wo; ox++) {
                float *o = y + (((size_t)i * st->ho + oy) * st->wo + ox) * s->cout;
                for (int co = 0; co < s->cout; co++) o[co] = 0;
                for (int ky = 0; ky < s->kh; ky++) {
                    const int iy = oy * s->sh - s->pad[0] + ky * s->dh;
                    if (iy < 0 || iy >= H) continue;
                    for (int kx = 0; kx < s->kw; kx++) {
                        const int ix = ox * s->sw - s->pad[1] + kx * s->dw;
                        if (ix < 0 || ix >= W) continue;
                        const float *xp = x->data + (((size_t)i * H + iy) * W + ix) * C;
                        /* output channel co reads input channel co / mult; weight (co, ky, kx) */
                        for (int co = 0; co < s->cout; co++)
                            o[co] += xp[co / mult] * wt[((size_t)co * s->kh + ky) * s->kw + kx];
                    }
                }
            }
    return BL_OK;
}

static bl_status gconv_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const gconv_state *st = l->state;
    const bl_conv_spec *s = &st->s;
    const bl_tensor *x = &net->t[l->in[0]];
    float *y = net->t[l->out].data;
    const float *wt = net->params[st->w].data;
    const int n = net->batch, g = s->groups, cg = st->cin / g, og = s->cout / g;
    const size_t rows = (size_t)st->ho * st->wo;
    bl_status rc = BL_OK;
    if (cg == 1 && g > 1) {
        rc = gconv_depthwise(st, x, wt, y, n);
    } else {
        const size_t kd = (size_t)s->kh * s->kw * cg;
        float *col = bl_scratch_get(&net->ws, sizeof(float) * rows * kd);
        if (!col) return bl_fail(BL_ERR_NOMEM, "conv '%s': out of memory for im2col", l->name);
        for (int i = 0; i < n; i++)
            for (int gi = 0; gi < g; gi++) {
                im2col_general(x->data + (size_t)i * bl_tsize(x), x->h, x->w, st->cin, s, gi * cg,
                               cg, st->ho, st->wo, col);
                /* y[:, gi*og ..] = col (rows, kd) x W_g^T, W_g (og, kd) */
                bl_gemm(0, 1, (int)rows, og, (int)kd, 1.0f, col, (int)kd, wt + (size_t)gi * og * kd,
                        (int)kd, 0.0f, y + (size_t)i * rows * s->cout + (size_t)gi * og, s->cout);
            }
    }
    if (!rc && st->b >= 0) {
        const float *b = net->params[st->b].data;
        const size_t m = (size_t)n * rows;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < m; r++)
            for (int co = 0; co < s->cout; co++) y[r * s->cout + co] += b[co];
    }
    return rc;
}

static void gconv_free(bl_layer *l) { free(l->state); }

static const bl_layer_ops gconv_ops = {.kind = BL_LAYER_CONV_GENERAL,
                                       .kind_name = "conv",
                                       .forward = gconv_forward,
                                       .backward = bl_layer_no_backward,
                                       .free = gconv_free};

bl_status bl_conv_out(const bl_conv_spec *s, int h, int w, int *ho, int *wo)
{
    const int eh = s->dh * (s->kh - 1) + 1, ew = s->dw * (s->kw - 1) + 1;
    *ho = (h + s->pad[0] + s->pad[2] - eh) / s->sh + 1;
    *wo = (w + s->pad[1] + s->pad[3] - ew) / s->sw + 1;
    return h + s->pad[0] + s->pad[2] >= eh && w + s->pad[1] + s->pad[3] >= ew ? BL_OK : BL_ERR_ARG;
}

bl_status bl_net_conv_general(bl_net *net, const char *name, int in, const bl_conv_spec *s,
                              const char *weight, const char *bias, int *out)
{
    const bl_tensor *x = bl_net_tensor_at(net, in);
    if (!x) return bl_fail(BL_ERR_ARG, "conv '%s': input tensor %d does not exist", name, in);
    if (s->cout < 1 || s->kh < 1 || s->kw < 1 || s->sh < 1 || s->sw < 1 || s->dh < 1 || s->dw < 1 ||
        s->groups < 1 || s->pad[0] < 0 || s->pad[1] < 0 || s->pad[2] < 0 || s->pad[3] < 0)
        return bl_fail(BL_ERR_ARG,
                       "conv '%s': kernel %dx%d, strides %d,%d, dilations %d,%d, "
                       "pads %d,%d,%d,%d, group %d, %d outputs: each must be positive (pads "
                       ">= 0)",
                       name, s->kh, s->kw, s->sh, s->sw, s->dh, s->dw, s->pad[0], s->pad[1],
                       s->pad[2], s->pad[3], s->groups, s->cout);
    if (x->c % s->groups || s->cout % s->groups)
        return bl_fail(BL_ERR_ARG,
                       "conv '%s': group %d divides neither %d input nor %d output "
                       "channels",
                       name, s->groups, x->c, s->cout);
    int ho, wo;
    if (bl_conv_out(s, x->h, x->w, &ho, &wo))
        return bl_fail(BL_ERR_ARG,
                       "conv '%s': the (dilated) kernel %dx%d is larger than the "
                       "padded input %dx%d",
                       name, s->kh, s->kw, x->h, x->w);
    gconv_state *st = bl_callocn(1, sizeof *st);
    if (!st) return bl_fail(BL_ERR_NOMEM, "conv '%s': out of memory", name);
    *st = (gconv_state){*s, x->c, ho, wo, -1, -1};
    const int shape[4] = {s->cout, x->c / s->groups, s->kh, s->kw};
    bl_status rc = bl_net_declare_shared(net, weight, BL_P_WEIGHT, 4, shape, 1, &st->w);
    if (!rc && bias) rc = bl_net_declare_shared(net, bias, BL_P_BIAS, 1, &s->cout, 0, &st->b);
    bl_layer *l;
    if (!rc) rc = bl_net_layer(net, &gconv_ops, name, &in, 1, ho, wo, s->cout, st, &l);
    if (rc) return free(st), rc;
    *out = l->out;
    return BL_OK;
}
