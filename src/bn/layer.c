/* The BN layer: parameters, population statistics and estimators around the kernels.
 * The layer owns the rules (which rows, which checks, when statistics may be committed); the
 * kernels only loop. */
#include "bn/kernels.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bl_bn_config bl_bn_config_default(int channels)
{
    bl_bn_config c = {channels, 1e-5, 0.1, 1, 1, NULL};
    return c;
}

bl_status bl_bn_init(bl_bn *bn, const bl_bn_config *cfg)
{
    memset(bn, 0, sizeof *bn);
    const char *name = cfg->name ? cfg->name : "bn";
    if (cfg->channels < 1)
        return bl_fail(BL_ERR_ARG, "bn '%s': %d channels: need at least 1", name, cfg->channels);
    if (!(cfg->eps > 0) || !isfinite(cfg->eps))
        return bl_fail(BL_ERR_ARG, "bn '%s': eps %g must be positive and finite (1e-5 is usual)",
                       name, cfg->eps);
    if (!(cfg->momentum == BL_BN_CUMULATIVE || (cfg->momentum >= 0 && cfg->momentum <= 1)))
        return bl_fail(BL_ERR_ARG,
                       "bn '%s': momentum %g: use a value in [0, 1] (weight of the new batch, "
                       "0.1 is PyTorch's default) or BL_BN_CUMULATIVE",
                       name, cfg->momentum);
    if (cfg->affine_domains < 1 || cfg->stats_domains < 1)
        return bl_fail(BL_ERR_ARG, "bn '%s': affine and statistics domains must be >= 1", name);
    bn->cfg = *cfg;
    snprintf(bn->name, sizeof bn->name, "%s", name);
    bn->cfg.name = bn->name;
    bn->stream_bytes = BL_BN_STREAM_BYTES;
    size_t ac = (size_t)cfg->affine_domains * cfg->channels;
    size_t sc = (size_t)cfg->stats_domains * cfg->channels;
    char *blk = bl_alloc((4 * ac + 2 * sc) * sizeof(float) + cfg->stats_domains * sizeof(int64_t));
    if (!blk) return BL_ERR_NOMEM;
    bn->owned = blk;
    bn->num_batches_tracked = (int64_t *)blk;
    float *f = (float *)(blk + cfg->stats_domains * sizeof(int64_t));
    bn->gamma = f;
    bn->beta = f + ac;
    bn->dgamma = f + 2 * ac;
    bn->dbeta = f + 3 * ac;
    bn->pop_mean = f + 4 * ac;
    bn->pop_var = f + 4 * ac + sc;
    for (size_t k = 0; k < ac; k++) bn->gamma[k] = 1, bn->beta[k] = 0;
    for (size_t k = 0; k < sc; k++) bn->pop_mean[k] = 0, bn->pop_var[k] = 1;
    memset(bn->num_batches_tracked, 0, cfg->stats_domains * sizeof(int64_t));
    bl_bn_zero_grad(bn);
    return bl_moments_init(&bn->pooled, (int)sc);
}

void bl_bn_free(bl_bn *bn)
{
    bl_free(bn->owned);
    bl_moments_free(&bn->pooled);
    bl_moments_free(&bn->batch);
    bl_free(bn->batch_group_domain);
    bl_groups_free(&bn->whole);
    bl_scratch_free(&bn->ws);
    memset(bn, 0, sizeof *bn);
}

void bl_bn_bind(bl_bn *bn, float *gamma, float *beta, float *dgamma, float *dbeta, float *mean,
                float *var)
{
    if (gamma) bn->gamma = gamma;
    if (beta) bn->beta = beta;
    if (dgamma) bn->dgamma = dgamma;
    if (dbeta) bn->dbeta = dbeta;
    if (mean) bn->pop_mean = mean;
    if (var) bn->pop_var = var;
}

