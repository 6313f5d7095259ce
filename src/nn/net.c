/* Networks: tensors, layers and parameters declared first, memory allocated once per role at
 * finalize, then forward/backward walk the layers in order. */
#include "nn/net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bl_status grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return BL_OK;
    int nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *q = bl_realloc(*p, (size_t)nc * elem);
    if (!q) return bl_fail(BL_ERR_NOMEM, "net: out of memory growing a network table");
    memset((char *)q + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
    *p = q;
    *cap = nc;
    return BL_OK;
}

bl_status bl_net_init(bl_net *net, int h, int w, int c, int max_batch)
{
    memset(net, 0, sizeof *net);
    if (h < 1 || w < 1 || c < 1 || max_batch < 1)
        return bl_fail(BL_ERR_ARG, "net: input (%d, %d, %d) and batch %d must be positive", h, w,
                       c, max_batch);
    net->max_batch = max_batch;
    int id;
    return bl_net_tensor(net, h, w, c, &id);
}

bl_status bl_net_tensor(bl_net *net, int h, int w, int c, int *id)
{
    bl_status st = grow((void **)&net->t, &net->cap_tensors, net->n_tensors + 1, sizeof(bl_tensor));
    if (st) return st;
    bl_tensor *t = &net->t[net->n_tensors];
    t->h = h, t->w = w, t->c = c;
    *id = net->n_tensors++;
    return BL_OK;
}

bl_status bl_net_const(bl_net *net, int h, int w, int c, const float *values, int *id)
{
    if (net->finalized) return bl_fail(BL_ERR_STATE, "net: constant added after finalize");
    if (h < 1 || w < 1 || c < 1 || (size_t)h * w * c > ((size_t)1 << 28))
        return bl_fail(BL_ERR_ARG, "net: constant of shape (%d, %d, %d): use 1..2^28 values", h,
                       w, c);
    float *v = bl_callocn((size_t)h * w * c, sizeof(float));
    if (!v) return bl_fail(BL_ERR_NOMEM, "net: out of memory for a constant (%d, %d, %d)", h, w, c);
    bl_status st = bl_net_tensor(net, h, w, c, id);
    if (st) return free(v), st;
    memcpy(v, values, sizeof(float) * (size_t)h * w * c);
    net->t[*id].data = v;
    net->t[*id].constant = 1;
    return BL_OK;
}

bl_status bl_net_layer(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                       int n_in, int h, int w, int c, void *state, bl_layer **out)
{
    const int hwc[3] = {h, w, c};
    return bl_net_layer_n(net, ops, name, in, n_in, hwc, 1, state, out);
}

bl_status bl_net_layer_n(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                         int n_in, const int *hwc, int n_out, void *state, bl_layer **out)
{
    if (net->finalized) return bl_fail(BL_ERR_STATE, "net: layer '%s' added after finalize", name);
    if (n_in < 1 || n_out < 1)
        return bl_fail(BL_ERR_ARG, "net: layer '%s' with %d inputs and %d outputs (at least one "
                       "of each)", name, n_in, n_out);
    for (int k = 0; k < n_in; k++) {
        if (in[k] < 0 || in[k] >= net->n_tensors)
            return bl_fail(BL_ERR_ARG, "net: layer '%s' reads tensor %d, which does not exist",
                           name, in[k]);
        if (net->t[in[k]].constant && !ops->const_inputs)
            return bl_fail(BL_ERR_ARG, "net: layer '%s' (%s) reads constant tensor %d, and a %s "
                           "layer takes batch tensors only", name, ops->kind_name, in[k],
                           ops->kind_name);
    }
    int t = net->n_tensors, id;
    int *io = bl_callocn(2 * (size_t)n_in, sizeof(int));
    if (!io) return bl_fail(BL_ERR_NOMEM, "layer '%s': out of memory", name);
    bl_status st = grow((void **)&net->layers, &net->cap_layers, net->n_layers + 1, sizeof(bl_layer));
    for (int k = 0; k < n_out && !st; k++)
        st = bl_net_tensor(net, hwc[3 * k], hwc[3 * k + 1], hwc[3 * k + 2], &id);
    if (st) return free(io), bl_fail_ctx(st, "layer '%s'", name);
    bl_layer *l = &net->layers[net->n_layers++];
    l->ops = ops;
    snprintf(l->name, sizeof l->name, "%s", name);
    l->in = io;
    l->acc = io + n_in;
    for (int k = 0; k < n_in; k++) l->in[k] = in[k];
    l->n_in = n_in;
    l->out = t;
    l->n_out = n_out;
    l->bn_index = -1;
    l->state = state;
    *out = l;
    return BL_OK;
}

