/* Evaluation: the error of a net on a split with population statistics (fused inference), or with
 * mini-batch statistics of ghost groups in a seeded (or class-grouped) order. */
#include "bnlab/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_status bl_eval_order(const bl_dataset *d, uint64_t seed, int by_class, int *order)
{
    bl_epoch_order(d->n, seed, -1, order);
    if (!by_class) return BL_OK;
    /* a stable counting sort of the shuffled order by label: consecutive groups share a class */
    int count[257] = {0};
    int *tmp = bl_malloc(sizeof(int) * (size_t)d->n);
    if (!tmp) return bl_fail(BL_ERR_NOMEM, "out of memory for the by-class evaluation order");
    for (int i = 0; i < d->n; i++) count[d->labels[order[i]] + 1]++;
    for (int k = 1; k < 257; k++) count[k] += count[k - 1];
    for (int i = 0; i < d->n; i++) tmp[count[d->labels[order[i]]]++] = order[i];
    memcpy(order, tmp, sizeof(int) * (size_t)d->n);
    free(tmp);
    return BL_OK;
}

bl_status bl_evaluate(bl_net *net, const bl_dataset *d, const bl_recipe *recipe, bl_bn_mode bn,
                      int norm_batch, uint64_t seed, int by_class, bl_eval_result *r)
{
    return bl_evaluate_shard(net, d, recipe, bn, norm_batch, seed, by_class, NULL, r);
}

/* Sharded: rank takes a contiguous share of the order (of whole groups under mini-batch
 * statistics, so every group is the one a single process forms), and one sum adds the counts.
 * A failure travels in that sum, so no process waits in it for one that has stopped. */
bl_status bl_evaluate_shard(bl_net *net, const bl_dataset *d, const bl_recipe *recipe,
                            bl_bn_mode bn, int norm_batch, uint64_t seed, int by_class,
                            const bl_shard *sh, bl_eval_result *r)
{
    int chunk = net->max_batch, g = norm_batch;
    const int world = sh && sh->world > 1 && sh->reducer ? sh->world : 1, rank = world > 1 ? sh->rank : 0;
    if (bn == BL_BN_BATCH) {
        if (g < 1) return bl_fail(BL_ERR_ARG, "mini-batch evaluation needs a normalization batch");
        if (g > chunk)
            return bl_fail(BL_ERR_ARG, "normalization batch %d exceeds the evaluation batch %d", g,
                           chunk);
        chunk -= chunk % g;
    }
    if (d->n < 1) return bl_fail(BL_ERR_ARG, "evaluation on an empty split");
    int unit = bn == BL_BN_BATCH ? g : 1, off, cnt;
    bl_batch_share((d->n + unit - 1) / unit, rank, world, &off, &cnt);
    const int lo = off * unit, hi = (off + cnt) * unit < d->n ? (off + cnt) * unit : d->n;
    int *order = bl_malloc(sizeof(int) * d->n);
    float *x = bl_alloc((size_t)chunk * d->h * d->w * sizeof(float));
    uint8_t *y = bl_malloc((size_t)chunk);
    /* a crop head under mini-batch statistics: the backbone with population statistics, the head
     * with its groups' (the paper's test batch: one image's crops) */
    bl_ctx hctx = {0};
    bl_status st = net->crops && bn == BL_BN_BATCH ? bl_ctx_init(&hctx, net, BL_BN_POPULATION, NULL)
                                                  : BL_OK;
    if (!st && (!order || !x || !y))
        st = bl_fail(BL_ERR_NOMEM, "out of memory for the evaluation batches");
    if (!st && bn == BL_BN_BATCH) st = bl_eval_order(d, seed, by_class, order);
    else if (!st)
        for (int i = 0; i < d->n; i++) order[i] = i;
    const int L = net->n_outputs > 1 ? net->n_outputs : 0;
    /* [wrong, loss, wrong per level..., failed] */
    double sums[3 + BL_LAYER_MAX_IN] = {0};
    for (int s = lo; s < hi && !st; s += chunk) {
        int n = hi - s < chunk ? hi - s : chunk;
        bl_dataset_batch(d, recipe, order + s, n, NULL, x, y);
        double ls = 0;
        int ok = 0;
        /* a crop head's crops: fixed per sample index */
        const bl_crop_src crops = {BL_CROP_TEST_SEED, BL_CROP_TEST_STREAM, order + s, NULL};
        if (bn == BL_BN_BATCH) {
            bl_groups groups;
            if ((st = bl_groups_ghost(&groups, n, g))) break;
            bl_ctx ctx = bl_ctx_all(BL_BN_BATCH, &groups);
            if (net->crops) {
                bl_ctx_set_head(&hctx, net, (bl_bn_use){BL_BN_BATCH, &groups});
                ctx = hctx;
            }
            ctx.crops = &crops;
            st = bl_net_forward(net, &ctx, x, n);
            bl_groups_free(&groups);
        } else if (net->crops) {
            bl_ctx ctx = bl_ctx_all(BL_BN_POPULATION, NULL);
            ctx.crops = &crops;
            st = bl_net_forward(net, &ctx, x, n);
        } else {
            st = bl_net_infer(net, x, n);
        }
        if (!st) st = bl_net_loss(net, y, 0, &ls, &ok);
        sums[1] += ls;
        sums[0] += n - ok;
        if (!st && L) {
            int okl[BL_LAYER_MAX_IN];
            bl_net_output_correct(net, y, okl);
            for (int k = 0; k < L; k++) sums[2 + k] += n - okl[k];
        }
    }
    free(order), bl_free(x), free(y);
    bl_ctx_free(&hctx);
    if (world > 1) {
        char reason[512];
        snprintf(reason, sizeof reason, "%s", st ? bl_error() : "");
        sums[2 + BL_LAYER_MAX_IN] = st != BL_OK;
        bl_status sr = sh->reducer->sum(sh->reducer->ctx, sums, 3 + BL_LAYER_MAX_IN);
        if (sr) return sr;
        if (st) return bl_fail(st, "%s", reason);
        if (sums[2 + BL_LAYER_MAX_IN] > 0)
            return bl_fail(BL_ERR_STATE, "evaluation failed on another process");
    }
    if (st) return st;
    r->n = d->n;
    r->err = 100.0 * sums[0] / d->n;
    r->loss = sums[1] / d->n;
    r->levels = L;
    for (int k = 0; k < L; k++) r->err_level[k] = 100.0 * sums[2 + k] / d->n;
    return BL_OK;
}