void bl_bn_zero_grad(bl_bn *bn)
{
    size_t ac = (size_t)bn->cfg.affine_domains * bn->cfg.channels;
    memset(bn->dgamma, 0, ac * sizeof(float));
    memset(bn->dbeta, 0, ac * sizeof(float));
}

bl_status bl_bn_resolve_groups(bl_bn *bn, const bl_groups *g, int n, const bl_groups **out)
{
    if (!g) {
        if (bn->whole.n != n || !bn->whole.sample_group) {
            bl_groups_free(&bn->whole);
            bl_status st = bl_groups_whole(&bn->whole, n);
            if (st) return st;
        }
        g = &bn->whole;
    }
    if (g->n != n)
        return bl_fail(BL_ERR_ARG, "bn '%s': the groups describe %d samples but the batch has %d",
                       bn->name, g->n, n);
    int rows = bn->cfg.affine_domains > bn->cfg.stats_domains ? bn->cfg.affine_domains
                                                              : bn->cfg.stats_domains;
    if (rows > 1 && g->n_domains > rows)
        return bl_fail(BL_ERR_ARG,
                       "bn '%s': the groups have %d domains but the layer keeps %d affine and %d "
                       "statistics rows: create the layer with as many domains",
                       bn->name, g->n_domains, bn->cfg.affine_domains, bn->cfg.stats_domains);
    for (int i = 0; i < n; i++) {
        int d = g->sample_domain[i];
        if ((bn->cfg.affine_domains > 1 && d >= bn->cfg.affine_domains) ||
            (bn->cfg.stats_domains > 1 && d >= bn->cfg.stats_domains))
            return bl_fail(BL_ERR_ARG, "bn '%s': sample %d has domain id %d, outside the layer's "
                           "domains", bn->name, i, d);
    }
    *out = g;
    return BL_OK;
}

bl_bn_kargs bl_bn_kargs_of(bl_bn *bn, bl_shape s, const bl_groups *g)
{
    bl_bn_kargs a = {s,        g,       bn->cfg.affine_domains, bn->cfg.stats_domains,
                     bn->cfg.eps, bn->name, &bn->ws, bn->stream_bytes};
    return a;
}

const bl_bn_kernels *bl_bn_kernels_of(const bl_bn *bn)
{
    return bn->kernel == BL_KERNEL_REF ? &bl_bn_kernels_ref : &bl_bn_kernels_fast;
}

bl_status bl_bn_check_population(const bl_bn *bn)
{
    int C = bn->cfg.channels;
    for (int k = 0; k < bn->cfg.stats_domains * C; k++) {
        double m = bn->pop_mean[k], v = bn->pop_var[k];
        if (!isfinite(m) || !isfinite(v) || !(v + bn->cfg.eps > 0))
            return bl_fail(BL_ERR_NUMERIC,
                           "bn '%s': population statistics of channel %d (row %d) are unusable "
                           "(mean %g, var %g): re-estimate them (EMA or PreciseBN) or load valid "
                           "ones",
                           bn->name, k % C, k / C, m, v);
    }
    return BL_OK;
}

bl_status bl_bn_pop_affine(const bl_bn *bn, float *mu, float *scale, float *shift)
{
    if (bn->cfg.stats_domains != 1 || bn->cfg.affine_domains != 1)
        return bl_fail(BL_ERR_ARG, "bn '%s': per-domain statistics or parameters have no single "
                       "affine form", bn->name);
    bl_status st = bl_bn_check_population(bn);
    if (st) return st;
    for (int c = 0; c < bn->cfg.channels; c++) {
        mu[c] = bn->pop_mean[c];
        scale[c] = (float)(bn->gamma[c] * bl_rstd(bn->pop_var[c], bn->cfg.eps));
        shift[c] = bn->beta[c];
    }
    return BL_OK;
}

