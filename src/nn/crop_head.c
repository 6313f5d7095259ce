/* The crop head (docs/crop-head.md): K crops of each image's feature map, RoIAlign to 4x4, the
 * "2fc" box head with a norm after each fc, and the shuffle of its rows across processes. Its
 * tensors hold K rows per image (per-sample shape (K, 1, C)), so a BN layer normalizes the crops
 * of the images in its groups, and every other layer works row by row. */
#include "nn/net.h"

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
    const bl_crop_src *src = ctx->crops;
    const int n = net->batch;
    bl_status st;
    if (src && src->boxes) {
        memcpy(s->boxes, src->boxes, sizeof(bl_box) * (size_t)n * s->K);
        for (int i = 0; i < n * s->K; i++) s->box_image[i] = i / s->K;
    } else if ((st = bl_crop_boxes(n, src && src->ids ? src->ids : s->ids, s->K, x->h, x->w, s->lo,
                                   s->hi, src ? src->seed : BL_CROP_TEST_SEED,
                                   src ? src->stream : BL_CROP_TEST_STREAM, s->boxes,
                                   s->box_image))) {
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

static const bl_layer_ops roi_ops = {BL_LAYER_ROI, "roi", roi_bind, roi_forward, roi_backward,
                                     roi_free,     NULL,  NULL};

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

static const bl_layer_ops shuffle_ops = {BL_LAYER_SHUFFLE, "shuffle", NULL, shuffle_forward,
                                         shuffle_backward, shuffle_free, NULL, NULL};

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
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((st = (expr))) return st;                                                              \
    } while (0)

static bl_status norm(bl_net *net, const bl_head_cfg *hd, int stage, int *t)
{
    bl_status st;
    char name[64];
    snprintf(name, sizeof name, "head.norm%d", stage);
    if (hd->norm < BL_HEAD_BN || hd->norm > BL_HEAD_NONE)
        return bl_fail(BL_ERR_ARG, "crop head: unknown norm %d", (int)hd->norm);
    if (hd->norm == BL_HEAD_BN) TRY(bl_net_bn(net, name, *t, t));
    else if (hd->norm == BL_HEAD_GN) TRY(bl_net_gn_rows(net, name, *t, 32, t));
    snprintf(name, sizeof name, "head.relu%d", stage);
    return bl_net_relu(net, name, *t, t);
}

bl_status bl_crop_head(bl_net *net, int in, const bl_head_cfg *hd, int classes, int *out)
{
    bl_status st;
    const int W = hd->width;
    /* GN of one channel per group would output beta alone: at least 2 */
    if (W < 1 || (hd->norm == BL_HEAD_GN && (W % 32 || W < 64)))
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
    const int bias = hd->norm == BL_HEAD_NONE; /* a norm's beta replaces the fc's bias */
    TRY(bl_net_linear_rows(net, "head.fc1", t, W, bias, &t));
    /* the shuffle goes before the first norm (fc1 works row by row: the same as before it) */
    TRY(bl_net_shuffle(net, "head.shuffle", t, 1, &t));
    TRY(norm(net, hd, 1, &t));
    TRY(bl_net_linear_rows(net, "head.fc2", t, W, bias, &t));
    TRY(norm(net, hd, 2, &t));
    TRY(bl_net_linear_rows(net, "head.cls", t, classes, 1, &t));
    TRY(bl_net_shuffle(net, "head.unshuffle", t, -1, &t));
    net->crops = hd->crops;
    net->head = *hd;
    *out = t;
    return BL_OK;
}
