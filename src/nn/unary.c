/* Elementwise activations of an imported graph: Clip (ReLU6), Sigmoid, HardSigmoid, HardSwish,
 * LeakyRelu and Relu's ONNX twin, as ONNX defines them. Forward only; bl_net_relu (trainable) is
 * the ResNets'. */
#include "nn/net.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    bl_unary_op op;
    float a, b;
} unary_state;

static inline float apply(bl_unary_op op, float x, float a, float b)
{
    switch (op) {
    case BL_UNARY_RELU:
        return x > 0 ? x : (x != x ? x : 0.0f);
    case BL_UNARY_CLIP:
        return x != x ? x : x < a ? a : x > b ? b : x;
    case BL_UNARY_SIGMOID:
        return 1.0f / (1.0f + expf(-x));
    case BL_UNARY_HARDSIGMOID: {
        const float v = a * x + b;
        return v != v ? v : v < 0 ? 0.0f : v > 1 ? 1.0f : v;
    }
    case BL_UNARY_HARDSWISH: {
        const float v = x / 6.0f + 0.5f;
        return x * (v < 0 ? 0.0f : v > 1 ? 1.0f : v);
    }
    default:
        return x >= 0 ? x : a * x; /* leaky relu */
    }
}

static bl_status unary_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const unary_state *s = l->state;
    const float *x = net->t[l->in[0]].data;
    float *y = net->t[l->out].data;
    const size_t n = (size_t)net->batch * bl_tsize(&net->t[l->out]);
    const bl_unary_op op = s->op;
    const float a = s->a, b = s->b;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = apply(op, x[i], a, b);
    return BL_OK;
}

static void unary_free(bl_layer *l) { free(l->state); }

static const bl_layer_ops unary_ops = {.kind = BL_LAYER_UNARY,
                                       .kind_name = "activation",
                                       .forward = unary_forward,
                                       .backward = bl_layer_no_backward,
                                       .free = unary_free};

bl_status bl_net_unary(bl_net *net, const char *name, bl_unary_op op, int in, float a, float b,
                       int *out)
{
    const bl_tensor *x = bl_net_tensor_at(net, in);
    if (!x) return bl_fail(BL_ERR_ARG, "activation '%s': input tensor %d does not exist", name, in);
    if (op < BL_UNARY_RELU || op > BL_UNARY_LEAKY_RELU)
        return bl_fail(BL_ERR_ARG, "activation '%s': unknown operation %d", name, (int)op);
    if (op == BL_UNARY_CLIP && !(a <= b))
        return bl_fail(BL_ERR_ARG, "clip '%s': min %g above max %g", name, a, b);
    unary_state *s = bl_malloc(sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "activation '%s': out of memory", name);
    *s = (unary_state){op, a, b};
    bl_layer *l;
    bl_status rc = bl_net_layer(net, &unary_ops, name, &in, 1, x->h, x->w, x->c, s, &l);
    if (rc) return free(s), rc;
    *out = l->out;
    return BL_OK;
}
