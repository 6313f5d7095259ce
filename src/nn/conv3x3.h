/* Direct 3x3 convolution for NHWC with channels in multiples of 16 (conv3x3.c). */
#ifndef BNLAB_NN_CONV3X3_H
#define BNLAB_NN_CONV3X3_H

#include <stddef.h>

/* An optional epilogue applied to each output vector while it is still in registers, so inference
 * runs conv + BN + (add) + ReLU in one pass: v = (conv - mu[c]) * scale[c] + shift[c]; v += res
 * (the same layout as y) if res; v = max(v, 0) if relu. The operations and their order are those
 * of the separate BN, add and ReLU passes, so the result is bit-identical to them. */
typedef struct {
    const float *mu, *scale, *shift, *res;
    int relu;
} bl_conv_epi;

#ifdef __AVX512F__
#include <immintrin.h>
/* The epilogue for one block of 16 output channels, in registers (both kernels use it). */
typedef struct {
    __m512 mu, sc, sh;
    int relu;
} bl_epi16;

static inline bl_epi16 bl_epi16_load(const bl_conv_epi *e, int c0)
{
    bl_epi16 r = {_mm512_loadu_ps(e->mu + c0), _mm512_loadu_ps(e->scale + c0),
                  _mm512_loadu_ps(e->shift + c0), e->relu};
    return r;
}

/* (v - mu) * scale + shift, + *res if res, then ReLU if asked: the separate passes' order. */
static inline __m512 bl_epi16_apply(const bl_epi16 *e, __m512 v, const float *res)
{
    v = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, e->mu), e->sc), e->sh);
    if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res));
    return e->relu ? _mm512_max_ps(v, _mm512_setzero_ps()) : v;
}
#endif

/* Whether the direct kernel handles this convolution in this build: the forward (any cin, stride 1
 * or 2) and the backward (stride 1, cin a multiple of 16 too). */
int bl_conv3x3_fwd_supported(int cin, int cout, int k, int stride, int pad);
int bl_conv3x3_supported(int cin, int cout, int k, int stride, int pad);
/* Packs OHWI weights (cout, 3, 3, cin) for the kernel: 9 * cin * cout floats. flip: the weights of
 * the input-gradient convolution (dy has cout channels, dx cin). */
void bl_conv3x3_pack(const float *w_ohwi, int cin, int cout, int flip, float *wp);
/* y (+)= conv3x3(x), x: (n, h, w, cin), y: (n, ho, wo, cout), padding 1, ho = (h - 1) / stride + 1.
 * epi (NULL: none; not with acc) is applied before the store. pad_ws: threads * (h + 2) * (w + 2) *
 * cin floats. */
void bl_conv3x3(const float *x, int n, int h, int w, int cin, int cout, int stride, const float *wp,
                float *y, int acc, const bl_conv_epi *epi, float *pad_ws);
/* The epilogue as a separate pass over `pixels` rows of cout channels (for the GEMM paths); res
 * points at the residual rows matching y. Plain C, the same operations as the kernel's. */
void bl_conv_epi_apply(const bl_conv_epi *e, float *y, const float *res, size_t pixels, int cout);

/* dw_ohwi += the weight gradient of that convolution for input x and output gradient dy.
 * ws: threads * (9 * cin * cout + (h + 2) * (w + 2) * cin) floats. */
void bl_conv3x3_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                   int stride, float *dw_ohwi, float *ws);
/* Whether it takes this convolution: stride 1 or 2 (dy then (h - 1) / stride + 1 rows). */
int bl_conv3x3_dw_supported(int cin, int cout, int k, int stride, int pad);

/* The same for 1 to 3 input channels (a stem), no padded copy; ws: threads * 9 * cin * cout
 * floats. */
int bl_conv3x3_dw_small_supported(int cin, int cout, int k, int stride, int pad);
void bl_conv3x3_dw_small(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                         float *dw_ohwi, float *ws);

/* Winograd F(2x2, 3x3) (winograd.c): stride 1, channels in multiples of 16, AVX-512; forward or,
 * with flip, the input gradient (x = dy, y = dx). ws: bl_wino_ws_floats(h, w, cin, cout, threads).
 * bl_conv_set_winograd (nn.h) turns it off for comparisons. */
int bl_wino_supported(int cin, int cout, int k, int stride, int pad);
size_t bl_wino_ws_floats(int h, int w, int cin, int cout, int threads);
void bl_wino(const float *x, int n, int h, int w, int cin, int cout, const float *w_ohwi, int flip,
             float *y, int acc, const bl_conv_epi *epi, float *ws);
/* dw_ohwi += the weight gradient of the stride-1 3x3 convolution (where bl_wino_supported) in the
 * Winograd domain; ws: bl_wino_dw_ws_floats(h, w, cin, cout, threads). */
size_t bl_wino_dw_ws_floats(int h, int w, int cin, int cout, int threads);
void bl_wino_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                float *dw_ohwi, float *ws);

#endif
