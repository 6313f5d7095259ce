/* What the reference and fast kernels share: shape validation, the group checks that turn a
 * degenerate batch into an error instead of a NaN, and the reducer hooks (identity when local). */
#include "bn/kernels.h"

bl_status bl_shape_check(bl_shape s, const char *what)
{
    if (s.n < 0 || s.c < 1 || s.h < 1 || s.w < 1)
        return bl_fail(BL_ERR_ARG,
                       "%s: invalid shape (N=%d, C=%d, H=%d, W=%d): need N >= 0 and C, H, W >= 1",
                       what, s.n, s.c, s.h, s.w);
    if (s.layout != BL_NCHW && s.layout != BL_NHWC)
        return bl_fail(BL_ERR_ARG, "%s: unknown layout %d: use BL_NCHW or BL_NHWC", what,
                       (int)s.layout);
    return BL_OK;
}

bl_status bl_bn_check_groups(const bl_bn_kargs *a, const bl_moments *gm)
{
    int C = a->s.c;
    for (int j = 0; j < a->g->n_groups; j++) {
        double n = gm->n[(size_t)j * C];
        if (n == 1)
            return bl_fail(BL_ERR_NUMERIC,
                           "bn '%s': group %d of %d has a single value per channel (N*H*W = 1) "
                           "under batch statistics, so its variance is undefined: use a "
                           "normalization batch of at least 2 samples, or population statistics",
                           a->name, j, a->g->n_groups);
        for (int c = 0; c < C; c++) {
            double mu = gm->mean[(size_t)j * C + c], m2 = gm->m2[(size_t)j * C + c];
            if (n > 0 && !(isfinite(mu) && isfinite(m2)))
                return bl_fail(BL_ERR_NUMERIC,
                               "bn '%s': non-finite batch statistics in group %d, channel %d "
                               "(mean %g, M2 %g): the input holds NaN or Inf; check the data and "
                               "the layer before",
                               a->name, j, c, mu, m2);
        }
    }
    return BL_OK;
}

bl_status bl_bn_reduce_moments(const bl_groups *g, bl_moments *gm)
{
    if (!g->reducer || !g->reducer->merge_moments) return BL_OK;
    return g->reducer->merge_moments(g->reducer->ctx, gm);
}

bl_status bl_bn_reduce_sum(const bl_groups *g, double *buf, size_t n)
{
    if (!g->reducer || !g->reducer->sum) return BL_OK;
    return g->reducer->sum(g->reducer->ctx, buf, n);
}
