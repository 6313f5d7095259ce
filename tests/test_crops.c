/* The crop head's randomness: boxes inside the map with sides in range, a function of (seed,
 * stream, sample) alone (the same for a sample wherever it sits in the batch; other for another
 * epoch or seed), sides and corners uniform (means and the spread of the corners); the shuffle
 * permutation is a permutation, the same on every call, other for another step or seed; bad
 * input refused (crops larger than the map, no crops). */
#include "bnlab/bnlab.h"
#include "check.h"

int main(void)
{
    enum { N = 2000, K = 16, H = 14, W = 14 };
    static bl_box b[N * K], b2[K * 2];
    static int img[N * K], img2[K * 2], ids[N];
    for (int i = 0; i < N; i++) ids[i] = 1000 + i;
    CHECK(bl_crop_boxes(N, ids, K, H, W, 4, 10, 7, 3, b, img) == BL_OK, "boxes: %s", bl_error());
    int inside = 1, in_range = 1, owners = 1;
    double side_sum = 0, cx_sum = 0, cx2 = 0;
    for (int i = 0; i < N * K; i++) {
        const double s = b[i].x1 - b[i].x0;
        inside &= b[i].x0 >= 0 && b[i].y0 >= 0 && b[i].x1 <= W && b[i].y1 <= H;
        in_range &= s >= 4 - 1e-5 && s <= 10 + 1e-5 && fabs((b[i].y1 - b[i].y0) - s) < 1e-5;
        owners &= img[i] == i / K;
        side_sum += s;
        const double cx = (b[i].x0 + b[i].x1) / 2;
        cx_sum += cx, cx2 += cx * cx;
    }
    CHECK(inside, "a box leaves the map");
    CHECK(in_range, "a box is not a square with a side in [4, 10]");
    CHECK(owners, "box_image");
    const double M = (double)N * K, mean_side = side_sum / M, mean_cx = cx_sum / M;
    CHECK(fabs(mean_side - 7) < 0.05, "mean side %.4f, expected 7", mean_side);
    CHECK(fabs(mean_cx - 7) < 0.05, "mean centre %.4f, expected 7 (the map's middle)", mean_cx);
    /* centre = s/2 + (W - s) U, whose mean is W/2 whatever the side s ~ U[4, 10]: variance
     * E[(W - s)^2] / 12 */
    const double var_cx = cx2 / M - mean_cx * mean_cx, es2 = (16 + 40 + 100) / 3.0;
    const double want = (W * W - 2 * W * 7 + es2) / 12;
    CHECK(fabs(var_cx - want) < 0.05 * want, "centre variance %.3f, expected %.3f", var_cx, want);

    /* the same sample, elsewhere in another batch: the same boxes; another stream or seed: not */
    int two[2] = {1005, 1000};
    CHECK(bl_crop_boxes(2, two, K, H, W, 4, 10, 7, 3, b2, img2) == BL_OK, "boxes: %s", bl_error());
    CHECK(!memcmp(b2, b + 5 * K, K * sizeof(bl_box)) && !memcmp(b2 + K, b, K * sizeof(bl_box)),
          "a sample's boxes depend on its place in the batch");
    CHECK(img2[K] == 1, "box_image of the second image");
    CHECK(bl_crop_boxes(1, ids, K, H, W, 4, 10, 7, 4, b2, img2) == BL_OK &&
              memcmp(b2, b, K * sizeof(bl_box)), "another epoch gives the same boxes");
    CHECK(bl_crop_boxes(1, ids, K, H, W, 4, 10, 8, 3, b2, img2) == BL_OK &&
              memcmp(b2, b, K * sizeof(bl_box)), "another seed gives the same boxes");

    /* bad input */
    CHECK(bl_crop_boxes(1, ids, K, H, W, 4, 15, 7, 3, b2, img2) == BL_ERR_ARG &&
              strstr(bl_error(), "do not fit the 14x14 map"), "crops larger than the map: %s", bl_error());
    CHECK(bl_crop_boxes(1, ids, 0, H, W, 4, 10, 7, 3, b2, img2) == BL_ERR_ARG &&
              strstr(bl_error(), "0 crops per image"), "no crops: %s", bl_error());
    CHECK(bl_crop_boxes(1, ids, K, H, W, 5, 4, 7, 3, b2, img2) == BL_ERR_ARG, "lo > hi");

    /* the shuffle permutation */
    enum { T = 1000 };
    static int p[T], q[T], seen[T];
    CHECK(bl_shuffle_perm(1, 42, T, p) == BL_OK && bl_shuffle_perm(1, 42, T, q) == BL_OK,
          "perm: %s", bl_error());
    int perm = 1, fixed = 0;
    for (int i = 0; i < T; i++) {
        perm &= p[i] >= 0 && p[i] < T && !seen[p[i]];
        if (p[i] >= 0 && p[i] < T) seen[p[i]] = 1;
        fixed += p[i] == i;
    }
    CHECK(perm, "not a permutation");
    CHECK(fixed < 10, "%d fixed points of 1000: not shuffled", fixed);
    CHECK(!memcmp(p, q, sizeof p), "the same step gives another permutation");
    CHECK(bl_shuffle_perm(1, 43, T, q) == BL_OK && memcmp(p, q, sizeof p), "another step: the same");
    CHECK(bl_shuffle_perm(2, 42, T, q) == BL_OK && memcmp(p, q, sizeof p), "another seed: the same");
    return check_done("test_crops");
}