bl_status bl_net_declare(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                         const int *shape, int ohwi, int *idx)
{
    return bl_net_declare_in(net, name, kind, ndim, shape, ohwi, 0, idx);
}

bl_status bl_net_declare_in(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                            const int *shape, int ohwi, int optional, int *idx)
{
    if (net->finalized) return bl_fail(BL_ERR_STATE, "net: parameter '%s' after finalize", name);
    bl_status st = grow((void **)&net->params, &net->cap_params, net->n_params + 1, sizeof(bl_param));
    if (st) return bl_fail_ctx(st, "parameter '%s'", name);
    bl_param *p = &net->params[net->n_params];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->ndim = ndim;
    p->count = 1;
    for (int d = 0; d < ndim; d++) p->shape[d] = shape[d], p->count *= (size_t)shape[d];
    p->ohwi = ohwi;
    p->owner = net->n_layers; /* the layer added next */
    p->optional = optional;
    *idx = net->n_params++;
    return net->declare_check ? net->declare_check(net->declare_ctx, p) : BL_OK;
}

bl_status bl_net_finalize(bl_net *net)
{
    if (net->finalized) return bl_fail(BL_ERR_STATE, "net: finalized twice");
    if (net->declare_check) return BL_OK; /* declared only: nothing to allocate */
    /* parameter and buffer offsets, 16-float aligned so every tensor starts on a cache line */
    size_t np = 0, nb = 0;
    for (int i = 0; i < net->n_params; i++) {
        bl_param *p = &net->params[i];
        if (p->kind == BL_P_COUNT) continue;
        size_t *at = p->kind == BL_P_BUFFER ? &nb : &np;
        p->offset = *at;
        *at += (p->count + 15) & ~(size_t)15;
    }
    net->n_param_floats = np;
    net->n_buffer_floats = nb;
    size_t act = 0;
    for (int i = 0; i < net->n_tensors; i++)
        if (!net->t[i].constant)
            act += 2 * (((size_t)net->max_batch * bl_tsize(&net->t[i]) + 15) & ~(size_t)15);
    net->param_block = bl_calloc((np ? np : 1) * sizeof(float));
    net->grad_block = bl_calloc((np ? np : 1) * sizeof(float));
    net->optim_block = bl_calloc((np ? np : 1) * sizeof(float));
    net->buffer_block = bl_calloc((nb ? nb : 1) * sizeof(float));
    net->act_block = bl_calloc(act * sizeof(float));
    if (!net->param_block || !net->grad_block || !net->optim_block || !net->buffer_block ||
        !net->act_block)
        return bl_fail(BL_ERR_NOMEM, "net: out of memory for %zu parameters and %zu activation "
                       "floats (batch %d): use a smaller batch", np, act, net->max_batch);
    for (int i = 0; i < net->n_params; i++) {
        bl_param *p = &net->params[i];
        if (p->kind == BL_P_COUNT) continue;
        p->data = (p->kind == BL_P_BUFFER ? net->buffer_block : net->param_block) + p->offset;
    }
    float *a = net->act_block;
    for (int i = 0; i < net->n_tensors; i++) {
        if (net->t[i].constant) continue; /* its own values, no gradient */
        size_t n = ((size_t)net->max_batch * bl_tsize(&net->t[i]) + 15) & ~(size_t)15;
        net->t[i].data = a;
        net->t[i].grad = a + n;
        a += 2 * n;
    }
    /* backward order: the first layer to reach a tensor writes its gradient, later ones add */
    for (int li = 0; li < net->n_layers; li++)
        for (int k = 0; k < net->layers[li].n_in; k++) net->t[net->layers[li].in[k]].users++;
    char *written = bl_callocn((size_t)net->n_tensors, 1);
    if (!written) return bl_fail(BL_ERR_NOMEM, "net: out of memory at finalize");
    for (int li = net->n_layers - 1; li >= 0; li--) {
        bl_layer *l = &net->layers[li];
        l->need_dx = 1;
        for (int k = 0; k < l->n_in; k++) {
            l->acc[k] = written[l->in[k]];
            written[l->in[k]] = 1;
            if (l->in[k] == 0 || net->t[l->in[k]].constant) l->need_dx = 0;
        }
    }
    free(written);
    /* zero-copy passthrough: last layers first, so an output's gradient buffer is final before an
     * input takes it; the network input, constants and the net's outputs (the loss writes their
     * gradient) keep their own */
    for (int li = net->n_layers - 1; li >= 0; li--) {
        const bl_layer *l = &net->layers[li];
        if (!l->ops->grad_passthrough || l->n_out != 1) continue;
        for (int k = 0; k < l->n_in; k++) {
            bl_tensor *t = &net->t[l->in[k]];
            int is_output = !net->n_outputs && l->in[k] == net->n_tensors - 1; /* the default */
            for (int o = 0; o < net->n_outputs; o++) is_output |= net->outputs[o] == l->in[k];
            if (l->in[k] == 0 || t->constant || t->users != 1 || is_output) continue;
            const bl_tensor *y = &net->t[l->out];
            if (bl_tsize(t) == bl_tsize(y)) t->grad = y->grad;
        }
    }
    /* the BN cores, listed once: commits, PreciseBN and the forward context index them */
    int kb = 0;
    for (int li = 0; li < net->n_layers; li++) {
        const bl_layer *l = &net->layers[li];
        if (!l->ops->cores) continue;
        if (l->n_in > 32) /* bn_in is a mask of the inputs */
            return bl_fail(BL_ERR_ARG, "net: BN layer '%s' reads %d inputs (at most 32)", l->name,
                           l->n_in);
        kb += l->ops->cores((bl_layer *)l, NULL, NULL);
    }
    net->bn_layer = bl_malloc(sizeof(int) * (size_t)(kb ? kb : 1));
    net->bn_in = bl_malloc(sizeof(unsigned) * (size_t)(kb ? kb : 1));
    net->bn = bl_malloc(sizeof(bl_bn *) * (size_t)(kb ? kb : 1));
    if (!net->bn_layer || !net->bn_in || !net->bn)
        return bl_fail(BL_ERR_NOMEM, "net: out of memory listing the BN layers");
    for (int li = 0; li < net->n_layers; li++) {
        bl_layer *l = &net->layers[li];
        if (!l->ops->cores) continue;
        l->bn_index = net->n_bn;
        int k = l->ops->cores(l, net->bn + net->n_bn, net->bn_in + net->n_bn);
        for (int j = 0; j < k; j++) net->bn_layer[net->n_bn++] = li;
    }
    if (!net->n_outputs) {
        if (net->n_tensors == 1 || net->t[net->n_tensors - 1].constant)
            return bl_fail(BL_ERR_ARG, "net: the last tensor is %s: declare the outputs "
                           "(bl_net_set_outputs)",
                           net->n_tensors == 1 ? "the input" : "a constant");
        net->outputs[0] = net->n_tensors - 1, net->n_outputs = 1;
    }
    net->finalized = 1;
    for (int li = 0; li < net->n_layers; li++) {
        bl_layer *l = &net->layers[li];
        if (l->ops->bind) {
            bl_status st = l->ops->bind(l, net);
            if (st) return st;
        }
    }
    return BL_OK;
}

