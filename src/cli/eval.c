/* bnlab eval: test (or train-split) error of a checkpoint with population or mini-batch
 * statistics. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

int cmd_eval(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    int stats = 0, split = 0, json = 0, norm_batch = 128, batch = 256, threads = 2, compose = 0;
    uint64_t seed = 1;
    cli_foreign fo;
    cli_foreign_init(&fo);
    char data_dir[1024];
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt opts[] = {
        {"--stats", OPT_CHOICE, &stats, 0, 0, 0, "population|minibatch",
         "population: the checkpoint's stored statistics; minibatch: each group's own"},
        {"--norm-batch", OPT_INT, &norm_batch, 0, 1, 65536, NULL,
         "mini-batch statistics: samples per normalization group"},
        {"--composition", OPT_CHOICE, &compose, 0, 0, 0, "random|class",
         "mini-batch statistics: groups of random samples (seeded), or of one class each"},
        {"--split", OPT_CHOICE, &split, 0, 0, 0, "test|train", "which Fashion-MNIST split"},
        {"--batch", OPT_INT, &batch, 0, 1, 65536, NULL, "evaluation batch (memory)"},
        {"--seed", OPT_U64, &seed, 0, 0, 9e15, NULL, "seed of the mini-batch composition"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--json", OPT_ONOFF, &json, 0, 0, 0, NULL, "print one JSON object"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
        CLI_FOREIGN_OPTS(&fo),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("eval", "CHECKPOINT [options]", argc, argv, opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1) {
        fprintf(stderr, "bnlab eval: which checkpoint? usage: bnlab eval CHECKPOINT [options]\n");
        return 2;
    }
    if (stats == 1 && norm_batch > batch) batch = norm_batch;
    bl_threads_set(threads);
    bl_net net;
    bl_ckpt_info info;
    if ((rc = cli_open_checkpoint("eval", pos[0], batch, &fo, opts, n, &net, &info))) return rc;
    bl_dataset d;
    if (cli_load_fmnist("eval", data_dir, split ? "train" : "test", &d)) {
        bl_net_free(&net);
        return 1;
    }
    bl_eval_result r;
    rc = bl_evaluate(&net, &d, &info.recipe, stats ? BL_BN_BATCH : BL_BN_POPULATION, norm_batch,
                     seed, compose, &r);
    if (rc) {
        cli_error("eval", opts, n);
    } else if (json) {
        printf("{\"err\":%.4f,\"loss\":%.6f,\"n\":%d,\"stats\":\"%s\",\"norm_batch\":", r.err,
               r.loss, r.n, stats ? "minibatch" : "population");
        if (stats) printf("%d", norm_batch);
        else printf("null");
        printf(",\"composition\":\"%s\"", stats ? (compose ? "class" : "random") : "none");
        printf(",\"split\":\"%s\",\"estimator\":\"%s\",\"epoch\":%d", split ? "train" : "test",
               bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source), info.epoch);
        if (r.levels) {
            printf(",\"arch\":\"%s\",\"head_pop\":\"%s\",\"err_level\":[", net.arch,
                   net.head.pop_level ? "level" : "shared");
            for (int k = 0; k < r.levels; k++) printf("%s%.4f", k ? "," : "", r.err_level[k]);
            printf("]");
        }
        printf("}\n");
    } else {
        printf("%s (%s w=%d, epoch %d): %s error %.2f%%, loss %.4f, %d images, %s statistics",
               pos[0], net.arch, net.width, info.epoch, split ? "train" : "test", r.err, r.loss,
               r.n, stats ? "mini-batch" : "population");
        if (stats) printf(" (groups of %d, %s)\n", norm_batch, compose ? "one class each" : "random");
        else printf(" (%s)\n", bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source));
        if (r.levels) {
            printf("  the mean of %d levels' logits; each level alone:", r.levels);
            for (int k = 0; k < r.levels; k++) printf(" %.2f%%", r.err_level[k]);
            if (net.head.norm == BL_HEAD_BN && !stats)
                printf(" (head statistics %s)", net.head.pop_level ? "per level" : "pooled");
            printf("\n");
        }
    }
    bl_dataset_free(&d);
    bl_net_free(&net);
    return rc ? 1 : 0;
#else
    fprintf(stderr, "bnlab eval: built without zlib or cJSON: install zlib1g-dev and libcjson-dev "
                    "(scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
