/* Internal helpers shared by the layer files. */
#ifndef BNLAB_NN_NET_H
#define BNLAB_NN_NET_H

#include "bnlab/nn.h"

/* Adds a tensor of per-sample shape (h, w, c); returns its id or -1. */
int bl_net_tensor(bl_net *net, int h, int w, int c);
/* Adds a layer reading in[0..n_in) and writing a new tensor of shape (h, w, c); returns the layer
 * or NULL. state is owned by the layer from here on (freed with free()). */
bl_layer *bl_net_layer(bl_net *net, const bl_layer_ops *ops, const char *name, const int *in,
                       int n_in, int h, int w, int c, void *state);
/* Declares a parameter; returns its index or -1. shape is PyTorch's. */
int bl_net_declare(bl_net *net, const char *name, bl_param_kind kind, int ndim, const int *shape,
                   int ohwi);
/* Elements of one sample of tensor t. */
static inline size_t bl_tsize(const bl_tensor *t) { return (size_t)t->h * t->w * t->c; }

#endif
