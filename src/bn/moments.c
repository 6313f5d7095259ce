/* Per-channel moments in double with the exact parallel merge.
 * Why (count, mean, M2) and not sums: merging sums of squares cancels catastrophically when the
 * mean is large against the spread; Chan's merge of (n, mean, M2) does not, and it is exact in
 * exact arithmetic for any split, empty parts included. */
#include "bnlab/bn.h"
#include "bn/kernels.h"

#include <math.h>
#include <string.h>

bl_status bl_moments_init(bl_moments *m, int k)
{
    memset(m, 0, sizeof *m);
    if (k < 0) return bl_fail(BL_ERR_ARG, "moments: negative entry count %d", k);
    double *buf = bl_calloc(3 * (size_t)(k ? k : 1) * sizeof(double));
    if (!buf) return BL_ERR_NOMEM;
    m->k = k;
    m->n = buf;
    m->mean = buf + k;
    m->m2 = buf + 2 * (size_t)k;
    return BL_OK;
}

void bl_moments_free(bl_moments *m)
{
    if (m->n) bl_free(m->n);
    memset(m, 0, sizeof *m);
}

void bl_moments_zero(bl_moments *m)
{
    if (m->n) memset(m->n, 0, 3 * (size_t)m->k * sizeof(double));
}

bl_status bl_moments_copy(bl_moments *dst, const bl_moments *src)
{
    if (dst->k != src->k) {
        bl_moments_free(dst);
        bl_status st = bl_moments_init(dst, src->k);
        if (st) return st;
    }
    memcpy(dst->n, src->n, 3 * (size_t)src->k * sizeof(double));
    return BL_OK;
}

void bl_moments_merge1(double *n, double *mean, double *m2, double nb, double meanb, double m2b)
{
    if (nb == 0) return;
    if (*n == 0) {
        *n = nb;
        *mean = meanb;
        *m2 = m2b;
        return;
    }
    double na = *n, nt = na + nb, d = meanb - *mean;
    *mean += d * (nb / nt);
    *m2 += m2b + d * d * (na * nb / nt);
    *n = nt;
}

bl_status bl_moments_merge(bl_moments *dst, const bl_moments *src)
{
    if (dst->k != src->k)
        return bl_fail(BL_ERR_ARG, "moments merge: %d entries into %d: sizes must match", src->k,
                       dst->k);
    for (int i = 0; i < src->k; i++)
        bl_moments_merge1(&dst->n[i], &dst->mean[i], &dst->m2[i], src->n[i], src->mean[i],
                          src->m2[i]);
    return BL_OK;
}

double bl_moments_var(const bl_moments *m, int i, int unbiased)
{
    double n = m->n[i];
    if (n <= 0 || (unbiased && n <= 1)) return NAN;
    return m->m2[i] / (unbiased ? n - 1 : n);
}

bl_status bl_moments_add(bl_moments *m, bl_shape s, const float *x)
{
    bl_status st = bl_shape_check(s, "moments");
    if (st) return st;
    if (m->k != s.c)
        return bl_fail(BL_ERR_ARG, "moments: %d entries but the data has %d channels", m->k, s.c);
    if (s.n == 0) return BL_OK;
    size_t nc = (size_t)s.n * s.c;
    double *mean = bl_alloc(2 * nc * sizeof(double));
    if (!mean) return BL_ERR_NOMEM;
    double *m2 = mean + nc;
    bl_fast_sample_moments(s, x, mean, m2);
    double hw = (double)bl_shape_hw(s);
    for (int i = 0; i < s.n; i++)
        for (int c = 0; c < s.c; c++)
            bl_moments_merge1(&m->n[c], &m->mean[c], &m->m2[c], hw, mean[(size_t)i * s.c + c],
                              m2[(size_t)i * s.c + c]);
    bl_free(mean);
    return BL_OK;
}
