/* The crop head (docs/crop-head.md): K crops of each image's feature map, RoIAlign to 4x4, the
 * "2fc" box head with a norm after each fc, and the shuffle of its rows across processes. Its
 * tensors hold K rows per image (per-sample shape (K, 1, C)), so a BN layer normalizes the crops
 * of the images in its groups, and every other layer works row by row. */
#include "nn/resnet.h"

#include <stddef.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- RoIAlign layer ------------------------------------------------------------------------------ */
typedef struct {
    int K;
    double lo, hi;
    bl_box *boxes; /* (max_batch * K): the forward's, for backward */
    int *box_image, *ids;
} roi_state;

static bl_status roi_bind(bl_layer *l, bl_net *net)
{
    roi_state *s = l->state;
    const size_t n = (size_t)net->max_batch * s->K;
    s->boxes = bl_malloc(sizeof(bl_box) * n);
    s->box_image = bl_malloc(sizeof(int) * n);
    s->ids = bl_malloc(sizeof(int) * (size_t)net->max_batch);
    if (!s->boxes || !s->box_image || !s->ids)
        return bl_fail(BL_ERR_NOMEM, "roi '%s': out of memory", l->name);
    for (int i = 0; i < net->max_batch; i++) s->ids[i] = i;
    return BL_OK;
}

static bl_status roi_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    roi_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    const bl_draw *src = ctx->draw;
    const int n = net->batch;
    bl_status st;
    if (src && src->fixed) {
        memcpy(s->boxes, src->fixed, sizeof(bl_box) * (size_t)n * s->K);
        for (int i = 0; i < n * s->K; i++) s->box_image[i] = i / s->K;
    } else if ((st = bl_crop_boxes(n, src && src->ids ? src->ids : s->ids, s->K, x->h, x->w, s->lo,
                                   s->hi, src ? src->seed : BL_SEED_EVAL_CROPS,
                                   src ? src->stream : BL_STREAM_EVAL, s->boxes, s->box_image))) {
        return bl_fail_ctx(st, "layer '%s'", l->name);
    }
    return bl_roi_align_forward(x->data, n, x->h, x->w, x->c, s->boxes, s->box_image, n * s->K,
                                BL_CROP_OUT, net->t[l->out].data);
}

static bl_status roi_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    roi_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    if (!l->need_dx) return BL_OK;
    /* the kernel adds into dx: a first writer clears it */
    if (!l->acc[0]) memset(x->grad, 0, sizeof(float) * (size_t)net->batch * bl_tsize(x));
    return bl_roi_align_backward(net->t[l->out].grad, net->batch, x->h, x->w, x->c, s->boxes,
                                 s->box_image, net->batch * s->K, BL_CROP_OUT, x->grad);
}

static void roi_free(bl_layer *l)
{
    roi_state *s = l->state;
    if (s) free(s->boxes), free(s->box_image), free(s->ids);
    free(s);
}

static const bl_layer_ops roi_ops = {.kind = BL_LAYER_ROI, .kind_name = "roi", .bind = roi_bind,
                                     .forward = roi_forward, .backward = roi_backward,
                                     .free = roi_free};

