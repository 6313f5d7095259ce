/* bnlab adapt: a checkpoint's BN population statistics re-estimated on images of a target domain
 * (a Fashion-MNIST-C corruption, the clean test set, or any IDX split), and its error with the
 * source and with the target statistics on the same held-out target images. */
#include "cli/cli.h"

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
#include <cjson/cJSON.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the online stream's progress on a terminal: the error so far */
void cli_adapt_stream(void *ctx, long seen, double err)
{
    (void)ctx;
    if (!isatty(2)) return;
    fprintf(stderr, "\ronline: %ld images, error so far %.2f%%   ", seen, err);
}

int cmd_adapt(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    bl_adapt_cfg c;
    bl_adapt_defaults(&c);
    char target[96] = "", target_dir[1024] = "", out[1024] = "", data_dir[1024], images[1024] = "";
    int json = 0, threads = 2;
    uint64_t corrupt_seed = 1;
    cli_foreign fo;
    cli_foreign_init(&fo);
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt base[] = {
        {"--target", OPT_STR, target, sizeof target, 0, 0, NULL,
         "NAME[:SEVERITY]: a corruption of the test split (bnlab corrupt's names, severity 1-5, "
         "default 3), or clean: the clean test split"},
        {"--images", OPT_STR, images, sizeof images, 0, 0, NULL,
         "instead of --target: an image folder (class subfolders give the labels; resized and "
         "cropped to the model's input; cut and streamed in a seeded permutation)"},
        {"--target-dir", OPT_STR, target_dir, sizeof target_dir, 0, 0, NULL,
         "instead of --target: the test split (t10k-*-idx*-ubyte.gz) in this directory"},
        {"--samples", OPT_LONG, &c.samples, 0, 1, 60000, NULL,
         "N target images for the statistics, from the adaptation pool (the first half)"},
        {"--batch", OPT_INT, &c.batch, 0, 1, 60000, NULL, "PreciseBN batch"},
        {"--sequential", OPT_ONOFF, &c.sequential, 0, 0, 0, NULL,
         "the exact layer-by-layer mode (see bnlab precise --help)"},
        {"--draws", OPT_INT, &c.draws, 0, 1, BL_ADAPT_MAX_DRAWS, NULL,
         "independent draws of N images (mean and spread of the error)"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of the draws (draw k: seed + k)"},
        {"--prior", OPT_DOUBLE, &c.prior, 0, 0, 1e12, NULL,
         "N: mix the target statistics with the source's as (N source + n target) / (N + n), "
         "n the target images used (Schneider et al. 2020; 0: target alone)"},
        {"--online", OPT_ONOFF, &c.online, 0, 0, 0, NULL,
         "stream the held-out images in batches of --batch: each batch predicted with the "
         "statistics of all batches so far, mixed by --prior (no pool, --samples unused)"},
        {"--corrupt-seed", OPT_U64, &corrupt_seed, 0, 0, 9e15, NULL,
         "seed of the corruption (bnlab corrupt --seed)"},
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL,
         "write the checkpoint with the target statistics (the first draw's)"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--json", OPT_ONOFF, &json, 0, 0, 0, NULL, "print one JSON object"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL,
         "Fashion-MNIST IDX files (the clean split --target corrupts)"},
        CLI_FOREIGN_OPTS(&fo),
    };
    cli_opt opts[64];
    const int n = cli_table(opts, 64, base, sizeof base / sizeof *base, &fo.fam);
    const char *pos[1];
    int np;
    int rc = cli_parse("adapt", "CHECKPOINT --target NAME[:SEVERITY] [options]", argc, argv, opts,
                       n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    const int given = !!target[0] + !!target_dir[0] + !!images[0];
    if (np != 1 || given != 1) {
        fprintf(stderr, "bnlab adapt: %s; usage: bnlab adapt CHECKPOINT --target NAME[:SEVERITY] "
                        "[options]\n", np != 1 ? "which checkpoint?"
                        : given > 1 ? "one of --target, --target-dir and --images"
                                    : "which target? (--target contrast:5, --target clean, "
                                      "--target-dir DIR or --images DIR)");
        return 2;
    }
    if (out[0] && !strcmp(out, pos[0])) {
        fprintf(stderr, "bnlab adapt: -o %s would overwrite the input: write to another file\n",
                out);
        return 2;
    }
    /* the target: clean, NAME[:SEV], or a directory */
    bl_corruption corr = BL_CORRUPT_COUNT;
    int severity = 0;
    char name[1100] = "clean"; /* "dir:" and a --target-dir path, whole */
    if (target[0]) {
        snprintf(name, sizeof name, "%s", target);
        char *colon = strchr(name, ':');
        if (colon) {
            *colon = 0;
            char *end;
            long s = strtol(colon + 1, &end, 10);
            if (*end || end == colon + 1 || s < 1 || s > 5) {
                fprintf(stderr, "bnlab adapt: --target %s: the severity must be 1..5\n", target);
                return 2;
            }
            severity = (int)s;
        }
        if (strcmp(name, "clean")) {
            if (bl_corruption_parse(name, &corr)) {
                fprintf(stderr, "bnlab adapt: --target: %s, or clean\n", bl_error());
                return 2;
            }
            snprintf(name, sizeof name, "%s", bl_corruption_name(corr));
            if (!severity) severity = 3;
        } else if (severity) {
            fprintf(stderr, "bnlab adapt: --target clean takes no severity\n");
            return 2;
        }
    } else if (target_dir[0]) {
        snprintf(name, sizeof name, "dir:%s", target_dir);
    } else {
        snprintf(name, sizeof name, "images:%s", images);
        c.permute = 1; /* a folder comes in class order */
    }
    bl_threads_set(threads);
    const int eval_batch = 256;
    bl_net net;
    bl_ckpt_info info;
    if ((rc = cli_open_checkpoint("adapt", pos[0], c.batch > eval_batch ? c.batch : eval_batch,
                                  &fo, opts, n, &net, &info)))
        return rc;
    c.recipe = info.recipe;
    bl_dataset d;
    if (images[0]) {
        if (cli_load_data("adapt", data_dir, images, "test", &net, &d)) {
            bl_net_free(&net), bl_ckpt_info_free(&info);
            return 1;
        }
    } else if (target_dir[0]) {
        char ip[1100], lp[1100];
        snprintf(ip, sizeof ip, "%s/t10k-images-idx3-ubyte.gz", target_dir);
        snprintf(lp, sizeof lp, "%s/t10k-labels-idx1-ubyte.gz", target_dir);
        if (bl_idx_load(ip, lp, &d)) {
            fprintf(stderr, "bnlab adapt: --target-dir: %s (the directory needs "
                            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, as bnlab "
                            "corrupt writes them)\n", bl_error());
            bl_net_free(&net), bl_ckpt_info_free(&info);
            return 1;
        }
    } else {
        if (cli_load_fmnist("adapt", data_dir, "test", &d)) {
            bl_net_free(&net), bl_ckpt_info_free(&info);
            return 1;
        }
        if (corr != BL_CORRUPT_COUNT) {
            bl_dataset cd;
            if (bl_corrupt_dataset(&d, corr, severity, corrupt_seed, &cd)) {
                fprintf(stderr, "bnlab adapt: %s\n", bl_error());
                bl_dataset_free(&d);
                bl_net_free(&net), bl_ckpt_info_free(&info);
                return 1;
            }
            bl_dataset_free(&d);
            d = cd;
        }
    }
    static bl_adapt_report r;
    const char *src = bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source);
    if (c.online && !json) c.stream = cli_adapt_stream;
    const double t0 = cli_now();
    rc = bl_adapt(&net, &d, &c, out[0] != 0, &r);
    const double secs = cli_now() - t0;
    if (c.stream && isatty(2)) fprintf(stderr, "\n");
    if (!rc && out[0]) {
        /* how the statistics were estimated, and on what (a target directory's path escaped) */
        bl_ckpt_info_set(&info.precise, bl_precise_record(&r.precise_cfg, &r.precise, &net));
        cJSON *a = cJSON_CreateObject();
        int ok = a && cJSON_AddStringToObject(a, "target", name) &&
                 cJSON_AddNumberToObject(a, "severity", severity) &&
                 cJSON_AddNumberToObject(a, "corrupt_seed", (double)corrupt_seed) &&
                 cJSON_AddNumberToObject(a, "samples", c.online ? r.n_eval : (double)c.samples) &&
                 cJSON_AddNumberToObject(a, "prior", c.prior) &&
                 cJSON_AddBoolToObject(a, "online", c.online) &&
                 cJSON_AddNumberToObject(a, "batch", c.batch) &&
                 cJSON_AddBoolToObject(a, "sequential", c.sequential) &&
                 cJSON_AddNumberToObject(a, "seed", (double)c.seed);
        bl_ckpt_info_set(&info.adapt, ok ? cJSON_PrintUnformatted(a) : NULL);
        cJSON_Delete(a);
        rc = info.precise && info.adapt ? bl_checkpoint_save(&net, out, &info)
                                        : bl_fail(BL_ERR_NOMEM, "out of memory writing metadata");
    }
    cli_decode_done();
    if (rc) {
        cli_error("adapt", opts, n);
    } else if (json) {
        printf("{\"checkpoint\":\"%s\",\"target\":\"%s\",\"severity\":", pos[0], name);
        if (severity) printf("%d", severity);
        else printf("null");
        printf(",\"samples\":%ld,\"batch\":%d,\"sequential\":%s,\"prior\":%g,\"online\":%s,"
               "\"draws\":%d,\"seed\":%llu,\"err_source\":%.4f,\"err_target\":%.4f,"
               "\"err_target_sd\":%.4f,\"n_eval\":%d,\"n_pool\":%d,\"err_target_draws\":[",
               c.online ? r.n_eval : c.samples, c.batch, c.sequential ? "true" : "false", c.prior,
               c.online ? "true" : "false", r.draws, (unsigned long long)c.seed, r.err_source,
               r.err_target, r.err_target_sd, r.n_eval, r.n_pool);
        for (int k = 0; k < r.draws; k++) printf("%s%.4f", k ? "," : "", r.err_draw[k]);
        printf("],\"seconds\":%.2f", secs);
        if (out[0]) printf(",\"out\":\"%s\"", out);
        printf("}\n");
    } else {
        printf("%s (%s w=%d): target %s", pos[0], bl_net_arch(&net), bl_net_width(&net), name);
        if (severity) printf(" severity %d", severity);
        printf(", %d held-out images\n", r.n_eval);
        char a[96], b[128], pr[48] = "";
        snprintf(a, sizeof a, "error with the source statistics (%s)", src);
        if (c.prior > 0) snprintf(pr, sizeof pr, ", prior N = %g", c.prior);
        if (c.online)
            snprintf(b, sizeof b, "online, the stream's statistics so far%s", pr);
        else
            snprintf(b, sizeof b, "error with target statistics (n = %ld%s)", c.samples, pr);
        printf("  %-44s %6.2f%%\n  %-44s %6.2f%%", a, r.err_source, b, r.err_target);
        if (r.draws > 1) printf(" +- %.2f (sd over %d draws)", r.err_target_sd, r.draws);
        printf("\n  %s, batch %d, %.1f s%s%s\n",
               c.online ? "online" : c.sequential ? "exact sequential statistics" : "PreciseBN",
               c.batch, secs,
               out[0] ? "; wrote " : "", out);
    }
    bl_dataset_free(&d);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    return rc ? 1 : 0;
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab adapt: built without zlib or cJSON: install zlib1g-dev and "
                    "libcjson-dev (scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
