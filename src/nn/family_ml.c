/* The family "resnet-ml" (resnetN-ml): the ResNet's three stage outputs through 1x1 laterals to
 * head_width channels, then one head with shared weights (conv3x3 - norm - ReLU - conv3x3 - norm
 * - ReLU - conv1x1 to the classes - global average pool) giving one logit vector per level: the
 * paper's section 5 (docs/multi-level.md). Its BN layers are multi-level (levels.c). */
#include "nn/resnet.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define LEVELS 3

static int parse(const char *name, void *opts)
{
    return bl_resnet_name(name, "-ml", &((bl_resnet_ml_opts *)opts)->depth);
}

static bl_status resolve(bl_model *m)
{
    bl_resnet_ml_opts *o = bl_model_opts(m);
    if (!o->head_width) o->head_width = 32;
    if (o->head_width < 4 || o->head_width % 4)
        return bl_fail(BL_ERR_ARG, "cfg.head_width %d: must be a positive multiple of 4 (GN: "
                       "groups of 4 channels)", o->head_width);
    if (o->head_norm != BL_HEAD_BN && (o->head_sgd || o->head_pop))
        return bl_fail(BL_ERR_ARG, "cfg.%s is a choice of BN's statistics; cfg.head_norm %s has "
                       "none", o->head_sgd ? "head_sgd" : "head_pop",
                       bl_head_norm_name((bl_head_norm)o->head_norm));
    if (o->head_norm == BL_HEAD_NONE && o->head_affine)
        return bl_fail(BL_ERR_ARG, "cfg.head_affine: cfg.head_norm none has no affine parameters");
    return BL_OK;
}

/* One head stage on every level: conv (shared weight) per level, then the norm, then ReLU. */
static bl_status head_stage(bl_net *net, const bl_resnet_ml_opts *hd, int stage, int *t)
{
    bl_status st;
    char name[64], param[64];
    snprintf(param, sizeof param, "head.conv%d.weight", stage);
    for (int k = 0; k < LEVELS; k++) {
        snprintf(name, sizeof name, "head.conv%d[%d]", stage, k);
        TRY(bl_net_conv_param(net, name, param, t[k], hd->head_width, 3, 1, 1, &t[k]));
    }
    snprintf(name, sizeof name, "head.norm%d", stage);
    if (hd->head_norm == BL_HEAD_BN) {
        int o;
        TRY(bl_net_bn_levels(net, name, t, LEVELS, !hd->head_sgd, hd->head_affine, &o));
        for (int k = 0; k < LEVELS; k++) t[k] = o + k;
    } else if (hd->head_norm == BL_HEAD_GN) {
        for (int k = 0; k < LEVELS; k++) {
            char ln[80], pre[80];
            snprintf(ln, sizeof ln, "%s[%d]", name, k);
            if (hd->head_affine) snprintf(pre, sizeof pre, "%s.%d", name, k);
            else snprintf(pre, sizeof pre, "%s", name);
            TRY(bl_net_gn_param(net, ln, pre, t[k], hd->head_width / 4, &t[k]));
        }
    }
    for (int k = 0; k < LEVELS; k++) {
        snprintf(name, sizeof name, "head.relu%d[%d]", stage, k);
        TRY(bl_net_relu(net, name, t[k], &t[k]));
    }
    return BL_OK;
}

static bl_status build(bl_net *net, const bl_model *m, int classes)
{
    const bl_resnet_ml_opts *hd = bl_model_opts_c(m);
    bl_status st;
    int stage[3], lv[LEVELS];
    TRY(bl_resnet_begin(net, hd->depth, m->width, classes, 3, bl_net_bn, stage));
    for (int k = 0; k < LEVELS; k++) {
        char name[64];
        snprintf(name, sizeof name, "lateral.%d", k);
        TRY(bl_net_conv(net, name, stage[k], hd->head_width, 1, 1, 0, &lv[k]));
    }
    TRY(head_stage(net, hd, 1, lv));
    TRY(head_stage(net, hd, 2, lv));
    for (int k = 0; k < LEVELS; k++) {
        char name[64];
        snprintf(name, sizeof name, "head.cls[%d]", k);
        TRY(bl_net_conv_param(net, name, "head.cls.weight", lv[k], classes, 1, 1, 0, &lv[k]));
        snprintf(name, sizeof name, "head.avgpool[%d]", k);
        TRY(bl_net_gap(net, name, lv[k], &lv[k]));
    }
    TRY(bl_net_set_outputs(net, lv, LEVELS));
    TRY(bl_net_finalize(net));
    bl_net_set_levels_pop(net, !hd->head_pop);
    return BL_OK;
}