bl_status bl_net_roi(bl_net *net, const char *name, int in, int K, double lo, double hi, int *out)
{
    if (in < 0 || in >= net->n_tensors) return bl_fail(BL_ERR_ARG, "roi '%s': bad input", name);
    const bl_tensor *x = &net->t[in];
    if (K < 1) return bl_fail(BL_ERR_ARG, "roi '%s': %d crops per image: use at least 1", name, K);
    const int side = x->h < x->w ? x->h : x->w;
    if (!(lo > 0 && lo <= hi))
        return bl_fail(BL_ERR_ARG, "roi '%s': crop sides in [%g, %g]: need 0 < min <= max", name,
                       lo, hi);
    if (hi > side)
        return bl_fail(BL_ERR_ARG, "roi '%s': crops of sides up to %g do not fit the %dx%d "
                       "feature map: use sides of at most %d", name, hi, x->h, x->w, side);
    roi_state *s = bl_callocn(1, sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "roi '%s': out of memory", name);
    s->K = K, s->lo = lo, s->hi = hi;
    bl_layer *l;
    bl_status st = bl_net_layer(net, &roi_ops, name, &in, 1, K, 1,
                                BL_CROP_OUT * BL_CROP_OUT * x->c, s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

/* ---- the shuffle of rows -------------------------------------------------------------------------- */
typedef struct {
    int dir;
} shuffle_state;

/* Rows of d floats moved by the shuffle in direction dir: through its route across processes, or
 * here (one process holding all `rows`). */
static bl_status move(const bl_shuffle *sh, int dir, int rows, int d, const float *in, float *out)
{
    if (sh->route) return sh->route(sh->ctx, sh->perm, dir, d, in, out);
    for (int s = 0; s < rows; s++) {
        const int src = dir == 1 ? sh->perm[s] : s, dst = dir == 1 ? s : sh->perm[s];
        memcpy(out + (size_t)dst * d, in + (size_t)src * d, sizeof(float) * d);
    }
    return BL_OK;
}

static bl_status shuffle_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const shuffle_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    if (!ctx->shuffle) {
        memcpy(net->t[l->out].data, x->data, sizeof(float) * (size_t)net->batch * bl_tsize(x));
        return BL_OK;
    }
    return move(ctx->shuffle, s->dir, net->batch * x->h * x->w, x->c, x->data, net->t[l->out].data);
}

/* The gradient of a permutation is its inverse: the rows' gradients go back where they came
 * from. */
static bl_status shuffle_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    const shuffle_state *s = l->state;
    const bl_tensor *x = &net->t[l->in[0]];
    const size_t n = (size_t)net->batch * bl_tsize(x);
    if (!l->need_dx) return BL_OK;
    float *dx = x->grad;
    if (l->acc[0] && !(dx = bl_scratch_get(&net->ws, n * sizeof(float)))) return BL_ERR_NOMEM;
    bl_status st = BL_OK;
    if (!ctx->shuffle) memcpy(dx, net->t[l->out].grad, sizeof(float) * n);
    else
        st = move(ctx->shuffle, -s->dir, net->batch * x->h * x->w, x->c, net->t[l->out].grad, dx);
    if (!st && l->acc[0])
        for (size_t i = 0; i < n; i++) x->grad[i] += dx[i];
    return st;
}

static void shuffle_free(bl_layer *l) { free(l->state); }

/* An earlier layer failed: the other processes wait in this shuffle's exchange, so join it with
 * whatever rows there are. */
static void shuffle_abort(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    if (ctx->shuffle && ctx->shuffle->route) shuffle_forward(l, net, ctx);
}

static const bl_layer_ops shuffle_ops = {.kind = BL_LAYER_SHUFFLE, .kind_name = "shuffle",
                                         .forward = shuffle_forward, .backward = shuffle_backward,
                                         .free = shuffle_free, .abort = shuffle_abort};

int bl_net_shuffle_rows(const bl_net *net)
{
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].ops == &shuffle_ops) {
            const bl_tensor *x = &net->t[net->layers[i].in[0]];
            return x->h * x->w;
        }
    return 0;
}

bl_status bl_net_shuffle(bl_net *net, const char *name, int in, int dir, int *out)
{
    if (in < 0 || in >= net->n_tensors || (dir != 1 && dir != -1))
        return bl_fail(BL_ERR_ARG, "shuffle '%s': bad arguments (input %d, direction %d)", name,
                       in, dir);
    shuffle_state *s = bl_malloc(sizeof *s);
    if (!s) return bl_fail(BL_ERR_NOMEM, "shuffle '%s': out of memory", name);
    s->dir = dir;
    const bl_tensor *x = &net->t[in];
    bl_layer *l;
    bl_status st = bl_net_layer(net, &shuffle_ops, name, &in, 1, x->h, x->w, x->c, s, &l);
    if (st) {
        free(s);
        return st;
    }
    *out = l->out;
    return BL_OK;
}

/* ---- the head ------------------------------------------------------------------------------------- */
static bl_status norm(bl_net *net, const bl_resnet_crops_opts *hd, int stage, int *t)
{
    bl_status st;
    char name[64];
    snprintf(name, sizeof name, "head.norm%d", stage);
    if (hd->head_norm < BL_HEAD_BN || hd->head_norm > BL_HEAD_NONE)
        return bl_fail(BL_ERR_ARG, "crop head: unknown norm %d", hd->head_norm);
    if (hd->head_norm == BL_HEAD_BN) TRY(bl_net_bn(net, name, *t, t));
    else if (hd->head_norm == BL_HEAD_GN) TRY(bl_net_gn_rows(net, name, *t, 32, t));
    snprintf(name, sizeof name, "head.relu%d", stage);
    return bl_net_relu(net, name, *t, t);
}

