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

/* u: [pos][cout/16][ci][16] = G g G^T for each (co, ci); flip as bl_conv3x3_pack. Called inside
 * the kernel's parallel region: the threads share the output channels, and the loop's end is a
 * barrier. */
static void pack(const float *w_ohwi, int cin, int cout, int flip, float *u)
{
    const int ci_n = flip ? cout : cin, co_n = flip ? cin : cout;
#pragma omp for schedule(static)
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
#pragma omp parallel
    {
        int t = 0;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num();
#endif
        pack(w_ohwi, cin, cout, flip, u);
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

/* ---- the weight gradient in the Winograd domain ----------------------------------------------
 * With M = U .* V and Y = A^T M A for each tile, the gradient of the transformed weights is
 * dU = sum over tiles of (A dY A^T) .* V, and that of the weights dW = G^T dU G. So per position p
 * dU[p] (cin x cout) = V[p]^T dM[p], a product whose long dimension is the tiles: 16 products per
 * tile and channel pair instead of the direct kernel's 36 per 2x2 outputs. A thread transforms a
 * chunk of its samples' tiles (V from x, dM from dy), then for each position and 16 x 16 channel
 * block gathers over the chunk's tiles with 16 accumulators in registers (one dM vector feeds 16
 * FMAs). Each thread owns a contiguous share of the samples and a private dU; the shares are
 * summed in thread order and transformed back, so the result is the same every run for a given
 * thread count. */

/* Samples per chunk: enough tiles that the accumulators' load and store are paid over >= 64
 * tiles, few enough that a position's V and dM stay in L2. */
static int dw_chunk(int tiles)
{
    const int c = (127 + tiles) / tiles; /* about 128 tiles */
    return tiles >= 64 ? 1 : c > 8 ? 8 : c;
}

size_t bl_wino_dw_ws_floats(int h, int w, int cin, int cout, int threads)
{
    const int tiles = ((h + 1) / 2) * ((w + 1) / 2), tc = tiles * dw_chunk(tiles);
    return (size_t)threads * ((size_t)16 * cin * cout + (size_t)16 * tc * (cin + cout));
}

/* dM = A dY A^T of one tile, 16 channels: the 2x2 output gradient at (oy, ox) of the h x w map
 * gy (pixel step cout floats; outputs outside the map have none). m: position p at m[p * mpos]. */
static inline __attribute__((always_inline)) void dy_tile(const float *gy, int h, int w, int cout,
                                                          int oy, int ox, float *m, size_t mpos)
{
    __m512 g[2][2], r[4][2];
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++)
            g[y][x] = oy + y < h && ox + x < w
                          ? _mm512_loadu_ps(gy + ((size_t)(oy + y) * w + ox + x) * cout)
                          : _mm512_setzero_ps();
    for (int x = 0; x < 2; x++) {
        r[0][x] = g[0][x];
        r[1][x] = _mm512_add_ps(g[0][x], g[1][x]);
        r[2][x] = _mm512_sub_ps(g[0][x], g[1][x]);
        r[3][x] = _mm512_sub_ps(_mm512_setzero_ps(), g[1][x]);
    }
    for (int y = 0; y < 4; y++) {
        _mm512_storeu_ps(m + (size_t)(4 * y + 0) * mpos, r[y][0]);
        _mm512_storeu_ps(m + (size_t)(4 * y + 1) * mpos, _mm512_add_ps(r[y][0], r[y][1]));
        _mm512_storeu_ps(m + (size_t)(4 * y + 2) * mpos, _mm512_sub_ps(r[y][0], r[y][1]));
        _mm512_storeu_ps(m + (size_t)(4 * y + 3) * mpos, _mm512_sub_ps(_mm512_setzero_ps(), r[y][1]));
    }
}

/* du[p][ci][co] += sum over the chunk's tc tiles of v[p][t][ci] dm[p][t][co] */
static void dw_gemm(const float *v, const float *dm, int tc, int cin, int cout, float *du)
{
    for (int p = 0; p < 16; p++) {
        const float *vp = v + (size_t)p * tc * cin, *mp = dm + (size_t)p * tc * cout;
        float *dp = du + (size_t)p * cin * cout;
        for (int ob = 0; ob < cout / 16; ob++)
            for (int cb = 0; cb < cin / 16; cb++) {
                float *d = dp + (size_t)cb * 16 * cout + ob * 16;
                __m512 a[16];
                for (int c = 0; c < 16; c++) a[c] = _mm512_loadu_ps(d + (size_t)c * cout);
                const float *vt = vp + cb * 16, *mt = mp + ob * 16;
                for (int t = 0; t < tc; t++) {
                    const __m512 g = _mm512_loadu_ps(mt + (size_t)t * cout);
                    const float *xv = vt + (size_t)t * cin;
                    for (int c = 0; c < 16; c++)
                        a[c] = _mm512_fmadd_ps(_mm512_set1_ps(xv[c]), g, a[c]);
                }
                for (int c = 0; c < 16; c++) _mm512_storeu_ps(d + (size_t)c * cout, a[c]);
            }
    }
}

void bl_wino_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                float *dw_ohwi, float *ws)
{
    const int th = (h + 1) / 2, tw = (w + 1) / 2, tiles = th * tw, cs = dw_chunk(tiles);
    const int tc = tiles * cs;
    const size_t dusz = (size_t)16 * cin * cout,
                 per = dusz + (size_t)16 * tc * (cin + cout);
#pragma omp parallel
    {
        int t = 0, tn = 1;
#ifdef BL_HAVE_OPENMP
        t = omp_get_thread_num(), tn = omp_get_num_threads();
#endif
        float *du = ws + (size_t)t * per, *v = du + dusz, *dm = v + (size_t)16 * tc * cin;
        memset(du, 0, dusz * sizeof(float));
        /* this thread's contiguous share of the samples, in chunks of cs */
        const int i0 = (int)((long)n * t / tn), i1 = (int)((long)n * (t + 1) / tn);
        for (int c0 = i0; c0 < i1; c0 += cs) {
            const int m = i1 - c0 < cs ? i1 - c0 : cs, used = m * tiles;
            for (int s = 0; s < m; s++) {
                const float *xi = x + (size_t)(c0 + s) * h * w * cin;
                const float *gi = dy + (size_t)(c0 + s) * h * w * cout;
                for (int tile = 0; tile < tiles; tile++) {
                    const int r = s * tiles + tile, ty = tile / tw * 2, tx = tile % tw * 2;
                    for (int cb = 0; cb < cin / 16; cb++)
                        in_tile(xi + cb * 16, h, w, cin, ty - 1, tx - 1,
                                v + (size_t)r * cin + cb * 16, (size_t)used * cin);
                    for (int ob = 0; ob < cout / 16; ob++)
                        dy_tile(gi + ob * 16, h, w, cout, ty, tx, dm + (size_t)r * cout + ob * 16,
                                (size_t)used * cout);
                }
            }
            dw_gemm(v, dm, used, cin, cout, du);
        }
#pragma omp barrier
        /* the shares summed in thread order, then dW = G^T dU G, in parallel over input
         * channels (each dW element written by one thread) */
#pragma omp for schedule(static)
        for (int ci = 0; ci < cin; ci++)
            for (int ob = 0; ob < cout / 16; ob++) {
                __m512 q[16];
                for (int p = 0; p < 16; p++) {
                    const size_t at = ((size_t)p * cin + ci) * cout + ob * 16;
                    q[p] = _mm512_loadu_ps(ws + at);
                    for (int k = 1; k < tn; k++)
                        q[p] = _mm512_add_ps(q[p], _mm512_loadu_ps(ws + (size_t)k * per + at));
                }
                const __m512 hf = _mm512_set1_ps(0.5f);
                __m512 tr[3][4], r[3][3];
                for (int x = 0; x < 4; x++) {
                    const __m512 u0 = q[x], u1 = q[4 + x], u2 = q[8 + x], u3 = q[12 + x];
                    tr[0][x] = _mm512_add_ps(u0, _mm512_mul_ps(hf, _mm512_add_ps(u1, u2)));
                    tr[1][x] = _mm512_mul_ps(hf, _mm512_sub_ps(u1, u2));
                    tr[2][x] = _mm512_add_ps(_mm512_mul_ps(hf, _mm512_add_ps(u1, u2)), u3);
                }
                for (int y = 0; y < 3; y++) {
                    const __m512 s12 = _mm512_mul_ps(hf, _mm512_add_ps(tr[y][1], tr[y][2]));
                    r[y][0] = _mm512_add_ps(tr[y][0], s12);
                    r[y][1] = _mm512_mul_ps(hf, _mm512_sub_ps(tr[y][1], tr[y][2]));
                    r[y][2] = _mm512_add_ps(s12, tr[y][3]);
                }
                float o[9][16];
                for (int k = 0; k < 9; k++) _mm512_storeu_ps(o[k], r[k / 3][k % 3]);
                for (int j = 0; j < 16; j++)
                    for (int k = 0; k < 9; k++)
                        dw_ohwi[((size_t)(ob * 16 + j) * 9 + k) * cin + ci] += o[k][j];
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
size_t bl_wino_dw_ws_floats(int h, int w, int cin, int cout, int threads) { return 0; }
void bl_wino_dw(const float *x, const float *dy, int n, int h, int w, int cin, int cout,
                float *dw_ohwi, float *ws)
{
}
#endif
