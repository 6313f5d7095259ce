/* Direct 3x3 convolution for NHWC with channels in multiples of 16 (conv3x3.c). */
#ifndef BNLAB_NN_CONV3X3_H
#define BNLAB_NN_CONV3X3_H

#include <stddef.h>

/* Whether the direct kernel handles this convolution in this build. */
int bl_conv3x3_supported(int cin, int cout, int k, int stride, int pad);
/* Packs OHWI weights (cout, 3, 3, cin) for the kernel: 9 * cin * cout floats. flip: the weights of
 * the input-gradient convolution (dy has cout channels, dx cin). */
void bl_conv3x3_pack(const float *w_ohwi, int cin, int cout, int flip, float *wp);
/* y (+)= conv3x3(x), x: (n, h, w, cin), y: (n, h, w, cout), stride 1, padding 1. pad_ws: threads *
 * (h + 2) * (w + 2) * cin floats. */
void bl_conv3x3(const float *x, int n, int h, int w, int cin, int cout, const float *wp, float *y,
                int acc, float *pad_ws);

/* dw_ohwi += the weight gradient of that convolution for input x and output gradient dy.
 * ws: threads * (9 * cin * cout + (h + 2) * (w + 2) * cin) floats. */
void bl_conv3x3_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                   float *dw_ohwi, float *ws);

#endif
