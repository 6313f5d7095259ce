/* Evaluation: the error of a net on a split with population statistics (fused inference), or with
 * mini-batch statistics of ghost groups in a seeded (or class-grouped) order. */
#include "bnlab/train.h"

#include <stdlib.h>
#include <string.h>

bl_status bl_eval_order(const bl_dataset *d, uint64_t seed, int by_class, int *order)
{
    bl_epoch_order(d->n, seed, -1, order);
    if (!by_class) return BL_OK;
    /* a stable counting sort of the shuffled order by label: consecutive groups share a class */
    int count[257] = {0};
    int *tmp = malloc(sizeof(int) * (size_t)d->n);
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
    int chunk = net->max_batch, g = norm_batch;
    if (bn == BL_BN_BATCH) {
        if (g < 1) return bl_fail(BL_ERR_ARG, "mini-batch evaluation needs a normalization batch");
        if (g > chunk)
            return bl_fail(BL_ERR_ARG, "normalization batch %d exceeds the evaluation batch %d", g,
                           chunk);
        chunk -= chunk % g;
    }
    if (d->n < 1) return bl_fail(BL_ERR_ARG, "evaluation on an empty split");
    int *order = malloc(sizeof(int) * d->n);
    float *x = bl_alloc((size_t)chunk * d->h * d->w * sizeof(float));
    uint8_t *y = malloc((size_t)chunk);
    if (!order || !x || !y) {
        free(order), bl_free(x), free(y);
        return bl_fail(BL_ERR_NOMEM, "out of memory for the evaluation batches");
    }
    bl_status st = BL_OK;
    if (bn == BL_BN_BATCH) st = bl_eval_order(d, seed, by_class, order);
    else
        for (int i = 0; i < d->n; i++) order[i] = i;
    double loss = 0;
    long wrong = 0, wrong_level[BL_LAYER_MAX_IN] = {0};
    const int L = net->n_outputs > 1 ? net->n_outputs : 0;
    for (int s = 0; s < d->n && !st; s += chunk) {
        int n = d->n - s < chunk ? d->n - s : chunk;
        bl_dataset_batch(d, recipe, order + s, n, NULL, x, y);
        double ls = 0;
        int ok = 0;
        if (bn == BL_BN_BATCH) {
            bl_groups groups;
            if ((st = bl_groups_ghost(&groups, n, g))) break;
            const bl_ctx ctx = bl_ctx_all(BL_BN_BATCH, &groups);
            st = bl_net_forward(net, &ctx, x, n);
            bl_groups_free(&groups);
        } else {
            st = bl_net_infer(net, x, n);
        }
        if (!st) st = bl_net_loss(net, y, 0, &ls, &ok);
        loss += ls;
        wrong += n - ok;
        if (!st && L) {
            int okl[BL_LAYER_MAX_IN];
            bl_net_output_correct(net, y, okl);
            for (int k = 0; k < L; k++) wrong_level[k] += n - okl[k];
        }
    }
    free(order), bl_free(x), free(y);
    if (st) return st;
    r->n = d->n;
    r->err = 100.0 * (double)wrong / d->n;
    r->loss = loss / d->n;
    r->levels = L;
    for (int k = 0; k < L; k++) r->err_level[k] = 100.0 * (double)wrong_level[k] / d->n;
    return BL_OK;
}