bl_status bl_ctx_init(bl_ctx *c, const bl_net *net, bl_bn_mode mode, const bl_groups *groups)
{
    *c = bl_ctx_all(mode, groups);
    c->bn = bl_malloc(sizeof(bl_bn_use) * (size_t)(net->n_bn ? net->n_bn : 1));
    if (!c->bn) return bl_fail(BL_ERR_NOMEM, "out of memory for a forward context");
    c->n_bn = net->n_bn;
    for (int i = 0; i < c->n_bn; i++) c->bn[i] = c->all;
    return BL_OK;
}

void bl_ctx_free(bl_ctx *c)
{
    free(c->bn);
    c->bn = NULL;
    c->n_bn = 0;
}

bl_status bl_net_bn_commit(bl_net *net, bl_estimator est)
{
    for (int i = 0; i < net->n_bn; i++) {
        bl_status st = bl_bn_commit(net->bn[i], est);
        if (st) return st;
    }
    return BL_OK;
}

void bl_net_free(bl_net *net)
{
    bl_net_profile_free(net);
    for (int i = 0; i < net->n_layers; i++) {
        if (net->layers[i].ops->free) net->layers[i].ops->free(&net->layers[i]);
        free(net->layers[i].in); /* acc shares its allocation */
    }
    for (int i = 0; i < net->n_tensors; i++)
        if (net->t[i].constant) free(net->t[i].data);
    free(net->layers);
    free(net->t);
    free(net->params);
    free(net->bn_layer);
    free(net->bn_in);
    free(net->bn);
    bl_free(net->param_block);
    bl_free(net->grad_block);
    bl_free(net->optim_block);
    bl_free(net->buffer_block);
    bl_free(net->act_block);
    bl_scratch_free(&net->ws);
    memset(net, 0, sizeof *net);
}

