/* Parts: several tensors normalized by one BN layer (bn.h, "parts"). The merged batch mode is BN
 * over the parts' concatenation without building it:
 *   forward:  each part's moments with the normal kernel (bl_moments_add), merged exactly (Chan et
 *             al.); every part normalized by the population kernel with the merged mean and
 *             biased variance;
 *   backward: the population kernel gives gamma * rstd * dy and each part's sums of dy and dy *
 *             xhat (its dbeta and dgamma); summed over parts, they make the batch-statistics term
 *             dx -= rstd / N * (sum(dxhat) + xhat * sum(dxhat * xhat)), dxhat = gamma_part * dy,
 *             N the values per channel over all parts (docs/bn-backward.md, one group). */
#include "bn/kernels.h"

#include <string.h>

bl_status bl_bn_parts_init(bl_bn_parts *p, int n, bl_bn **part, bl_bn *pool)
{
    memset(p, 0, sizeof *p);
    if (n < 1 || n > BL_BN_PARTS_MAX || !part || !pool)
        return bl_fail(BL_ERR_ARG, "bn parts: %d parts: use 1..%d, each with a core, and a pool",
                       n, BL_BN_PARTS_MAX);
    const int C = pool->cfg.channels;
    for (int k = 0; k < n; k++)
        if (!part[k] || part[k]->cfg.channels != C || part[k]->cfg.eps != pool->cfg.eps ||
            part[k]->cfg.affine_domains != 1 || part[k]->cfg.stats_domains != 1)
            return bl_fail(BL_ERR_ARG, "bn parts '%s': part %d must have %d channels, the pool's "
                           "eps and one row of parameters and statistics", pool->name, k, C);
    p->n = n;
    p->part = part;
    p->pool = pool;
    p->mu = bl_alloc((size_t)C * 2 * sizeof(double));
    p->fmu = bl_alloc((size_t)C * 2 * sizeof(float));
    if (!p->mu || !p->fmu) {
        bl_bn_parts_free(p);
        return bl_fail(BL_ERR_NOMEM, "bn parts '%s': out of memory", pool->name);
    }
    p->rstd = p->mu + C;
    p->fvar = p->fmu + C;
    return BL_OK;
}

void bl_bn_parts_free(bl_bn_parts *p)
{
    bl_free(p->mu);
    bl_free(p->fmu);
    memset(p, 0, sizeof *p);
}

/* Makes m the core's pending batch statistics (one group), as its own batch forward would. */
static bl_status set_pending(bl_bn *bn, const bl_moments *m, bl_shape s)
{
    bl_status st = bl_bn_batch_room(bn, 1);
    if (st) return st;
    memcpy(bn->batch.n, m->n, sizeof(double) * (size_t)m->k);
    memcpy(bn->batch.mean, m->mean, sizeof(double) * (size_t)m->k);
    memcpy(bn->batch.m2, m->m2, sizeof(double) * (size_t)m->k);
    bn->batch_group_domain[0] = 0;
    bn->batch_groups = 1;
    bn->pending = 1;
    bn->last_mode = BL_BN_BATCH;
    bn->last_shape = s;
    return BL_OK;
}

/* The whole-batch descriptor of a core for n samples. */
static bl_status whole(bl_bn *bn, int n, const bl_groups **g)
{
    return bl_bn_resolve_groups(bn, NULL, n, g);
}

static bl_status check_parts(const bl_bn_parts *p, const bl_shape *s)
{
    for (int k = 0; k < p->n; k++) {
        bl_status st = bl_shape_check(s[k], p->part[k]->name);
        if (st) return st;
        if (s[k].c != p->pool->cfg.channels || s[k].n != s[0].n || s[k].layout != s[0].layout)
            return bl_fail(BL_ERR_ARG, "bn '%s': part %d is (%d, %d) in its layout, part 0 (%d, "
                           "%d): the parts must share N, C and the layout", p->pool->name, k,
                           s[k].n, s[k].c, s[0].n, s[0].c);
    }
    return BL_OK;
}

