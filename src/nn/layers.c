/* The layers: conv2d (im2col + GEMM), BatchNorm (the core), ReLU, residual add, global average
 * pooling, linear. NHWC activations; each backward writes its input gradient, or adds to it when
 * another consumer of that tensor wrote it first (l->acc). */
#include "nn/net.h"
#include "nn/conv3x3.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline float *pgrad(bl_net *net, int idx) { return net->grad_block + net->params[idx].offset; }
static inline float *pdata(bl_net *net, int idx) { return net->params[idx].data; }

/* dst = src, or dst += src */
static void put(float *dst, const float *src, size_t n, int acc)
{
    if (!acc) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* ---- conv2d ---------------------------------------------------------------------------------- */
typedef struct {
    int cin, cout, k, stride, pad, w;
    float *coef; /* 3 * cout: a fused BN's mu, scale, shift (inference) */
} conv_state;

static int conv_direct(const conv_state *s) { return s->k == 1 && s->stride == 1 && s->pad == 0; }

/* col: (n * ho * wo, k * k * cin), rows (n, oy, ox), columns (ky, kx, ci): OHWI weights match. */
static void im2col(const float *x, int n, int h, int w, int cin, int k, int stride, int pad, int ho,
                   int wo, float *col)
{
    const size_t kd = (size_t)k * k * cin;
    for (long r = 0; r < (long)n * ho * wo; r++) {
        int i = (int)(r / ((long)ho * wo)), oy = (int)(r / wo % ho), ox = (int)(r % wo);
        float *row = col + (size_t)r * kd;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * stride - pad + ky;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * stride - pad + kx;
                float *dst = row + ((size_t)ky * k + kx) * cin;
                /* plain loops, not memcpy/memset: runs of cin floats are short (16-64), where the
                 * library calls cost more than the copy */
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
#pragma omp simd
                    for (int c = 0; c < cin; c++) dst[c] = 0;
                } else {
                    const float *src = x + (((size_t)i * h + iy) * w + ix) * cin;
#pragma omp simd
                    for (int c = 0; c < cin; c++) dst[c] = src[c];
                }
            }
        }
    }
}

/* dx (+)= col2im(dcol) for n samples (a chunk: chunks own disjoint parts of dx). */
static void col2im(const float *dcol, int n, int h, int w, int cin, int k, int stride, int pad,
                   int ho, int wo, float *dx, int acc)
{
    const size_t kd = (size_t)k * k * cin;
    for (int i = 0; i < n; i++) {
        float *dxi = dx + (size_t)i * h * w * cin;
        if (!acc) memset(dxi, 0, (size_t)h * w * cin * sizeof(float));
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                const float *row = dcol + (((size_t)i * ho + oy) * wo + ox) * kd;
                for (int ky = 0; ky < k; ky++) {
                    int iy = oy * stride - pad + ky;
                    if (iy < 0 || iy >= h) continue;
                    for (int kx = 0; kx < k; kx++) {
                        int ix = ox * stride - pad + kx;
                        if (ix < 0 || ix >= w) continue;
                        float *d = dxi + ((size_t)iy * w + ix) * cin;
                        const float *s = row + ((size_t)ky * k + kx) * cin;
#pragma omp simd
                        for (int c = 0; c < cin; c++) d[c] += s[c];
                    }
                }
            }
    }
}

/* The batch is processed in chunks of samples whose im2col matrix (about 512 KiB) stays in the
 * core's cache; threads take whole chunks and call a single-threaded GEMM (OpenBLAS runs one thread
 * inside a parallel region). This beats one huge GEMM on these skinny shapes, where packing the
 * (n*ho*wo) x (k*k*cin) matrix through memory dominated. */
static int conv_chunk(const conv_state *s, const bl_tensor *y)
{
    size_t per = (size_t)y->h * y->w * s->k * s->k * s->cin;
    size_t c = ((size_t)1 << 17) / (per ? per : 1);
    return c < 1 ? 1 : (int)c;
}

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

/* How a conv runs its passes: the one dispatch, read by the passes and by the profiler's cost. */
typedef enum { ALG_GEMM, ALG_IM2COL, ALG_DIRECT, ALG_WINO, ALG_DW_SMALL } conv_alg;
typedef struct {
    conv_alg fwd, bwd;     /* bwd ALG_DIRECT: the 3x3 kernels, with Winograd where wino_* says */
    int wino_dw, wino_dx;
    int dw_direct;         /* bwd ALG_IM2COL: the direct kernel's dw (stride 2), im2col's dx */
} conv_plan;

static conv_plan conv_plan_of(const conv_state *s, int need_dx)
{
    conv_plan p = {ALG_IM2COL, ALG_IM2COL, 0, 0, 0};
    if (conv_direct(s)) p.fwd = ALG_GEMM;
    else if (bl_conv3x3_fwd_supported(s->cin, s->cout, s->k, s->stride, s->pad))
        p.fwd = s->stride == 1 && bl_wino_supported(s->cin, s->cout, 3, 1, 1) ? ALG_WINO
                                                                               : ALG_DIRECT;
    if (bl_conv3x3_supported(s->cin, s->cout, s->k, s->stride, s->pad)) {
        p.bwd = ALG_DIRECT;
        p.wino_dw = bl_wino_supported(s->cin, s->cout, 3, 1, 1);
        p.wino_dx = bl_wino_supported(s->cout, s->cin, 3, 1, 1);
    } else if (!need_dx && bl_conv3x3_dw_small_supported(s->cin, s->cout, s->k, s->stride, s->pad))
        p.bwd = ALG_DW_SMALL;
    else if (conv_direct(s))
        p.bwd = ALG_GEMM;
    else
        p.dw_direct = bl_conv3x3_dw_supported(s->cin, s->cout, s->k, s->stride, s->pad);
    return p;
}

