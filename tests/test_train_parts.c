/* Pieces of the training loop: the learning-rate schedules, the epoch order (a permutation, a
 * function of seed/epoch/rank only) and batch assembly (normalization; augmentation that depends
 * on the sample, not on which batch it sits in). */
#include "bnlab/bnlab.h"
#include "check.h"

/* bl_epoch_order(1000, 7, 3, ...)[0..1] as the code before the global sampler drew them for rank 0
 * (built from that commit): one process must keep its order */
#define EPOCH_ORDER_7_3_0 900
#define EPOCH_ORDER_7_3_1 226

int main(void)
{
    bl_train_cfg c;
    bl_train_defaults(&c);
    long T = 1000;
    CHECK(fabs(bl_lr_at(&c, 0, T, 0) - 0.1) < 1e-12, "cosine starts at the base lr");
    CHECK(fabs(bl_lr_at(&c, 500, T, 0) - 0.05) < 1e-12, "cosine is half way at T/2");
    CHECK(bl_lr_at(&c, 999, T, 0) < 1e-5, "cosine ends near 0: %g", bl_lr_at(&c, 999, T, 0));
    CHECK(fabs(bl_lr_at(&c, 9, T, 100) - 0.01) < 1e-12, "warmup is linear: %g", bl_lr_at(&c, 9, T, 100));
    CHECK(fabs(bl_lr_at(&c, 100, T, 100) - 0.1) < 1e-12, "warmup reaches the base lr");
    c.schedule = BL_SCHED_STEP;
    CHECK(bl_lr_at(&c, 499, T, 0) == 0.1 && fabs(bl_lr_at(&c, 500, T, 0) - 0.01) < 1e-12 &&
              fabs(bl_lr_at(&c, 750, T, 0) - 0.001) < 1e-12, "step schedule at 50%% and 75%%");
    c.schedule = BL_SCHED_CONST;
    c.lr_scaling = 1;
    c.batch = 4096;
    CHECK(fabs(bl_lr_at(&c, 500, T, 0) - 3.2) < 1e-12, "linear scaling: lr x batch/128");

    int a[1000], b[1000], seen[1000] = {0};
    bl_epoch_order(1000, 7, 3, a);
    bl_epoch_order(1000, 7, 3, b);
    int perm = 1;
    for (int i = 0; i < 1000; i++) perm &= seen[a[i]]++ == 0;
    CHECK(perm && !memcmp(a, b, sizeof a), "epoch order is a reproducible permutation");
    bl_epoch_order(1000, 7, 4, b);
    CHECK(memcmp(a, b, sizeof a), "a new epoch gives a new order");
    /* the order of one process is what it was when the rank was part of the seed (rank 0): the
     * first entries of seed 7, epoch 3 as that code drew them */
    CHECK(a[0] == EPOCH_ORDER_7_3_0 && a[1] == EPOCH_ORDER_7_3_1,
          "the one-process order changed: %d %d", a[0], a[1]);

    /* rank shares: W ranks tile every global batch in rank order with shares of ceil(B/W), the
     * last smaller or empty, exactly the groups bl_groups_ghost(B, ceil(B/W)) forms */
    for (int B = 1; B <= 40; B++)
        for (int W = 1; W <= 9; W++) {
            bl_groups g;
            CHECK(bl_groups_ghost(&g, B, (B + W - 1) / W) == BL_OK, "ghost: %s", bl_error());
            int next = 0, ok = 1;
            for (int r = 0; r < W; r++) {
                int off, cnt;
                bl_batch_share(B, r, W, &off, &cnt);
                ok &= off == next && cnt >= 0 && cnt <= (B + W - 1) / W;
                for (int i = off; i < off + cnt; i++) ok &= g.sample_group[i] == r;
                next = off + cnt;
            }
            ok &= next == B;
            CHECK(ok, "shares of a batch of %d over %d ranks do not tile it like ghost groups", B, W);
            bl_groups_free(&g);
        }
    {
        int off, cnt;
        bl_batch_share(9, 3, 4, &off, &cnt);
        CHECK(off == 9 && cnt == 0, "9 samples over 4 ranks: rank 3 is empty (%d, %d)", off, cnt);
        bl_batch_share(10, 3, 4, &off, &cnt);
        CHECK(off == 9 && cnt == 1, "10 samples over 4 ranks: rank 3 takes the last (%d, %d)", off,
              cnt);
    }

    /* mini-batch evaluation order: a permutation; grouped by class, groups of 8 hold one class
     * except where a class ends; random, almost none do */
    {
        static uint8_t lab2[1000], px2[1000];
        for (int i = 0; i < 1000; i++) lab2[i] = (uint8_t)((i * 7) % 10);
        bl_dataset d2 = {.n = 1000, .h = 1, .w = 1, .pixels = px2, .labels = lab2};
        int o[1000], seen[1000] = {0}, pure[2] = {0, 0};
        for (int by = 0; by < 2; by++) {
            CHECK(bl_eval_order(&d2, 5, by, o) == BL_OK, "eval order: %s", bl_error());
            int perm = 1;
            memset(seen, 0, sizeof seen);
            for (int i = 0; i < 1000; i++) perm &= !seen[o[i]]++;
            CHECK(perm, "eval order (by_class %d) is not a permutation", by);
            for (int gi = 0; gi < 125; gi++) {
                int one = 1;
                for (int k = 1; k < 8; k++) one &= lab2[o[gi * 8 + k]] == lab2[o[gi * 8]];
                pure[by] += one;
            }
        }
        CHECK(pure[1] >= 125 - 9 && pure[0] < 5, "groups of one class: %d by class, %d random",
              pure[1], pure[0]);
        int o2[1000];
        CHECK(bl_eval_order(&d2, 6, 1, o2) == BL_OK, "eval order: %s", bl_error());
        CHECK(memcmp(o, o2, sizeof o), "by class: another seed gives another order inside classes");
    }

    /* a tiny dataset: 3 images of 4x4 */
    uint8_t px[48], lab[3] = {1, 2, 3};
    for (int i = 0; i < 48; i++) px[i] = (uint8_t)(i * 5);
    bl_dataset d = {.n = 3, .h = 4, .w = 4, .pixels = px, .labels = lab};
    float x1[48], x2[32];
    uint8_t y1[3], y2[2];
    int idx1[3] = {0, 1, 2}, idx2[2] = {2, 0};
    bl_recipe rc = bl_recipe_fmnist();
    CHECK(bl_recipe_check(&rc) == BL_OK && rc.channels == 1 && rc.classes == 10 && rc.pad == 2 &&
              rc.flip, "the Fashion-MNIST recipe");
    bl_dataset_batch(&d, &rc, idx1, 3, NULL, x1, y1);
    CHECK(fabs(x1[5] - (25 / 255.0f - 0.2860f) / 0.3530f) < 1e-6 && y1[2] == 3, "normalization");
    bl_recipe other = rc;
    other.mean[0] = 0.5f, other.std[0] = 0.25f;
    float xo[48];
    bl_dataset_batch(&d, &other, idx1, 3, NULL, xo, y1);
    CHECK(xo[5] == (25 / 255.0f - 0.5f) / 0.25f, "the recipe's normalization is used");
    other.std[0] = 0;
    CHECK(bl_recipe_check(&other) == BL_ERR_ARG && strstr(bl_error(), "recipe.std"),
          "a zero std is refused, naming the field: %s", bl_error());
    bl_augment aug = {42, 5};
    bl_dataset_batch(&d, &rc, idx1, 3, &aug, x1, y1);
    bl_dataset_batch(&d, &rc, idx2, 2, &aug, x2, y2);
    CHECK(!memcmp(x1 + 32, x2, 16 * sizeof(float)) && !memcmp(x1, x2 + 16, 16 * sizeof(float)) &&
              y2[0] == 3, "augmentation of a sample does not depend on its batch");
    int differs = 0;
    for (int e = 0; e < 8; e++) {
        float x3[48];
        aug.epoch = e;
        bl_dataset_batch(&d, &rc, idx1, 3, &aug, x3, y1);
        differs |= memcmp(x3, x1, sizeof x3) != 0;
        float black = (0 - rc.mean[0]) / rc.std[0], lo = 1e9f;
        for (int i = 0; i < 48; i++) lo = fminf(lo, x3[i]);
        CHECK(lo >= black - 1e-6f, "padding is a black pixel");
    }
    CHECK(differs, "augmentation changes with the epoch");
    return check_done("test_train_parts");
}