/* ctx NULL: every BN layer with batch statistics over the whole batch */
static const bl_ctx whole_batch_ctx = {0, NULL, {BL_BN_BATCH, NULL}, NULL, NULL};

static bl_status check_ctx(const bl_net *net, const bl_ctx **ctx)
{
    if (!*ctx) {
        *ctx = &whole_batch_ctx;
        return BL_OK;
    }
    if ((*ctx)->bn && (*ctx)->n_bn != net->n_bn)
        return bl_fail(BL_ERR_ARG, "net: the forward context has %d BN entries, the net %d BN "
                       "layers: make it with bl_ctx_init for this net", (*ctx)->n_bn, net->n_bn);
    return BL_OK;
}

static bl_status forward(bl_net *net, const bl_ctx *ctx, const float *x, int n, int infer,
                         int last)
{
    if (!net->finalized) return bl_fail(BL_ERR_STATE, "net: forward before finalize");
    if (n < 0 || n > net->max_batch)
        return bl_fail(BL_ERR_ARG, "net: batch of %d samples, the network holds at most %d", n,
                       net->max_batch);
    bl_status st = check_ctx(net, &ctx);
    if (st) return st;
    net->batch = n;
    const int prof = bl_profile_enabled();
    double t0 = prof ? bl_profile_now() : 0;
    memcpy(net->t[0].data, x, (size_t)n * bl_tsize(&net->t[0]) * sizeof(float));
    if (prof) bl_net_profile_phase(net, BL_PHASE_INPUT, bl_profile_now() - t0);
    for (int i = 0; i <= last;) {
        bl_layer *l = &net->layers[i];
        int used = 1;
        if (prof) t0 = bl_profile_now();
        st = infer && l->ops->infer ? l->ops->infer(l, net, &used) : l->ops->forward(l, net, ctx);
        if (prof)
            bl_net_profile_layer(net, i, infer ? BL_PASS_INFER : BL_PASS_FWD, used,
                                 bl_profile_now() - t0);
        if (st) {
            /* layers after it that make collective calls join them anyway (a shuffle across
             * processes), so no other process waits there; the trainer agrees on the error
             * before the backward */
            for (int j = i + 1; j <= last; j++)
                if (net->layers[j].ops->abort) net->layers[j].ops->abort(&net->layers[j], net, ctx);
            return st;
        }
        i += used;
    }
    return BL_OK;
}

