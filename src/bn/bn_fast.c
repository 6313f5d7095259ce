/* The fast float BN kernels.
 * Every mode is "per sample, per channel, an affine map of x (and dy)" with coefficients from a
 * few per-(group, channel) statistics. So each kernel is:
 *   1. one streaming pass that reduces per sample and channel (double accumulators),
 *   2. a tiny combine in double over (sample, channel) in a fixed order (deterministic whatever the
 *      thread count or timing), the reducer hook, checks,
 *   3. one streaming pass that applies per-sample coefficient rows.
 * Memory traffic, in units of one tensor: train forward 3 (read x, read x + write y), backward 5
 * (read x, dy; read x, dy + write dx), population forward 2, population backward 3 (one fused pass).
 * Parallel over samples (NHWC) or (sample, channel) planes (NCHW) with OpenMP. The (x - mu) form is
 * kept instead of x*scale + shift so a large mean does not cancel digits away. */
#include "bn/kernels.h"

#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* ---- streaming stores -----------------------------------------------------------------------
 * An output larger than the caches is written with non-temporal stores: the line goes to memory
 * without first being read (one DRAM pass less per output, ~30% on the apply passes here). Used
 * only for tensors of at least stream_bytes (smaller ones are better left in cache for the next
 * layer), with runs of 16 floats on 64-byte aligned rows; otherwise the plain loops run. */
static int can_stream(bl_shape s, const void *out, size_t stream_bytes)
{
#ifdef __AVX512F__
    size_t run = s.layout == BL_NCHW ? bl_shape_hw(s) : (size_t)s.c;
    return bl_shape_numel(s) * sizeof(float) >= stream_bytes && run % 16 == 0 &&
           ((uintptr_t)out & 63) == 0;
#else
    (void)s, (void)out, (void)stream_bytes;
    return 0;
#endif
}

#ifdef __AVX512F__
/* A coefficient: 16 lanes of a row (NHWC) or one value broadcast (NCHW plane). */
static inline __m512 coef(const float *p, int bcast)
{
    return bcast ? _mm512_set1_ps(*p) : _mm512_loadu_ps(p);
}

/* y = (x - m) * a + b over n floats, streamed; returns sum(v - v) (0 unless NaN/Inf). */
static inline float affine_stream(const float *x, float *y, size_t n, const float *m,
                                  const float *a, const float *b, int bcast)
{
    __m512 z = _mm512_setzero_ps();
    for (size_t k = 0; k < n; k += 16) {
        size_t o = bcast ? 0 : k;
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k), coef(m + o, bcast)),
                                   coef(a + o, bcast), coef(b + o, bcast));
        _mm512_stream_ps(y + k, v);
        z = _mm512_add_ps(z, _mm512_sub_ps(v, v));
    }
    return _mm512_reduce_add_ps(z);
}

/* dx = k1 * dy + k2 * (x - m) + k3 over n floats, streamed. */
static inline void grad_stream(const float *x, const float *dy, float *dx, size_t n,
                               const float *m, const float *k1, const float *k2, const float *k3,
                               int bcast)
{
    for (size_t k = 0; k < n; k += 16) {
        size_t o = bcast ? 0 : k;
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + k), coef(m + o, bcast));
        __m512 v = _mm512_fmadd_ps(coef(k2 + o, bcast), d, coef(k3 + o, bcast));
        _mm512_stream_ps(dx + k, _mm512_fmadd_ps(coef(k1 + o, bcast), _mm512_loadu_ps(dy + k), v));
    }
}
#define STREAM_FENCE(on) do { if (on) _mm_sfence(); } while (0)
#else
#define STREAM_FENCE(on) ((void)(on))
static inline float affine_stream(const float *x, float *y, size_t n, const float *m,
                                  const float *a, const float *b, int bcast)
{
    return 0; /* never called: can_stream() is 0 without AVX-512 */
}
static inline void grad_stream(const float *x, const float *dy, float *dx, size_t n,
                               const float *m, const float *k1, const float *k2, const float *k3,
                               int bcast)
{
}
#endif