bl_status bl_crop_head(bl_net *net, int in, const bl_resnet_crops_opts *hd, int classes, int *out)
{
    bl_status st;
    const int W = hd->head_width;
    /* GN of one channel per group would output beta alone: at least 2 */
    if (W < 1 || (hd->head_norm == BL_HEAD_GN && (W % 32 || W < 64)))
        return bl_fail(BL_ERR_ARG, "crop head: width %d: use a positive width (GN: a multiple of "
                       "32 of at least 64, for 32 groups of 2 or more channels)", W);
    const bl_tensor *map = &net->t[in];
    const int side = map->h < map->w ? map->h : map->w;
    if (hd->crops < 1 || !(hd->crop_min > 0 && hd->crop_min <= hd->crop_max) || hd->crop_max > side)
        return bl_fail(BL_ERR_ARG, "crop head: %d crops of sides %g..%g: use at least 1 crop and "
                       "0 < crop_min <= crop_max <= %d (crops larger than that do not fit the "
                       "%dx%d feature map)", hd->crops, hd->crop_min, hd->crop_max, side, map->h,
                       map->w);
    int t;
    TRY(bl_net_roi(net, "head.roi", in, hd->crops, hd->crop_min, hd->crop_max, &t));
    const int bias = hd->head_norm == BL_HEAD_NONE; /* a norm's beta replaces the fc's bias */
    TRY(bl_net_linear_rows(net, "head.fc1", t, W, bias, &t));
    /* the shuffle goes before the first norm (fc1 works row by row: the same as before it) */
    TRY(bl_net_shuffle(net, "head.shuffle", t, 1, &t));
    TRY(norm(net, hd, 1, &t));
    TRY(bl_net_linear_rows(net, "head.fc2", t, W, bias, &t));
    TRY(norm(net, hd, 2, &t));
    TRY(bl_net_linear_rows(net, "head.cls", t, classes, 1, &t));
    TRY(bl_net_shuffle(net, "head.unshuffle", t, -1, &t));
    *out = t;
    return BL_OK;
}

/* ---- the family "resnet-crops" ------------------------------------------------------------------
 * Stages 1-2 of the ResNet (a 14x14 map from 28x28), then the crop head. Its backbone always
 * normalizes the whole (global) batch; the head's BN layers normalize the crops of groups of
 * head_bn_images images. */
static int parse(const char *name, void *opts)
{
    return bl_resnet_name(name, "-crops", &((bl_resnet_crops_opts *)opts)->depth);
}

static void defaults(void *opts)
{
    bl_resnet_crops_opts *o = opts;
    o->crops = 16;
    o->crop_min = 4, o->crop_max = 10;
}

static bl_status resolve(bl_model *m)
{
    bl_resnet_crops_opts *o = bl_model_opts(m);
    if (!o->head_width) o->head_width = 256;
    return BL_OK;
}

static bl_status build(bl_net *net, const bl_model *m, int classes)
{
    const bl_resnet_crops_opts *hd = bl_model_opts_c(m);
    bl_status st;
    int stage[2], t;
    TRY(bl_resnet_begin(net, hd->depth, m->width, classes, 2, bl_net_bn, stage));
    TRY(bl_crop_head(net, stage[1], hd, classes, &t));
    return bl_net_finalize(net);
}

/* The head's first BN core: the first after its RoIAlign (n_bn without one). */
static int head_bn(const bl_net *net)
{
    int roi = net->n_layers, k = net->n_bn;
    for (int li = 0; li < net->n_layers && roi == net->n_layers; li++)
        if (net->layers[li].ops == &roi_ops) roi = li;
    while (k > 0 && net->bn_layer[k - 1] > roi) k--;
    return k;
}

static bl_status plan_pass(const bl_net *net, const bl_plan *plan, const bl_pass_spec *s,
                           bl_pass *p)
{
    const int first = head_bn(net), K = net->n_bn;
    bl_status st = BL_OK;
    int head = 0; /* the head's own groups in p->groups[1] */
    if (s->stream >= 0) {
        /* training: the backbone over the global batch; the head over groups of images of the
         * share (the whole share without head_bn_images), or the global batch under SyncBN */
        p->groups[0].reducer = s->reducer;
        st = bl_pass_groups(p, 1, s->n, plan->head_bn_images, plan->sync_bn ? s->reducer : NULL);
        head = 1;
    } else if (s->stream == BL_STREAM_EVAL && s->mode == BL_BN_BATCH) {
        /* mini-batch evaluation: the backbone on population statistics, the head on its groups'
         * (the paper's test batch: one image's crops) */
        for (int k = 0; k < first; k++) p->use[k].mode = BL_BN_POPULATION;
        st = bl_pass_groups(p, 1, s->n, plan->head_bn_images, NULL);
        head = 1;
    } else if (plan->head_bn_images && plan->head_bn_images < s->n && !plan->sync_bn) {
        /* PreciseBN, inspect: the head's groups of images as in its training */
        st = bl_pass_groups(p, 1, s->n, plan->head_bn_images, NULL);
        head = 1;
    }
    for (int k = first; k < K && head && !st; k++) p->use[k].groups = &p->groups[1];
    return st;
}

