/* The CIFAR ResNet pieces the ResNet families share (resnet.c): the name, the backbone, its
 * checks. */
#ifndef BNLAB_NN_RESNET_H
#define BNLAB_NN_RESNET_H

#include "nn/net.h"

/* "resnet<N><suffix>" with N = 6n+2 >= 8: 1 and *depth, else 0. */
int bl_resnet_name(const char *name, const char *suffix, int *depth);
/* Depth, width and classes of a ResNet. */
bl_status bl_resnet_check(int depth, int width, int classes);
/* A ResNet family's build up to its head: the checks and the backbone (bl_resnet_backbone, nn.h)
 * with the family's normalization layer. */
bl_status bl_resnet_begin(bl_net *net, int depth, int width, int classes, int stages,
                          bl_norm_layer norm, int *stage_out);

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((st = (expr))) return st;                                                              \
    } while (0)

#endif
