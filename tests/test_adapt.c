/* bl_adapt on a trained model (the PyTorch-trained resnet8 w=4 fixture) and Fashion-MNIST-C:
 * target statistics cut the error of a contrast-5 test split; the pool is the first half and the
 * evaluation set the second; draws are reproducible and differ from each other; without keep the
 * net comes back bit for bit, with keep it holds exactly the first draw's PreciseBN statistics;
 * bad arguments are refused and change nothing. */
#include "bnlab/bnlab.h"
#include "check.h"

static int same_stats(const bl_net *a, const float *saved)
{
    return !memcmp(bl_net_block(a, BL_BLOCK_BUFFERS, NULL), saved,
                   bl_net_floats(a, BL_BLOCK_BUFFERS) * sizeof(float));
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    char path[1024];
    snprintf(path, sizeof path, "%s/torch_resnet8_w4.safetensors", dir);
    bl_threads_set(2);
    bl_model_spec spec;
    bl_model_spec_defaults(&spec);
    snprintf(spec.model, sizeof spec.model, "resnet8");
    spec.width = 4;
    spec.recipe.mean[0] = 0.5f, spec.recipe.std[0] = 0.5f;
    bl_net net;
    bl_ckpt_info info;
    bl_dataset test, target;
    if (bl_checkpoint_open(path, 256, &spec, &net, &info) || bl_fmnist_load(NULL, "test", &test)) {
        CHECK(0, "setup: %s", bl_error());
        return check_done("test_adapt");
    }
    CHECK(bl_corrupt_dataset(&test, BL_CORRUPT_CONTRAST, 5, 1, &target) == BL_OK, "%s", bl_error());
    float *orig = malloc(bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));
    memcpy(orig, bl_net_block(&net, BL_BLOCK_BUFFERS, NULL),
           bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));

    bl_adapt_cfg c;
    bl_adapt_defaults(&c);
    c.recipe = info.recipe, c.samples = 500, c.draws = 3;
    static bl_adapt_report r, r2;
    CHECK(bl_adapt(&net, &target, &c, 0, &r) == BL_OK, "adapt: %s", bl_error());
    CHECK(r.n_pool == 5000 && r.n_eval == 5000 && r.draws == 3, "pool %d eval %d", r.n_pool,
          r.n_eval);
    CHECK(r.err_target + 10 < r.err_source, "contrast 5: target statistics %.2f%% vs source %.2f%%",
          r.err_target, r.err_source);
    CHECK(r.err_draw[0] != r.err_draw[1] || r.err_draw[1] != r.err_draw[2],
          "three draws, one error: %.2f", r.err_draw[0]);
    CHECK(r.err_target_sd > 0 && r.err_target_sd < 5, "spread %.3f", r.err_target_sd);
    CHECK(same_stats(&net, orig), "without keep the statistics come back");
    printf("contrast 5, N 500: source %.2f%%, target %.2f%% +- %.2f\n", r.err_source, r.err_target,
           r.err_target_sd);

    /* the source error is the stored statistics' on the second half */
    int idx[5000];
    for (int i = 0; i < 5000; i++) idx[i] = 5000 + i;
    bl_dataset half, pool;
    CHECK(bl_dataset_subset(&target, idx, 5000, &half) == BL_OK, "%s", bl_error());
    bl_eval_result e;
    CHECK(bl_evaluate(&net, &half, &info.recipe, BL_BN_POPULATION, 0, 0, 0, &e) == BL_OK &&
              e.err == r.err_source, "source error on the second half: %.2f vs %.2f", e.err,
          r.err_source);

    /* reproducible; keep leaves the first draw's statistics, which are PreciseBN's on the pool */
    c.draws = 1;
    CHECK(bl_adapt(&net, &target, &c, 1, &r2) == BL_OK && r2.err_target == r.err_draw[0],
          "the first draw again: %.2f vs %.2f", r2.err_target, r.err_draw[0]);
    char *rec = bl_precise_record(&r2.precise_cfg, &r2.precise, &net);
    CHECK(rec && strstr(rec, "\"samples\":500") && strstr(rec, "\"augment\":false"),
          "record: %.80s", rec ? rec : bl_error());
    free(rec);
    float *adapted = malloc(bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));
    memcpy(adapted, bl_net_block(&net, BL_BLOCK_BUFFERS, NULL),
           bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));
    CHECK(!same_stats(&net, orig), "keep: the target statistics stay");
    memcpy(bl_net_block(&net, BL_BLOCK_BUFFERS, NULL), orig,
           bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));
    for (int i = 0; i < 5000; i++) idx[i] = i;
    CHECK(bl_dataset_subset(&target, idx, 5000, &pool) == BL_OK, "%s", bl_error());
    bl_precise_cfg pc;
    bl_precise_defaults(&pc);
    pc.samples = 500, pc.augment = 0, pc.seed = 1, pc.recipe = info.recipe;
    bl_precise_report pr;
    CHECK(bl_precise(&net, &pool, &pc, &pr) == BL_OK && same_stats(&net, adapted),
          "keep = PreciseBN of 500 pool images without augmentation");
    memcpy(bl_net_block(&net, BL_BLOCK_BUFFERS, NULL), orig,
           bl_net_floats(&net, BL_BLOCK_BUFFERS) * sizeof(float));

    /* the clean test set's own statistics change little */
    bl_adapt_report rc;
    CHECK(bl_adapt(&net, &test, &c, 0, &rc) == BL_OK && fabs(rc.err_target - rc.err_source) < 3,
          "clean: %.2f vs %.2f", rc.err_target, rc.err_source);

    /* bad arguments: nothing changes */
    c.samples = 5001;
    CHECK(bl_adapt(&net, &target, &c, 1, &r2) == BL_ERR_ARG && strstr(bl_error(), "cfg.samples") &&
              same_stats(&net, orig), "more samples than the pool: %s", bl_error());
    c.samples = 100;
    c.recipe.channels = 3;
    CHECK(bl_adapt(&net, &target, &c, 1, &r2) == BL_ERR_ARG && strstr(bl_error(), "28x28x3") &&
              same_stats(&net, orig), "a recipe of another shape: %s", bl_error());
    free(orig), free(adapted);
    bl_dataset_free(&half), bl_dataset_free(&pool), bl_dataset_free(&target);
    bl_dataset_free(&test);
    bl_net_free(&net);
    bl_ckpt_info_free(&info);
    return check_done("test_adapt");
}
