/* bnlab layer API: what an extender needs to write a layer of its own and build a net from it
 * (docs/extending.md). A layer is an ops table (bl_layer_ops, nn.h: forward, backward, and
 * optionally bind, free, infer, cores for BN cores, abort, init) with a state of its own; it reads
 * tensors by id and declares the parameters it trains. Memory comes at bl_net_finalize: bind then
 * finds its parameters' and tensors' data. */
#ifndef BNLAB_LAYER_H
#define BNLAB_LAYER_H

#include "bnlab/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Adds a tensor of per-sample shape (h, w, c); *id receives its id. */
bl_status bl_net_tensor(bl_net *net, int h, int w, int c, int *id);
/* Adds a constant tensor: one sample's values (h, w, c) NHWC, copied; every sample of a batch
 * shares them, and they get no gradient. Only layers whose ops set const_inputs may read one. */
bl_status bl_net_const(bl_net *net, int h, int w, int c, const float *values, int *id);
/* Adds a layer reading in[0..n_in) (any number of inputs) and writing a new tensor of shape
 * (h, w, c); *out receives the layer. state is owned by the layer once this succeeds (freed by
 * ops->free); on failure it is still the caller's. */
bl_status bl_net_layer(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                       int n_in, int h, int w, int c, void *state, bl_layer **out);
/* The same with n_out outputs of shapes hwc[3k .. 3k+2], tensors out .. out + n_out - 1. */
bl_status bl_net_layer_n(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                         int n_in, const int *hwc, int n_out, void *state, bl_layer **out);
/* Declares a parameter for the layer added next (its owner); *idx receives its index. shape is
 * PyTorch's; ohwi: a conv weight stored OHWI inside (OIHW in checkpoints). */
bl_status bl_net_declare(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                         const int *shape, int ohwi, int *idx);
/* The same for a parameter that may be absent from a checkpoint with the rest of its group
 * (optional: the group, > 0; bl_param.optional). */
bl_status bl_net_declare_in(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                            const int *shape, int ohwi, int optional, int *idx);

/* declare, or share the parameter when one of this name, kind and shape exists already (a clash of
 * shapes is an error). */
bl_status bl_net_declare_shared(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                                const int *shape, int ohwi, int *idx);
/* A backward op for layers without one: an error naming the layer (forward-only layers). */
bl_status bl_layer_no_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx);
/* For init ops: Kaiming normal (std sqrt(2 / fan_in), fan_in = count / shape[0]), uniform in
 * [-bound, bound], and a constant. */
void bl_param_init_normal(bl_param *p, bl_rng *r, double std);
void bl_param_init_uniform(bl_param *p, bl_rng *r, double bound);
void bl_param_init_const(bl_param *p, float v);
/* Whether layer l declared parameter idx (and so initializes it; a shared one is its first
 * user's). */
static inline int bl_layer_owns(const bl_net *net, const bl_layer *l, int idx)
{
    return bl_net_param_at(net, idx)->owner == (int)(l - bl_net_layer_at(net, 0));
}

#ifdef __cplusplus
}
#endif
#endif
