/* bnlab eval: test (or train-split) error of a checkpoint with population or mini-batch
 * statistics. */
#include "cli/cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A multi-level head's BN layers: how far each level's population statistics are from the pooled
 * ones - over channels, the mean and largest |mu_level - mu_pooled| / sqrt(var_pooled + eps) and
 * |log((var_level + eps) / (var_pooled + eps))|. What normalizing a level with the other kind
 * shifts and scales its features by (E7 reads it). */
static void level_shift(const bl_net *net, int json)
{
    int first = 1;
    for (int i = 0; i < bl_net_bn_count(net); i++) {
        /* a BN over several levels: its per-level cores, then the pooled one */
        const bl_bn_where at = bl_net_bn_where(net, i);
        if (at.parts < 2 || at.part) continue;
        const bl_bn *pool = bl_net_bn_at(net, i + at.parts);
        if (json) printf("%s\"%s\":[", first ? ",\"level_shift\":{" : ",", pool->name);
        else printf("  %s, each level's statistics vs the pooled (mean/max over channels):", pool->name);
        for (int k = 0; k < at.parts; k++) {
            const bl_bn *b = bl_net_bn_at(net, i + k);
            const double eps = b->cfg.eps;
            double sm = 0, sx = 0, vm = 0, vx = 0;
            const int C = b->cfg.channels;
            for (int c = 0; c < C; c++) {
                const double sd = sqrt(pool->pop_var[c] + eps);
                const double sh = fabs(b->pop_mean[c] - pool->pop_mean[c]) / sd;
                const double lv = fabs(log((b->pop_var[c] + eps) / (pool->pop_var[c] + eps)));
                sm += sh / C, vm += lv / C;
                sx = sh > sx ? sh : sx, vx = lv > vx ? lv : vx;
            }
            if (json)
                printf("%s{\"shift_mean\":%.4f,\"shift_max\":%.4f,\"logvar_mean\":%.4f,"
                       "\"logvar_max\":%.4f}", k ? "," : "", sm, sx, vm, vx);
            else
                printf(" L%d shift %.2f/%.2f std, |log var ratio| %.2f/%.2f;", k, sm, sx, vm, vx);
        }
        printf(json ? "]" : "\n");
        first = 0;
    }
    if (json && !first) printf("}");
}

int cmd_eval(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    int stats = 0, split = 0, json = 0, norm_batch = 128, batch = 256, threads = 2, compose = 0;
    uint64_t seed = 1;
    cli_foreign fo;
    cli_foreign_init(&fo);
    char images[1024] = "", data_dir[1024];
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt base[] = {
        {"--stats", OPT_CHOICE, &stats, 0, 0, 0, "population|minibatch",
         "population: the checkpoint's stored statistics; minibatch: each group's own"},
        {"--norm-batch", OPT_INT, &norm_batch, 0, 1, 65536, NULL,
         "mini-batch statistics: samples per normalization group (a crop head: the images whose "
         "crops its BN normalizes together, the backbone on population statistics; the paper's "
         "test batch is 1)"},
        {"--composition", OPT_CHOICE, &compose, 0, 0, 0, "random|class",
         "mini-batch statistics: groups of random samples (seeded), or of one class each"},
        {"--split", OPT_CHOICE, &split, 0, 0, 0, "test|train", "which Fashion-MNIST split"},
        {"--batch", OPT_INT, &batch, 0, 1, 65536, NULL, "evaluation batch (memory)"},
        {"--seed", OPT_U64, &seed, 0, 0, 9e15, NULL, "seed of the mini-batch composition"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--json", OPT_ONOFF, &json, 0, 0, 0, NULL, "print one JSON object"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
        {"--images", OPT_STR, images, sizeof images, 0, 0, NULL,
         "the images to evaluate: a folder instead of Fashion-MNIST (class subfolders give the labels; resized and "
         "cropped to the model's input)"},
        CLI_FOREIGN_OPTS(&fo),
    };
    cli_opt opts[64];
    const int n = cli_table(opts, 64, base, sizeof base / sizeof *base, &fo.fam);
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
    if (cli_load_data("eval", data_dir, images, split ? "train" : "test", &net, &d)) {
        bl_net_free(&net), bl_ckpt_info_free(&info);
        return 1;
    }
    /* a head's choices, where the model has them (the multi-level head's) */
    char head_pop[16] = "", head_norm[16] = "";
    const bl_family_opt *hp = bl_family_opt_find(bl_net_model(&net)->family, "head_pop"),
                        *hn = bl_family_opt_find(bl_net_model(&net)->family, "head_norm");
    if (hp) bl_model_format(bl_net_model(&net), hp, head_pop, sizeof head_pop);
    if (hn) bl_model_format(bl_net_model(&net), hn, head_norm, sizeof head_norm);
    bl_eval_result r;
    rc = bl_evaluate(&net, &d, &info.recipe, stats ? BL_BN_BATCH : BL_BN_POPULATION, norm_batch,
                     seed, compose, &r);
    cli_decode_done();
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
        if (r.outputs) {
            printf(",\"arch\":\"%s\",\"head_pop\":\"%s\",\"err_level\":[", bl_net_arch(&net),
                   head_pop);
            for (int k = 0; k < r.outputs; k++) printf("%s%.4f", k ? "," : "", r.err_level[k]);
            printf("]");
            level_shift(&net, 1);
        }
        printf("}\n");
    } else {
        printf("%s (%s w=%d, epoch %d): %s error %.2f%%, loss %.4f, %d images, %s statistics",
               pos[0], bl_net_arch(&net), bl_net_width(&net), info.epoch, split ? "train" : "test",
               r.err, r.loss, r.n, stats ? "mini-batch" : "population");
        if (stats) printf(" (groups of %d, %s)\n", norm_batch, compose ? "one class each" : "random");
        else printf(" (%s)\n", bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source));
        if (r.outputs) {
            printf("  the mean of %d levels' logits; each level alone:", r.outputs);
            for (int k = 0; k < r.outputs; k++) printf(" %.2f%%", r.err_level[k]);
            if (!strcmp(head_norm, "bn") && !stats)
                printf(" (head statistics %s)", !strcmp(head_pop, "level") ? "per level" : "pooled");
            printf("\n");
            level_shift(&net, 0);
        }
    }
    bl_dataset_free(&d);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    return rc ? 1 : 0;
#else
    fprintf(stderr, "bnlab eval: built without zlib or cJSON: install zlib1g-dev and libcjson-dev "
                    "(scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
