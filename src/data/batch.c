#define _POSIX_C_SOURCE 200809L
/* Batches: normalization, augmentation and the per-epoch order. Everything random is a function
 * of (seed, epoch, sample) so a run can be resumed or split across processes reproducibly. */
#include "bnlab/data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_recipe bl_recipe_fmnist(void)
{
    bl_recipe r = {"fashion-mnist", 1, 10, {0.2860f}, {0.3530f}, 2, 1};
    return r;
}

bl_status bl_recipe_check(const bl_recipe *r)
{
    /* the name goes into JSON metadata unescaped: letters, digits, '.', '_', '-' only */
    size_t len = strnlen(r->name, sizeof r->name);
    if (len == 0 || len == sizeof r->name || r->name[strspn(r->name, "abcdefghijklmnopqrstuvwxyz"
                                                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")])
        return bl_fail(BL_ERR_ARG, "recipe.name '%.*s': use 1 to %zu letters, digits, '.', '_' "
                       "or '-'", (int)(sizeof r->name), r->name, sizeof r->name - 1);
    if (r->channels < 1 || r->channels > BL_RECIPE_MAX_CHANNELS)
        return bl_fail(BL_ERR_ARG, "recipe.channels %d: use 1..%d", r->channels,
                       BL_RECIPE_MAX_CHANNELS);
    if (r->classes < 2) return bl_fail(BL_ERR_ARG, "recipe.classes %d: need at least 2", r->classes);
    for (int c = 0; c < r->channels; c++) {
        if (!isfinite(r->mean[c]))
            return bl_fail(BL_ERR_ARG, "recipe.mean of channel %d is not finite", c);
        if (!(r->std[c] > 0) || !isfinite(r->std[c]))
            return bl_fail(BL_ERR_ARG, "recipe.std of channel %d is %g: must be positive", c,
                           r->std[c]);
    }
    if (r->pad < 0 || r->pad > 64)
        return bl_fail(BL_ERR_ARG, "recipe.pad %d: use 0..64 pixels", r->pad);
    return BL_OK;
}

int bl_recipe_json(const bl_recipe *r, char *buf, size_t len)
{
    char mean[128] = "", std[128] = "";
    for (int c = 0, om = 0, os = 0; c < r->channels && c < BL_RECIPE_MAX_CHANNELS; c++) {
        om += snprintf(mean + om, sizeof mean - om, "%s%.9g", c ? "," : "", r->mean[c]);
        os += snprintf(std + os, sizeof std - os, "%s%.9g", c ? "," : "", r->std[c]);
    }
    return snprintf(buf, len, "{\"name\":\"%s\",\"channels\":%d,\"classes\":%d,\"mean\":[%s],"
                    "\"std\":[%s],\"pad\":%d,\"flip\":%s}", r->name, r->channels, r->classes, mean,
                    std, r->pad, r->flip ? "true" : "false");
}

void bl_epoch_order(int n, uint64_t seed, int epoch, int *order)
{
    bl_rng r;
    /* the trailing 0 was the rank before the order became global: kept, so orders stay the same */
    bl_rng_seed(&r, bl_rng_mix(bl_rng_mix(seed, BL_SALT_ORDER + (uint64_t)epoch), 0));
    for (int i = 0; i < n; i++) order[i] = i;
    bl_rng_shuffle(&r, order, n);
}

void bl_batch_share(int batch, int rank, int world, int *offset, int *count)
{
    const int share = (batch + world - 1) / world;
    const long lo = (long)rank * share, hi = lo + share < batch ? lo + share : batch;
    *offset = lo < batch ? (int)lo : batch;
    *count = hi > lo ? (int)(hi - lo) : 0;
}

bl_status bl_dataset_batch(const bl_dataset *d, const bl_recipe *rc, const int *idx, int n,
                           const bl_augment *aug, float *x, uint8_t *y)
{
    const int H = d->h, W = d->w, C = bl_dataset_channels(d);
    const size_t S = bl_dataset_sample(d);
    const int pad = aug ? rc->pad : 0, flip_on = aug ? rc->flip : 0;
    /* a source's images fetched first; image i of the batch is then row i of that buffer */
    uint8_t *fetched = NULL;
    if (d->source && n > 0) {
        fetched = bl_malloc((size_t)n * S);
        int *src = bl_malloc(sizeof(int) * (size_t)n);
        bl_status st = fetched && src ? BL_OK : bl_fail(BL_ERR_NOMEM, "out of memory for a batch");
        for (int i = 0; !st && i < n; i++) src[i] = d->map ? d->map[idx[i]] : idx[i];
        if (!st) st = d->source->fetch(d->source->ctx, src, n, fetched);
        free(src);
        if (!st && d->source->progress) {
            d->source->fetched += n;
            d->source->progress(d->source->progress_ctx, d->source->fetched, d->n);
        }
        if (st) {
            free(fetched);
            memset(x, 0, sizeof(float) * (size_t)n * S);
            return st;
        }
    }
    const uint8_t *pixels = fetched ? fetched : d->pixels;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *o = x + (size_t)i * S;
        int dy = 0, dx = 0, flip = 0;
        if (pad || flip_on) {
            bl_rng r;
            bl_rng_seed(&r, bl_rng_mix(bl_rng_mix(aug->seed, BL_SALT_AUGMENT + (uint64_t)aug->epoch), (uint64_t)idx[i]));
            if (pad) {
                dy = (int)bl_rng_below(&r, 2 * pad + 1) - pad;
                dx = (int)bl_rng_below(&r, 2 * pad + 1) - pad;
            }
            if (flip_on) flip = (int)(bl_rng_u64(&r) >> 63);
        }
        for (int c = 0; c < C; c++) {
            /* float values are taken as they are: padding is 0 */
            const float mean = d->values ? 0.0f : rc->mean[c < BL_RECIPE_MAX_CHANNELS ? c : 0];
            const float std = d->values ? 1.0f : rc->std[c < BL_RECIPE_MAX_CHANNELS ? c : 0];
            const float black = d->values ? 0.0f : (0.0f - mean) / std;
            for (int yy = 0; yy < H; yy++)
                for (int xx = 0; xx < W; xx++) {
                    const int sy = yy + dy, sx = (flip ? W - 1 - xx : xx) + dx;
                    const size_t img = fetched ? (size_t)i : (size_t)idx[i];
                    const size_t at = (img * H * W + (size_t)sy * W + sx) * C + c;
                    float v = black;
                    if (sy >= 0 && sy < H && sx >= 0 && sx < W)
                        v = d->values ? d->values[at] : (pixels[at] / 255.0f - mean) / std;
                    o[((size_t)yy * W + xx) * C + c] = v;
                }
        }
        if (y) y[i] = d->labels ? d->labels[idx[i]] : 0;
    }
    free(fetched);
    return BL_OK;
}

bl_status bl_dataset_subset(const bl_dataset *src, const int *order, int n, bl_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (src->source) {
        /* a view of the same source: the images stay where they are, the indices are mapped */
        out->map = bl_malloc(sizeof(int) * (size_t)(n ? n : 1));
        out->labels = src->labels ? bl_alloc((size_t)n + 1) : NULL;
        if (!out->map || (src->labels && !out->labels)) {
            bl_dataset_free(out);
            return bl_fail(BL_ERR_NOMEM, "out of memory for a subset of %d images", n);
        }
        for (int i = 0; i < n; i++) {
            out->map[i] = src->map ? src->map[order[i]] : order[i];
            if (src->labels) out->labels[i] = src->labels[order[i]];
        }
        out->source = src->source, out->owns_source = 1;
        src->source->refs++; /* the subset keeps the images alive after its parent goes */
        out->n = n, out->h = src->h, out->w = src->w, out->c = src->c;
        return BL_OK;
    }
    const size_t px = bl_dataset_sample(src), es = src->values ? sizeof(float) : 1;
    void *data = bl_alloc((size_t)n * px * es + 1);
    out->labels = src->labels ? bl_alloc((size_t)n + 1) : NULL;
    if (src->values) out->values = data;
    else out->pixels = data;
    if (!data || (src->labels && !out->labels)) {
        bl_dataset_free(out);
        return bl_fail(BL_ERR_NOMEM, "out of memory for a subset of %d images", n);
    }
    const char *from = src->values ? (const char *)src->values : (const char *)src->pixels;
    for (int i = 0; i < n; i++) {
        memcpy((char *)data + (size_t)i * px * es, from + (size_t)order[i] * px * es, px * es);
        if (src->labels) out->labels[i] = src->labels[order[i]];
    }
    out->n = n, out->h = src->h, out->w = src->w, out->c = src->c;
    return BL_OK;
}
