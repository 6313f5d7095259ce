/* Max and average pooling of an imported graph, as ONNX (and PyTorch) define them: kernel,
 * strides, asymmetric pads, dilations (max), ceil_mode, count_include_pad (average). Forward
 * only. Output size: floor (or ceil) of (H + pads - dilated kernel) / stride + 1, less one when
 * ceil mode would start the last window in the bottom or right padding (PyTorch's rule). */
#include "nn/net.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    bl_pool_spec s;
    int ho, wo;
} pool_state;

static int out_size(int in, int k, int s, int d, int p0, int p1, int ceil_mode)
{
    const int span = in + p0 + p1 - (d * (k - 1) + 1);
    if (span < 0) return 0;
    int o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    if (ceil_mode && (o - 1) * s >= in + p0) o--;
    return o;
}

static bl_status pool_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const pool_state *st = l->state;
    const bl_pool_spec *s = &st->s;
    const bl_tensor *x = &net->t[l->in[0]];
    float *y = net->t[l->out].data;
    const int H = x->h, W = x->w, C = x->c, n = net->batch;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < st->ho; oy++)
            for (int ox = 0; ox < st->wo; ox++) {
                float *o = y + (((size_t)i * st->ho + oy) * st->wo + ox) * C;
                const int y0 = oy * s->sh - s->pad[0], x0 = ox * s->sw - s->pad[1];
                if (s->max) {
                    for (int c = 0; c < C; c++) o[c] = -FLT_MAX;
                    int any = 0;
                    for (int ky = 0; ky < s->kh; ky++) {
                        const int iy = y0 + ky * s->dh;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < s->kw; kx++) {
                            const int ix = x0 + kx * s->dw;
                            if (ix < 0 || ix >= W) continue;
                            const float *xp = x->data + (((size_t)i * H + iy) * W + ix) * C;
                            for (int c = 0; c < C; c++)
                                o[c] = xp[c] > o[c] || xp[c] != xp[c] ? xp[c] : o[c];
                            any = 1;
                        }
                    }
                    if (!any)
                        for (int c = 0; c < C; c++) o[c] = 0;
                    continue;
                }
                /* average: PyTorch's divisor - the window clipped to the padded map (count
                 * include pad) or to the map */
                const int ye = y0 + s->kh < H + s->pad[2] ? y0 + s->kh : H + s->pad[2];
                const int xe = x0 + s->kw < W + s->pad[3] ? x0 + s->kw : W + s->pad[3];
                const int ya = y0 > 0 ? y0 : 0, xa = x0 > 0 ? x0 : 0;
                const int yb = ye < H ? ye : H, xb = xe < W ? xe : W;
                const int div =
                    s->count_include_pad ? (ye - y0) * (xe - x0) : (yb - ya) * (xb - xa);
                for (int c = 0; c < C; c++) o[c] = 0;
                for (int iy = ya; iy < yb; iy++)
                    for (int ix = xa; ix < xb; ix++) {
                        const float *xp = x->data + (((size_t)i * H + iy) * W + ix) * C;
                        for (int c = 0; c < C; c++) o[c] += xp[c];
                    }
                const float inv = div > 0 ? 1.0f / (float)div : 0.0f;
                for (int c = 0; c < C; c++) o[c] *= inv;
            }
    return BL_OK;
}

static void pool_free(bl_layer *l) { free(l->state); }

static const bl_layer_ops pool_ops = {.kind = BL_LAYER_POOL,
                                      .kind_name = "pool",
                                      .forward = pool_forward,
                                      .backward = bl_layer_no_backward,
                                      .free = pool_free};

bl_status bl_net_pool(bl_net *net, const char *name, int in, const bl_pool_spec *s, int *out)
{
    const bl_tensor *x = bl_net_tensor_at(net, in);
    if (!x) return bl_fail(BL_ERR_ARG, "pool '%s': input tensor %d does not exist", name, in);
    if (s->kh < 1 || s->kw < 1 || s->sh < 1 || s->sw < 1 || s->dh < 1 || s->dw < 1 ||
        s->pad[0] < 0 || s->pad[1] < 0 || s->pad[2] < 0 || s->pad[3] < 0)
        return bl_fail(BL_ERR_ARG,
                       "pool '%s': kernel %dx%d, strides %d,%d, dilations %d,%d "
                       "must be positive and pads %d,%d,%d,%d >= 0",
                       name, s->kh, s->kw, s->sh, s->sw, s->dh, s->dw, s->pad[0], s->pad[1],
                       s->pad[2], s->pad[3]);
    if (!s->max && (s->dh != 1 || s->dw != 1))
        return bl_fail(BL_ERR_ARG, "pool '%s': average pooling has no dilations", name);
    if (s->pad[0] >= s->kh || s->pad[2] >= s->kh || s->pad[1] >= s->kw || s->pad[3] >= s->kw)
        return bl_fail(BL_ERR_ARG, "pool '%s': pads %d,%d,%d,%d not smaller than the kernel %dx%d",
                       name, s->pad[0], s->pad[1], s->pad[2], s->pad[3], s->kh, s->kw);
    const int ho = out_size(x->h, s->kh, s->sh, s->dh, s->pad[0], s->pad[2], s->ceil_mode);
    const int wo = out_size(x->w, s->kw, s->sw, s->dw, s->pad[1], s->pad[3], s->ceil_mode);
    if (ho < 1 || wo < 1)
        return bl_fail(BL_ERR_ARG, "pool '%s': kernel %dx%d larger than the padded input %dx%d",
                       name, s->kh, s->kw, x->h, x->w);
    pool_state *st = bl_callocn(1, sizeof *st);
    if (!st) return bl_fail(BL_ERR_NOMEM, "pool '%s': out of memory", name);
    *st = (pool_state){*s, ho, wo};
    bl_layer *l;
    bl_status rc = bl_net_layer(net, &pool_ops, name, &in, 1, ho, wo, x->c, st, &l);
    if (rc) return free(st), rc;
    *out = l->out;
    return BL_OK;
}
