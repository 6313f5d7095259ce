/* A direct NHWC 3x3 convolution (padding 1) for output channels in multiples of 16, the shape of
 * nearly every convolution in the CIFAR ResNet. Instead of materializing im2col and packing it for
 * GEMM, each thread pads one sample into a small buffer and accumulates a row of up to 14 output
 * pixels x 16 output channels in registers: one weight vector load feeds 14 FMAs with broadcast
 * inputs. Its uses: the forward at stride 1 or 2 and any input channels (the stem has 1), the
 * input gradient at stride 1 with flipped/transposed weights (where Winograd, winograd.c, is not
 * used), and the weight gradient at stride 1 (bl_conv3x3_dw). The forward can apply the inference
 * epilogue (BN, residual add, ReLU) before its store. AVX-512 only; other builds use im2col. */
#include "nn/conv3x3.h"
#include "bnlab/core.h"

#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#endif

int bl_conv3x3_fwd_supported(int cin, int cout, int k, int stride, int pad)
{
    return k == 3 && (stride == 1 || stride == 2) && pad == 1 && cin >= 1 && cout % 16 == 0;
}

int bl_conv3x3_supported(int cin, int cout, int k, int stride, int pad)
{
    return k == 3 && stride == 1 && pad == 1 && cin % 16 == 0 && cout % 16 == 0;
}

void bl_conv3x3_pack(const float *w_ohwi, int cin, int cout, int flip, float *wp)
{
    /* wp: [cout/16][ky][kx][ci][16]. flip: the weights of the input gradient, i.e. the conv of dy
     * with W'[ci][2-ky][2-kx][co] (cin and cout swapped by the caller). */
    const int ci_n = flip ? cout : cin, co_n = flip ? cin : cout;
#pragma omp parallel for schedule(static) if (co_n * ci_n >= 1024)
    for (int ob = 0; ob < co_n / 16; ob++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
                for (int ci = 0; ci < ci_n; ci++)
                    for (int j = 0; j < 16; j++) {
                        int co = ob * 16 + j;
                        float v = flip ? w_ohwi[(((size_t)ci * 3 + (2 - ky)) * 3 + (2 - kx)) * cin + co]
                                       : w_ohwi[(((size_t)co * 3 + ky) * 3 + kx) * cin + ci];
                        wp[((((size_t)ob * 3 + ky) * 3 + kx) * ci_n + ci) * 16 + j] = v;
                    }
}

/* One row segment: acc[r] over r < RB output pixels starting at ox0, 16 output channels; input
 * pixel r of the segment starts xs = stride * cin floats after pixel r - 1. mode 0 stores, 1 adds
 * to y, 2 applies the epilogue (e: this block's 16 channels; res: the residual row or NULL). */
#define ROW_KERNEL(RB)                                                                             \
    static inline void row_##RB(const float *xp, int wpad, int cin, int xs, const float *wb,       \
                                float *y, int cout, int mode, const bl_epi16 *e, const float *res) \
    {                                                                                              \
        __m512 a[RB];                                                                              \
        for (int r = 0; r < RB; r++)                                                               \
            a[r] = mode == 1 ? _mm512_loadu_ps(y + (size_t)r * cout) : _mm512_setzero_ps();       \
        for (int ky = 0; ky < 3; ky++)                                                             \
            for (int kx = 0; kx < 3; kx++) {                                                       \
                const float *xr = xp + ((size_t)ky * wpad + kx) * cin;                             \
                const float *wr = wb + ((size_t)ky * 3 + kx) * cin * 16;                           \
                for (int ci = 0; ci < cin; ci++) {                                                 \
                    __m512 wv = _mm512_loadu_ps(wr + (size_t)ci * 16);                             \
                    for (int r = 0; r < RB; r++)                                                   \
                        a[r] = _mm512_fmadd_ps(_mm512_set1_ps(xr[(size_t)r * xs + ci]), wv, a[r]); \
                }                                                                                  \
            }                                                                                      \
        if (mode == 2)                                                                             \
            for (int r = 0; r < RB; r++)                                                           \
                a[r] = bl_epi16_apply(e, a[r], res ? res + (size_t)r * cout : NULL);               \
        for (int r = 0; r < RB; r++) _mm512_storeu_ps(y + (size_t)r * cout, a[r]);                 \
    }
