/* Internal helpers shared by the layer files: the public layer API (bnlab/layer.h). */
#ifndef BNLAB_NN_NET_H
#define BNLAB_NN_NET_H

#include "bnlab/layer.h"

/* The profiler's records (profile.c): one layer call of `pass` that covered `used` layers, and
 * the table printed and freed with the net. */
void bl_net_profile_layer(bl_net *net, int layer, int pass, int used, double sec);
void bl_net_profile_free(bl_net *net);

#endif
