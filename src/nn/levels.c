/* The multi-level BN layer: one BN applied to the levels of a feature pyramid (a head shared over
 * the levels), with the paper's three separate choices (section 5): batch statistics per level or
 * merged over the levels, population statistics per level or pooled, affine per level or shared.
 * The BN core does the work (bn.h, "parts"); this file binds its cores to the net's parameters,
 * named like PyTorch's: name.weight or name.{k}.weight; pooled statistics name.running_mean, per
 * level name.{k}.running_mean (both always kept: training never reads them, so every model can
 * be evaluated either way). */
#define BL_LEVELS_MAX 4 /* levels of one multi-level BN layer */

#include "nn/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n, merged_sgd, merged_pop, affine_levels;
    bl_bn core[BL_LEVELS_MAX + 1]; /* levels 0..n-1, then the pool */
    bl_bn *part[BL_LEVELS_MAX];
    int gamma[BL_LEVELS_MAX], beta[BL_LEVELS_MAX];
    int mean[BL_LEVELS_MAX + 1], var[BL_LEVELS_MAX + 1], count[BL_LEVELS_MAX + 1];
    bl_bn_parts parts;
} levels_state;

static bl_status levels_bind(bl_layer *l, bl_net *net)
{
    levels_state *s = l->state;
    const int C = net->t[l->in[0]].c;
    for (int k = 0; k <= s->n; k++) {
        char name[80];
        if (k < s->n) snprintf(name, sizeof name, "%s.%d", l->name, k);
        else snprintf(name, sizeof name, "%s", l->name);
        bl_bn_config cfg = bl_bn_config_default(C);
        cfg.name = name;
        bl_status st = bl_bn_init(&s->core[k], &cfg);
        if (st) return st;
        const int a = k < s->n ? k : 0; /* the pool's affine is never used */
        bl_bn_bind(&s->core[k], net->params[s->gamma[a]].data, net->params[s->beta[a]].data,
                   net->grad_block + net->params[s->gamma[a]].offset,
                   net->grad_block + net->params[s->beta[a]].offset, net->params[s->mean[k]].data,
                   net->params[s->var[k]].data);
        for (int c = 0; c < C; c++) s->core[k].pop_mean[c] = 0, s->core[k].pop_var[c] = 1;
        net->params[s->count[k]].i64 = s->core[k].num_batches_tracked;
    }
    for (int k = 0; k < s->n; k++) s->part[k] = &s->core[k];
    for (int k = 0; k < s->n; k++) {
        float *g = net->params[s->gamma[k]].data, *b = net->params[s->beta[k]].data;
        for (int c = 0; c < C; c++) g[c] = 1, b[c] = 0;
    }
    return bl_bn_parts_init(&s->parts, s->n, s->part, &s->core[s->n]);
}

/* Per-level population statistics never estimated while the pooled ones were (a file with
 * pooled statistics only) are refused rather than used as mean 0, variance 1. */
static bl_status level_stats(const levels_state *s)
{
    for (int k = 0; k < s->n; k++)
        if (s->core[k].pop_source == BL_EST_INIT && s->core[s->n].pop_source != BL_EST_INIT)
            return bl_fail(BL_ERR_STATE, "'%s': no per-level population statistics (only pooled "
                           "ones): estimate them with bnlab precise, or use --head-pop shared",
                           s->core[k].name);
    return BL_OK;
}

static void shapes(const bl_layer *l, const bl_net *net, bl_shape *sh)
{
    for (int k = 0; k < l->n_in; k++) {
        const bl_tensor *x = &net->t[l->in[k]];
        sh[k] = (bl_shape){net->batch, x->c, x->h, x->w, BL_NHWC};
    }
}

static bl_status levels_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    levels_state *s = l->state;
    const bl_bn_use *u = bl_ctx_use(ctx, l->bn_index);
    bl_shape sh[BL_LEVELS_MAX];
    const float *x[BL_LEVELS_MAX];
    float *y[BL_LEVELS_MAX];
    shapes(l, net, sh);
    for (int k = 0; k < s->n; k++) x[k] = net->t[l->in[k]].data, y[k] = net->t[l->out + k].data;
    const int merged = u->mode == BL_BN_BATCH ? s->merged_sgd : s->merged_pop;
    bl_status st = u->mode == BL_BN_POPULATION && !merged ? level_stats(s) : BL_OK;
    if (st) return st;
    return bl_bn_parts_forward(&s->parts, u->mode, merged, u->groups, sh, x, y);
}

static bl_status levels_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    levels_state *s = l->state;
    const float *x[BL_LEVELS_MAX], *dy[BL_LEVELS_MAX];
    float *dx[BL_LEVELS_MAX];
    /* inputs whose gradient another consumer wrote first get theirs in scratch, added after */
    size_t need = 0, at = 0;
    for (int k = 0; k < s->n; k++)
        if (l->acc[k] || !l->need_dx) need += (size_t)net->batch * bl_tsize(&net->t[l->in[k]]);
    float *ws = need ? bl_scratch_get(&net->ws, need * sizeof(float)) : NULL;
    if (need && !ws) return BL_ERR_NOMEM;
    for (int k = 0; k < s->n; k++) {
        x[k] = net->t[l->in[k]].data;
        dy[k] = net->t[l->out + k].grad;
        dx[k] = net->t[l->in[k]].grad;
        if (l->acc[k] || !l->need_dx)
            dx[k] = ws + at, at += (size_t)net->batch * bl_tsize(&net->t[l->in[k]]);
    }
    bl_status st = bl_bn_parts_backward(&s->parts, bl_ctx_use(ctx, l->bn_index)->groups, x, dy, dx);
    for (int k = 0; k < s->n && !st; k++) {
        if (!l->acc[k] || !l->need_dx) continue;
        float *g = net->t[l->in[k]].grad;
        const size_t m = (size_t)net->batch * bl_tsize(&net->t[l->in[k]]);
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < m; i++) g[i] += dx[k][i];
    }
    return st;
}