bl_status bl_bn_batch_room(bl_bn *bn, int G)
{
    const int C = bn->cfg.channels;
    if (bn->batch.k != G * C) {
        bl_moments_free(&bn->batch);
        bl_status st = bl_moments_init(&bn->batch, G * C);
        if (st) return st;
    }
    if (G > bn->batch_cap) {
        bl_free(bn->batch_group_domain);
        if (!(bn->batch_group_domain = bl_alloc((size_t)G * sizeof(int)))) {
            bn->batch_cap = 0;
            return bl_fail(BL_ERR_NOMEM, "bn '%s': out of memory for the statistics of %d groups",
                           bn->name, G);
        }
        bn->batch_cap = G;
    }
    return BL_OK;
}

bl_status bl_bn_forward(bl_bn *bn, bl_bn_mode mode, const bl_groups *g, bl_shape s,
                        const float *x, float *y)
{
    bl_status st = bl_shape_check(s, bn->name);
    if (st) return st;
    if (s.c != bn->cfg.channels)
        return bl_fail(BL_ERR_ARG, "bn '%s': input has %d channels, the layer has %d", bn->name,
                       s.c, bn->cfg.channels);
    if (s.n > 0 && (!x || !y)) return bl_fail(BL_ERR_ARG, "bn '%s': x or y is NULL", bn->name);
    if ((st = bl_bn_resolve_groups(bn, g, s.n, &g))) return st;
    bl_bn_kargs a = bl_bn_kargs_of(bn, s, g);
    bn->last_shape.c = 0; /* no valid forward until this one succeeds */
    if (mode == BL_BN_BATCH) {
        bn->pending = 0;
        const int G = g->n_groups;
        if ((st = bl_bn_batch_room(bn, G))) return st;
        if ((st = bl_bn_kernels_of(bn)->fwd_batch(&a, x, bn->gamma, bn->beta, y, &bn->batch))) return st;
        memcpy(bn->batch_group_domain, g->group_domain, (size_t)G * sizeof(int));
        bn->batch_groups = G;
        bn->pending = 1;
    } else if (mode == BL_BN_POPULATION) {
        if ((st = bl_bn_check_population(bn))) return st;
        if ((st = bl_bn_kernels_of(bn)->fwd_pop(&a, x, bn->gamma, bn->beta, bn->pop_mean, bn->pop_var, y)))
            return st;
    } else {
        return bl_fail(BL_ERR_ARG, "bn '%s': unknown mode %d", bn->name, (int)mode);
    }
    bn->last_mode = mode;
    bn->last_shape = s;
    return BL_OK;
}

bl_status bl_bn_backward(bl_bn *bn, const bl_groups *g, const float *x, const float *dy, float *dx)
{
    bl_shape s = bn->last_shape;
    if (s.c == 0)
        return bl_fail(BL_ERR_STATE, "bn '%s': backward without a successful forward", bn->name);
    if (s.n > 0 && (!x || !dy || !dx))
        return bl_fail(BL_ERR_ARG, "bn '%s': x, dy or dx is NULL", bn->name);
    bl_status st = bl_bn_resolve_groups(bn, g, s.n, &g);
    if (st) return st;
    bl_bn_kargs a = bl_bn_kargs_of(bn, s, g);
    if (bn->last_mode == BL_BN_BATCH) {
        if (g->n_groups != bn->batch_groups)
            return bl_fail(BL_ERR_ARG, "bn '%s': backward got %d groups, forward had %d: pass the "
                           "same groups", bn->name, g->n_groups, bn->batch_groups);
        return bl_bn_kernels_of(bn)->bwd_batch(&a, x, dy, bn->gamma, &bn->batch, dx, bn->dgamma,
                                      bn->dbeta);
    }
    return bl_bn_kernels_of(bn)->bwd_pop(&a, x, dy, bn->gamma, bn->pop_mean, bn->pop_var, dx, bn->dgamma,
                                bn->dbeta);
}

