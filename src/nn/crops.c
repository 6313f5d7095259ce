/* The crop head's randomness, a function of seeds and indices alone (so every process, and a
 * resumed run, draws the same): the boxes of each image and the shuffle permutation of a step. */
#include "bnlab/nn.h"

#include <math.h>

bl_status bl_crop_boxes(int n, const int *sample_ids, int K, int h, int w, double lo, double hi,
                        uint64_t seed, int stream, bl_box *boxes, int *box_image)
{
    if (K < 1) return bl_fail(BL_ERR_ARG, "crops: %d crops per image: use at least 1", K);
    if (!(lo > 0 && lo <= hi))
        return bl_fail(BL_ERR_ARG, "crops: sides in [%g, %g]: need 0 < lo <= hi", lo, hi);
    if (hi > h || hi > w)
        return bl_fail(BL_ERR_ARG, "crops: sides up to %g map pixels do not fit the %dx%d map: use "
                       "sides of at most %d", hi, h, w, h < w ? h : w);
    if (n < 0) return bl_fail(BL_ERR_ARG, "crops: %d images", n);
    const uint64_t key = bl_rng_mix(seed, BL_SALT_CROPS + (uint64_t)(int64_t)stream);
    for (int i = 0; i < n; i++) {
        bl_rng r;
        bl_rng_seed(&r, bl_rng_mix(key, (uint64_t)sample_ids[i]));
        for (int k = 0; k < K; k++) {
            const double side = lo + (hi - lo) * bl_rng_uniform(&r);
            const double x0 = (w - side) * bl_rng_uniform(&r), y0 = (h - side) * bl_rng_uniform(&r);
            boxes[(size_t)i * K + k] = (bl_box){(float)x0, (float)y0, (float)(x0 + side),
                                                (float)(y0 + side)};
            box_image[(size_t)i * K + k] = i;
        }
    }
    return BL_OK;
}

bl_status bl_shuffle_perm(uint64_t seed, long step, int total, int *perm)
{
    if (total < 0) return bl_fail(BL_ERR_ARG, "shuffle: %d items", total);
    for (int i = 0; i < total; i++) perm[i] = i;
    bl_rng r;
    bl_rng_seed(&r, bl_rng_mix(bl_rng_mix(seed, BL_SALT_SHUFFLE), (uint64_t)step));
    bl_rng_shuffle(&r, perm, total);
    return BL_OK;
}
