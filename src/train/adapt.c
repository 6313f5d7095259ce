/* Adaptation of the population statistics to a target domain (PAPER.md, claim 7): the BN
 * statistics re-estimated by PreciseBN on N target images (optionally mixed with the source's by
 * a prior, or estimated online as the images stream in), the weights untouched, and the error
 * with the source and with the target statistics measured on the same held-out target images.
 * The target split is cut once: the first half is the adaptation pool, the second half the
 * evaluation set (5000 + 5000 for a test split), so every N and every draw is evaluated on the
 * same images. */
#include "bnlab/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void bl_adapt_defaults(bl_adapt_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->samples = 1000;
    c->batch = 200;
    c->draws = 1;
    c->seed = 1;
    c->recipe = bl_recipe_fmnist();
}

/* The online mode on the held-out images (cfg.online): each batch committed to every BN's pooled
 * moments with batch statistics, the statistics of all batches so far applied and mixed with the
 * source's, then the batch predicted with them. The net leaves with the last batch's. */
static bl_status adapt_online(bl_net *net, const bl_dataset *eval, const bl_adapt_cfg *c,
                              const bl_pop_snapshot *source, bl_adapt_report *r)
{
    const int K = bl_net_bn_count(net), B = c->batch;
    float *x = bl_alloc((size_t)B * bl_dataset_sample(eval) * sizeof(float));
    uint8_t *y = bl_malloc((size_t)B);
    int *ids = bl_malloc(sizeof(int) * (size_t)B);
    if (!x || !y || !ids) {
        bl_free(x), free(y), free(ids);
        return bl_fail(BL_ERR_NOMEM, "adapt: out of memory");
    }
    for (int k = 0; k < K; k++) bl_bn_precise_reset(bl_net_bn_at(net, k));
    long wrong = 0, seen = 0;
    bl_status st = BL_OK;
    for (int s = 0; s < eval->n && !st; s += B) {
        const int n = eval->n - s < B ? eval->n - s : B;
        for (int i = 0; i < n; i++) ids[i] = s + i;
        if ((st = bl_dataset_batch(eval, &c->recipe, ids, n, NULL, x, y))) break;
        const bl_pass_spec spec = {.mode = BL_BN_BATCH, .n = n, .ids = ids, .seed = c->seed,
                                   .stream = BL_STREAM_PRECISE};
        bl_pass p;
        if ((st = bl_pass_make(&p, net, NULL, &spec))) break;
        st = bl_net_forward(net, &p.ctx, x, n);
        bl_pass_free(&p);
        seen += n;
        for (int k = 0; k < K && !st; k++) {
            bl_bn *bn = bl_net_bn_at(net, k);
            if ((st = bl_bn_commit(bn, BL_EST_PRECISE)) || (st = bl_bn_precise_apply(bn))) break;
            if (c->prior > 0) bl_pop_mix(net, source, k, c->prior / (c->prior + (double)seen));
        }
        double loss;
        int ok = 0;
        if (!st) st = bl_net_infer(net, x, n);
        if (!st) st = bl_net_loss(net, y, 0, &loss, &ok);
        wrong += n - ok;
        if (!st && c->stream) c->stream(c->stream_ctx, seen, 100.0 * wrong / seen);
    }
    bl_free(x), free(y), free(ids);
    if (!st) r->err_online = 100.0 * wrong / seen;
    return st;
}

/* the stream of bl_epoch_order that permutes a target before it is cut (far from any epoch) */
#define BL_ADAPT_SPLIT_STREAM 900001

