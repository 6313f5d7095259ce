/* Batches: normalization, augmentation and the per-epoch order. Everything random is a function
 * of (seed, epoch, sample) so a run can be resumed or split across processes reproducibly. */
#include "bnlab/data.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bl_epoch_order(int n, uint64_t seed, int epoch, int rank, int *order)
{
    bl_rng r;
    bl_rng_seed(&r, mix(mix(seed, 0x5eed0000u + (uint64_t)epoch), (uint64_t)rank));
    for (int i = 0; i < n; i++) order[i] = i;
    bl_rng_shuffle(&r, order, n);
}

void bl_dataset_batch(const bl_dataset *d, const int *idx, int n, const bl_augment *aug, float *x,
                      uint8_t *y)
{
    const int H = d->h, W = d->w;
    const float mean = aug ? aug->mean : BL_FMNIST_MEAN, std = aug ? aug->std : BL_FMNIST_STD;
    const float black = (0.0f - mean) / std;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const uint8_t *img = d->pixels + (size_t)idx[i] * H * W;
        float *o = x + (size_t)i * H * W;
        int dy = 0, dx = 0, flip = 0;
        if (aug && (aug->pad || aug->flip)) {
            bl_rng r;
            bl_rng_seed(&r, mix(mix(aug->seed, 0xa0a0u + (uint64_t)aug->epoch), (uint64_t)idx[i]));
            if (aug->pad) {
                dy = (int)bl_rng_below(&r, 2 * aug->pad + 1) - aug->pad;
                dx = (int)bl_rng_below(&r, 2 * aug->pad + 1) - aug->pad;
            }
            if (aug->flip) flip = (int)(bl_rng_u64(&r) >> 63);
        }
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                int sy = yy + dy, sx = (flip ? W - 1 - xx : xx) + dx;
                o[yy * W + xx] = (sy < 0 || sy >= H || sx < 0 || sx >= W)
                                     ? black
                                     : (img[sy * W + sx] / 255.0f - mean) / std;
            }
        y[i] = d->labels[idx[i]];
    }
}

bl_status bl_dataset_subset(const bl_dataset *src, const int *order, int n, bl_dataset *out)
{
    memset(out, 0, sizeof *out);
    size_t px = (size_t)src->h * src->w;
    out->pixels = bl_alloc((size_t)n * px + 1);
    out->labels = bl_alloc((size_t)n + 1);
    if (!out->pixels || !out->labels) {
        bl_dataset_free(out);
        return BL_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        memcpy(out->pixels + (size_t)i * px, src->pixels + (size_t)order[i] * px, px);
        out->labels[i] = src->labels[order[i]];
    }
    out->n = n, out->h = src->h, out->w = src->w;
    return BL_OK;
}