/* ---- pass 1 kernels ------------------------------------------------------------------------ */

/* Shifted sums: deviations from the first value of the plane/sample keep the sum of squares
 * well-conditioned (the shift is a value of the data, so within a few std of the mean). */
void bl_fast_sample_moments(bl_shape s, const float *x, double *mean, double *m2)
{
    const size_t hw = bl_shape_hw(s);
    const int C = s.c;
    const double inv = 1.0 / (double)hw;
    if (s.layout == BL_NCHW) {
        const long planes = (long)s.n * C;
#pragma omp parallel for schedule(static)
        for (long pl = 0; pl < planes; pl++) {
            const float *restrict xp = x + (size_t)pl * hw;
            const double k = xp[0];
            double sa = 0, sq = 0;
#pragma omp simd reduction(+ : sa, sq)
            for (size_t p = 0; p < hw; p++) {
                double d = (double)xp[p] - k;
                sa += d;
                sq += d * d;
            }
            mean[pl] = k + sa * inv;
            double v = sq - sa * sa * inv;
            m2[pl] = v > 0 ? v : 0;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < s.n; i++) {
        const float *restrict xi = x + (size_t)i * hw * C;
        double *restrict sa = mean + (size_t)i * C, *restrict sq = m2 + (size_t)i * C;
        memset(sa, 0, C * sizeof(double));
        memset(sq, 0, C * sizeof(double));
        /* four rows per step: a quarter of the accumulator loads and stores, four independent
         * chains of additions */
        size_t p = 0;
        for (; p + 4 <= hw; p += 4) {
            const float *restrict xr = xi + p * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                double k = xi[c];
                double d0 = (double)xr[c] - k, d1 = (double)xr[c + C] - k;
                double d2 = (double)xr[c + 2 * C] - k, d3 = (double)xr[c + 3 * C] - k;
                sa[c] += (d0 + d1) + (d2 + d3);
                sq[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            }
        }
        for (; p < hw; p++) {
            const float *restrict xr = xi + p * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                double d = (double)xr[c] - (double)xi[c];
                sa[c] += d;
                sq[c] += d * d;
            }
        }
        for (int c = 0; c < C; c++) {
            double v = sq[c] - sa[c] * sa[c] * inv;
            sa[c] = (double)xi[c] + sa[c] * inv;
            sq[c] = v > 0 ? v : 0;
        }
    }
}

/* Per sample and channel: sdy = sum dy, sdx = sum dy * (x - mu). mu: (N, C) rows. */
static void sample_grad_sums(bl_shape s, const float *x, const float *dy, const float *mu,
                             double *sdy, double *sdx)
{
    const size_t hw = bl_shape_hw(s);
    const int C = s.c;
    if (s.layout == BL_NCHW) {
        const long planes = (long)s.n * C;
#pragma omp parallel for schedule(static)
        for (long pl = 0; pl < planes; pl++) {
            const float *restrict xp = x + (size_t)pl * hw, *restrict gp = dy + (size_t)pl * hw;
            const float m = mu[pl];
            double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
            for (size_t p = 0; p < hw; p++) {
                a += gp[p];
                b += (double)(gp[p] * (xp[p] - m));
            }
            sdy[pl] = a;
            sdx[pl] = b;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < s.n; i++) {
        const float *restrict xi = x + (size_t)i * hw * C, *restrict gi = dy + (size_t)i * hw * C;
        const float *restrict m = mu + (size_t)i * C;
        double *restrict a = sdy + (size_t)i * C, *restrict b = sdx + (size_t)i * C;
        memset(a, 0, C * sizeof(double));
        memset(b, 0, C * sizeof(double));
        for (size_t p = 0; p < hw; p++) {
            const float *restrict xr = xi + p * C, *restrict gr = gi + p * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                a[c] += gr[c];
                b[c] += (double)(gr[c] * (xr[c] - m[c]));
            }
        }
    }
}