/* A 3x3 convolution with padding 1 (flip: the input gradient's, with flipped weights): Winograd
 * (wino; stride 1) or the direct kernel; both pack the weights per call. */
static bl_status conv3x3_run(bl_net *net, const float *x, int n, int h, int w, int cin, int cout,
                             int stride, const float *w_ohwi, int flip, int wino, float *y,
                             int acc, const bl_conv_epi *epi)
{
    const int ci = flip ? cout : cin, co = flip ? cin : cout;
    if (wino) {
        float *ws = bl_scratch_get(&net->ws, bl_wino_ws_floats(h, w, ci, co, bl_threads_get()) *
                                                 sizeof(float));
        if (!ws) return BL_ERR_NOMEM;
        bl_wino(x, n, h, w, cin, cout, w_ohwi, flip, y, acc, epi, ws);
        return BL_OK;
    }
    const size_t wsz = (size_t)9 * cin * cout, pad = (size_t)(h + 2) * (w + 2) * ci;
    float *ws = bl_scratch_get(&net->ws, (wsz + (size_t)bl_threads_get() * pad) * sizeof(float));
    if (!ws) return BL_ERR_NOMEM;
    bl_conv3x3_pack(w_ohwi, cin, cout, flip, ws);
    bl_conv3x3(x, n, h, w, ci, co, stride, ws, y, acc, epi, ws + wsz);
    return BL_OK;
}

/* y = conv(x), then the epilogue if epi (inference fusion); y: rows of cout channels shaped like
 * the layer's output tensor. */
static bl_status conv_run(bl_layer *l, bl_net *net, float *yd, const bl_conv_epi *epi)
{
    const conv_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]], *y = &net->t[l->out];
    const int kd = s->k * s->k * s->cin, rows = y->h * y->w, n = net->batch;
    const float *w = pdata(net, s->w);
    const conv_plan pl = conv_plan_of(s, l->need_dx);
    if (pl.fwd == ALG_GEMM) {
        bl_gemm(0, 1, n * rows, s->cout, kd, 1.0f, x->data, kd, w, kd, 0.0f, yd, s->cout);
        if (epi) bl_conv_epi_apply(epi, yd, epi->res, (size_t)n * rows, s->cout);
        return BL_OK;
    }
    if (pl.fwd == ALG_WINO || pl.fwd == ALG_DIRECT)
        return conv3x3_run(net, x->data, n, x->h, x->w, s->cin, s->cout, s->stride, w, 0,
                           pl.fwd == ALG_WINO, yd, 0, epi);
    const int cs = conv_chunk(s, y), chunks = (n + cs - 1) / cs, nt = bl_threads_get();
    const size_t per_thread = (size_t)cs * rows * kd;
    float *ws = bl_scratch_get(&net->ws, (size_t)nt * per_thread * sizeof(float));
    if (!ws) return BL_ERR_NOMEM;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int i0 = ch * cs, m = (n - i0 < cs ? n - i0 : cs);
        float *col = ws + (size_t)THREAD_ID * per_thread;
        im2col(x->data + (size_t)i0 * x->h * x->w * s->cin, m, x->h, x->w, s->cin, s->k, s->stride,
               s->pad, y->h, y->w, col);
        const size_t off = (size_t)i0 * rows * s->cout;
        bl_gemm(0, 1, m * rows, s->cout, kd, 1.0f, col, kd, w, kd, 0.0f, yd + off, s->cout);
        if (epi) /* while the chunk is in cache */
            bl_conv_epi_apply(epi, yd + off, epi->res ? epi->res + off : NULL, (size_t)m * rows,
                              s->cout);
    }
    return BL_OK;
}

static bl_status conv_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    return conv_run(l, net, net->t[l->out].data, NULL);
}

/* The layer after layer i when it is of this kind and reads tensor t, which nothing else reads. */
static const bl_layer *chain_next(const bl_net *net, int i, bl_layer_kind kind, int t)
{
    if (i + 1 >= net->n_layers || net->t[t].users != 1) return NULL;
    const bl_layer *nx = &net->layers[i + 1];
    if (nx->ops->kind != kind) return NULL;
    for (int k = 0; k < nx->n_in; k++)
        if (nx->in[k] == t) return nx;
    return NULL;
}

static int bn_fusable(const bl_layer *b);

/* Inference: conv -> BN (population) [-> add] [-> ReLU] in one pass, writing the chain's last
 * tensor; anything else runs the plain forward. */
static bl_status conv_infer(bl_layer *l, bl_net *net, int *used)
{
    conv_state *s = l->state;
    const int li = (int)(l - net->layers);
    const bl_layer *b = chain_next(net, li, BL_LAYER_BN, l->out);
    if (!b || !bn_fusable(b)) return conv_forward(l, net, NULL);
    const int C = s->cout;
    bl_status st = bl_bn_pop_affine(bl_layer_bn(b), s->coef, s->coef + C, s->coef + 2 * C);
    if (st) return st;
    bl_conv_epi e = {s->coef, s->coef + C, s->coef + 2 * C, NULL, 0};
    int end = li + 1, t = b->out;
    const bl_layer *a = chain_next(net, end, BL_LAYER_ADD, t);
    if (a) {
        e.res = net->t[a->in[0] == t ? a->in[1] : a->in[0]].data;
        end++, t = a->out;
    }
    const bl_layer *r = chain_next(net, end, BL_LAYER_RELU, t);
    if (r) e.relu = 1, end++, t = r->out;
    *used = end - li + 1;
    return conv_run(l, net, net->t[t].data, &e);
}