ROW_KERNEL(14)
ROW_KERNEL(7)
ROW_KERNEL(4)
ROW_KERNEL(1)

void bl_conv3x3(const float *x, int n, int h, int w, int cin, int cout, int stride, const float *wp,
                float *y, int acc, const bl_conv_epi *epi, float *pad_ws)
{
    const int hp = h + 2, wpad = w + 2, ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    const int xs = stride * cin, mode = epi ? 2 : acc ? 1 : 0;
    const size_t pad_sz = (size_t)hp * wpad * cin;
#pragma omp parallel
    {
        int t = 0;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num();
#endif
        float *xp = pad_ws + (size_t)t * pad_sz;
        memset(xp, 0, pad_sz * sizeof(float));
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * h * w * cin;
            for (int yy = 0; yy < h; yy++)
                memcpy(xp + ((size_t)(yy + 1) * wpad + 1) * cin, xi + (size_t)yy * w * cin,
                       (size_t)w * cin * sizeof(float));
            const size_t yoff = (size_t)i * ho * wo * cout;
            float *yi = y + yoff;
            const float *ri = epi && epi->res ? epi->res + yoff : NULL;
            for (int ob = 0; ob < cout / 16; ob++) {
                const float *wb = wp + (size_t)ob * 9 * cin * 16;
                bl_epi16 e = {0};
                if (epi) e = bl_epi16_load(epi, ob * 16);
                for (int oy = 0; oy < ho; oy++) {
                    const float *xrow = xp + (size_t)oy * stride * wpad * cin;
                    const size_t yr = (size_t)oy * wo * cout + ob * 16;
                    float *yrow = yi + yr;
                    const float *rrow = ri ? ri + yr : NULL;
#define SEG(RB)                                                                                    \
    row_##RB(xrow + (size_t)ox * xs, wpad, cin, xs, wb, yrow + (size_t)ox * cout, cout, mode, &e,  \
             rrow ? rrow + (size_t)ox * cout : NULL)
                    int ox = 0;
                    for (; ox + 14 <= wo; ox += 14) SEG(14);
                    for (; ox + 7 <= wo; ox += 7) SEG(7);
                    for (; ox + 4 <= wo; ox += 4) SEG(4);
                    for (; ox < wo; ox++) SEG(1);
#undef SEG
                }
            }
        }
    }
}

/* Weight gradient: dW[co][ky][kx][ci] += sum over output pixels p of dy[p][co] *
 * xpad[stride * p + (ky, kx)][ci].
 * For a block of 16 output channels (the vector lanes) and 16 input channels, 16 accumulators
 * gather over all pixels of a sample: one dy vector feeds 16 FMAs. Each thread sums its samples
 * into a private packed buffer [co/16][ky][kx][ci][16]; the buffers are added in thread order
 * (static schedule: the same order every run) and unpacked into OHWI. */
int bl_conv3x3_dw_supported(int cin, int cout, int k, int stride, int pad)
{
    return k == 3 && (stride == 1 || stride == 2) && pad == 1 && cin % 16 == 0 && cout % 16 == 0;
}