static bl_status check_train(const bl_model *m, const bl_plan *plan, bl_train_check *c)
{
    const bl_resnet_crops_opts *hd = bl_model_opts_c(m);
    const int hbi = plan->head_bn_images, sh = plan->bn_shuffle;
    if (plan->norm_batch && plan->norm_batch < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d: the crop head's backbone normalizes the "
                       "whole batch; the head's groups are cfg.head_bn_images", plan->norm_batch);
    if (hd->head_norm != BL_HEAD_BN && (hbi || sh))
        return bl_fail(BL_ERR_ARG, "cfg.%s: the head's norm is %s, which has no batch statistics",
                       sh ? "bn_shuffle" : "head_bn_images",
                       bl_head_norm_name((bl_head_norm)hd->head_norm));
    if (plan->sync_bn && (hbi || sh))
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn with cfg.%s: SyncBN normalizes the head over the "
                       "global batch; drop one of the two", sh ? "bn_shuffle" : "head_bn_images");
    if (hd->head_norm == BL_HEAD_BN && hd->crops < 2 && c->eval_minibatch)
        return bl_fail(BL_ERR_ARG, "cfg.eval_minibatch with cfg.crops 1: one image's crops give "
                       "one value per channel; use 2 or more crops");
    if (sh && c->world == 1 && (!hbi || hbi >= c->batch))
        return bl_fail(BL_ERR_ARG, "cfg.bn_shuffle with the whole batch in one group changes "
                       "nothing: emulate W processes with cfg.head_bn_images %d/W", c->batch);
    if (hbi < 0 || hbi > c->share)
        return bl_fail(BL_ERR_ARG, "cfg.head_bn_images %d: use 0 (the whole share) to %d, the "
                       "images %s", hbi, c->share,
                       c->world > 1 ? "of a process's share" : "of the batch");
    if (c->world > 1 && c->uses_precise)
        return bl_fail(BL_ERR_ARG, "PreciseBN or FrozenBN of a crop head across processes is not "
                       "supported: run it after training in one process (bnlab precise)");
    c->eval_norm_batch = 1; /* one image's crops */
    c->head_bn_images = plan->sync_bn || !hbi ? (plan->sync_bn ? c->batch : c->share) : hbi;
    c->final_precise = 0;  /* its EMA statistics are the paper's population statistics */
    return BL_OK;
}

#define OFF(f) offsetof(bl_resnet_crops_opts, f)
static const bl_family_opt opts[] = {
    {.name = "head_norm", .key = "norm", .type = BL_FOPT_CHOICE, .offset = OFF(head_norm),
     .choices = "bn|gn|none", .help = "the head's normalization (gn: 32 groups per crop)"},
    {.name = "head_width", .key = "width", .type = BL_FOPT_INT, .offset = OFF(head_width), .lo = 0,
     .hi = 4096, .help = "the fc layers' width (0: 256)"},
    {.name = "crops", .key = "crops", .type = BL_FOPT_INT, .offset = OFF(crops), .lo = 1,
     .hi = 4096, .help = "crops per image (square, placed uniformly inside the 14x14 map)"},
    {.name = "crop_min", .key = "crop_min", .type = BL_FOPT_DOUBLE, .offset = OFF(crop_min),
     .lo = 0.01, .hi = 1e4, .help = "the smallest crop side, in map pixels"},
    {.name = "crop_max", .key = "crop_max", .type = BL_FOPT_DOUBLE, .offset = OFF(crop_max),
     .lo = 0.01, .hi = 1e4, .help = "the largest crop side, in map pixels (at most the map's 14)"},
};

const bl_family bl_family_resnet_crops = {
    .name = "resnet-crops",
    .usage = "resnetN-crops (with the crop head)",
    .help = "ResNet stages 1-2 and a crop head: K crops per image, RoIAlign, 2 fc (docs/crop-head.md)",
    .opts_size = sizeof(bl_resnet_crops_opts),
    .opts = opts,
    .n_opts = sizeof opts / sizeof *opts,
    .plan_uses = BL_PLAN_HEAD_BN_IMAGES | BL_PLAN_BN_SHUFFLE,
    .parse = parse,
    .defaults = defaults,
    .resolve = resolve,
    .build = build,
    .check_train = check_train,
    .plan_pass = plan_pass,
};