static bl_status conv_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const conv_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]], *y = &net->t[l->out];
    const int kd = s->k * s->k * s->cin, rows = y->h * y->w, n = net->batch;
    const float *w = pdata(net, s->w);
    float *dw = pgrad(net, s->w);
    const conv_plan pl = conv_plan_of(s, l->need_dx);
    if (pl.bwd == ALG_DIRECT) {
        if (pl.wino_dw) {
            float *ws = bl_scratch_get(&net->ws, bl_wino_dw_ws_floats(x->h, x->w, s->cin, s->cout,
                                                                      bl_threads_get()) *
                                                     sizeof(float));
            if (!ws) return BL_ERR_NOMEM;
            bl_wino_dw(x->data, y->grad, n, x->h, x->w, s->cin, s->cout, dw, ws);
        } else {
            const size_t per =
                (size_t)9 * s->cin * s->cout + (size_t)(x->h + 2) * (x->w + 2) * s->cin;
            float *ws = bl_scratch_get(&net->ws, (size_t)bl_threads_get() * per * sizeof(float));
            if (!ws) return BL_ERR_NOMEM;
            bl_conv3x3_dw(x->data, y->grad, n, x->h, x->w, s->cin, s->cout, 1, dw, ws);
        }
        if (l->need_dx)
            return conv3x3_run(net, y->grad, n, x->h, x->w, s->cin, s->cout, 1, w, 1,
                               pl.wino_dx, x->grad, l->acc[0], NULL);
        return BL_OK;
    }
    if (pl.bwd == ALG_DW_SMALL) {
        float *ws = bl_scratch_get(&net->ws, (size_t)bl_threads_get() * 9 * s->cin * s->cout *
                                                 sizeof(float));
        if (!ws) return BL_ERR_NOMEM;
        bl_conv3x3_dw_small(x->data, y->grad, n, x->h, x->w, s->cin, s->cout, dw, ws);
        return BL_OK;
    }
    if (pl.bwd == ALG_GEMM) {
        bl_gemm(1, 0, s->cout, kd, n * rows, 1.0f, y->grad, s->cout, x->data, kd, 1.0f, dw, kd);
        if (l->need_dx)
            bl_gemm(0, 0, n * rows, kd, s->cout, 1.0f, y->grad, s->cout, w, kd,
                    l->acc[0] ? 1.0f : 0.0f, x->grad, kd);
        return BL_OK;
    }
    if (pl.dw_direct) { /* stride 2: dW by the direct kernel, dx by im2col's GEMM below */
        const size_t per = (size_t)9 * s->cin * s->cout + (size_t)(x->h + 2) * (x->w + 2) * s->cin;
        float *ws = bl_scratch_get(&net->ws, (size_t)bl_threads_get() * per * sizeof(float));
        if (!ws) return BL_ERR_NOMEM;
        bl_conv3x3_dw(x->data, y->grad, n, x->h, x->w, s->cin, s->cout, s->stride, dw, ws);
        if (!l->need_dx) return BL_OK;
    }
    /* per thread: a col buffer and a private dW, summed in thread order afterwards (static
     * schedule: the same chunks go to the same thread every time, so the sum does not depend on
     * timing) */
    const int cs = conv_chunk(s, y), chunks = (n + cs - 1) / cs, nt = bl_threads_get();
    const size_t per_thread = (size_t)cs * rows * kd, wsz = (size_t)s->cout * kd;
    float *ws = bl_scratch_get(&net->ws, (size_t)nt * (per_thread + wsz) * sizeof(float));
    if (!ws) return BL_ERR_NOMEM;
    float *dwp = ws + (size_t)nt * per_thread;
    memset(dwp, 0, (size_t)nt * wsz * sizeof(float));
    const size_t xs = (size_t)x->h * x->w * s->cin;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int i0 = ch * cs, m = (n - i0 < cs ? n - i0 : cs), t = THREAD_ID;
        float *col = ws + (size_t)t * per_thread;
        const float *dy = y->grad + (size_t)i0 * rows * s->cout;
        if (!pl.dw_direct) {
            im2col(x->data + (size_t)i0 * xs, m, x->h, x->w, s->cin, s->k, s->stride, s->pad,
                   y->h, y->w, col);
            bl_gemm(1, 0, s->cout, kd, m * rows, 1.0f, dy, s->cout, col, kd, 1.0f,
                    dwp + t * wsz, kd);
        }
        if (l->need_dx) {
            bl_gemm(0, 0, m * rows, kd, s->cout, 1.0f, dy, s->cout, w, kd, 0.0f, col, kd);
            col2im(col, m, x->h, x->w, s->cin, s->k, s->stride, s->pad, y->h, y->w,
                   x->grad + (size_t)i0 * xs, l->acc[0]);
        }
    }
    if (pl.dw_direct) return BL_OK;
    /* the threads' partial sums in thread order for every element, the elements in parallel */