/* ---- pass 3 kernels ------------------------------------------------------------------------ */

/* y = (x - mu) * sc + bt with (N, C) rows. Returns the first sample whose output is not finite
 * (-1 when all are): the check rides on the pass for free since the pass is memory-bound. */
static int apply_affine(bl_shape s, const float *x, const float *mu, const float *sc,
                        const float *bt, float *y, float *bad, size_t stream_bytes)
{
    const size_t hw = bl_shape_hw(s);
    const int C = s.c, st = can_stream(s, y, stream_bytes);
    if (s.layout == BL_NCHW) {
        const long planes = (long)s.n * C;
#pragma omp parallel
        {
#pragma omp for schedule(static)
            for (long pl = 0; pl < planes; pl++) {
                const float *xp = x + (size_t)pl * hw;
                float *yp = y + (size_t)pl * hw;
                const float m = mu[pl], a = sc[pl], b = bt[pl];
                float z = 0;
                if (st) {
                    z = affine_stream(xp, yp, hw, &m, &a, &b, 1);
                } else {
#pragma omp simd reduction(+ : z)
                    for (size_t p = 0; p < hw; p++) {
                        float v = (xp[p] - m) * a + b;
                        yp[p] = v;
                        z += v - v; /* 0 unless v is NaN or Inf */
                    }
                }
                bad[pl] = z;
            }
            STREAM_FENCE(st);
        }
    } else {
#pragma omp parallel
        {
#pragma omp for schedule(static)
            for (int i = 0; i < s.n; i++) {
                const float *xi = x + (size_t)i * hw * C;
                float *yi = y + (size_t)i * hw * C;
                const float *restrict m = mu + (size_t)i * C, *restrict a = sc + (size_t)i * C,
                                      *restrict b = bt + (size_t)i * C;
                /* the non-finite check per channel in the sample's row of bad: a scalar sum would
                 * end every pixel's short channel loop with a horizontal reduction */
                float *restrict z = bad + (size_t)i * C;
                for (int c = 0; c < C; c++) z[c] = 0;
                for (size_t p = 0; p < hw; p++) {
                    const float *xr = xi + p * C;
                    float *yr = yi + p * C;
                    if (st) {
                        z[0] += affine_stream(xr, yr, C, m, a, b, 0);
                        continue;
                    }
#pragma omp simd
                    for (int c = 0; c < C; c++) {
                        float v = (xr[c] - m[c]) * a[c] + b[c];
                        yr[c] = v;
                        z[c] += v - v;
                    }
                }
            }
            STREAM_FENCE(st);
        }
    }
    for (size_t k = 0; k < (size_t)s.n * C; k++)
        if (bad[k] != 0) return (int)(k / C); /* NaN != 0 too */
    return -1;
}

/* dx = k1 * dy + k2 * (x - mu) + k3 with (N, C) rows. */
static void apply_grad(bl_shape s, const float *x, const float *dy, const float *mu,
                       const float *k1, const float *k2, const float *k3, float *dx,
                       size_t stream_bytes)
{
    const size_t hw = bl_shape_hw(s);
    const int C = s.c, st = can_stream(s, dx, stream_bytes);
    if (s.layout == BL_NCHW) {
        const long planes = (long)s.n * C;
#pragma omp parallel
        {
#pragma omp for schedule(static)
            for (long pl = 0; pl < planes; pl++) {
                const float *xp = x + (size_t)pl * hw, *gp = dy + (size_t)pl * hw;
                float *op = dx + (size_t)pl * hw;
                const float m = mu[pl], a = k1[pl], b = k2[pl], c3 = k3[pl];
                if (st) {
                    grad_stream(xp, gp, op, hw, &m, &a, &b, &c3, 1);
                    continue;
                }
#pragma omp simd
                for (size_t p = 0; p < hw; p++) op[p] = a * gp[p] + b * (xp[p] - m) + c3;
            }
            STREAM_FENCE(st);
        }
        return;
    }
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int i = 0; i < s.n; i++) {
            size_t off = (size_t)i * hw * C;
            const float *restrict m = mu + (size_t)i * C, *restrict a = k1 + (size_t)i * C,
                                  *restrict b = k2 + (size_t)i * C, *restrict c3 = k3 + (size_t)i * C;
            for (size_t p = 0; p < hw; p++) {
                const float *xr = x + off + p * C, *gr = dy + off + p * C;
                float *orow = dx + off + p * C;
                if (st) {
                    grad_stream(xr, gr, orow, C, m, a, b, c3, 0);
                    continue;
                }
#pragma omp simd
                for (int c = 0; c < C; c++) orow[c] = a[c] * gr[c] + b[c] * (xr[c] - m[c]) + c3[c];
            }
        }
        STREAM_FENCE(st);
    }
}