void bl_conv3x3_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                   int stride, float *dw_ohwi, float *ws)
{
    const int hp = h + 2, wpad = w + 2, nmax = bl_threads_get();
    int nt = 1; /* the team's size: only its partials are written and summed */
    const int ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    const size_t xs = (size_t)stride * cin;
    const size_t pad_sz = (size_t)hp * wpad * cin, wsz = (size_t)9 * cin * cout;
    float *parts = ws, *pads = ws + (size_t)nmax * wsz;
#pragma omp parallel
    {
        int t = 0;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num();
#pragma omp single
        nt = omp_get_num_threads();
#endif
        float *part = parts + (size_t)t * wsz, *xp = pads + (size_t)t * pad_sz;
        memset(part, 0, wsz * sizeof(float));
        memset(xp, 0, pad_sz * sizeof(float));
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * h * w * cin, *gi = dy + (size_t)i * ho * wo * cout;
            for (int yy = 0; yy < h; yy++)
                memcpy(xp + ((size_t)(yy + 1) * wpad + 1) * cin, xi + (size_t)yy * w * cin,
                       (size_t)w * cin * sizeof(float));
            for (int ob = 0; ob < cout / 16; ob++)
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++)
                        for (int cb = 0; cb < cin / 16; cb++) {
                            __m512 a[16];
                            for (int c = 0; c < 16; c++) a[c] = _mm512_setzero_ps();
                            for (int oy = 0; oy < ho; oy++) {
                                const float *xr =
                                    xp + ((size_t)(oy * stride + ky) * wpad + kx) * cin + cb * 16;
                                const float *gr = gi + (size_t)oy * wo * cout + ob * 16;
                                for (int ox = 0; ox < wo; ox++) {
                                    __m512 g = _mm512_loadu_ps(gr + (size_t)ox * cout);
                                    const float *xv = xr + (size_t)ox * xs;
                                    for (int c = 0; c < 16; c++)
                                        a[c] = _mm512_fmadd_ps(_mm512_set1_ps(xv[c]), g, a[c]);
                                }
                            }
                            float *pp = part + ((((size_t)ob * 3 + ky) * 3 + kx) * cin + cb * 16) * 16;
                            for (int c = 0; c < 16; c++)
                                _mm512_storeu_ps(pp + c * 16,
                                                 _mm512_add_ps(_mm512_loadu_ps(pp + c * 16), a[c]));
                        }
        }
    }
    /* the threads' partials in thread order for each element, unpacked; parallel over
     * output-channel blocks and taps (each dW element written once) */
#pragma omp parallel for schedule(static) collapse(2)
    for (int ob = 0; ob < cout / 16; ob++)
        for (int k = 0; k < 9; k++)
            for (int ci = 0; ci < cin; ci++)
                for (int j = 0; j < 16; j++) {
                    const size_t at = (((size_t)ob * 9 + k) * cin + ci) * 16 + j;
                    float v = parts[at];
                    for (int t = 1; t < nt; t++) v += parts[(size_t)t * wsz + at];
                    dw_ohwi[((size_t)(ob * 16 + j) * 9 + k) * cin + ci] += v;
                }
}

/* The weight gradient when the input has 1 to 3 channels (a stem's; im2col + GEMM on K = 9 cin is
 * mostly packing): for each block of 16 output channels, 9 cin accumulators in registers gather
 * over every pixel of the thread's samples, one dy vector feeding 9 cin FMAs; inputs outside the
 * map read as zero (no padded copy). Per-thread partials are added in thread order. */
int bl_conv3x3_dw_small_supported(int cin, int cout, int k, int stride, int pad)
{
    return k == 3 && stride == 1 && pad == 1 && cin >= 1 && cin <= 3 && cout % 16 == 0;
}