#pragma omp parallel for schedule(static) if (wsz >= 4096)
    for (size_t k = 0; k < wsz; k++) {
        float sum = dw[k];
        for (int t = 0; t < nt; t++) sum += dwp[t * wsz + k];
        dw[k] = sum;
    }
    return BL_OK;
}

static void free_state(bl_layer *l) { free(l->state); }

static void conv_free(bl_layer *l)
{
    free(((conv_state *)l->state)->coef);
    free(l->state);
}

/* Kaiming normal of its weight (fan_in, ReLU gain), unless another layer declared it. */
static void conv_init(bl_layer *l, bl_net *net, bl_rng *r)
{
    const conv_state *s = l->state;
    bl_param *p = &net->params[s->w];
    if (bl_layer_owns(net, l, s->w))
        bl_param_init_normal(p, r, sqrt(2.0 / (double)(p->count / (size_t)p->shape[0])));
}

/* FMA slots of a 3x3 convolution of ci -> co channels on an h x w map (stride 1) as run: Winograd
 * F(2x2, 3x3) counts its 16 products per tile and channel pair plus the input (32 adds per tile
 * and input channel) and output transforms (24 per tile and output channel). */
static double conv3x3_slots(int h, int w, int ci, int co, int wino)
{
    if (!wino) return 9.0 * h * w * ci * co;
    const double tiles = (double)((h + 1) / 2) * ((w + 1) / 2);
    return tiles * (16.0 * ci * co + 32.0 * ci + 24.0 * co);
}

/* The profiler's cost, per sample, of what conv_plan_of chose. */
static void conv_cost(const bl_layer *l, const bl_net *net, int pass, bl_cost *c)
{
    const conv_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]], *y = &net->t[l->out];
    const double xs = (double)x->h * x->w * s->cin, ys = (double)y->h * y->w * s->cout;
    const double direct = (double)y->h * y->w * s->k * s->k * s->cin * s->cout;
    const conv_plan pl = conv_plan_of(s, l->need_dx);
    static const char *name[] = {"gemm", "im2col", "direct", "winograd", "dw direct"};
    if (pass != BL_PASS_BWD) {
        c->bytes = 4 * (xs + ys);
        c->algo = name[pl.fwd];
        c->slots = pl.fwd == ALG_WINO ? conv3x3_slots(x->h, x->w, s->cin, s->cout, 1) : direct;
        return;
    }
    c->bytes = 4 * (xs + ys + (l->need_dx ? xs + ys : 0));
    if (pl.bwd == ALG_DIRECT) {
        /* dw in the Winograd domain: the products, V's transform (32 per tile and input
         * channel) and dM's (12 per tile and output channel) */
        const double tiles = (double)((x->h + 1) / 2) * ((x->w + 1) / 2);
        const double dw =
            pl.wino_dw ? tiles * (16.0 * s->cin * s->cout + 32.0 * s->cin + 12.0 * s->cout)
                       : direct;
        c->algo = !l->need_dx ? (pl.wino_dw ? "dw winograd" : "dw direct")
                              : pl.wino_dw ? "dw+dx winograd" : "dw+dx direct";
        c->slots =
            dw + (l->need_dx ? conv3x3_slots(x->h, x->w, s->cout, s->cin, pl.wino_dx) : 0);
        return;
    }
    c->algo = pl.dw_direct ? (l->need_dx ? "dw direct, dx im2col" : "dw direct") : name[pl.bwd];
    c->slots = direct * (pl.bwd == ALG_DW_SMALL || !l->need_dx ? 1 : 2);
}

static const bl_layer_ops conv_ops = {.kind = BL_LAYER_CONV, .kind_name = "conv",
                                      .forward = conv_forward, .backward = conv_backward,
                                      .free = conv_free, .infer = conv_infer, .init = conv_init,
                                      .cost = conv_cost};

/* The parameter `name` when declared already with this kind and shape (*idx; 1 returned), none
 * (0), or an error for a clash. */
static bl_status find_shared(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                             const int *shape, int *idx, int *found)
{
    *found = 0;
    for (int i = 0; i < net->n_params; i++) {
        const bl_param *p = &net->params[i];
        if (strcmp(p->name, name)) continue;
        int same = p->kind == kind && p->ndim == ndim;
        for (int d = 0; d < ndim && same; d++) same = p->shape[d] == shape[d];
        if (!same)
            return bl_fail(BL_ERR_ARG, "parameter '%s' is shared by layers of different shapes",
                           name);
        *idx = i;
        *found = 1;
    }
    return BL_OK;
}

/* Declares the parameter, or shares it when it exists. */
static bl_status declare_or_share(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                                  const int *shape, int ohwi, int *idx)
{
    int found;
    bl_status st = find_shared(net, name, kind, ndim, shape, idx, &found);
    if (st || found) return st;
    return bl_net_declare(net, name, kind, ndim, shape, ohwi, idx);
}

bl_status bl_net_conv(bl_net *net, const char *name, int in, int cout, int k, int stride, int pad,
                      int *out)
{
    char pn[96];
    snprintf(pn, sizeof pn, "%s.weight", name);
    return bl_net_conv_param(net, name, pn, in, cout, k, stride, pad, out);
}