/* Population backward in one fused pass: dx = k1 * dy, and the sums for dgamma, dbeta. */
static void pop_grad_fused(bl_shape s, const float *x, const float *dy, const float *mu,
                           const float *k1, float *dx, double *sdy, double *sdx)
{
    const size_t hw = bl_shape_hw(s);
    const int C = s.c;
    if (s.layout == BL_NCHW) {
        const long planes = (long)s.n * C;
#pragma omp parallel for schedule(static)
        for (long pl = 0; pl < planes; pl++) {
            const float *xp = x + (size_t)pl * hw, *gp = dy + (size_t)pl * hw;
            float *op = dx + (size_t)pl * hw;
            const float m = mu[pl], a = k1[pl];
            double sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
            for (size_t p = 0; p < hw; p++) {
                float g = gp[p];
                sa += g;
                sb += (double)(g * (xp[p] - m));
                op[p] = a * g;
            }
            sdy[pl] = sa;
            sdx[pl] = sb;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < s.n; i++) {
        size_t off = (size_t)i * hw * C;
        const float *restrict m = mu + (size_t)i * C, *restrict a = k1 + (size_t)i * C;
        double *restrict sa = sdy + (size_t)i * C, *restrict sb = sdx + (size_t)i * C;
        memset(sa, 0, C * sizeof(double));
        memset(sb, 0, C * sizeof(double));
        for (size_t p = 0; p < hw; p++) {
            const float *xr = x + off + p * C, *gr = dy + off + p * C;
            float *orow = dx + off + p * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float g = gr[c];
                sa[c] += g;
                sb[c] += (double)(g * (xr[c] - m[c]));
                orow[c] = a[c] * g;
            }
        }
    }
}

/* ---- the four operations ------------------------------------------------------------------- */

static bl_status non_finite(const bl_bn_kargs *a, int sample, const char *what)
{
    return bl_fail(BL_ERR_NUMERIC, "bn '%s': %s of sample %d holds NaN or Inf: check the data and "
                   "the layer before", a->name, what, sample);
}

/* 1 / sqrt(var + eps) of every (group, channel), once per call instead of per sample. Empty groups
 * (no sample refers to them) get 0. */
static void group_rstd(const bl_bn_kargs *a, const bl_moments *gm, double *rstd)
{
    for (int k = 0; k < gm->k; k++)
        rstd[k] = gm->n[k] > 0 ? bl_rstd(gm->m2[k] / gm->n[k], a->eps) : 0;
}