bl_status bl_net_forward(bl_net *net, const bl_ctx *ctx, const float *x, int n)
{
    return forward(net, ctx, x, n, 0, net->n_layers - 1);
}

bl_status bl_net_forward_to(bl_net *net, const bl_ctx *ctx, const float *x, int n, int last)
{
    if (last < 0 || last >= net->n_layers)
        return bl_fail(BL_ERR_ARG, "net: forward to layer %d of %d", last, net->n_layers);
    return forward(net, ctx, x, n, 0, last);
}

bl_status bl_net_infer(bl_net *net, const float *x, int n)
{
    return bl_net_infer_ctx(net, NULL, x, n);
}

bl_status bl_net_infer_ctx(bl_net *net, const bl_ctx *ctx, const float *x, int n)
{
    /* layers without a fused path run their plain forward, with population statistics */
    bl_ctx c = bl_ctx_all(BL_BN_POPULATION, NULL);
    if (ctx) c.draw = ctx->draw, c.shuffle = ctx->shuffle;
    return forward(net, &c, x, n, 1, net->n_layers - 1);
}

bl_status bl_net_backward(bl_net *net, const bl_ctx *ctx)
{
    bl_status st = check_ctx(net, &ctx);
    if (st) return st;
    const int prof = bl_profile_enabled();
    for (int i = net->n_layers - 1; i >= 0; i--) {
        bl_layer *l = &net->layers[i];
        const double t0 = prof ? bl_profile_now() : 0;
        if ((st = l->ops->backward(l, net, ctx))) return st;
        if (prof) bl_net_profile_layer(net, i, BL_PASS_BWD, 1, bl_profile_now() - t0);
    }
    return BL_OK;
}

void bl_net_zero_grad(bl_net *net)
{
    const double t0 = bl_profile_enabled() ? bl_profile_now() : 0;
    memset(net->grad_block, 0, net->n_param_floats * sizeof(float));
    if (t0) bl_net_profile_phase(net, BL_PHASE_ZERO, bl_profile_now() - t0);
}

#define BL_MAX_MEAN_LOGITS 256 /* classes of a net with several outputs (labels are 8-bit) */

bl_status bl_net_set_outputs(bl_net *net, const int *t, int n)
{
    if (net->finalized) return bl_fail(BL_ERR_STATE, "net: outputs set after finalize");
    if (n < 1 || n > BL_NET_MAX_OUTPUTS)
        return bl_fail(BL_ERR_ARG, "net: %d outputs: use 1..%d", n, BL_NET_MAX_OUTPUTS);
    if (n > 1 && (t[0] < 0 || t[0] >= net->n_tensors || bl_tsize(&net->t[t[0]]) > BL_MAX_MEAN_LOGITS))
        return bl_fail(BL_ERR_ARG, "net: several outputs of more than %d classes",
                       BL_MAX_MEAN_LOGITS);
    for (int k = 0; k < n; k++)
        if (t[k] < 0 || t[k] >= net->n_tensors || bl_tsize(&net->t[t[k]]) != bl_tsize(&net->t[t[0]]))
            return bl_fail(BL_ERR_ARG, "net: output %d (tensor %d) does not exist or differs in "
                           "size from output 0", k, t[k]);
        else if (t[k] == 0 || net->t[t[k]].constant)
            return bl_fail(BL_ERR_ARG, "net: output %d (tensor %d) is the input or a constant: "
                           "an output is a layer's", k, t[k]);
    for (int k = 0; k < n; k++) net->outputs[k] = t[k];
    net->n_outputs = n;
    return BL_OK;
}