bl_status bl_net_conv_param(bl_net *net, const char *name, const char *weight, int in, int cout,
                            int k, int stride, int pad, int *out)
{
    if (in < 0 || in >= net->n_tensors || cout < 1 || k < 1 || stride < 1 || pad < 0)
        return bl_fail(BL_ERR_ARG, "conv '%s': bad arguments (input %d, %d outputs, kernel %d, "
                       "stride %d, padding %d)", name, in, cout, k, stride, pad);
    const bl_tensor *x = &net->t[in];
    int ho = (x->h + 2 * pad - k) / stride + 1, wo = (x->w + 2 * pad - k) / stride + 1;
    if (ho < 1 || wo < 1)
        return bl_fail(BL_ERR_ARG, "conv '%s': kernel %d larger than the padded input %dx%d", name,
                       k, x->h, x->w);
    conv_state *s = bl_callocn(1, sizeof *s);
    float *coef = bl_malloc(3 * sizeof(float) * cout);
    if (!s || !coef) {
        free(s), free(coef);
        return bl_fail(BL_ERR_NOMEM, "conv '%s': out of memory", name);
    }
    *s = (conv_state){x->c, cout, k, stride, pad, -1, coef};
    int shape[4] = {cout, x->c, k, k};
    bl_layer *l;
    bl_status st = declare_or_share(net, weight, BL_P_WEIGHT, 4, shape, 1, &s->w);
    if (!st) st = bl_net_layer(net, &conv_ops, name, &in, 1, ho, wo, cout, s, &l);
    if (st) {
        free(coef), free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

/* ---- BatchNorm --------------------------------------------------------------------------------- */
typedef struct {
    bl_bn bn;
    int gamma, beta, mean, var, count; /* count < 0: none (an imported graph's BN) */
    double eps, momentum;
} bn_state;

bl_bn *bl_layer_bn(const bl_layer *l)
{
    return l->ops->kind == BL_LAYER_BN ? &((bn_state *)l->state)->bn : NULL;
}

static bl_status bn_bind(bl_layer *l, bl_net *net)
{
    bn_state *s = l->state;
    int c = net->t[l->in[0]].c;
    bl_bn_config cfg = bl_bn_config_default(c);
    cfg.name = l->name;
    cfg.eps = s->eps, cfg.momentum = s->momentum;
    bl_status st = bl_bn_init(&s->bn, &cfg);
    if (st) return st;
    bl_bn_bind(&s->bn, pdata(net, s->gamma), pdata(net, s->beta), pgrad(net, s->gamma),
               pgrad(net, s->beta), pdata(net, s->mean), pdata(net, s->var));
    for (int i = 0; i < c; i++) s->bn.gamma[i] = 1, s->bn.beta[i] = 0, s->bn.pop_mean[i] = 0,
                                s->bn.pop_var[i] = 1;
    if (s->count >= 0) net->params[s->count].i64 = s->bn.num_batches_tracked;
    return BL_OK;
}

static bl_shape bn_shape(const bl_net *net, const bl_tensor *x)
{
    bl_shape sh = {net->batch, x->c, x->h, x->w, BL_NHWC};
    return sh;
}

static bl_status bn_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    bn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    const bl_bn_use *u = bl_ctx_use(ctx, l->bn_index);
    return bl_bn_forward(&s->bn, u->mode, u->groups, bn_shape(net, x), x->data,
                         net->t[l->out].data);
}

static bl_status bn_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    bn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    size_t n = (size_t)net->batch * bl_tsize(x);
    float *dx = x->grad;
    if (l->acc[0] && !(dx = bl_scratch_get(&net->ws, n * sizeof(float)))) return BL_ERR_NOMEM;
    bl_status st = bl_bn_backward(&s->bn, bl_ctx_use(ctx, l->bn_index)->groups, x->data,
                                  net->t[l->out].grad, dx);
    if (!st && l->acc[0]) put(x->grad, dx, n, 1);
    return st;
}

static void bn_free(bl_layer *l)
{
    bn_state *s = l->state;
    bl_bn_free(&s->bn);
    free(s);
}

static int bn_cores(bl_layer *l, bl_bn **core, unsigned *in)
{
    if (core) core[0] = bl_layer_bn(l), in[0] = 1;
    return 1;
}

/* gamma 1, beta 0 (the population statistics are the core's: mean 0, var 1 at bind) */
static void bn_init(bl_layer *l, bl_net *net, bl_rng *r)
{
    const bn_state *s = l->state;
    (void)r;
    bl_param_init_const(&net->params[s->gamma], 1.0f);
    bl_param_init_const(&net->params[s->beta], 0.0f);
}

static const bl_layer_ops bn_ops = {.kind = BL_LAYER_BN, .kind_name = "bn", .bind = bn_bind,
                                    .forward = bn_forward, .backward = bn_backward, .free = bn_free,
                                    .cores = bn_cores, .init = bn_init};

/* One row of statistics and parameters and the fast kernels (the reference kernel is kept
 * separate so that tests can compare against it). */
static int bn_fusable(const bl_layer *b)
{
    const bl_bn *bn = bl_layer_bn(b);
    return bn->cfg.stats_domains == 1 && bn->cfg.affine_domains == 1 && bn->kernel == BL_KERNEL_FAST;
}

/* A BN layer with parameters of the given names (gamma, beta, mean, var) and, when count is
 * non-NULL, a num_batches_tracked. */