bl_status bl_bn_fast_fwd_batch(const bl_bn_kargs *a, const float *x, const float *gamma,
                               const float *beta, float *y, bl_moments *gm)
{
    const int N = a->s.n, C = a->s.c;
    const size_t nc = (size_t)N * C;
    const size_t gc = (size_t)a->g->n_groups * C;
    char *ws = bl_scratch_get(a->ws, (2 * nc + gc) * sizeof(double) + 4 * nc * sizeof(float) + 64);
    if (!ws) return BL_ERR_NOMEM;
    double *smean = (double *)ws, *sm2 = smean + nc, *grs = sm2 + nc;
    float *mu = (float *)(grs + gc), *sc = mu + nc, *bt = sc + nc, *bad = bt + nc;

    bl_fast_sample_moments(a->s, x, smean, sm2);
    bl_moments_zero(gm);
    const double hw = (double)bl_shape_hw(a->s);
    /* parallel over channels, each merging its samples in order: the serial loop's result */
#pragma omp parallel for schedule(static) if (nc >= 4096)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < N; i++) {
            size_t j = (size_t)a->g->sample_group[i] * C;
            bl_moments_merge1(&gm->n[j + c], &gm->mean[j + c], &gm->m2[j + c], hw,
                              smean[(size_t)i * C + c], sm2[(size_t)i * C + c]);
        }
    bl_status st = bl_bn_reduce_moments(a->g, gm);
    if (!st) st = bl_bn_check_groups(a, gm);
    if (st) return st;
    group_rstd(a, gm, grs);
#pragma omp parallel for schedule(static) if (nc >= 4096)
    for (int i = 0; i < N; i++) {
        size_t j = (size_t)a->g->sample_group[i] * C, r = (size_t)bl_affine_row(a, i) * C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            mu[k] = (float)gm->mean[j + c];
            sc[k] = (float)(gamma[r + c] * grs[j + c]);
            bt[k] = beta[r + c];
        }
    }
    int b = apply_affine(a->s, x, mu, sc, bt, y, bad, a->stream_bytes);
    return b < 0 ? BL_OK : non_finite(a, b, "the output (gamma or beta may be non-finite)");
}

bl_status bl_bn_fast_bwd_batch(const bl_bn_kargs *a, const float *x, const float *dy,
                               const float *gamma, const bl_moments *gm, float *dx, float *dgamma,
                               float *dbeta)
{
    const int N = a->s.n, C = a->s.c, G = a->g->n_groups, A = a->affine_rows;
    const size_t nc = (size_t)N * C, gc = (size_t)G * C, ac = (size_t)A * C;
    char *ws = bl_scratch_get(a->ws, (2 * nc + 3 * gc + 2 * ac) * sizeof(double) +
                                         4 * nc * sizeof(float) + 64);
    if (!ws) return BL_ERR_NOMEM;
    double *sdy = (double *)ws, *sdx = sdy + nc, *s1 = sdx + nc, *s2 = s1 + gc, *dg = s2 + gc,
           *db = dg + ac, *grs = db + ac;
    float *mu = (float *)(grs + gc), *k1 = mu + nc, *k2 = k1 + nc, *k3 = k2 + nc;

    group_rstd(a, gm, grs);
    for (int i = 0; i < N; i++) {
        size_t j = (size_t)a->g->sample_group[i] * C;
        for (int c = 0; c < C; c++) mu[(size_t)i * C + c] = (float)gm->mean[j + c];
    }
    sample_grad_sums(a->s, x, dy, mu, sdy, sdx);
    memset(s1, 0, (2 * gc + 2 * ac) * sizeof(double));
    /* parallel over channels, samples in order within each: the serial loop's sums */
#pragma omp parallel for schedule(static) if (nc >= 4096)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < N; i++) {
            size_t j = (size_t)a->g->sample_group[i] * C, r = (size_t)bl_affine_row(a, i) * C;
            size_t k = (size_t)i * C + c;
            double sxh = sdx[k] * grs[j + c]; /* sum dy * xhat of this sample */
            db[r + c] += sdy[k];
            dg[r + c] += sxh;
            s1[j + c] += gamma[r + c] * sdy[k];
            s2[j + c] += gamma[r + c] * sxh;
        }
    bl_status st = bl_bn_reduce_sum(a->g, s1, 2 * gc);
    for (size_t k = 0; !st && k < 2 * gc; k++)
        if (!isfinite(s1[k]))
            st = bl_fail(BL_ERR_NUMERIC,
                         "bn '%s': the gradient arriving in backward holds NaN or Inf", a->name);
    if (st) return st;