/* The index of the largest of z[0..k) (the first on ties). */
static int argmax(const float *z, int k)
{
    int arg = 0;
    for (int j = 1; j < k; j++)
        if (z[j] > z[arg]) arg = j;
    return arg;
}

bl_status bl_net_loss(bl_net *net, const uint8_t *labels, int grad, double *loss_sum, int *correct)
{
    return bl_net_loss_over(net, labels, grad ? net->batch : 0, loss_sum, correct);
}

static bl_status loss_over(bl_net *net, const uint8_t *labels, long mean_over, double *loss_sum,
                           int *correct)
{
    /* every output row of a sample (L outputs of R rows: levels, crops) is one prediction of its
     * label: the loss is the mean of their cross-entropies, the prediction their mean logits */
    const bl_tensor *t0 = &net->t[net->outputs[0]];
    const int L = net->n_outputs, n = net->batch, k = t0->c, R = t0->h * t0->w, LR = L * R;
    const int grad = mean_over > 0;
    if (LR > 1 && k > BL_MAX_MEAN_LOGITS)
        return bl_fail(BL_ERR_ARG, "loss: %d predictions per sample of %d classes (at most %d)",
                       LR, k, BL_MAX_MEAN_LOGITS);
    double total = 0;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        if (labels[i] >= k)
            return bl_fail(BL_ERR_ARG, "loss: label %d of sample %d is outside the %d classes",
                           labels[i], i, k);
        float zm[BL_MAX_MEAN_LOGITS]; /* the mean logits (the prediction) */
        for (int j = 0; j < k && j < BL_MAX_MEAN_LOGITS; j++) zm[j] = 0;
        for (int o = 0; o < L; o++)
            for (int r = 0; r < R; r++) {
                const bl_tensor *t = &net->t[net->outputs[o]];
                const size_t at = ((size_t)i * R + r) * k;
                const float *z = t->data + at;
                float *g = t->grad + at;
                double mx = z[argmax(z, k)];
                if (!isfinite(mx))
                    return bl_fail(BL_ERR_NUMERIC, "loss: the logits of sample %d are not finite",
                                   i);
                double se = 0;
                for (int j = 0; j < k; j++) se += exp(z[j] - mx);
                total += (log(se) + mx - z[labels[i]]) / LR;
                for (int j = 0; j < k && j < BL_MAX_MEAN_LOGITS; j++) zm[j] += z[j] / LR;
                if (grad)
                    for (int j = 0; j < k; j++)
                        g[j] = (float)((exp(z[j] - mx) / se - (j == labels[i])) /
                                       ((double)mean_over * LR));
            }
        ok += (LR == 1 ? argmax(t0->data + (size_t)i * k, k) : argmax(zm, k)) == labels[i];
    }
    *loss_sum = total;
    *correct = ok;
    return BL_OK;
}

bl_status bl_net_loss_over(bl_net *net, const uint8_t *labels, long mean_over, double *loss_sum,
                           int *correct)
{
    if (!bl_profile_enabled()) return loss_over(net, labels, mean_over, loss_sum, correct);
    const double t0 = bl_profile_now();
    const bl_status st = loss_over(net, labels, mean_over, loss_sum, correct);
    bl_net_profile_phase(net, BL_PHASE_LOSS, bl_profile_now() - t0);
    return st;
}