static bl_status bn_make(bl_net *net, const char *name, int in, const char *const names[4],
                         const char *count, double eps, double momentum, int *out)
{
    if (in < 0 || in >= net->n_tensors) return bl_fail(BL_ERR_ARG, "bn '%s': bad input", name);
    if (!(eps > 0) || !(momentum >= 0 && momentum <= 1))
        return bl_fail(BL_ERR_ARG, "bn '%s': epsilon %g must be positive and momentum %g in "
                       "[0, 1]", name, eps, momentum);
    const bl_tensor *x = &net->t[in];
    bn_state *s = bl_callocn(1, sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "bn '%s': out of memory", name);
    int c = x->c;
    int *idx[4] = {&s->gamma, &s->beta, &s->mean, &s->var};
    s->eps = eps, s->momentum = momentum, s->count = -1;
    bl_status st = BL_OK;
    for (int k = 0; k < 4 && !st; k++)
        st = bl_net_declare(net, names[k], k < 2 ? BL_P_BN : BL_P_BUFFER, 1, &c, 0, idx[k]);
    bl_layer *l;
    if (!st && count) st = bl_net_declare(net, count, BL_P_COUNT, 0, NULL, 0, &s->count);
    if (!st) st = bl_net_layer(net, &bn_ops, name, &in, 1, x->h, x->w, c, s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

bl_status bl_net_bn(bl_net *net, const char *name, int in, int *out)
{
    char pn[5][96];
    static const char *suffix[5] = {"weight", "bias", "running_mean", "running_var",
                                    "num_batches_tracked"};
    for (int k = 0; k < 5; k++) snprintf(pn[k], sizeof pn[k], "%s.%s", name, suffix[k]);
    const char *const names[4] = {pn[0], pn[1], pn[2], pn[3]};
    const bl_bn_config d = bl_bn_config_default(1);
    return bn_make(net, name, in, names, pn[4], d.eps, d.momentum, out);
}

bl_status bl_net_bn_named(bl_net *net, const char *name, int in, const char *const names[4],
                          double eps, double momentum, int *out)
{
    return bn_make(net, name, in, names, NULL, eps, momentum, out);
}

/* ---- ReLU, add, global average pooling --------------------------------------------------------- */
static bl_status relu_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const float *x = net->t[l->in[0]].data;
    float *y = net->t[l->out].data;
    size_t n = (size_t)net->batch * bl_tsize(&net->t[l->out]);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;
    return BL_OK;
}

static bl_status relu_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const float *y = net->t[l->out].data, *dy = net->t[l->out].grad;
    float *dx = net->t[l->in[0]].grad;
    size_t n = (size_t)net->batch * bl_tsize(&net->t[l->out]);
    if (!l->need_dx) return BL_OK;
    if (l->acc[0]) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) dx[i] += y[i] > 0 ? dy[i] : 0;
    } else {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0 ? dy[i] : 0;
    }
    return BL_OK;
}

static const bl_layer_ops relu_ops = {.kind = BL_LAYER_RELU, .kind_name = "relu",
                                      .forward = relu_forward, .backward = relu_backward};

/* A layer without state: the constructors below differ only in shapes and checks. */
static bl_status plain_layer(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                             int n_in, int h, int w, int c, int *out)
{
    bl_layer *l;
    bl_status st = bl_net_layer(net, ops, name, in, n_in, h, w, c, NULL, &l);
    if (!st) *out = l->out;
    return st;
}

bl_status bl_net_relu(bl_net *net, const char *name, int in, int *out)
{
    if (in < 0 || in >= net->n_tensors) return bl_fail(BL_ERR_ARG, "relu '%s': bad input", name);
    const bl_tensor *x = &net->t[in];
    return plain_layer(net, &relu_ops, name, &in, 1, x->h, x->w, x->c, out);
}

static bl_status add_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const float *a = net->t[l->in[0]].data, *b = net->t[l->in[1]].data;
    float *y = net->t[l->out].data;
    size_t n = (size_t)net->batch * bl_tsize(&net->t[l->out]);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    return BL_OK;
}

static bl_status add_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    size_t n = (size_t)net->batch * bl_tsize(&net->t[l->out]);
    const float *dy = net->t[l->out].grad;
    for (int k = 0; k < 2; k++) /* an input given the output's gradient at finalize: nothing */
        if (l->in[k] != 0 && net->t[l->in[k]].grad != dy)
            put(net->t[l->in[k]].grad, dy, n, l->acc[k]);
    return BL_OK;
}

static const bl_layer_ops add_ops = {.kind = BL_LAYER_ADD, .kind_name = "add",
                                     .forward = add_forward, .backward = add_backward,
                                     .grad_passthrough = 1};

bl_status bl_net_add(bl_net *net, const char *name, int a, int b, int *out)
{
    if (a < 0 || b < 0 || a >= net->n_tensors || b >= net->n_tensors)
        return bl_fail(BL_ERR_ARG, "add '%s': bad inputs", name);
    const bl_tensor *x = &net->t[a], *z = &net->t[b];
    if (x->h != z->h || x->w != z->w || x->c != z->c)
        return bl_fail(BL_ERR_ARG, "add '%s': shapes (%d,%d,%d) and (%d,%d,%d) differ", name, x->h,
                       x->w, x->c, z->h, z->w, z->c);
    int in[2] = {a, b};
    return plain_layer(net, &add_ops, name, in, 2, x->h, x->w, x->c, out);
}

static bl_status gap_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const bl_tensor *x = &net->t[l->in[0]];
    float *y = net->t[l->out].data;
    int hw = x->h * x->w, c = x->c;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < net->batch; i++) {
        double acc[4096];
        int cc = c < 4096 ? c : 4096;
        for (int k = 0; k < cc; k++) acc[k] = 0;
        for (int p = 0; p < hw; p++)
            for (int k = 0; k < cc; k++) acc[k] += x->data[((size_t)i * hw + p) * c + k];
        for (int k = 0; k < cc; k++) y[(size_t)i * c + k] = (float)(acc[k] / hw);
    }
    return BL_OK;
}

