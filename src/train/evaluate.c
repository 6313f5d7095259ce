/* Evaluation: the error of a net on a split with population statistics (fused inference), or with
 * mini-batch statistics of ghost groups in a seeded (or class-grouped) order. */
#include "bnlab/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_status bl_data_fits(const bl_net *net, const bl_dataset *d, const char *who)
{
    const bl_tensor *in = bl_net_tensor_at(net, 0);
    if (d->h == in->h && d->w == in->w && bl_dataset_channels(d) == in->c) return BL_OK;
    return bl_fail(BL_ERR_ARG, "%s: the images are %dx%d with %d channel(s), the model takes "
                   "%dx%d with %d", who, d->h, d->w, bl_dataset_channels(d), in->h, in->w, in->c);
}

bl_status bl_eval_order(const bl_dataset *d, uint64_t seed, int by_class, int *order)
{
    bl_epoch_order(d->n, seed, BL_STREAM_EVAL, order);
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
    int chunk = bl_net_max_batch(net), g = norm_batch;
    const int world = sh && sh->world > 1 && sh->reducer ? sh->world : 1, rank = world > 1 ? sh->rank : 0;
    if (bn == BL_BN_BATCH) {
        if (g < 1) return bl_fail(BL_ERR_ARG, "mini-batch evaluation needs a normalization batch");
        if (g > chunk)
            return bl_fail(BL_ERR_ARG, "normalization batch %d exceeds the evaluation batch %d", g,
                           chunk);
        chunk -= chunk % g;
    }
    if (d->n < 1) return bl_fail(BL_ERR_ARG, "evaluation on an empty split");
    if (!d->labels) return bl_fail(BL_ERR_ARG, "evaluation needs labels: these images have none");
    bl_status fit = bl_data_fits(net, d, "evaluation");
    if (fit) return fit;
    int unit = bn == BL_BN_BATCH ? g : 1, off, cnt;
    bl_batch_share((d->n + unit - 1) / unit, rank, world, &off, &cnt);
    const int lo = off * unit, hi = (off + cnt) * unit < d->n ? (off + cnt) * unit : d->n;
    int *order = bl_malloc(sizeof(int) * d->n);
    float *x = bl_alloc((size_t)chunk * bl_dataset_sample(d) * sizeof(float));
    uint8_t *y = bl_malloc((size_t)chunk);
    /* mini-batch statistics of groups of g samples: the plan's groups, and a head's (the crop
     * head's: the crops of g images, its backbone on population statistics) */
    const bl_plan plan = {.norm_batch = bn == BL_BN_BATCH ? g : 0,
                          .head_bn_images = bn == BL_BN_BATCH ? g : 0};
    bl_status st = BL_OK;
    if (!order || !x || !y)
        st = bl_fail(BL_ERR_NOMEM, "out of memory for the evaluation batches");
    if (!st && bn == BL_BN_BATCH) st = bl_eval_order(d, seed, by_class, order);
    else if (!st)
        for (int i = 0; i < d->n; i++) order[i] = i;
    const int L = bl_net_output_count(net) > 1 ? bl_net_output_count(net) : 0;
    /* [wrong, loss, wrong per level..., failed] */
    double sums[3 + BL_NET_MAX_OUTPUTS] = {0};
    for (int s = lo; s < hi && !st; s += chunk) {
        int n = hi - s < chunk ? hi - s : chunk;
        if ((st = bl_dataset_batch(d, recipe, order + s, n, NULL, x, y))) break;
        double ls = 0;
        int ok = 0;
        /* the draws (a crop head's crops) fixed per sample index, the same for every model */
        const bl_pass_spec spec = {.mode = bn, .n = n, .ids = order + s,
                                   .seed = BL_SEED_EVAL_CROPS, .stream = BL_STREAM_EVAL};
        bl_pass p;
        if ((st = bl_pass_make(&p, net, &plan, &spec))) break;
        st = bn == BL_BN_BATCH ? bl_net_forward(net, &p.ctx, x, n)
                               : bl_net_infer_ctx(net, &p.ctx, x, n);
        bl_pass_free(&p);
        if (!st) st = bl_net_loss(net, y, 0, &ls, &ok);
        sums[1] += ls;
        sums[0] += n - ok;
        if (!st && L) {
            int okl[BL_NET_MAX_OUTPUTS];
            bl_net_output_correct(net, y, okl);
            for (int k = 0; k < L; k++) sums[2 + k] += n - okl[k];
        }
    }
    free(order), bl_free(x), free(y);
    if (world > 1) {
        char reason[512];
        snprintf(reason, sizeof reason, "%s", st ? bl_error() : "");
        sums[2 + BL_NET_MAX_OUTPUTS] = st != BL_OK;
        bl_status sr = sh->reducer->sum(sh->reducer->ctx, sums, 3 + BL_NET_MAX_OUTPUTS);
        if (sr) return sr;
        if (st) return bl_fail(st, "%s", reason);
        if (sums[2 + BL_NET_MAX_OUTPUTS] > 0)
            return bl_fail(BL_ERR_STATE, "evaluation failed on another process");
    }
    if (st) return st;
    r->n = d->n;
    r->err = 100.0 * sums[0] / d->n;
    r->loss = sums[1] / d->n;
    r->outputs = L;
    for (int k = 0; k < L; k++) r->err_level[k] = 100.0 * sums[2 + k] / d->n;
    return BL_OK;
}
