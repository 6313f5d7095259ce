/* PreciseBN: population statistics re-estimated with the model fixed (PAPER.md, "PreciseBN"), and
 * the layer-by-layer exact mode.
 *
 * Regular mode: the N samples go through the net in batches of B, every BN layer normalizing with
 * its batch's statistics (whole batch, no ghost groups), and each layer pools its batch moments
 * with weight = values per channel (bl_bn_commit BL_EST_PRECISE): the biased variance of everything
 * the layer saw. The layers after the first see inputs produced with B-sample statistics, which is
 * the small-batch error of the paper's experiment 3.
 *
 * Sequential mode: for BN layer k = 0, 1, ..., the layers before k normalize with their new
 * population statistics and the forward stops after layer k, whose pooled moments are then exactly
 * those of the distribution it sees at inference, whatever B. Cost: one forward up to layer k per
 * layer, K prefixes in all (about K/2 full forwards for K layers spread evenly); bl_precise reports
 * it in full-forward units.
 *
 * Standard error: per layer, the largest over channels of sd(per-sample channel means) / sqrt(N)
 * in units of the channel's std - from per-sample means because the pixels of one image are
 * correlated, so N*H*W would overstate the precision. */
#include "bnlab/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_status bl_pop_save(bl_net *net, bl_pop_snapshot *p)
{
    const int K = bl_net_bn_count(net);
    memset(p, 0, sizeof *p);
    p->layers = K;
    size_t nb;
    const float *buf = bl_net_block(net, BL_BLOCK_BUFFERS, &nb);
    p->stats = bl_alloc((nb ? nb : 1) * sizeof(float));
    p->src = bl_malloc(sizeof(bl_estimator) * (size_t)(K ? K : 1));
    p->tracked = bl_malloc(sizeof(int64_t) * (size_t)(K ? K : 1));
    if (!p->stats || !p->src || !p->tracked) {
        bl_pop_free(p);
        return bl_fail(BL_ERR_NOMEM, "out of memory saving the population statistics");
    }
    memcpy(p->stats, buf, nb * sizeof(float));
    for (int k = 0; k < K; k++) {
        const bl_bn *bn = bl_net_bn_at(net, k);
        p->src[k] = bn->pop_source;
        p->tracked[k] = bn->num_batches_tracked[0];
    }
    return BL_OK;
}

void bl_pop_restore(bl_net *net, const bl_pop_snapshot *p)
{
    size_t nb;
    float *buf = bl_net_block(net, BL_BLOCK_BUFFERS, &nb);
    memcpy(buf, p->stats, nb * sizeof(float));
    for (int k = 0; k < p->layers; k++) {
        bl_bn *bn = bl_net_bn_at(net, k);
        bn->pop_source = p->src[k];
        bn->num_batches_tracked[0] = p->tracked[k];
    }
}

void bl_pop_mix(bl_net *net, const bl_pop_snapshot *src, int k, double w)
{
    size_t nb;
    const float *buf = bl_net_block(net, BL_BLOCK_BUFFERS, &nb);
    bl_bn *bn = bl_net_bn_at(net, k);
    /* the statistics live in the buffers block: the snapshot holds them at the same offsets */
    const float *sm = src->stats + (bn->pop_mean - buf), *sv = src->stats + (bn->pop_var - buf);
    for (int c = 0; c < bn->cfg.channels; c++) {
        bn->pop_mean[c] = (float)(w * sm[c] + (1 - w) * bn->pop_mean[c]);
        bn->pop_var[c] = (float)(w * sv[c] + (1 - w) * bn->pop_var[c]);
    }
}

void bl_pop_free(bl_pop_snapshot *p)
{
    bl_free(p->stats), free(p->src), free(p->tracked);
    memset(p, 0, sizeof *p);
}

void bl_precise_defaults(bl_precise_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->samples = 10000;
    c->batch = 200;
    c->augment = 1;
    c->seed = 1;
    c->recipe = bl_recipe_fmnist();
}