static bl_status merged_forward(bl_bn_parts *p, const bl_shape *s, const float *const *x,
                                float *const *y)
{
    const int C = p->pool->cfg.channels;
    bl_moments own = {0}, all = {0};
    bl_status st = bl_moments_init(&own, C);
    if (!st) st = bl_moments_init(&all, C);
    for (int k = 0; k < p->n && !st; k++) {
        bl_moments_zero(&own);
        if (!(st = bl_moments_add(&own, s[k], x[k])) && !(st = bl_moments_merge(&all, &own)))
            st = set_pending(p->part[k], &own, s[k]);
    }
    for (int c = 0; c < C && !st; c++) {
        if (all.n[c] > 0 && all.n[c] < 2)
            st = bl_fail(BL_ERR_NUMERIC, "bn '%s': one value per channel over all parts: batch "
                         "statistics need at least two", p->pool->name);
        else if (!isfinite(all.mean[c]) || !isfinite(all.m2[c]))
            st = bl_fail(BL_ERR_NUMERIC, "bn '%s': the merged batch statistics of channel %d are "
                         "not finite (mean %g)", p->pool->name, c, all.mean[c]);
        if (st) break;
        p->fmu[c] = (float)all.mean[c];
        p->mu[c] = p->fmu[c]; /* the kernel's mean, so forward and backward agree */
        p->fvar[c] = (float)(all.n[c] > 0 ? all.m2[c] / all.n[c] : 1.0);
        p->rstd[c] = bl_rstd(p->fvar[c], p->pool->cfg.eps); /* what the kernel uses */
    }
    if (!st) st = set_pending(p->pool, &all, s[0]);
    for (int k = 0; k < p->n && !st; k++) {
        bl_bn *b = p->part[k];
        const bl_groups *g;
        if ((st = whole(b, s[k].n, &g))) break;
        bl_bn_kargs a = bl_bn_kargs_of(b, s[k], g);
        st = bl_bn_kernels_of(b)->fwd_pop(&a, x[k], b->gamma, b->beta, p->fmu, p->fvar, y[k]);
    }
    bl_moments_free(&own);
    bl_moments_free(&all);
    return st;
}

bl_status bl_bn_parts_forward(bl_bn_parts *p, bl_bn_mode mode, int merged, const bl_groups *g,
                              const bl_shape *s, const float *const *x, float *const *y)
{
    bl_status st = check_parts(p, s);
    if (st) return st;
    p->merged = -1; /* no valid forward until this one succeeds */
    for (int k = 0; k < p->n; k++) p->part[k]->pending = 0, p->part[k]->last_shape.c = 0;
    p->pool->pending = 0;
    if (mode == BL_BN_BATCH && merged && g && (g->n_groups != 1 || g->reducer))
        return bl_fail(BL_ERR_ARG, "bn '%s': statistics merged over the parts need the whole "
                       "batch as one group (got %d groups%s)", p->pool->name, g->n_groups,
                       g->reducer ? " across processes" : "");
    if (mode == BL_BN_BATCH && merged) {
        st = merged_forward(p, s, x, y);
    } else if (mode == BL_BN_BATCH) {
        bl_moments all = {0};
        st = bl_moments_init(&all, p->pool->cfg.channels);
        const int C = p->pool->cfg.channels;
        for (int k = 0; k < p->n && !st; k++) {
            if ((st = bl_bn_forward(p->part[k], mode, g, s[k], x[k], y[k]))) break;
            const bl_moments *m = &p->part[k]->batch; /* (groups x C): pooled over groups too */
            for (int e = 0; e < m->k; e++)
                bl_moments_merge1(&all.n[e % C], &all.mean[e % C], &all.m2[e % C], m->n[e],
                                  m->mean[e], m->m2[e]);
        }
        if (!st) st = set_pending(p->pool, &all, s[0]);
        bl_moments_free(&all);
    } else if (mode == BL_BN_POPULATION && !merged) {
        for (int k = 0; k < p->n && !st; k++)
            st = bl_bn_forward(p->part[k], mode, g, s[k], x[k], y[k]);
    } else if (mode == BL_BN_POPULATION) {
        st = bl_bn_check_population(p->pool);
        for (int k = 0; k < p->n && !st; k++) {
            bl_bn *b = p->part[k];
            const bl_groups *w;
            if ((st = whole(b, s[k].n, &w))) break;
            bl_bn_kargs a = bl_bn_kargs_of(b, s[k], w);
            st = bl_bn_kernels_of(b)->fwd_pop(&a, x[k], b->gamma, b->beta, p->pool->pop_mean,
                                              p->pool->pop_var, y[k]);
            b->last_mode = mode, b->last_shape = s[k];
        }
    } else {
        return bl_fail(BL_ERR_ARG, "bn '%s': unknown mode %d", p->pool->name, (int)mode);
    }
    if (st) {
        for (int k = 0; k < p->n; k++) p->part[k]->pending = 0;
        p->pool->pending = 0;
        return st;
    }
    p->merged = merged;
    p->mode = mode;
    for (int k = 0; k < p->n; k++) p->s[k] = s[k];
    return BL_OK;
}

