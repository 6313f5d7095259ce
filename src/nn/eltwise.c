/* Binary elementwise layers with broadcast (add, sub, mul, div): what an imported graph needs
 * beside the residual add - a squeeze-excitation scale x * s with s (1, 1, C), hardswish's
 * x * clip(x + 3, 0, 6) / 6 with scalar constants, a normalization (x - mean) / std with
 * per-channel constants. Each input is indexed through strides that are 0 along the dimensions it
 * is broadcast over, so one loop serves every pattern. */
#include "nn/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    bl_elt_op op;
} elt_state;

/* Element strides of an input read at the output's positions: 0 where it is broadcast. */
typedef struct {
    size_t n, y, x, c;
} strides;

static strides strides_of(const bl_tensor *t)
{
    strides s;
    s.n = t->constant ? 0 : bl_tsize(t);
    s.y = t->h == 1 ? 0 : (size_t)t->w * t->c;
    s.x = t->w == 1 ? 0 : (size_t)t->c;
    s.c = t->c == 1 ? 0 : 1;
    return s;
}

static inline float apply(bl_elt_op op, float a, float b)
{
    switch (op) {
    case BL_ELT_ADD: return a + b;
    case BL_ELT_SUB: return a - b;
    case BL_ELT_MUL: return a * b;
    default: return a / b;
    }
}

static bl_status elt_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const elt_state *s = l->state;
    const bl_tensor *A = &net->t[l->in[0]], *B = &net->t[l->in[1]], *Y = &net->t[l->out];
    const strides sa = strides_of(A), sb = strides_of(B);
    const int n = net->batch, H = Y->h, W = Y->w, C = Y->c;
    const bl_elt_op op = s->op;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                const float *a = A->data + i * sa.n + y * sa.y + x * sa.x;
                const float *b = B->data + i * sb.n + y * sb.y + x * sb.x;
                float *o = Y->data + (((size_t)i * H + y) * W + x) * C;
                for (int c = 0; c < C; c++) o[c] = apply(op, a[c * sa.c], b[c * sb.c]);
            }
    return BL_OK;
}

/* Whether input k gets a gradient: not the network input, not a constant. */
static int wants_grad(const bl_net *net, const bl_layer *l, int k)
{
    return l->in[k] != 0 && !net->t[l->in[k]].constant;
}

static bl_status elt_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const elt_state *s = l->state;
    const bl_tensor *A = &net->t[l->in[0]], *B = &net->t[l->in[1]], *Y = &net->t[l->out];
    const strides sa = strides_of(A), sb = strides_of(B);
    const int n = net->batch, H = Y->h, W = Y->w, C = Y->c;
    const int ga = wants_grad(net, l, 0), gb = wants_grad(net, l, 1);
    const bl_elt_op op = s->op;
    if (!ga && !gb) return BL_OK;
    /* each sample's gradients are its own (a batch input is never broadcast over the batch), so
     * the samples run in parallel */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *da = ga ? A->grad + i * sa.n : NULL, *db = gb ? B->grad + i * sb.n : NULL;
        if (ga && !l->acc[0]) memset(da, 0, sizeof(float) * bl_tsize(A));
        if (gb && !l->acc[1]) memset(db, 0, sizeof(float) * bl_tsize(B));
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                const size_t oa = y * sa.y + x * sa.x, ob = y * sb.y + x * sb.x;
                const float *a = A->data + i * sa.n + oa, *b = B->data + i * sb.n + ob;
                const float *dy = Y->grad + (((size_t)i * H + y) * W + x) * C;
                for (int c = 0; c < C; c++) {
                    const float av = a[c * sa.c], bv = b[c * sb.c], g = dy[c];
                    float gda, gdb;
                    switch (op) {
                    case BL_ELT_ADD: gda = g, gdb = g; break;
                    case BL_ELT_SUB: gda = g, gdb = -g; break;
                    case BL_ELT_MUL: gda = g * bv, gdb = g * av; break;
                    default: gda = g / bv, gdb = -g * av / (bv * bv); break;
                    }
                    if (da) da[oa + c * sa.c] += gda;
                    if (db) db[ob + c * sb.c] += gdb;
                }
            }
    }
    return BL_OK;
}

static void elt_free(bl_layer *l) { free(l->state); }

static const bl_layer_ops elt_ops = {.kind = BL_LAYER_ELTWISE, .kind_name = "eltwise",
                                     .forward = elt_forward, .backward = elt_backward,
                                     .free = elt_free, .const_inputs = 1};

static const char *op_name(bl_elt_op op)
{
    static const char *names[] = {"add", "sub", "mul", "div"};
    return op >= BL_ELT_ADD && op <= BL_ELT_DIV ? names[op] : "?";
}

/* The broadcast size of one dimension, or 0 when the two sizes clash. */
static int bcast(int p, int q) { return p == q || q == 1 ? p : p == 1 ? q : 0; }

bl_status bl_net_eltwise(bl_net *net, const char *name, bl_elt_op op, int a, int b, int *out)
{
    if (op < BL_ELT_ADD || op > BL_ELT_DIV)
        return bl_fail(BL_ERR_ARG, "eltwise '%s': operation %d is none of add, sub, mul, div",
                       name, (int)op);
    const bl_tensor *A = bl_net_tensor_at(net, a), *B = bl_net_tensor_at(net, b);
    if (!A || !B)
        return bl_fail(BL_ERR_ARG, "%s '%s': input tensor %d does not exist", op_name(op), name,
                       A ? b : a);
    if (A->constant && B->constant)
        return bl_fail(BL_ERR_ARG, "%s '%s': both inputs are constants: compute the result once "
                       "and declare it as a constant", op_name(op), name);
    const int h = bcast(A->h, B->h), w = bcast(A->w, B->w), c = bcast(A->c, B->c);
    if (!h || !w || !c)
        return bl_fail(BL_ERR_ARG, "%s '%s': shapes (%d, %d, %d) and (%d, %d, %d) do not "
                       "broadcast (each size equal, or one of them 1)", op_name(op), name, A->h,
                       A->w, A->c, B->h, B->w, B->c);
    elt_state *s = bl_malloc(sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "%s '%s': out of memory", op_name(op), name);
    s->op = op;
    const int in[2] = {a, b};
    bl_layer *l;
    bl_status st = bl_net_layer(net, &elt_ops, name, in, 2, h, w, c, s, &l);
    if (st) return free(s), st;
    *out = l->out;
    return BL_OK;
}