bl_status bl_precise_samples(int n, long samples, uint64_t seed, int *idx)
{
    if (samples < 0 || samples > n)
        return bl_fail(BL_ERR_ARG, "precise: %ld samples of a split of %d", samples, n);
    int *order = bl_malloc(sizeof(int) * (size_t)(n ? n : 1));
    if (!order) return bl_fail(BL_ERR_NOMEM, "precise: out of memory for the sample order");
    bl_epoch_order(n, seed, BL_STREAM_PRECISE, order);
    memcpy(idx, order, sizeof(int) * (size_t)samples);
    free(order);
    return BL_OK;
}

/* s1, s2 (C each) += sums of the per-sample channel means of what BN core k normalizes (its
 * layer's inputs in its mask: one tensor, or all levels' pixels for a pooled core) and their
 * squares. */
static bl_status sample_mean_sums(const bl_net *net, int k, int n, double *s1, double *s2)
{
    const bl_layer *l = bl_net_layer_at(net, bl_net_bn_layer(net, k));
    const unsigned mask = bl_net_bn_inputs(net, k);
    const int C = bl_net_tensor_at(net, l->in[0])->c;
    double *m = bl_callocn((size_t)n * C, sizeof(double));
    if (!m) return bl_fail(BL_ERR_NOMEM, "precise: out of memory");
    size_t pixels = 0;
    for (int j = 0; j < l->n_in; j++)
        if (mask >> j & 1) pixels += bl_tsize(bl_net_tensor_at(net, l->in[j])) / C;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double *mi = m + (size_t)i * C;
        for (int j = 0; j < l->n_in; j++) {
            if (!(mask >> j & 1)) continue;
            const bl_tensor *t = bl_net_tensor_at(net, l->in[j]);
            const size_t hw = (size_t)t->h * t->w;
            const float *xi = t->data + (size_t)i * hw * C;
            for (size_t p = 0; p < hw; p++)
                for (int c = 0; c < C; c++) mi[c] += xi[p * C + c];
        }
        for (int c = 0; c < C; c++) mi[c] /= (double)pixels;
    }
    for (int i = 0; i < n; i++) /* in sample order: the sums do not depend on the threads */
        for (int c = 0; c < C; c++) {
            double v = m[(size_t)i * C + c];
            s1[c] += v, s2[c] += v * v;
        }
    free(m);
    return BL_OK;
}

static double max_se(const bl_bn *bn, const double *s1, const double *s2, long N)
{
    double worst = 0;
    for (int c = 0; c < bn->cfg.channels; c++) {
        double mean = s1[c] / N, var_m = N > 1 ? (s2[c] - N * mean * mean) / (N - 1) : 0;
        double sd = sqrt(bn->pop_var[c] > 0 ? bn->pop_var[c] : 0);
        double se = sqrt(var_m > 0 ? var_m : 0) / sqrt((double)N);
        double u = sd > 0 ? se / sd : 0;
        if (u > worst) worst = u;
    }
    return worst;
}

