/* Estimators of population statistics, fed by the group moments of one batch.
 * Both validate everything first and only then write: a refused batch changes nothing. */
#include "bnlab/bn.h"

#include <math.h>

const char *bl_estimator_name(bl_estimator e)
{
    switch (e) {
    case BL_EST_INIT: return "init";
    case BL_EST_EMA: return "ema";
    case BL_EST_CUMULATIVE: return "cumulative";
    case BL_EST_PRECISE: return "precise";
    case BL_EST_LOADED: return "loaded";
    }
    return "unknown";
}

/* The row (stats domain) a group's statistics belong to, or an error for a mixed group. */
static bl_status group_row(int rows, const int *group_domain, int j, int *row)
{
    *row = rows > 1 ? group_domain[j] : 0;
    if (*row < 0 || *row >= rows)
        return bl_fail(BL_ERR_ARG,
                       "group %d %s: per-domain statistics need groups split by domain "
                       "(bl_groups_make with split_by_domain = 1) and domain ids below %d",
                       j, *row < 0 ? "mixes domains" : "has a domain id out of range", rows);
    return BL_OK;
}

static bl_status check_batch(int rows, int c, const bl_moments *gm, const int *group_domain,
                             int n_groups, int need_unbiased)
{
    if (rows < 1 || c < 1 || gm->k != n_groups * c)
        return bl_fail(BL_ERR_ARG, "estimator: %d statistics for %d groups x %d channels", gm->k,
                       n_groups, c);
    for (int j = 0; j < n_groups; j++) {
        int row;
        if (gm->n[(size_t)j * c] == 0) continue; /* an empty group carries no information */
        bl_status st = group_row(rows, group_domain, j, &row);
        if (st) return st;
        if (need_unbiased && gm->n[(size_t)j * c] < 2)
            return bl_fail(BL_ERR_NUMERIC, "estimator: group %d has a single value per channel: "
                           "its unbiased variance is undefined", j);
        for (int k = j * c; k < (j + 1) * c; k++)
            if (!isfinite(gm->mean[k]) || !isfinite(gm->m2[k]))
                return bl_fail(BL_ERR_NUMERIC,
                               "estimator: batch statistics of group %d, channel %d are not "
                               "finite (mean %g, M2 %g): batch refused, nothing stored",
                               j, k - j * c, gm->mean[k], gm->m2[k]);
    }
    return BL_OK;
}

bl_status bl_ema_update(float *mean, float *var, int64_t *nbt, int rows, int c, double momentum,
                        const bl_moments *gm, const int *group_domain, int n_groups)
{
    bl_status st = check_batch(rows, c, gm, group_domain, n_groups, 1);
    if (st) return st;
    if (!(momentum == BL_BN_CUMULATIVE || (momentum >= 0 && momentum <= 1)))
        return bl_fail(BL_ERR_ARG, "EMA momentum %g: use a value in [0, 1] or BL_BN_CUMULATIVE",
                       momentum);
    for (int d = 0; d < rows; d++) {
        /* Keras' virtual-batch rule: one update from the mean over groups of their means and of
         * their unbiased variances (unweighted, also when the last ghost group is smaller). */
        int k = 0;
        for (int j = 0; j < n_groups; j++) {
            int row;
            if (gm->n[(size_t)j * c] == 0) continue;
            group_row(rows, group_domain, j, &row);
            k += row == d;
        }
        if (k == 0) continue; /* no sample of this domain in the batch: no update */
        nbt[d] += 1;
        double f = momentum == BL_BN_CUMULATIVE ? 1.0 / (double)nbt[d] : momentum;
        for (int ch = 0; ch < c; ch++) {
            double m = 0, v = 0;
            for (int j = 0; j < n_groups; j++) {
                int row;
                size_t e = (size_t)j * c + ch;
                if (gm->n[e] == 0) continue;
                group_row(rows, group_domain, j, &row);
                if (row != d) continue;
                m += gm->mean[e];
                v += gm->m2[e] / (gm->n[e] - 1);
            }
            size_t o = (size_t)d * c + ch;
            mean[o] = (float)((1 - f) * mean[o] + f * (m / k));
            var[o] = (float)((1 - f) * var[o] + f * (v / k));
        }
    }
    return BL_OK;
}

bl_status bl_pooled_update(bl_moments *pooled, int rows, int c, const bl_moments *gm,
                           const int *group_domain, int n_groups)
{
    bl_status st = check_batch(rows, c, gm, group_domain, n_groups, 0);
    if (st) return st;
    if (pooled->k != rows * c)
        return bl_fail(BL_ERR_ARG, "pooled estimator holds %d entries, need %d x %d", pooled->k,
                       rows, c);
    for (int j = 0; j < n_groups; j++) {
        int row;
        if (gm->n[(size_t)j * c] == 0) continue;
        group_row(rows, group_domain, j, &row);
        for (int ch = 0; ch < c; ch++) {
            size_t e = (size_t)j * c + ch, o = (size_t)row * c + ch;
            bl_moments_merge1(&pooled->n[o], &pooled->mean[o], &pooled->m2[o], gm->n[e],
                              gm->mean[e], gm->m2[e]);
        }
    }
    return BL_OK;
}
