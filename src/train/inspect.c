/* bl_inspect: are a checkpoint's stored BN statistics those of its training distribution? Each
 * layer's stored mean/var is compared with fresh PreciseBN statistics and with the spread of
 * mini-batch statistics (the paper's figure 2). The net comes back unchanged. Thresholds and their
 * reasons: docs/inspect.md. */
#include "bnlab/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bl_inspect_defaults(bl_inspect_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->samples = 10000;
    c->precise_batch = 200;
    c->batch = 128;
    c->batches = 100;
    c->seed = 1;
    c->recipe = bl_recipe_fmnist();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of v[0..n) (sorted in place), linear interpolation. */
static double quantile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double at = q * (n - 1);
    int i = (int)at;
    return i + 1 < n ? v[i] + (at - i) * (v[i + 1] - v[i]) : v[n - 1];
}

bl_status bl_inspect(bl_net *net, const bl_dataset *d, const bl_inspect_cfg *c,
                     bl_inspect_report *r)
{
    const int K = bl_net_bn_count(net);
    bl_status fit = bl_data_fits(net, d, "inspect");
    if (fit) return fit;
    if (c->batch < 2 || c->batch > bl_net_max_batch(net) || c->batches < 2)
        return bl_fail(BL_ERR_ARG, "inspect: %d mini-batches of %d: use cfg.batch in 2..%d and at "
                       "least 2 batches", c->batches, c->batch, bl_net_max_batch(net));
    if ((long)c->batch * c->batches > d->n)
        return bl_fail(BL_ERR_ARG, "inspect: %d mini-batches of %d need %ld images, the split has "
                       "%d", c->batches, c->batch, (long)c->batch * c->batches, d->n);
    const int world = c->reducer && c->world > 1 ? c->world : 1, rank = world > 1 ? c->rank : 0;
    if (world > 1 && (rank < 0 || rank >= world))
        return bl_fail(BL_ERR_ARG, "inspect: rank %d of %d", rank, world);
    memset(r, 0, sizeof *r);
    r->layers = K;
    int maxc = 0;
    for (int k = 0; k < K; k++)
        if (bl_net_bn_at(net, k)->cfg.channels > maxc) maxc = bl_net_bn_at(net, k)->cfg.channels;
    /* the stored statistics, kept aside; the net gets them back at the end */
    bl_pop_snapshot stored;
    bl_status st = bl_pop_save(net, &stored);
    if (st) return st;
    const size_t kc = (size_t)K * maxc;
    double *smu = bl_malloc(sizeof(double) * kc * 2), *svar = smu ? smu + kc : NULL;
    /* zeroed: under processes each fills its own batches' columns and the sum is exact */
    double *bm = bl_callocn(kc * c->batches, sizeof(double)), *tmp = bl_malloc(sizeof(double) * c->batches);
    int *idx = bl_malloc(sizeof(int) * (size_t)d->n);
    float *x = bl_alloc((size_t)c->batch * bl_dataset_sample(d) * sizeof(float));
    uint8_t *y = bl_malloc((size_t)c->batch);
    if (!smu || !bm || !tmp || !idx || !x || !y) {
        st = bl_fail(BL_ERR_NOMEM, "inspect: out of memory");
        goto out;
    }
    for (int k = 0; k < K; k++) {
        const bl_bn *bn = bl_net_bn_at(net, k);
        for (int ch = 0; ch < bn->cfg.channels; ch++)
            smu[(size_t)k * maxc + ch] = bn->pop_mean[ch], svar[(size_t)k * maxc + ch] = bn->pop_var[ch];
    }
    /* the spread of mini-batch means: the model in training mode on `batches` disjoint batches */
    bl_epoch_order(d->n, c->seed, BL_STREAM_INSPECT, idx);
    const bl_augment aug = {c->seed, BL_STREAM_INSPECT};
    for (int b = rank; b < c->batches && !st; b += world) {
        const int *ids = idx + (size_t)b * c->batch;
        if ((st = bl_dataset_batch(d, &c->recipe, ids, c->batch, &aug, x, y))) break;
        /* each batch normalized as one group (the spread of whole-batch statistics) */
        const bl_pass_spec spec = {.mode = BL_BN_BATCH, .n = c->batch, .ids = ids,
                                   .seed = c->seed, .stream = BL_STREAM_INSPECT};
        bl_pass p;
        if ((st = bl_pass_make(&p, net, NULL, &spec))) break;
        st = bl_net_forward(net, &p.ctx, x, c->batch);
        bl_pass_free(&p);
        if (st) break;
        for (int k = 0; k < K; k++) {
            const bl_bn *bn = bl_net_bn_at(net, k);
            for (int ch = 0; ch < bn->cfg.channels; ch++)
                bm[((size_t)k * maxc + ch) * c->batches + b] = bn->batch.mean[ch];
        }
    }
    if (world > 1) {
        /* a process that failed says so before the sum, so none waits in it */
        double failed[1] = {st != BL_OK};
        bl_status sr = c->reducer->sum(c->reducer->ctx, failed, 1);
        if (!st && sr) st = sr;
        else if (!st && failed[0] > 0)
            st = bl_fail(BL_ERR_STATE, "inspect: the mini-batches failed on another process");
        if (!st) st = c->reducer->sum(c->reducer->ctx, bm, kc * c->batches);
    }
    if (st) goto out;
    bl_precise_cfg pc;
    bl_precise_defaults(&pc);
    pc.samples = c->samples, pc.batch = c->precise_batch, pc.seed = c->seed;
    pc.recipe = c->recipe;
    pc.plan.norm_batch = c->norm_batch;
    if (world > 1) pc.reducer = c->reducer, pc.rank = rank, pc.world = world;
    bl_precise_report pr;
    if ((st = bl_precise(net, d, &pc, &pr))) goto out;
    r->worst_se = pr.worst_se;
    for (int k = 0; k < K; k++) {
        const bl_bn *bn = bl_net_bn_at(net, k);
        bl_inspect_row *w = &r->row[k];
        const int C = bn->cfg.channels;
        const double eps = bn->cfg.eps;
        snprintf(w->name, sizeof w->name, "%s", bn->name);
        w->channels = C;
        int outside = 0;
        for (int ch = 0; ch < C; ch++) {
            const size_t i = (size_t)k * maxc + ch;
            const double mp = bn->pop_mean[ch], vp = bn->pop_var[ch] + eps;
            const double ms = smu[i], vs = svar[i] + eps;
            const double shift = fabs(ms - mp) / sqrt(vp), lv = fabs(log(vs / vp));
            const double kl = 0.5 * (vp / vs + (ms - mp) * (ms - mp) / vs - 1 + log(vs / vp));
            w->shift_mean += shift / C, w->kl_mean += kl / C;
            w->shift_max = shift > w->shift_max ? shift : w->shift_max;
            w->logvar_max = lv > w->logvar_max ? lv : w->logvar_max;
            w->kl_max = kl > w->kl_max ? kl : w->kl_max;
            memcpy(tmp, bm + i * c->batches, sizeof(double) * c->batches);
            const double lo = quantile(tmp, c->batches, 0.05), hi = quantile(tmp, c->batches, 0.95);
            outside += ms < lo || ms > hi;
        }
        w->outside = (double)outside / C;
        w->flagged = w->kl_max > BL_INSPECT_KL_MAX || w->outside > BL_INSPECT_OUTSIDE_MAX;
        r->flagged += w->flagged;
    }
out:
    bl_pop_restore(net, &stored);
    bl_pop_free(&stored);
    free(smu), free(bm), free(tmp), free(idx), bl_free(x), free(y);
    return st;
}
