/* Passes: the one place a forward context is built from a normalization plan. Every pass of the
 * library (a training step, evaluation, PreciseBN, inspect) asks for its context here, so how the
 * plan becomes groups is written once, and a family with layers of its own (a crop head) adjusts
 * them in its plan_pass. */
#include "nn/net.h"

#include <stdlib.h>
#include <string.h>

bl_status bl_pass_groups(bl_pass *p, int slot, int n, int size, const bl_reducer *reducer)
{
    if (slot < 0 || slot >= BL_PASS_GROUPS)
        return bl_fail(BL_ERR_ARG, "pass: group slot %d (0..%d)", slot, BL_PASS_GROUPS - 1);
    bl_groups_free(&p->groups[slot]);
    bl_status st = size > 0 && size < n ? bl_groups_ghost(&p->groups[slot], n, size)
                                        : bl_groups_whole(&p->groups[slot], n);
    if (!st) p->groups[slot].reducer = reducer;
    return st;
}

void bl_pass_free(bl_pass *p)
{
    free(p->use);
    for (int k = 0; k < BL_PASS_GROUPS; k++) bl_groups_free(&p->groups[k]);
    memset(p, 0, sizeof *p);
}

bl_status bl_pass_make(bl_pass *p, const bl_net *net, const bl_plan *plan, const bl_pass_spec *s)
{
    static const bl_plan whole = {0};
    memset(p, 0, sizeof *p);
    if (!plan) plan = &whole;
    if (s->n < 0 || s->n > net->max_batch)
        return bl_fail(BL_ERR_ARG, "pass: %d samples, the net holds at most %d", s->n,
                       net->max_batch);
    const int K = net->n_bn;
    p->use = bl_malloc(sizeof(bl_bn_use) * (size_t)(K ? K : 1));
    if (!p->use) return bl_fail(BL_ERR_NOMEM, "out of memory for a pass's context");
    /* SyncBN normalizes each group across the processes: ghost groups do not combine with it
     * (the training configuration refuses the pair) */
    bl_status st = bl_pass_groups(p, 0, s->n, plan->sync_bn ? 0 : plan->norm_batch,
                                  plan->sync_bn ? s->reducer : NULL);
    if (st) {
        bl_pass_free(p);
        return st;
    }
    for (int k = 0; k < K; k++) p->use[k] = (bl_bn_use){s->mode, &p->groups[0]};
    p->draw = (bl_draw){s->seed, s->stream, s->ids, s->fixed};
    p->ctx = bl_ctx_all(s->mode, &p->groups[0]);
    p->ctx.n_bn = K;
    p->ctx.bn = p->use;
    p->ctx.draw = &p->draw;
    p->ctx.shuffle = plan->bn_shuffle && s->mode == BL_BN_BATCH ? s->shuffle : NULL;
    const bl_family *f = net->model.family;
    if (f && f->plan_pass && (st = f->plan_pass(net, plan, s, p))) {
        bl_pass_free(p);
        return st;
    }
    return BL_OK;
}