void bl_net_output_correct(const bl_net *net, const uint8_t *labels, int *correct)
{
    const bl_tensor *t0 = &net->t[net->outputs[0]];
    const int k = t0->c, R = t0->h * t0->w;
    if (R > 1 && k > BL_MAX_MEAN_LOGITS) { /* refused by the loss already */
        for (int o = 0; o < net->n_outputs; o++) correct[o] = 0;
        return;
    }
    for (int o = 0; o < net->n_outputs; o++) {
        const float *z = net->t[net->outputs[o]].data;
        correct[o] = 0;
        for (int i = 0; i < net->batch; i++) {
            float zm[BL_MAX_MEAN_LOGITS] = {0};
            for (int r = 0; r < R; r++)
                for (int j = 0; j < k && j < BL_MAX_MEAN_LOGITS; j++)
                    zm[j] += z[((size_t)i * R + r) * k + j] / R;
            correct[o] += (R == 1 ? argmax(z + (size_t)i * k, k) : argmax(zm, k)) == labels[i];
        }
    }
}

const bl_param *bl_net_param(const bl_net *net, const char *name)
{
    for (int i = 0; i < net->n_params; i++)
        if (!strcmp(net->params[i].name, name)) return &net->params[i];
    return NULL;
}

bl_status bl_layer_no_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)net, (void)ctx;
    return bl_fail(BL_ERR_STATE, "layer '%s' (%s) has no backward: an imported graph is evaluated "
                   "and its statistics estimated, not trained", l->name, l->ops->kind_name);
}

void bl_param_init_normal(bl_param *p, bl_rng *r, double std)
{
    for (size_t k = 0; k < p->count; k++) p->data[k] = (float)(std * bl_rng_normal(r));
}

void bl_param_init_uniform(bl_param *p, bl_rng *r, double bound)
{
    for (size_t k = 0; k < p->count; k++) p->data[k] = (float)(bound * (2 * bl_rng_uniform(r) - 1));
}

void bl_param_init_const(bl_param *p, float v)
{
    for (size_t k = 0; k < p->count; k++) p->data[k] = v;
}

void bl_net_init_params(bl_net *net, uint64_t seed)
{
    /* each layer its own parameters, in network order: the order they were declared in, so one
     * stream of draws gives every net of a seed the same values */
    bl_rng r;
    bl_rng_seed(&r, seed);
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].ops->init) net->layers[i].ops->init(&net->layers[i], net, &r);
}

bl_bn_where bl_net_bn_where(const bl_net *net, int i)
{
    bl_bn_where w = {-1, 0, 0};
    if (i < 0 || i >= net->n_bn) return w;
    const bl_layer *l = &net->layers[net->bn_layer[i]];
    w.layer = net->bn_layer[i];
    w.part = i - l->bn_index;
    w.parts = l->ops->cores((bl_layer *)l, NULL, NULL) > 1 ? l->n_in : 1;
    return w;
}

/* OIHW index of OHWI element (o, y, x, i). */
static void conv_perm(const bl_param *p, const float *src, float *dst, int to_torch)
{
    int O = p->shape[0], I = p->shape[1], H = p->shape[2], W = p->shape[3];
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    size_t oihw = (((size_t)o * I + i) * H + y) * W + x;
                    size_t ohwi = (((size_t)o * H + y) * W + x) * I + i;
                    if (to_torch) dst[oihw] = src[ohwi];
                    else dst[ohwi] = src[oihw];
                }
}

void bl_param_export(const bl_param *p, const float *src, float *dst)
{
    if (p->ohwi) conv_perm(p, src, dst, 1);
    else memcpy(dst, src, p->count * sizeof(float));
}

void bl_param_import(const bl_param *p, const float *src, float *dst)
{
    if (p->ohwi) conv_perm(p, src, dst, 0);
    else memcpy(dst, src, p->count * sizeof(float));
}

const char *bl_net_first_nonfinite(const bl_net *net)
{
    for (int i = 0; i < net->n_layers; i++) {
        const bl_layer *l = &net->layers[i];
        for (int o = 0; o < l->n_out; o++) {
            const bl_tensor *t = &net->t[l->out + o];
            size_t n = (size_t)net->batch * bl_tsize(t);
            for (size_t k = 0; k < n; k++)
                if (!isfinite(t->data[k])) return l->name;
        }
    }
    return NULL;
}
