/* Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions with channels in multiples of 16 (the
 * forward and, with flipped weights, the input gradient). The direct kernel (conv3x3.c) already
 * runs at this machine's FMA peak, so the way past it is fewer multiplies: a 2x2 output tile from
 * a 4x4 input tile costs 16 products per channel pair instead of 36.
 *
 *   Y = A^T [ (G g G^T) .* (B^T d B) ] A        (Lavin & Gray, "Fast Algorithms for CNNs", 2016)
 *
 * Channels sit in the 16 vector lanes, so the transforms are vector adds. Per thread, one sample
 * at a time (border tiles read zeros outside the map: no padded copy), its tiles in groups of RB:
 * the group's input transforms V[16 positions][RB tiles][cin], then per position a small GEMM with
 * RB accumulators in registers M[pos][tile][cout] = V[pos][tile][:] U[pos][:][cout], then the
 * output transforms with the inference epilogue. Groups are small enough to stay in L1/L2.
 *
 * Numerics: the transforms use only +, - and (for the weights) 0.5, so the result differs from a
 * direct convolution by a few float roundings per output (tested against a double reference). */
#include "nn/conv3x3.h"
#include "bnlab/core.h"

#include <string.h>

static int wino_on = 1;
void bl_conv_set_winograd(int on) { wino_on = on != 0; }

#ifdef __AVX512F__
#include <immintrin.h>

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#endif

int bl_wino_supported(int cin, int cout, int k, int stride, int pad)
{
    return wino_on && k == 3 && stride == 1 && pad == 1 && cin % 16 == 0 && cout % 16 == 0;
}

/* Tiles per group: a divisor of the tile count when one of the kernel sizes is (no dummy tiles),
 * else 14 with the last group padded by zero tiles. */
static int group_size(int tiles)
{
    static const int rb[3] = {14, 8, 7};
    for (int k = 0; k < 3; k++)
        if (tiles % rb[k] == 0) return rb[k];
    return 14;
}

size_t bl_wino_ws_floats(int h, int w, int cin, int cout, int threads)
{
    const int rb = group_size(((h + 1) / 2) * ((w + 1) / 2));
    return (size_t)16 * cin * cout + (size_t)threads * (size_t)16 * rb * (cin + cout);
}

/* u: [pos][cout/16][ci][16] = G g G^T for each (co, ci); flip as bl_conv3x3_pack. */
static void pack(const float *w_ohwi, int cin, int cout, int flip, float *u)
{
    const int ci_n = flip ? cout : cin, co_n = flip ? cin : cout;
    for (int co = 0; co < co_n; co++)
        for (int ci = 0; ci < ci_n; ci++) {
            float g[3][3], t[4][3], r[4][4];
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++)
                    g[ky][kx] = flip ? w_ohwi[(((size_t)ci * 3 + (2 - ky)) * 3 + (2 - kx)) * cin + co]
                                     : w_ohwi[(((size_t)co * 3 + ky) * 3 + kx) * cin + ci];
            for (int kx = 0; kx < 3; kx++) {
                t[0][kx] = g[0][kx];
                t[1][kx] = 0.5f * (g[0][kx] + g[1][kx] + g[2][kx]);
                t[2][kx] = 0.5f * (g[0][kx] - g[1][kx] + g[2][kx]);
                t[3][kx] = g[2][kx];
            }
            for (int y = 0; y < 4; y++) {
                r[y][0] = t[y][0];
                r[y][1] = 0.5f * (t[y][0] + t[y][1] + t[y][2]);
                r[y][2] = 0.5f * (t[y][0] - t[y][1] + t[y][2]);
                r[y][3] = t[y][2];
            }
            for (int p = 0; p < 16; p++)
                u[(((size_t)p * (co_n / 16) + co / 16) * ci_n + ci) * 16 + co % 16] = r[p / 4][p % 4];
        }
}

/* The input transform of one 4x4 tile, 16 channels: v[p * vpos] = (B^T d B)[p]. The tile's top
 * left pixel is (iy, ix) of the h x w map xi (pixel step cin floats), one pixel up and left of the
 * output tile: pixels outside the map are the zero padding, so no padded copy is needed. */