static bl_status gap_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const bl_tensor *x = &net->t[l->in[0]];
    const float *dy = net->t[l->out].grad;
    int hw = x->h * x->w, c = x->c;
    float inv = 1.0f / hw;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < net->batch; i++)
        for (int p = 0; p < hw; p++) {
            float *d = x->grad + ((size_t)i * hw + p) * c;
            for (int k = 0; k < c; k++) d[k] = (l->acc[0] ? d[k] : 0) + dy[(size_t)i * c + k] * inv;
        }
    return BL_OK;
}

static const bl_layer_ops gap_ops = {.kind = BL_LAYER_GAP, .kind_name = "gap",
                                     .forward = gap_forward, .backward = gap_backward};

bl_status bl_net_gap(bl_net *net, const char *name, int in, int *out)
{
    if (in < 0 || in >= net->n_tensors) return bl_fail(BL_ERR_ARG, "gap '%s': bad input", name);
    if (net->t[in].c > 4096) return bl_fail(BL_ERR_ARG, "gap '%s': more than 4096 channels", name);
    return plain_layer(net, &gap_ops, name, &in, 1, 1, 1, net->t[in].c, out);
}

/* ---- linear ------------------------------------------------------------------------------------
 * On the flattened sample (the classifier), or on every position (row) of it (a crop head's fc:
 * rows = h * w positions of c values each). */
typedef struct {
    int cin, cout, w, b, rows; /* b < 0: no bias; rows: positions per sample (1: flattened) */
} linear_state;

static bl_status linear_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const linear_state *s = l->state;
    float *y = net->t[l->out].data;
    const int m = net->batch * s->rows;
    bl_gemm(0, 1, m, s->cout, s->cin, 1.0f, net->t[l->in[0]].data, s->cin, pdata(net, s->w),
            s->cin, 0.0f, y, s->cout);
    if (s->b < 0) return BL_OK;
    const float *b = pdata(net, s->b);
    for (int i = 0; i < m; i++)
        for (int k = 0; k < s->cout; k++) y[(size_t)i * s->cout + k] += b[k];
    return BL_OK;
}

static bl_status linear_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const linear_state *s = l->state;
    const float *dy = net->t[l->out].grad;
    const int m = net->batch * s->rows;
    bl_gemm(1, 0, s->cout, s->cin, m, 1.0f, dy, s->cout, net->t[l->in[0]].data, s->cin,
            1.0f, pgrad(net, s->w), s->cin);
    if (s->b >= 0) {
        float *db = pgrad(net, s->b);
        for (int i = 0; i < m; i++)
            for (int k = 0; k < s->cout; k++) db[k] += dy[(size_t)i * s->cout + k];
    }
    if (l->need_dx)
        bl_gemm(0, 0, m, s->cin, s->cout, 1.0f, dy, s->cout, pdata(net, s->w), s->cin,
                l->acc[0] ? 1.0f : 0.0f, net->t[l->in[0]].grad, s->cin);
    return BL_OK;
}

/* PyTorch's default: weight and bias uniform in +-1/sqrt(fan_in of the weight) */
static void linear_init(bl_layer *l, bl_net *net, bl_rng *r)
{
    const linear_state *s = l->state;
    const double bound = 1.0 / sqrt((double)s->cin);
    bl_param_init_uniform(&net->params[s->w], r, bound);
    if (s->b >= 0) bl_param_init_uniform(&net->params[s->b], r, bound);
}

static const bl_layer_ops linear_ops = {.kind = BL_LAYER_LINEAR, .kind_name = "linear",
                                        .forward = linear_forward, .backward = linear_backward,
                                        .free = free_state, .init = linear_init};

