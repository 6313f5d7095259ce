/* bnlab precise: recompute a checkpoint's BN population statistics with PreciseBN (or the exact
 * layer-by-layer mode) and write a new checkpoint; test error before and after. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void progress(void *ctx, long done, long total)
{
    (void)ctx;
    fprintf(stderr, "\rprecise: %ld / %ld samples (%.0f%%)   ", done, total, 100.0 * done / total);
    if (done == total) fprintf(stderr, "\n");
}

int cmd_precise(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    bl_precise_cfg c;
    bl_precise_defaults(&c);
    int evaluate = 1, json = 0, threads = 2;
    char out[1024] = "", images[1024] = "", data_dir[1024];
    cli_foreign fo;
    cli_foreign_init(&fo);
    fo.reestimates = 1;
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt base[] = {
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL, "the new checkpoint (required)"},
        {"--samples", OPT_LONG, &c.samples, 0, 1, 60000, NULL,
         "training images, drawn without replacement (60000: each once)"},
        {"--batch", OPT_INT, &c.batch, 0, 1, 60000, NULL,
         "images per batch; each BN layer normalizes by its batch's statistics"},
        {"--augment", OPT_ONOFF, &c.augment, 0, 0, 0, NULL, "training augmentation (crop, flip)"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of the sample choice and augmentation"},
        {"--sequential", OPT_ONOFF, &c.sequential, 0, 0, 0, NULL,
         "exact mode: layer by layer, earlier layers already on their new statistics (no "
         "small-batch error, independent of --batch; about K/2 forwards for K BN layers)"},
        {"--norm-batch", OPT_INT, &c.plan.norm_batch, 0, 0, 60000, NULL,
         "each BN layer normalizes ghost groups of N images of a batch (0: the whole --batch)"},
        {"--head-bn-images", OPT_INT, &c.plan.head_bn_images, 0, 0, 60000, NULL,
         "a head that normalizes its own groups (resnetN-crops): the crops of groups of N images "
         "(e.g. its training's --head-bn-images; 0: the whole --batch)"},
        {"--eval", OPT_ONOFF, &evaluate, 0, 0, 0, NULL, "test error before and after"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--json", OPT_ONOFF, &json, 0, 0, 0, NULL, "print one JSON object"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
        {"--images", OPT_STR, images, sizeof images, 0, 0, NULL,
         "the images for the statistics: a folder instead of the training split (resized and cropped to the model's input; the test error stays Fashion-MNIST's)"},
        CLI_FOREIGN_OPTS(&fo),
    };
    cli_opt opts[64];
    const int n = cli_table(opts, 64, base, sizeof base / sizeof *base, &fo.fam);
    const char *pos[1];
    int np;
    int rc = cli_parse("precise", "CHECKPOINT -o OUT.safetensors [options]", argc, argv, opts, n,
                       pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1 || !out[0]) {
        fprintf(stderr, "bnlab precise: %s; usage: bnlab precise CHECKPOINT -o OUT.safetensors "
                        "[options]\n", np != 1 ? "which checkpoint?" : "where to? (-o OUT)");
        return 2;
    }
    if (!strcmp(pos[0], out)) {
        fprintf(stderr, "bnlab precise: -o %s would overwrite the input and its EMA statistics: "
                        "write to another file\n", out);
        return 2;
    }
    bl_threads_set(threads);
    /* under mpirun: each batch split into the processes' shares, the moments merged exactly in
     * rank order (bl_precise), the test split sharded; rank 0 speaks and writes */
    cli_dist dist;
    if (cli_dist_init(&dist, "precise")) return 1;
    const bl_shard shard = {dist.rank, dist.world, &dist.red};
    if (dist.world > 1) c.reducer = &dist.red, c.rank = dist.rank, c.world = dist.world;
    const int eval_batch = 256; /* activations are ~4 MB per image (resnet20) */
    bl_net net;
    bl_ckpt_info info;
    if ((rc = cli_open_checkpoint("precise", pos[0], c.batch > eval_batch ? c.batch : eval_batch,
                                  &fo, opts, n, &net, &info)))
        return cli_dist_free(&dist), rc;
    c.recipe = info.recipe;
    const bl_family *fam = bl_net_model(&net)->family;
    if (c.plan.head_bn_images && !(fam->plan_uses & BL_PLAN_HEAD_BN_IMAGES)) {
        fprintf(stderr, "bnlab precise: --head-bn-images applies to a head that normalizes its own "
                "groups (resnetN-crops); %s is a %s\n", pos[0], bl_net_arch(&net));
        bl_net_free(&net), bl_ckpt_info_free(&info), cli_dist_free(&dist);
        return 2;
    }
    /* keep the optimizer state too when there is one, so the output can still be trained on */
    if (bl_checkpoint_load(&net, pos[0], 1, NULL)) bl_error_clear();
    bl_dataset train, test = {0};
    if (cli_load_data("precise", data_dir, images, "train", &net, &train) ||
        (evaluate && cli_load_fmnist("precise", data_dir, "test", &test))) {
        bl_dataset_free(&train);
        bl_net_free(&net), bl_ckpt_info_free(&info), cli_dist_free(&dist);
        return 1;
    }
    bl_eval_result before = {.err = -1}, after = {.err = -1};
    bl_precise_report r;
    const char *src = bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source);
    double t0 = 0, secs = 0;
    if (!json) c.progress = isatty(2) ? progress : NULL;
    rc = evaluate ? bl_evaluate_shard(&net, &test, &c.recipe, BL_BN_POPULATION, 0, 0, 0, &shard,
                                      &before)
                  : BL_OK;
    if (rc == BL_ERR_STATE && bl_net_levels_check(&net)) {
        /* the per-level statistics this run estimates are not in the file: no "before" */
        if (!json) printf("note: no error before (%s)\n", bl_error());
        bl_error_clear();
        before.err = -1, rc = BL_OK;
    }
    if (!rc) t0 = cli_now(), rc = bl_precise(&net, &train, &c, &r), secs = cli_now() - t0;
    if (!rc && evaluate)
        rc = bl_evaluate_shard(&net, &test, &c.recipe, BL_BN_POPULATION, 0, 0, 0, &shard, &after);
    if (!rc) {
        char *rec = bl_precise_record(&c, &r, &net);
        rc = rec ? BL_OK : BL_ERR_NOMEM;
        bl_ckpt_info_set(&info.precise, rec);
        if (!rc && dist.rank == 0) rc = bl_checkpoint_save(&net, out, &info);
    }
    cli_decode_done();
    if (rc) {
        cli_error("precise", opts, n);
    } else if (json) {
        printf("{\"in\":\"%s\",\"out\":\"%s\",\"stats_before\":\"%s\",\"test_err_before\":", pos[0],
               out, src);
        if (evaluate && before.err >= 0) printf("%.4f", before.err);
        else printf("null");
        if (evaluate) printf(",\"test_err_after\":%.4f", after.err);
        else printf(",\"test_err_after\":null");
        printf(",\"seconds\":%.2f,\"precise\":%s}\n", secs, info.precise);
    } else {
        printf("%s (%s w=%d, epoch %d): %s statistics of %d BN layers from %ld training images, "
               "batch %d%s, augmentation %s, %.1f forward passes, %.1f s\n",
               pos[0], bl_net_arch(&net), bl_net_width(&net), info.epoch,
               c.sequential ? "exact sequential" : "PreciseBN", r.layers, c.samples, c.batch,
               c.sequential ? " (no effect on the result)" : "", c.augment ? "on" : "off",
               r.forwards, secs);
        printf("%-28s %8s %s\n", "layer", "channels", "largest standard error of a channel mean "
               "(in channel std)");
        int worst = 0;
        for (int k = 0; k < r.layers; k++) {
            const bl_bn *bn = bl_net_bn_at(&net, k);
            printf("%-28s %8d %.4f\n", bn->name, bn->cfg.channels, r.max_se[k]);
            if (r.max_se[k] > r.max_se[worst]) worst = k;
        }
        printf("worst: %.4f std in %s; it shrinks as 1/sqrt(--samples)\n", r.worst_se,
               bl_net_bn_at(&net, worst)->name);
        if (evaluate && before.err >= 0)
            printf("test error: %.2f%% with the stored (%s) statistics -> %.2f%% with the new "
                   "ones\n", before.err, src, after.err);
        else if (evaluate)
            printf("test error: %.2f%% with the new statistics\n", after.err);
        printf("wrote %s\n", out);
    }
    bl_dataset_free(&train);
    if (evaluate) bl_dataset_free(&test);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    cli_dist_free(&dist);
    return rc ? 1 : 0;
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab precise: built without zlib or cJSON: install zlib1g-dev and "
                    "libcjson-dev (scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