static inline __attribute__((always_inline)) void in_tile(const float *xi, int h, int w, int cin,
                                                          int iy, int ix, float *v, size_t vpos)
{
    __m512 d[4][4], t[4][4];
    const int inner = iy >= 0 && ix >= 0 && iy + 3 < h && ix + 3 < w;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            const int yy = iy + y, xx = ix + x;
            d[y][x] = inner || (yy >= 0 && yy < h && xx >= 0 && xx < w)
                          ? _mm512_loadu_ps(xi + ((size_t)yy * w + xx) * cin)
                          : _mm512_setzero_ps();
        }
    for (int x = 0; x < 4; x++) {
        t[0][x] = _mm512_sub_ps(d[0][x], d[2][x]);
        t[1][x] = _mm512_add_ps(d[1][x], d[2][x]);
        t[2][x] = _mm512_sub_ps(d[2][x], d[1][x]);
        t[3][x] = _mm512_sub_ps(d[1][x], d[3][x]);
    }
    for (int y = 0; y < 4; y++) {
        _mm512_storeu_ps(v + (size_t)(4 * y + 0) * vpos, _mm512_sub_ps(t[y][0], t[y][2]));
        _mm512_storeu_ps(v + (size_t)(4 * y + 1) * vpos, _mm512_add_ps(t[y][1], t[y][2]));
        _mm512_storeu_ps(v + (size_t)(4 * y + 2) * vpos, _mm512_sub_ps(t[y][2], t[y][1]));
        _mm512_storeu_ps(v + (size_t)(4 * y + 3) * vpos, _mm512_sub_ps(t[y][1], t[y][3]));
    }
}

/* m[p][r][ob*16..] for one position: RB tiles x 16 output channels in registers, one U vector
 * feeding RB FMAs. */
#define GEMM_KERNEL(RB)                                                                            \
    static void gemm_##RB(const float *v, const float *u, int cin, int cout, float *m)             \
    {                                                                                              \
        for (int ob = 0; ob < cout / 16; ob++) {                                                   \
            const float *ub = u + (size_t)ob * cin * 16;                                           \
            __m512 a[RB];                                                                          \
            for (int r = 0; r < RB; r++) a[r] = _mm512_setzero_ps();                               \
            for (int ci = 0; ci < cin; ci++) {                                                     \
                __m512 uv = _mm512_loadu_ps(ub + (size_t)ci * 16);                                 \
                for (int r = 0; r < RB; r++)                                                       \
                    a[r] = _mm512_fmadd_ps(_mm512_set1_ps(v[(size_t)r * cin + ci]), uv, a[r]);     \
            }                                                                                      \
            for (int r = 0; r < RB; r++) _mm512_storeu_ps(m + (size_t)r * cout + ob * 16, a[r]);   \
        }                                                                                          \
    }
GEMM_KERNEL(14)
GEMM_KERNEL(8)
GEMM_KERNEL(7)

/* The output transform of one tile, 16 channels, then store / add / epilogue into the pixels of
 * y inside the h x w map. m: position p at m[p * mpos]. */
static inline __attribute__((always_inline)) void out_tile(const float *m, size_t mpos, float *y,
                                                           const float *res, int oy, int ox, int h,
                                                           int w, int cout, int mode,
                                                           const bl_epi16 *e)
{
    __m512 q[4][4], s[2][4];
    for (int p = 0; p < 16; p++) q[p / 4][p % 4] = _mm512_loadu_ps(m + (size_t)p * mpos);
    for (int x = 0; x < 4; x++) {
        s[0][x] = _mm512_add_ps(_mm512_add_ps(q[0][x], q[1][x]), q[2][x]);
        s[1][x] = _mm512_sub_ps(_mm512_sub_ps(q[1][x], q[2][x]), q[3][x]);
    }
    for (int dy = 0; dy < 2 && oy + dy < h; dy++)
        for (int dx = 0; dx < 2 && ox + dx < w; dx++) {
            __m512 v = dx == 0 ? _mm512_add_ps(_mm512_add_ps(s[dy][0], s[dy][1]), s[dy][2])
                               : _mm512_sub_ps(_mm512_sub_ps(s[dy][1], s[dy][2]), s[dy][3]);
            const size_t at = ((size_t)(oy + dy) * w + ox + dx) * cout;
            if (mode == 1) v = _mm512_add_ps(_mm512_loadu_ps(y + at), v);
            else if (mode == 2) v = bl_epi16_apply(e, v, res ? res + at : NULL);
            _mm512_storeu_ps(y + at, v);
        }
}