/* weight and bias: the parameters' names (bias NULL: none) */
static bl_status linear_make(bl_net *net, const char *name, int in, int cout, const char *weight,
                             const char *bias, int rows, int *out)
{
    if (in < 0 || in >= net->n_tensors || cout < 1)
        return bl_fail(BL_ERR_ARG, "linear '%s': bad arguments (input %d, %d outputs)", name, in,
                       cout);
    linear_state *s = bl_callocn(1, sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "linear '%s': out of memory", name);
    const bl_tensor *x = &net->t[in];
    s->rows = rows ? x->h * x->w : 1;
    s->cin = rows ? x->c : (int)bl_tsize(x);
    s->cout = cout;
    s->b = -1;
    int ws[2] = {cout, s->cin};
    bl_layer *l;
    bl_status st = declare_or_share(net, weight, BL_P_WEIGHT, 2, ws, 0, &s->w);
    if (!st && bias) st = declare_or_share(net, bias, BL_P_BIAS, 1, &cout, 0, &s->b);
    if (!st)
        st = bl_net_layer(net, &linear_ops, name, &in, 1, rows ? x->h : 1, rows ? x->w : 1, cout,
                          s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

bl_status bl_net_linear(bl_net *net, const char *name, int in, int cout, int *out)
{
    char w[96], b[96];
    snprintf(w, sizeof w, "%s.weight", name), snprintf(b, sizeof b, "%s.bias", name);
    return linear_make(net, name, in, cout, w, b, 0, out);
}

bl_status bl_net_linear_rows(bl_net *net, const char *name, int in, int cout, int bias, int *out)
{
    char w[96], b[96];
    snprintf(w, sizeof w, "%s.weight", name), snprintf(b, sizeof b, "%s.bias", name);
    return linear_make(net, name, in, cout, w, bias ? b : NULL, 1, out);
}

bl_status bl_net_linear_named(bl_net *net, const char *name, int in, int cout, const char *weight,
                              const char *bias, int *out)
{
    return linear_make(net, name, in, cout, weight, bias, 0, out);
}

bl_status bl_net_declare_shared(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                                const int *shape, int ohwi, int *idx)
{
    return declare_or_share(net, name, kind, ndim, shape, ohwi, idx);
}

/* ---- GroupNorm ----------------------------------------------------------------------------------- */
typedef struct {
    int groups, gamma, beta, rows; /* rows: each position normalized on its own (a crop's) */
    double *mean, *rstd; /* (max_batch * positions * groups): forward's, for backward */
} gn_state;

/* The GN shape: samples, or every position of every sample as a 1x1 sample of its own. */
static bl_shape gn_shape(const bl_layer *l, const bl_net *net)
{
    const gn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    if (s->rows) return (bl_shape){net->batch * x->h * x->w, x->c, 1, 1, BL_NHWC};
    return (bl_shape){net->batch, x->c, x->h, x->w, BL_NHWC};
}

static bl_status gn_bind(bl_layer *l, bl_net *net)
{
    gn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    const size_t n = (size_t)net->max_batch * (s->rows ? x->h * x->w : 1) * s->groups;
    s->mean = bl_malloc(sizeof(double) * n * 2);
    if (!s->mean) return bl_fail(BL_ERR_NOMEM, "gn '%s': out of memory", l->name);
    s->rstd = s->mean + n;
    return BL_OK;
}

static bl_status gn_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    gn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    bl_status st = bl_gn_forward(gn_shape(l, net), s->groups, 1e-5, x->data, pdata(net, s->gamma),
                                 pdata(net, s->beta), net->t[l->out].data, s->mean, s->rstd);
    return st ? bl_fail_ctx(st, "layer '%s'", l->name) : BL_OK;
}

static bl_status gn_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    gn_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    size_t n = (size_t)net->batch * bl_tsize(x);
    float *dx = x->grad;
    if (!l->need_dx || l->acc[0]) /* the input gradient goes to scratch: added, or dropped */
        if (!(dx = bl_scratch_get(&net->ws, n * sizeof(float)))) return BL_ERR_NOMEM;
    bl_status st = bl_gn_backward(gn_shape(l, net), s->groups, x->data, net->t[l->out].grad,
                                  pdata(net, s->gamma), s->mean, s->rstd, dx,
                                  pgrad(net, s->gamma), pgrad(net, s->beta));
    if (!st && l->need_dx && l->acc[0]) put(x->grad, dx, n, 1);
    return st;
}

static void gn_free(bl_layer *l)
{
    gn_state *s = l->state;
    if (s) free(s->mean);
    free(s);
}

/* gamma 1, beta 0, unless another layer declared them (shared over levels) */
static void gn_init(bl_layer *l, bl_net *net, bl_rng *r)
{
    const gn_state *s = l->state;
    (void)r;
    if (bl_layer_owns(net, l, s->gamma)) bl_param_init_const(&net->params[s->gamma], 1.0f);
    if (bl_layer_owns(net, l, s->beta)) bl_param_init_const(&net->params[s->beta], 0.0f);
}

static const bl_layer_ops gn_ops = {.kind = BL_LAYER_GN, .kind_name = "gn", .bind = gn_bind,
                                    .forward = gn_forward, .backward = gn_backward, .free = gn_free,
                                    .init = gn_init};

bl_status bl_net_gn(bl_net *net, const char *name, int in, int groups, int *out)
{
    return bl_net_gn_param(net, name, name, in, groups, out);
}

static bl_status gn_make(bl_net *net, const char *name, const char *prefix, int in, int groups,
                         int rows, int *out)
{
    if (in < 0 || in >= net->n_tensors) return bl_fail(BL_ERR_ARG, "gn '%s': bad input", name);
    const bl_tensor *x = &net->t[in];
    if (groups < 1 || x->c % groups)
        return bl_fail(BL_ERR_ARG, "gn '%s': %d groups do not divide %d channels", name, groups,
                       x->c);
    gn_state *s = bl_callocn(1, sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "gn '%s': out of memory", name);
    s->groups = groups;
    s->rows = rows;
    char pn[96];
    int c = x->c;
    bl_layer *l;
    snprintf(pn, sizeof pn, "%s.weight", prefix);
    bl_status st = declare_or_share(net, pn, BL_P_BN, 1, &c, 0, &s->gamma);
    snprintf(pn, sizeof pn, "%s.bias", prefix);
    if (!st) st = declare_or_share(net, pn, BL_P_BN, 1, &c, 0, &s->beta);
    if (!st) st = bl_net_layer(net, &gn_ops, name, &in, 1, x->h, x->w, c, s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

bl_status bl_net_gn_param(bl_net *net, const char *name, const char *prefix, int in, int groups,
                          int *out)
{
    return gn_make(net, name, prefix, in, groups, 0, out);
}

bl_status bl_net_gn_rows(bl_net *net, const char *name, int in, int groups, int *out)
{
    return gn_make(net, name, name, in, groups, 1, out);
}
