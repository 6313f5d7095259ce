/* Layers that move values without arithmetic, and the softmax, for imported graphs: a gather by a
 * per-sample index map (Flatten of a map in ONNX's C, H, W order, Transpose, Reshape across
 * layouts, Slice), the concatenation of channels (any number of inputs), and the softmax over
 * channels. Forward only. */
#include "nn/net.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- gather ------------------------------------------------------------------------------------
 */
typedef struct {
    size_t n;
    int *map; /* (n): output element k of a sample is input element map[k] of that sample */
} gather_state;

static bl_status gather_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const gather_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]], *y = &net->t[l->out];
    const size_t xs = bl_tsize(x), ys = s->n;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < net->batch; i++) {
        const float *xi = x->data + (size_t)i * xs;
        float *yi = y->data + (size_t)i * ys;
        for (size_t k = 0; k < ys; k++) yi[k] = xi[s->map[k]];
    }
    return BL_OK;
}

static void gather_free(bl_layer *l)
{
    gather_state *s = l->state;
    if (s) free(s->map);
    free(s);
}

static const bl_layer_ops gather_ops = {.kind = BL_LAYER_GATHER,
                                        .kind_name = "gather",
                                        .forward = gather_forward,
                                        .backward = bl_layer_no_backward,
                                        .free = gather_free};

bl_status bl_net_gather(bl_net *net, const char *name, int in, int h, int w, int c, const int *map,
                        int *out)
{
    const bl_tensor *x = bl_net_tensor_at(net, in);
    if (!x) return bl_fail(BL_ERR_ARG, "gather '%s': input tensor %d does not exist", name, in);
    if (h < 1 || w < 1 || c < 1)
        return bl_fail(BL_ERR_ARG, "gather '%s': output shape (%d, %d, %d)", name, h, w, c);
    const size_t n = (size_t)h * w * c, xs = bl_tsize(x);
    for (size_t k = 0; k < n; k++)
        if (map[k] < 0 || (size_t)map[k] >= xs)
            return bl_fail(BL_ERR_ARG,
                           "gather '%s': index %d of element %zu outside the input's "
                           "%zu values",
                           name, map[k], k, xs);
    gather_state *s = bl_callocn(1, sizeof *s);
    int *m = bl_callocn(n, sizeof(int));
    if (!s || !m)
        return free(s), free(m), bl_fail(BL_ERR_NOMEM, "gather '%s': out of memory", name);
    memcpy(m, map, n * sizeof(int));
    s->n = n, s->map = m;
    bl_layer *l;
    bl_status rc = bl_net_layer(net, &gather_ops, name, &in, 1, h, w, c, s, &l);
    if (rc) return gather_free(&(bl_layer){.state = s}), rc;
    *out = l->out;
    return BL_OK;
}

/* ---- concatenation of channels ------------------------------------------------------------------
 */
static bl_status concat_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const bl_tensor *y = &net->t[l->out];
    const size_t pos = (size_t)net->batch * y->h * y->w;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < pos; p++) {
        float *o = y->data + p * y->c;
        for (int k = 0; k < l->n_in; k++) {
            const bl_tensor *x = &net->t[l->in[k]];
            memcpy(o, x->data + p * x->c, sizeof(float) * x->c);
            o += x->c;
        }
    }
    return BL_OK;
}

static const bl_layer_ops concat_ops = {.kind = BL_LAYER_CONCAT,
                                        .kind_name = "concat",
                                        .forward = concat_forward,
                                        .backward = bl_layer_no_backward};

bl_status bl_net_concat(bl_net *net, const char *name, const int *in, int n, int *out)
{
    if (n < 1) return bl_fail(BL_ERR_ARG, "concat '%s': no inputs", name);
    const bl_tensor *x0 = bl_net_tensor_at(net, in[0]);
    int c = 0;
    for (int k = 0; k < n; k++) {
        const bl_tensor *x = bl_net_tensor_at(net, in[k]);
        if (!x || x->h != x0->h || x->w != x0->w)
            return bl_fail(BL_ERR_ARG,
                           "concat '%s': input %d does not exist or differs from input "
                           "0 in height or width",
                           name, k);
        c += x->c;
    }
    bl_layer *l;
    bl_status rc = bl_net_layer(net, &concat_ops, name, in, n, x0->h, x0->w, c, NULL, &l);
    if (!rc) *out = l->out;
    return rc;
}

/* ---- softmax over channels
 * ----------------------------------------------------------------------- */
static bl_status softmax_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const bl_tensor *x = &net->t[l->in[0]], *y = &net->t[l->out];
    const size_t rows = (size_t)net->batch * x->h * x->w;
    const int c = x->c;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xi = x->data + r * c;
        float *yi = y->data + r * c;
        float mx = xi[0];
        for (int k = 1; k < c; k++) mx = xi[k] > mx ? xi[k] : mx;
        double sum = 0;
        for (int k = 0; k < c; k++) sum += (yi[k] = expf(xi[k] - mx));
        const float inv = (float)(1.0 / sum);
        for (int k = 0; k < c; k++) yi[k] *= inv;
    }
    return BL_OK;
}

static const bl_layer_ops softmax_ops = {.kind = BL_LAYER_SOFTMAX,
                                         .kind_name = "softmax",
                                         .forward = softmax_forward,
                                         .backward = bl_layer_no_backward};

bl_status bl_net_softmax(bl_net *net, const char *name, int in, int *out)
{
    const bl_tensor *x = bl_net_tensor_at(net, in);
    if (!x) return bl_fail(BL_ERR_ARG, "softmax '%s': input tensor %d does not exist", name, in);
    bl_layer *l;
    bl_status rc = bl_net_layer(net, &softmax_ops, name, &in, 1, x->h, x->w, x->c, NULL, &l);
    if (!rc) *out = l->out;
    return rc;
}