#pragma omp parallel for schedule(static) if (nc >= 4096)
    for (int i = 0; i < N; i++) {
        size_t j = (size_t)a->g->sample_group[i] * C, r = (size_t)bl_affine_row(a, i) * C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            double n = gm->n[j + c], rstd = grs[j + c];
            k1[k] = (float)(gamma[r + c] * rstd);
            k2[k] = (float)(-rstd * rstd * s2[j + c] / n);
            k3[k] = (float)(-rstd * s1[j + c] / n);
        }
    }
    apply_grad(a->s, x, dy, mu, k1, k2, k3, dx, a->stream_bytes);
    for (size_t k = 0; k < ac; k++) {
        dgamma[k] += (float)dg[k];
        dbeta[k] += (float)db[k];
    }
    return BL_OK;
}

bl_status bl_bn_fast_fwd_pop(const bl_bn_kargs *a, const float *x, const float *gamma,
                             const float *beta, const float *mean, const float *var, float *y)
{
    const int N = a->s.n, C = a->s.c;
    const size_t nc = (size_t)N * C;
    float *mu = bl_scratch_get(a->ws, 4 * nc * sizeof(float) + 64);
    if (!mu) return BL_ERR_NOMEM;
    float *sc = mu + nc, *bt = sc + nc, *bad = bt + nc;
    for (int i = 0; i < N; i++) {
        size_t r = (size_t)bl_affine_row(a, i) * C, q = (size_t)bl_stats_row(a, i) * C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            mu[k] = mean[q + c];
            sc[k] = (float)(gamma[r + c] * bl_rstd(var[q + c], a->eps));
            bt[k] = beta[r + c];
        }
    }
    int b = apply_affine(a->s, x, mu, sc, bt, y, bad, a->stream_bytes);
    return b < 0 ? BL_OK : non_finite(a, b, "the input");
}

bl_status bl_bn_fast_bwd_pop(const bl_bn_kargs *a, const float *x, const float *dy,
                             const float *gamma, const float *mean, const float *var, float *dx,
                             float *dgamma, float *dbeta)
{
    const int N = a->s.n, C = a->s.c, A = a->affine_rows;
    const size_t nc = (size_t)N * C, ac = (size_t)A * C;
    char *ws = bl_scratch_get(a->ws, (2 * nc + 2 * ac) * sizeof(double) + 3 * nc * sizeof(float));
    if (!ws) return BL_ERR_NOMEM;
    double *sdy = (double *)ws, *sdx = sdy + nc, *dg = sdx + nc, *db = dg + ac;
    float *mu = (float *)(db + ac), *k1 = mu + nc, *rs = k1 + nc;
    for (int i = 0; i < N; i++) {
        size_t r = (size_t)bl_affine_row(a, i) * C, q = (size_t)bl_stats_row(a, i) * C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            double rstd = bl_rstd(var[q + c], a->eps);
            mu[k] = mean[q + c];
            rs[k] = (float)rstd;
            k1[k] = (float)(gamma[r + c] * rstd);
        }
    }
    pop_grad_fused(a->s, x, dy, mu, k1, dx, sdy, sdx);
    memset(dg, 0, 2 * ac * sizeof(double));
    for (int i = 0; i < N; i++) {
        size_t r = (size_t)bl_affine_row(a, i) * C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            db[r + c] += sdy[k];
            dg[r + c] += sdx[k] * rs[k];
        }
    }
    for (size_t k = 0; k < ac; k++)
        if (!isfinite(dg[k]) || !isfinite(db[k]))
            return bl_fail(BL_ERR_NUMERIC,
                           "bn '%s': the gradient arriving in backward holds NaN or Inf", a->name);
    for (size_t k = 0; k < ac; k++) {
        dgamma[k] += (float)dg[k];
        dbeta[k] += (float)db[k];
    }
    return BL_OK;
}

const bl_bn_kernels bl_bn_kernels_fast = {bl_bn_fast_fwd_batch, bl_bn_fast_bwd_batch,
                                          bl_bn_fast_fwd_pop, bl_bn_fast_bwd_pop};