void bl_wino(const float *x, int n, int h, int w, int cin, int cout, const float *w_ohwi, int flip,
             float *y, int acc, const bl_conv_epi *epi, float *ws)
{
    /* flip: the input-gradient convolution, cout -> cin channels (the caller passes x = dy) */
    const int ci_n = flip ? cout : cin, co_n = flip ? cin : cout;
    const int th = (h + 1) / 2, tw = (w + 1) / 2, tiles = th * tw, rb = group_size(tiles);
    const int groups = (tiles + rb - 1) / rb, mode = epi ? 2 : acc ? 1 : 0;
    const size_t usz = (size_t)16 * ci_n * co_n, per = (size_t)16 * rb * (ci_n + co_n);
    float *u = ws;
    pack(w_ohwi, cin, cout, flip, u);
#pragma omp parallel
    {
        int t = 0;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num();
#endif
        float *v = ws + usz + (size_t)t * per, *m = v + (size_t)16 * rb * ci_n;
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * h * w * ci_n;
            const size_t yoff = (size_t)i * h * w * co_n;
            float *yi = y + yoff;
            const float *ri = epi && epi->res ? epi->res + yoff : NULL;
            for (int g = 0; g < groups; g++) {
                for (int r = 0; r < rb; r++) {
                    const int tile = g * rb + r;
                    for (int cb = 0; cb < ci_n / 16; cb++) {
                        float *vt = v + (size_t)r * ci_n + cb * 16;
                        if (tile < tiles)
                            in_tile(xi + cb * 16, h, w, ci_n, tile / tw * 2 - 1, tile % tw * 2 - 1,
                                    vt, (size_t)rb * ci_n);
                        else
                            for (int p = 0; p < 16; p++)
                                _mm512_storeu_ps(vt + (size_t)p * rb * ci_n, _mm512_setzero_ps());
                    }
                }
                for (int p = 0; p < 16; p++) {
                    const float *vp = v + (size_t)p * rb * ci_n, *up = u + (size_t)p * ci_n * co_n;
                    float *mp = m + (size_t)p * rb * co_n;
                    if (rb == 14) gemm_14(vp, up, ci_n, co_n, mp);
                    else if (rb == 8) gemm_8(vp, up, ci_n, co_n, mp);
                    else gemm_7(vp, up, ci_n, co_n, mp);
                }
                for (int r = 0; r < rb && g * rb + r < tiles; r++) {
                    const int tile = g * rb + r;
                    for (int ob = 0; ob < co_n / 16; ob++) {
                        bl_epi16 e = {0};
                        if (epi) e = bl_epi16_load(epi, ob * 16);
                        out_tile(m + (size_t)r * co_n + ob * 16, (size_t)rb * co_n, yi + ob * 16,
                                 ri ? ri + ob * 16 : NULL, tile / tw * 2, tile % tw * 2, h, w,
                                 co_n, mode, &e);
                    }
                }
            }
        }
    }
}

#else /* no AVX-512 */
int bl_wino_supported(int cin, int cout, int k, int stride, int pad) { return 0; }
size_t bl_wino_ws_floats(int h, int w, int cin, int cout, int threads) { return 0; }
void bl_wino(const float *x, int n, int h, int w, int cin, int cout, const float *w_ohwi, int flip,
             float *y, int acc, const bl_conv_epi *epi, float *ws)
{
}
#endif