bl_status bl_bn_commit(bl_bn *bn, bl_estimator est)
{
    if (!bn->pending)
        return bl_fail(BL_ERR_STATE,
                       "bn '%s': no batch statistics to commit: run a forward with batch "
                       "statistics first (each forward's statistics commit once)",
                       bn->name);
    const bl_bn_config *c = &bn->cfg;
    bl_status st;
    if (est == BL_EST_EMA) {
        st = bl_ema_update(bn->pop_mean, bn->pop_var, bn->num_batches_tracked, c->stats_domains,
                           c->channels, c->momentum, &bn->batch, bn->batch_group_domain,
                           bn->batch_groups);
        if (!st) bn->pop_source = c->momentum == BL_BN_CUMULATIVE ? BL_EST_CUMULATIVE : BL_EST_EMA;
    } else if (est == BL_EST_PRECISE) {
        st = bl_pooled_update(&bn->pooled, c->stats_domains, c->channels, &bn->batch,
                              bn->batch_group_domain, bn->batch_groups);
    } else {
        return bl_fail(BL_ERR_ARG, "bn '%s': commit to '%s': use BL_EST_EMA or BL_EST_PRECISE",
                       bn->name, bl_estimator_name(est));
    }
    if (st) return bl_fail_ctx(st, "bn '%s'", bn->name);
    bn->pending = 0;
    return BL_OK;
}

/* Packs each pending group as (domain, n[C], mean[C], m2[C]) so one gather carries them all. */
bl_status bl_bn_gather_pending(bl_bn *bn, const bl_reducer *r)
{
    const int C = bn->cfg.channels, G = bn->pending ? bn->batch_groups : 0;
    const size_t row = 1 + 3 * (size_t)C;
    if (!r || !r->gather) return BL_OK;
    double *mine = bl_alloc((G ? G : 1) * row * sizeof(double)), *all = NULL;
    if (!mine) return bl_fail(BL_ERR_NOMEM, "bn '%s': out of memory gathering statistics", bn->name);
    for (int j = 0; j < G; j++) {
        double *o = mine + j * row;
        o[0] = bn->batch_group_domain[j];
        for (int c = 0; c < C; c++) {
            size_t e = (size_t)j * C + c;
            o[1 + c] = bn->batch.n[e], o[1 + C + c] = bn->batch.mean[e];
            o[1 + 2 * C + c] = bn->batch.m2[e];
        }
    }
    size_t n_all = 0;
    bl_status st = r->gather(r->ctx, mine, G * row, &all, &n_all);
    bl_free(mine);
    if (st) return bl_fail_ctx(st, "bn '%s': gathering the batch statistics", bn->name);
    const int GA = (int)(n_all / row);
    bn->pending = 0;
    if ((st = bl_bn_batch_room(bn, GA))) return bl_free(all), st;
    for (int j = 0; j < GA; j++) {
        const double *o = all + j * row;
        bn->batch_group_domain[j] = (int)o[0];
        for (int c = 0; c < C; c++) {
            size_t e = (size_t)j * C + c;
            bn->batch.n[e] = o[1 + c], bn->batch.mean[e] = o[1 + C + c];
            bn->batch.m2[e] = o[1 + 2 * C + c];
        }
    }
    bl_free(all);
    bn->batch_groups = GA;
    bn->pending = GA > 0;
    return BL_OK;
}

void bl_bn_precise_reset(bl_bn *bn) { bl_moments_zero(&bn->pooled); }

bl_status bl_bn_precise_apply(bl_bn *bn)
{
    int any = 0;
    for (int k = 0; k < bn->pooled.k; k++) any |= bn->pooled.n[k] > 0;
    if (!any)
        return bl_fail(BL_ERR_STATE, "bn '%s': PreciseBN saw no sample: commit batches with "
                       "BL_EST_PRECISE before applying", bn->name);
    for (int k = 0; k < bn->pooled.k; k++) {
        if (bn->pooled.n[k] == 0) continue;
        bn->pop_mean[k] = (float)bn->pooled.mean[k];
        bn->pop_var[k] = (float)(bn->pooled.m2[k] / bn->pooled.n[k]);
    }
    bn->pop_source = BL_EST_PRECISE;
    return BL_OK;
}