static void levels_free(bl_layer *l)
{
    levels_state *s = l->state;
    if (!s) return;
    bl_bn_parts_free(&s->parts);
    for (int k = 0; k <= s->n; k++) bl_bn_free(&s->core[k]);
    free(s);
}

static int levels_cores(bl_layer *l, bl_bn **core, unsigned *in)
{
    levels_state *s = l->state;
    for (int k = 0; core && k <= s->n; k++) {
        core[k] = &s->core[k];
        in[k] = k < s->n ? 1u << k : (1u << s->n) - 1;
    }
    return s->n + 1;
}

/* every level's (or the shared) gamma 1 and beta 0 */
static void levels_init(bl_layer *l, bl_net *net, bl_rng *r)
{
    const levels_state *s = l->state;
    (void)r;
    for (int k = 0; k < s->n; k++) {
        bl_param_init_const(&net->params[s->gamma[k]], 1.0f);
        bl_param_init_const(&net->params[s->beta[k]], 0.0f);
    }
}

static const bl_layer_ops levels_ops = {.kind = BL_LAYER_BN_PARTS, .kind_name = "bn-levels",
                                        .bind = levels_bind, .forward = levels_forward,
                                        .backward = levels_backward, .free = levels_free,
                                        .cores = levels_cores, .init = levels_init};

static bl_status declare_levels(bl_net *net, levels_state *s, const char *name, int C)
{
    static const char *suffix[5] = {"weight", "bias", "running_mean", "running_var",
                                    "num_batches_tracked"};
    char pn[96];
    bl_status st = BL_OK;
    for (int k = 0; k <= s->n && !st; k++) { /* k = n: the shared ones */
        char pre[80];
        if (k < s->n) snprintf(pre, sizeof pre, "%s.%d", name, k);
        else snprintf(pre, sizeof pre, "%s", name);
        const int affine_here = k < s->n ? s->affine_levels : !s->affine_levels;
        int *idx[5] = {k < s->n ? &s->gamma[k] : &s->gamma[0], k < s->n ? &s->beta[k] : &s->beta[0],
                       &s->mean[k], &s->var[k], &s->count[k]};
        for (int j = affine_here ? 0 : 2; j < 5 && !st; j++) {
            snprintf(pn, sizeof pn, "%s.%s", pre, suffix[j]);
            bl_param_kind kind = j < 2 ? BL_P_BN : j < 4 ? BL_P_BUFFER : BL_P_COUNT;
            /* a level's statistics may be absent from a file with pooled ones only: such a file
             * loads, and inference with per-level statistics is refused (level_stats); the group
             * is named after the level's running_mean */
            const int group = k < s->n && j >= 2 ? (j == 2 ? net->n_params : s->mean[k]) + 1 : 0;
            st = bl_net_declare_in(net, pn, kind, j < 4 ? 1 : 0, &C, 0, group, idx[j]);
        }
    }
    if (!s->affine_levels)
        for (int k = 1; k < s->n; k++) s->gamma[k] = s->gamma[0], s->beta[k] = s->beta[0];
    return st;
}

bl_status bl_net_bn_levels(bl_net *net, const char *name, const int *in, int n, int merged_sgd,
                           int affine_levels, int *out)
{
    if (n < 1 || n > BL_LEVELS_MAX)
        return bl_fail(BL_ERR_ARG, "bn-levels '%s': %d levels: use 1..%d", name, n,
                       BL_LEVELS_MAX);
    int hwc[3 * BL_LEVELS_MAX];
    for (int k = 0; k < n; k++) {
        if (in[k] < 0 || in[k] >= net->n_tensors)
            return bl_fail(BL_ERR_ARG, "bn-levels '%s': bad input %d", name, k);
        const bl_tensor *x = &net->t[in[k]];
        if (x->c != net->t[in[0]].c)
            return bl_fail(BL_ERR_ARG, "bn-levels '%s': level %d has %d channels, level 0 %d",
                           name, k, x->c, net->t[in[0]].c);
        hwc[3 * k] = x->h, hwc[3 * k + 1] = x->w, hwc[3 * k + 2] = x->c;
    }
    levels_state *s = bl_callocn(1, sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "bn-levels '%s': out of memory", name);
    s->n = n;
    s->merged_sgd = merged_sgd;
    s->merged_pop = 1;
    s->affine_levels = affine_levels;
    bl_layer *l;
    bl_status st = declare_levels(net, s, name, net->t[in[0]].c);
    if (!st) st = bl_net_layer_n(net, &levels_ops, name, in, n, hwc, n, s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

bl_status bl_net_levels_check(const bl_net *net)
{
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].ops == &levels_ops) {
            bl_status st = level_stats(net->layers[i].state);
            if (st) return st;
        }
    return BL_OK;
}

void bl_net_set_levels_pop(bl_net *net, int merged)
{
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].ops == &levels_ops) ((levels_state *)net->layers[i].state)->merged_pop = merged;
}