bl_status bl_adapt(bl_net *net, const bl_dataset *target, const bl_adapt_cfg *c, int keep,
                   bl_adapt_report *r)
{
    memset(r, 0, sizeof *r);
    if (target->n < 2)
        return bl_fail(BL_ERR_ARG, "adapt: the target split has %d images: need at least 2",
                       target->n);
    const bl_tensor *in = bl_net_tensor_at(net, 0);
    if (target->h != in->h || target->w != in->w || c->recipe.channels != in->c)
        return bl_fail(BL_ERR_ARG, "adapt: the target images are %dx%dx%d, the model takes "
                       "%dx%dx%d (its recipe: %s)", target->h, target->w, c->recipe.channels,
                       in->h, in->w, in->c, c->recipe.name);
    const int pool_n = target->n / 2, eval_n = target->n - pool_n;
    if (!(c->prior >= 0 && c->prior < 1e15))
        return bl_fail(BL_ERR_ARG, "adapt: cfg.prior %g: use 0 (none) or a number of source "
                       "samples", c->prior);
    if (c->online && (c->batch < 1 || c->batch > bl_net_max_batch(net)))
        return bl_fail(BL_ERR_ARG, "adapt: cfg.batch %d outside 1..%d (the net's batch)", c->batch,
                       bl_net_max_batch(net));
    if (!c->online && (c->samples < 1 || c->samples > pool_n))
        return bl_fail(BL_ERR_ARG, "adapt: cfg.samples %ld: the adaptation pool (the first half "
                       "of the target split) has %d images", c->samples, pool_n);
    if (!c->online && (c->draws < 1 || c->draws > BL_ADAPT_MAX_DRAWS))
        return bl_fail(BL_ERR_ARG, "adapt: cfg.draws %d: use 1..%d", c->draws, BL_ADAPT_MAX_DRAWS);
    int *idx = bl_malloc(sizeof(int) * (size_t)target->n);
    if (!idx) return bl_fail(BL_ERR_NOMEM, "adapt: out of memory");
    if (c->permute) bl_epoch_order(target->n, c->seed, BL_ADAPT_SPLIT_STREAM, idx);
    else
        for (int i = 0; i < target->n; i++) idx[i] = i;
    bl_dataset pool = {0}, eval = {0};
    bl_status st = bl_dataset_subset(target, idx, pool_n, &pool);
    if (!st) st = bl_dataset_subset(target, idx + pool_n, eval_n, &eval);
    free(idx);
    bl_pop_snapshot source = {0}, first = {0}; /* the source's statistics, and the first draw's */
    bl_precise_report first_rep;
    if (!st) st = bl_pop_save(net, &source);
    if (!st) st = bl_evaluate(net, &eval, &c->recipe, BL_BN_POPULATION, 0, 0, 0, &r->source);
    bl_precise_cfg pc;
    bl_precise_defaults(&pc);
    pc.samples = c->samples, pc.batch = c->batch, pc.sequential = c->sequential;
    pc.augment = 0, pc.recipe = c->recipe, pc.prior = c->prior;
    double sum = 0, sq = 0;
    if (!st && c->online) {
        st = adapt_online(net, &eval, c, &source, r);
        if (st || !keep) bl_pop_restore(net, &source);
        bl_pop_free(&source);
        bl_dataset_free(&pool);
        bl_dataset_free(&eval);
        if (st) return st;
        r->draws = 0, r->n_pool = 0, r->n_eval = eval_n;
        r->err_source = r->source.err;
        r->err_target = r->err_online;
        return BL_OK;
    }
    for (int k = 0; k < c->draws && !st; k++) {
        /* draw k: its own choice of N pool images; the statistics of the source back after */
        pc.seed = c->seed + (uint64_t)k;
        bl_eval_result e;
        if (k > 0) bl_pop_restore(net, &source);
        st = bl_precise(net, &pool, &pc, &r->precise);
        if (!st) st = bl_evaluate(net, &eval, &c->recipe, BL_BN_POPULATION, 0, 0, 0, &e);
        if (!st && k == 0) {
            first_rep = r->precise;
            r->precise_cfg = pc;
            if (keep && c->draws > 1) st = bl_pop_save(net, &first);
        }
        if (st) break;
        r->err_draw[k] = e.err;
        sum += e.err, sq += e.err * e.err;
    }
    /* keep: the first draw's statistics stay in the net */
    if (st || !keep) bl_pop_restore(net, &source);
    else if (c->draws > 1) bl_pop_restore(net, &first);
    if (!st) r->precise = first_rep;
    bl_pop_free(&source);
    bl_pop_free(&first);
    bl_dataset_free(&pool);
    bl_dataset_free(&eval);
    if (st) return st;
    r->draws = c->draws;
    r->n_pool = pool_n;
    r->n_eval = eval_n;
    r->err_source = r->source.err;
    r->err_target = sum / c->draws;
    const double var = c->draws > 1 ? (sq - sum * sum / c->draws) / (c->draws - 1) : 0;
    r->err_target_sd = var > 0 ? sqrt(var) : 0;
    return BL_OK;
}