/* The head's statistics merged over the levels need the whole batch in one group: no ghost
 * groups, no per-process shares, no SyncBN yet. */
static bl_status check_train(const bl_model *m, const bl_plan *plan, bl_train_check *c)
{
    const bl_resnet_ml_opts *hd = bl_model_opts_c(m);
    if (hd->head_norm != BL_HEAD_BN || hd->head_sgd) return BL_OK;
    if (plan->norm_batch && plan->norm_batch < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d: the head's statistics merged over the "
                       "levels need the whole batch: use per-level statistics (cfg.head_sgd "
                       "level) with ghost groups", plan->norm_batch);
    if (plan->sync_bn)
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn: the head's statistics merged over the levels are "
                       "not synchronized across processes yet: use per-level statistics "
                       "(cfg.head_sgd level) with SyncBN");
    if (c->world > 1)
        return bl_fail(BL_ERR_ARG, "the head's statistics merged over the levels need the whole "
                       "batch in one group, and %d processes each normalize a share: use "
                       "per-level statistics (cfg.head_sgd level)", c->world);
    return BL_OK;
}

bl_status bl_net_head_pop(bl_net *net, int pop_level)
{
    if (net->model.family != &bl_family_resnet_ml) return BL_OK;
    bl_resnet_ml_opts *hd = bl_model_opts(&net->model);
    if (pop_level && hd->head_norm == BL_HEAD_BN) {
        bl_status st = bl_net_levels_check(net);
        if (st) return st;
    }
    hd->head_pop = pop_level;
    bl_net_set_levels_pop(net, !pop_level);
    return BL_OK;
}

static bl_status reopen(bl_net *net, const bl_model *m, int reestimates)
{
    const bl_resnet_ml_opts *want = bl_model_opts_c(m);
    const bl_resnet_ml_opts *has = bl_model_opts_c(&net->model);
    if (want->head_pop == has->head_pop) return BL_OK;
    if (has->head_norm != BL_HEAD_BN)
        return bl_fail(BL_ERR_ARG, "cfg.head_pop: the head of this %s has no BN statistics "
                       "(head_norm %s)", net->arch, bl_head_norm_name((bl_head_norm)has->head_norm));
    if (!reestimates) return bl_fail_ctx(bl_net_head_pop(net, want->head_pop), "cfg.head_pop %s",
                                         want->head_pop ? "level" : "shared");
    /* the statistics are about to be replaced: no check of them */
    ((bl_resnet_ml_opts *)bl_model_opts(&net->model))->head_pop = want->head_pop;
    bl_net_set_levels_pop(net, !want->head_pop);
    return BL_OK;
}

#define OFF(f) offsetof(bl_resnet_ml_opts, f)
static const bl_family_opt opts[] = {
    {.name = "head_norm", .key = "norm", .type = BL_FOPT_CHOICE, .offset = OFF(head_norm),
     .choices = "bn|gn|none", .help = "the head's normalization (gn: groups of 4 channels)"},
    {.name = "head_sgd", .key = "sgd", .type = BL_FOPT_CHOICE, .offset = OFF(head_sgd),
     .choices = "shared|level",
     .help = "bn: training statistics pooled over the levels' pixels, or per level"},
    {.name = "head_pop", .key = "pop", .type = BL_FOPT_CHOICE, .offset = OFF(head_pop),
     .choices = "shared|level", .open = 1,
     .help = "bn: the population statistics inference uses, pooled over the levels or per level "
             "(both are kept)"},
    {.name = "head_affine", .key = "affine", .type = BL_FOPT_CHOICE, .offset = OFF(head_affine),
     .choices = "shared|level", .help = "gamma and beta shared by the levels, or per level"},
    {.name = "head_width", .key = "width", .type = BL_FOPT_INT, .offset = OFF(head_width), .lo = 0,
     .hi = 4096, .help = "the laterals' and the head's channels, a multiple of 4 (0: 32)"},
};

const bl_family bl_family_resnet_ml = {
    .name = "resnet-ml",
    .usage = "resnetN-ml (with the multi-level head)",
    .help = "the ResNet with a head shared over three feature levels (docs/multi-level.md)",
    .opts_size = sizeof(bl_resnet_ml_opts),
    .opts = opts,
    .n_opts = sizeof opts / sizeof *opts,
    .parse = parse,
    .resolve = resolve,
    .build = build,
    .check_train = check_train,
    .reopen = reopen,
};