#define DW_SMALL(CIN)                                                                              \
    static void dw_small_##CIN(const float *x, const float *dy, int i0, int i1, int h, int w,      \
                               int cout, int ob, float *part)                                      \
    {                                                                                              \
        __m512 a[9 * CIN];                                                                         \
        for (int k = 0; k < 9 * CIN; k++) a[k] = _mm512_setzero_ps();                              \
        for (int i = i0; i < i1; i++) {                                                            \
            const float *xi = x + (size_t)i * h * w * CIN, *gi = dy + (size_t)i * h * w * cout;    \
            for (int oy = 0; oy < h; oy++)                                                         \
                for (int ox = 0; ox < w; ox++) {                                                   \
                    const __m512 g = _mm512_loadu_ps(gi + ((size_t)oy * w + ox) * cout + ob * 16); \
                    const int inner = oy > 0 && ox > 0 && oy + 1 < h && ox + 1 < w;                \
                    for (int ky = 0; ky < 3; ky++)                                                 \
                        for (int kx = 0; kx < 3; kx++) {                                           \
                            const int iy = oy + ky - 1, ix = ox + kx - 1;                          \
                            const int in = inner || (iy >= 0 && iy < h && ix >= 0 && ix < w);      \
                            const float *xp = xi + ((size_t)iy * w + ix) * CIN;                    \
                            for (int c = 0; c < CIN; c++)                                          \
                                a[(ky * 3 + kx) * CIN + c] = _mm512_fmadd_ps(                      \
                                    _mm512_set1_ps(in ? xp[c] : 0.0f), g,                          \
                                    a[(ky * 3 + kx) * CIN + c]);                                   \
                        }                                                                          \
                }                                                                                  \
        }                                                                                          \
        for (int k = 0; k < 9 * CIN; k++)                                                          \
            _mm512_storeu_ps(part + ((size_t)ob * 9 * CIN + k) * 16, a[k]);                        \
    }
DW_SMALL(1)
DW_SMALL(2)
DW_SMALL(3)

void bl_conv3x3_dw_small(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                         float *dw_ohwi, float *ws)
{
    const size_t wsz = (size_t)9 * cin * cout;
    int nt = 1;
#pragma omp parallel
    {
        int t = 0, tn = 1;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num(), tn = omp_get_num_threads();
#endif
#pragma omp single
        nt = tn;
        const int i0 = (int)((long)n * t / tn), i1 = (int)((long)n * (t + 1) / tn);
        float *part = ws + (size_t)t * wsz; /* [ob][ky][kx][ci][16] */
        for (int ob = 0; ob < cout / 16; ob++) {
            if (cin == 1) dw_small_1(x, dy, i0, i1, h, w, cout, ob, part);
            else if (cin == 2) dw_small_2(x, dy, i0, i1, h, w, cout, ob, part);
            else dw_small_3(x, dy, i0, i1, h, w, cout, ob, part);
        }
    }
    for (int ob = 0; ob < cout / 16; ob++)
        for (int k = 0; k < 9 * cin; k++)
            for (int j = 0; j < 16; j++) {
                float s = 0;
                for (int t = 0; t < nt; t++) s += ws[(size_t)t * wsz + ((size_t)ob * 9 * cin + k) * 16 + j];
                /* k = (ky * 3 + kx) * cin + ci: OHWI's order after the output channel */
                dw_ohwi[(size_t)(ob * 16 + j) * 9 * cin + k] += s;
            }
}

#else /* no AVX-512: the im2col path handles everything */
int bl_conv3x3_dw_supported(int cin, int cout, int k, int stride, int pad) { return 0; }
void bl_conv3x3_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                   int stride, float *dw_ohwi, float *ws)
{
}
int bl_conv3x3_fwd_supported(int cin, int cout, int k, int stride, int pad)
{
    return 0;
}
int bl_conv3x3_supported(int cin, int cout, int k, int stride, int pad)
{
    return 0;
}
int bl_conv3x3_dw_small_supported(int cin, int cout, int k, int stride, int pad) { return 0; }
void bl_conv3x3_dw_small(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                         float *dw_ohwi, float *ws)
{
}
void bl_conv3x3_pack(const float *w_ohwi, int cin, int cout, int flip, float *wp) {}
void bl_conv3x3(const float *x, int n, int h, int w, int cin, int cout, int stride, const float *wp,
                float *y, int acc, const bl_conv_epi *epi, float *pad_ws)
{
}
#endif

void bl_conv_epi_apply(const bl_conv_epi *e, float *y, const float *res, size_t pixels, int cout)
{
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < pixels; p++) {
        float *yp = y + p * cout;
        const float *rp = res ? res + p * cout : NULL;
        for (int c = 0; c < cout; c++) {
            float v = (yp[c] - e->mu[c]) * e->scale[c] + e->shift[c];
            if (rp) v = v + rp[c];
            yp[c] = e->relu ? (v > 0 ? v : 0) : v;
        }
    }
}
