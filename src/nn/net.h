/* Internal helpers shared by the layer files. */
#ifndef BNLAB_NN_NET_H
#define BNLAB_NN_NET_H

#include "bnlab/nn.h"

/* Adds a tensor of per-sample shape (h, w, c); *id receives its id. */
bl_status bl_net_tensor(bl_net *net, int h, int w, int c, int *id);
/* Adds a layer reading in[0..n_in) and writing a new tensor of shape (h, w, c); *out receives the
 * layer. state is owned by the layer once this succeeds (freed by ops->free); on failure it is
 * still the caller's. */
bl_status bl_net_layer(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                       int n_in, int h, int w, int c, void *state, bl_layer **out);
/* The same with n_out outputs of shapes hwc[3k .. 3k+2], tensors out .. out + n_out - 1. */
bl_status bl_net_layer_n(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                         int n_in, const int *hwc, int n_out, void *state, bl_layer **out);
/* Declares a parameter; *idx receives its index. shape is PyTorch's. */
bl_status bl_net_declare(bl_net *net, const char *name, bl_param_kind kind, int ndim,
                         const int *shape, int ohwi, int *idx);
/* Elements of one sample of tensor t. */
static inline size_t bl_tsize(const bl_tensor *t) { return (size_t)t->h * t->w * t->c; }

#endif