/* dx -= rstd / N * (s1 + xhat * s2), xhat = (x - mu) * rstd, per channel. */
static void batch_term(bl_shape s, const float *x, float *dx, const double *mu, const double *rstd,
                       const double *s1, const double *s2, const double *N)
{
    const size_t hw = bl_shape_hw(s);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < s.n; i++)
        for (int c = 0; c < s.c; c++)
            for (size_t q = 0; q < hw; q++) {
                size_t at = bl_idx(s, i, c, q);
                double xhat = (x[at] - mu[c]) * rstd[c];
                dx[at] = (float)(dx[at] - rstd[c] / N[c] * (s1[c] + xhat * s2[c]));
            }
}

bl_status bl_bn_parts_backward(bl_bn_parts *p, const bl_groups *g, const float *const *x,
                               const float *const *dy, float *const *dx)
{
    if (p->merged < 0)
        return bl_fail(BL_ERR_STATE, "bn '%s': backward without a successful forward",
                       p->pool->name);
    bl_status st = BL_OK;
    if (!p->merged) {
        for (int k = 0; k < p->n && !st; k++)
            st = bl_bn_backward(p->part[k], g, x[k], dy[k], dx[k]);
        return st;
    }
    const int C = p->pool->cfg.channels;
    const float *mean = p->mode == BL_BN_BATCH ? p->fmu : p->pool->pop_mean;
    const float *var = p->mode == BL_BN_BATCH ? p->fvar : p->pool->pop_var;
    /* per part: its dgamma and dbeta on their own (tmp), then added to its binding */
    float *tmp = bl_alloc(sizeof(float) * 2 * (size_t)C);
    double *sums = bl_calloc(sizeof(double) * 3 * (size_t)C);
    if (!tmp || !sums) {
        bl_free(tmp), bl_free(sums);
        return bl_fail(BL_ERR_NOMEM, "bn '%s': out of memory", p->pool->name);
    }
    double *s1 = sums, *s2 = sums + C, *N = sums + 2 * C;
    for (int k = 0; k < p->n && !st; k++) {
        bl_bn *b = p->part[k];
        const bl_groups *w;
        if ((st = whole(b, p->s[k].n, &w))) break;
        bl_bn_kargs a = bl_bn_kargs_of(b, p->s[k], w);
        memset(tmp, 0, sizeof(float) * 2 * (size_t)C);
        st = bl_bn_kernels_of(b)->bwd_pop(&a, x[k], dy[k], b->gamma, mean, var, dx[k], tmp,
                                          tmp + C);
        for (int c = 0; c < C && !st; c++) {
            b->dgamma[c] += tmp[c], b->dbeta[c] += tmp[C + c];
            s1[c] += (double)b->gamma[c] * tmp[C + c];
            s2[c] += (double)b->gamma[c] * tmp[c];
        }
    }
    if (!st && p->mode == BL_BN_BATCH) {
        for (int c = 0; c < C; c++) N[c] = p->pool->batch.n[c];
        for (int k = 0; k < p->n; k++)
            batch_term(p->s[k], x[k], dx[k], p->mu, p->rstd, s1, s2, N);
    }
    bl_free(tmp), bl_free(sums);
    return st;
}