bl_status bl_precise(bl_net *net, const bl_dataset *d, const bl_precise_cfg *c,
                     bl_precise_report *r)
{
    const int K = bl_net_bn_count(net);
    if (K < 1) return bl_fail(BL_ERR_ARG, "precise: the model has no BN layer");
    if (K > BL_PRECISE_MAX_LAYERS)
        return bl_fail(BL_ERR_ARG, "precise: %d BN layers, at most %d", K, BL_PRECISE_MAX_LAYERS);
    bl_status fit = bl_data_fits(net, d, "precise");
    if (fit) return fit;
    if (c->samples < 1 || c->samples > d->n)
        return bl_fail(BL_ERR_ARG, "precise: %ld samples requested, the split has %d: use "
                       "cfg.samples between 1 and %d", c->samples, d->n, d->n);
    if (c->batch < 1 || c->batch > bl_net_max_batch(net))
        return bl_fail(BL_ERR_ARG, "precise: batch %d outside 1..%d (the net's batch)", c->batch,
                       bl_net_max_batch(net));
    for (int k = 0; k < K; k++) {
        const bl_bn *bn = bl_net_bn_at(net, k);
        if (bn->cfg.stats_domains != 1)
            return bl_fail(BL_ERR_ARG, "precise: bn '%s' keeps per-domain statistics: estimate "
                           "each domain with its own data (bnlab adapt)", bn->name);
    }
    const long N = c->samples;
    const int B = c->batch;
    const size_t npix = bl_dataset_sample(d);
    const int world = c->reducer && c->world > 1 ? c->world : 1, rank = world > 1 ? c->rank : 0;
    if (world > 1 && (rank < 0 || rank >= world))
        return bl_fail(BL_ERR_ARG, "precise: rank %d of %d", rank, world);
    if (c->plan.norm_batch < 0)
        return bl_fail(BL_ERR_ARG, "precise: cfg.norm_batch %d: use 0 (the whole batch) or more",
                       c->plan.norm_batch);
    if (!(c->prior >= 0 && c->prior < 1e15))
        return bl_fail(BL_ERR_ARG, "precise: cfg.prior %g: use 0 (none) or a number of source "
                       "samples", c->prior);
    if (c->plan.head_bn_images < 0)
        return bl_fail(BL_ERR_ARG, "precise: cfg.head_bn_images %d: use 0 (like the other layers) "
                       "or more", c->plan.head_bn_images);
    /* PreciseBN never shuffles (its batches are estimated, not trained on) */
    const bl_plan plan = {.norm_batch = c->plan.norm_batch,
                          .head_bn_images = c->plan.head_bn_images, .sync_bn = c->plan.sync_bn};
    int *idx = bl_malloc(sizeof(int) * (size_t)d->n);
    float *x = bl_alloc((size_t)B * npix * sizeof(float));
    uint8_t *y = bl_malloc((size_t)B);
    int maxc = 0;
    for (int k = 0; k < K; k++)
        if (bl_net_bn_at(net, k)->cfg.channels > maxc) maxc = bl_net_bn_at(net, k)->cfg.channels;
    double *s1 = bl_callocn((size_t)K * maxc, sizeof(double)), *s2 = bl_callocn((size_t)K * maxc, sizeof(double));
    bl_status st = BL_OK;
    if (!idx || !x || !y || !s1 || !s2) {
        free(idx), bl_free(x), free(y), free(s1), free(s2);
        return bl_fail(BL_ERR_NOMEM, "precise: out of memory");
    }
    /* kept to restore on failure, so an error leaves the model as it was */
    bl_pop_snapshot saved;
    if (c->in_order)
        for (int i = 0; i < d->n; i++) idx[i] = i;
    if ((st = bl_pop_save(net, &saved)) ||
        (!c->in_order && (st = bl_precise_samples(d->n, N, c->seed, idx)))) {
        bl_pop_free(&saved); /* safe after a failed save too: it leaves the snapshot empty */
        free(idx), bl_free(x), free(y), free(s1), free(s2);
        return st;
    }
    const bl_augment aug = {c->seed, BL_STREAM_PRECISE};
    memset(r, 0, sizeof *r);
    r->layers = K;
    r->samples = N;
    /* regular: one pass estimating every layer; sequential: pass p estimates the p-th BN layer's
     * cores only (several for a multi-level layer: lfirst[p] .. lfirst[p + 1] - 1) */
    int *lfirst = bl_malloc(sizeof(int) * (size_t)(K + 1)), nl = 0;
    if (!lfirst) st = bl_fail(BL_ERR_NOMEM, "precise: out of memory");
    for (int k = 0; k < K && lfirst; k++)
        if (!k || bl_net_bn_layer(net, k) != bl_net_bn_layer(net, k - 1)) lfirst[nl++] = k;
    if (lfirst) lfirst[nl] = K;
    const int passes = c->sequential ? nl : 1;
    const long total = (long)passes * N;
    for (int pass = 0; pass < passes && !st; pass++) {
        const int first = c->sequential ? lfirst[pass] : 0;
        const int last = c->sequential ? lfirst[pass + 1] - 1 : K - 1;
        const int stop = c->sequential ? bl_net_bn_layer(net, first) : bl_net_layer_count(net) - 1;
        for (int k = first; k <= last; k++) bl_bn_precise_reset(bl_net_bn_at(net, k));
        for (long s = 0; s < N && !st; s += B) {
            int off, n;
            bl_batch_share(N - s < B ? (int)(N - s) : B, rank, world, &off, &n);
            if (!n && !plan.sync_bn) continue; /* an empty share: nothing here, no collective */
            if ((st = bl_dataset_batch(d, &c->recipe, idx + s + off, n, c->augment ? &aug : NULL, x,
                                       y)))
                break;
            /* per layer: batch statistics, or population for the layers already done */
            const bl_pass_spec spec = {.mode = BL_BN_BATCH, .n = n, .ids = idx + s + off,
                                       .seed = c->seed, .stream = BL_STREAM_PRECISE,
                                       .reducer = c->reducer};
            bl_pass p;
            if ((st = bl_pass_make(&p, net, &plan, &spec))) break;
            for (int k = 0; k < first; k++) p.use[k].mode = BL_BN_POPULATION;
            st = bl_net_forward_to(net, &p.ctx, x, n, stop);
            bl_pass_free(&p);
            if (st) break;
            for (int k = first; k <= last && !st; k++) {
                if ((st = bl_bn_commit(bl_net_bn_at(net, k), BL_EST_PRECISE))) break;
                st = sample_mean_sums(net, k, n, s1 + (size_t)k * maxc, s2 + (size_t)k * maxc);
            }
            if (c->progress) c->progress(c->progress_ctx, (long)pass * N + s + n, total);
        }
        if (world > 1 && !plan.sync_bn) {
            /* a process that failed in its batches tells the others before the merges below,
             * so none waits in one for it */
            double failed[1] = {st != BL_OK};
            bl_status sr = c->reducer->sum(c->reducer->ctx, failed, 1);
            if (!st && sr) st = sr;
            else if (!st && failed[0] > 0)
                st = bl_fail(BL_ERR_STATE, "PreciseBN failed on another process");
        }
        for (int k = first; k <= last && !st; k++) {
            bl_bn *bn = bl_net_bn_at(net, k);
            /* every process pooled its own samples: merge them before they become statistics
             * (under sync every process pooled the merged moments already) */
            if (world > 1 && !plan.sync_bn &&
                (st = c->reducer->merge_moments(c->reducer->ctx, &bn->pooled)))
                break;
            if (world > 1 && ((st = c->reducer->sum(c->reducer->ctx, s1 + (size_t)k * maxc, maxc)) ||
                              (st = c->reducer->sum(c->reducer->ctx, s2 + (size_t)k * maxc, maxc))))
                break;
            if ((st = bl_bn_precise_apply(bn))) break;
            if (c->prior > 0) bl_pop_mix(net, &saved, k, c->prior / (c->prior + (double)N));
            r->max_se[k] = max_se(bn, s1 + (size_t)k * maxc, s2 + (size_t)k * maxc, N);
        }
        r->forwards += (double)(stop + 1) / bl_net_layer_count(net);
    }
    free(lfirst);
    if (st) bl_pop_restore(net, &saved);
    bl_pop_free(&saved);
    free(idx), bl_free(x), free(y), free(s1), free(s2);
    if (st) {
        bl_fail_ctx(st, "precise");
        bl_error_append(" (the model's statistics are unchanged)");
        return st;
    }
    for (int k = 0; k < K; k++) r->worst_se = r->max_se[k] > r->worst_se ? r->max_se[k] : r->worst_se;
    return BL_OK;
}
