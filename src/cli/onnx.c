/* bnlab eval / precise / inspect on a model.onnx (docs/onnx.md): the network a user brings, fed
 * from --tensors (a .npy of NCHW images, uint8 normalized by --mean/--std or float32 as they
 * are, labels from --labels) or from the Fashion-MNIST IDX splits. The commands take the options
 * they take on checkpoints where those apply; results go back as a patched ONNX (-o) and as
 * safetensors of the statistics (--save-stats). */
#include "cli/cli.h"

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
#include <cjson/cJSON.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* ---- eval ---------------------------------------------------------------------------------- */
static int onnx_eval(int argc, char **argv)
{
    cli_onnx_data o;
    cli_onnx_data_defaults(&o);
    char outputs[1024] = "";
    int batch = 64, stats = 0, norm_batch = 16;
    const cli_opt opts[] = {
        {"--outputs", OPT_STR, outputs, sizeof outputs, 0, 0, NULL,
         "write the first output for every input, (N, K) float32 .npy, to compare with your "
         "framework"},
        {"--stats", OPT_CHOICE, &stats, 0, 0, 0, "population|minibatch",
         "BN statistics: the stored ones, or each group's own"},
        {"--norm-batch", OPT_INT, &norm_batch, 0, 1, 65536, NULL,
         "mini-batch statistics: samples per normalization group"},
        {"--batch", OPT_INT, &batch, 0, 1, 65536, NULL, "evaluation batch (memory)"},
        ONNX_DATA_OPTS(&o),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("eval", "MODEL.onnx [options]", argc, argv, opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1) return fprintf(stderr, "bnlab eval: which model?\n"), 2;
    bl_threads_set(o.threads);
    bl_onnx *m = NULL;
    bl_dataset d;
    bl_recipe r;
    if ((rc = cli_onnx_open("eval", pos[0], &o, &m, &d, &r))) return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (stats && norm_batch > batch) batch = norm_batch;
    bl_net net;
    bl_status st = bl_onnx_build(m, batch, &net);
    if (!st) st = bl_data_fits(&net, &d, "the data");
    if (st) {
        fprintf(stderr, "bnlab eval: %s\n", bl_error());
        bl_onnx_free(m), bl_dataset_free(&d);
        return 1;
    }
    const int K = bl_net_classes(&net);
    if (stats && !d.labels) {
        fprintf(stderr, "bnlab eval: --stats minibatch reports an error rate: give --labels\n");
        rc = 2;
    } else if (stats) {
        bl_eval_result er;
        st = bl_evaluate(&net, &d, &r, BL_BN_BATCH, norm_batch, 1, 0, &er);
        cli_decode_done();
        if (st) {
            cli_error("eval", opts, n);
            rc = 1;
        } else if (o.json) {
            printf("{\"err\":%.4f,\"loss\":%.6f,\"n\":%d,\"stats\":\"minibatch\",\"norm_batch\":%d}\n",
                   er.err, er.loss, er.n, norm_batch);
        } else {
            printf("%s: error %.2f%%, loss %.4f, %d images, mini-batch statistics (groups of %d)\n",
                   pos[0], er.err, er.loss, er.n, norm_batch);
        }
    } else {
        /* population statistics: every output kept, the error when there are labels */
        float *all = bl_malloc(sizeof(float) * (size_t)d.n * K);
        float *x = bl_alloc(sizeof(float) * (size_t)batch * bl_dataset_sample(&d));
        int *idx = bl_malloc(sizeof(int) * (size_t)batch);
        long wrong = 0;
        int finite = 1;
        if (!all || !x || !idx) st = bl_fail(BL_ERR_NOMEM, "out of memory for %d outputs", d.n);
        const bl_tensor *out = bl_net_tensor_at(&net, bl_net_output(&net, 0));
        for (int i = 0; i < d.n && !st; i += batch) {
            const int nb = d.n - i < batch ? d.n - i : batch;
            for (int k = 0; k < nb; k++) idx[k] = i + k;
            if ((st = bl_dataset_batch(&d, &r, idx, nb, NULL, x, NULL)) ||
                (st = bl_net_infer(&net, x, nb)))
                break;
            memcpy(all + (size_t)i * K, out->data, sizeof(float) * (size_t)nb * K);
        }
        for (int i = 0; !st && i < d.n; i++) {
            const float *z = all + (size_t)i * K;
            int arg = 0;
            for (int k = 0; k < K; k++) {
                finite &= isfinite(z[k]);
                if (z[k] > z[arg]) arg = k;
            }
            if (d.labels) wrong += arg != d.labels[i];
        }
        cli_decode_done();
        if (!st && outputs[0]) {
            const long long shape[2] = {d.n, K};
            st = bl_npy_write_f32(outputs, all, 2, shape);
        }
        if (st) {
            fprintf(stderr, "bnlab eval: %s\n", bl_error());
            rc = 1;
        } else if (o.json) {
            printf("{\"n\":%d,\"outputs\":%d,\"stats\":\"population\",\"finite\":%s", d.n, K,
                   finite ? "true" : "false");
            if (d.labels) printf(",\"err\":%.4f", 100.0 * wrong / d.n);
            printf("}\n");
        } else {
            printf("%s (%s, opset %d): %d images, %d outputs each, population statistics",
                   pos[0], bl_onnx_producer(m), bl_onnx_opset(m), d.n, K);
            if (d.labels) printf(": error %.2f%%", 100.0 * wrong / d.n);
            else printf(" (no labels: no error rate)");
            printf("%s%s%s\n", finite ? "" : "; some outputs are NaN or Inf",
                   outputs[0] ? "; outputs in " : "", outputs);
        }
        free(all), bl_free(x), free(idx);
    }
    bl_net_free(&net);
    bl_onnx_free(m), bl_dataset_free(&d);
    return rc;
}

/* ---- precise ------------------------------------------------------------------------------- */
static void progress(void *ctx, long done, long total)
{
    (void)ctx;
    fprintf(stderr, "\rprecise: %ld / %ld samples (%.0f%%)   ", done, total, 100.0 * done / total);
    if (done == total) fprintf(stderr, "\n");
}

int cli_onnx_no_bn(const char *cmd, const char *path)
{
    fprintf(stderr, "bnlab %s: %s has no BatchNormalization node: its BN was folded into the "
            "convolutions at export, so there are no statistics to %s. Export it with BN kept:\n"
            "  %s\n(PyTorch 1.13's default export folds every BN, even with constant folding "
            "off.) bnlab eval runs it as it is.\n", cmd, path,
            !strcmp(cmd, "inspect") ? "inspect" : !strcmp(cmd, "adapt") ? "adapt" : "recompute",
            bl_onnx_export_recipe);
    return 1;
}

static int onnx_precise_run(const char *model, const cli_onnx_data *op, bl_precise_cfg *cp,
                            const char *out, const char *save_stats, cli_dist *dist,
                            const cli_opt *opts, int n);

static int onnx_precise(int argc, char **argv)
{
    cli_onnx_data o;
    cli_onnx_data_defaults(&o);
    char out[1024] = "", save_stats[1024] = "";
    bl_precise_cfg c;
    bl_precise_defaults(&c);
    c.augment = 0, c.samples = 0;
    const cli_opt opts[] = {
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL,
         "the model with the new statistics (.onnx; only they change)"},
        {"--save-stats", OPT_STR, save_stats, sizeof save_stats, 0, 0, NULL,
         "also the statistics alone, safetensors under the initializers' names "
         "(model.load_state_dict(stats, strict=False))"},
        {"--samples", OPT_LONG, &c.samples, 0, 0, 1e9, NULL, "images used (0: all)"},
        {"--batch", OPT_INT, &c.batch, 0, 1, 65536, NULL,
         "images per batch; each BN layer normalizes by its batch's statistics"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of the sample choice"},
        {"--in-order", OPT_ONOFF, &c.in_order, 0, 0, 0, NULL,
         "the first --samples images in file order (no shuffle)"},
        {"--sequential", OPT_ONOFF, &c.sequential, 0, 0, 0, NULL,
         "exact mode: layer by layer, earlier layers already on their new statistics"},
        {"--norm-batch", OPT_INT, &c.plan.norm_batch, 0, 0, 65536, NULL,
         "each BN layer normalizes ghost groups of N images of a batch (0: the whole --batch; "
         "under mpirun each process normalizes its share)"},
        ONNX_DATA_OPTS(&o),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("precise", "MODEL.onnx -o OUT.onnx [options]", argc, argv, opts, n, pos, 1,
                       &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1 || (!out[0] && !save_stats[0])) {
        fprintf(stderr, "bnlab precise: %s; usage: bnlab precise MODEL.onnx -o OUT.onnx "
                "[--save-stats STATS.safetensors] [options]\n",
                np != 1 ? "which model?" : "where to? (-o OUT.onnx or --save-stats)");
        return 2;
    }
    if (out[0] && !strcmp(out, pos[0])) {
        fprintf(stderr, "bnlab precise: -o %s would overwrite the input: write to another file\n",
                out);
        return 2;
    }
    bl_threads_set(o.threads);
    /* under mpirun: each batch split into the processes' shares, the moments merged exactly in
     * rank order (bl_precise); rank 0 writes the files */
    cli_dist dist;
    if (cli_dist_init(&dist, "precise")) return 1;
    rc = onnx_precise_run(pos[0], &o, &c, out, save_stats, &dist, opts, n);
    cli_dist_free(&dist);
    return rc;
}

static int onnx_precise_run(const char *model, const cli_onnx_data *op, bl_precise_cfg *cp,
                            const char *out, const char *save_stats, cli_dist *dist,
                            const cli_opt *opts, int n)
{
    cli_onnx_data o = *op;
    bl_precise_cfg c = *cp;
    const char *pos[1] = {model};
    int rc;
    if (dist->world > 1) c.reducer = &dist->red, c.rank = dist->rank, c.world = dist->world;
    bl_onnx *m = NULL;
    bl_dataset d;
    if ((rc = cli_onnx_open("precise", pos[0], &o, &m, &d, &c.recipe)))
        return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (!bl_onnx_bn_count(m)) {
        rc = cli_onnx_no_bn("precise", pos[0]);
        bl_onnx_free(m), bl_dataset_free(&d);
        return rc;
    }
    if (!c.samples || c.samples > d.n) c.samples = d.n;
    if (c.batch > c.samples) c.batch = (int)c.samples;
    if (isatty(2)) c.progress = progress;
    bl_net net;
    bl_precise_report r;
    bl_status st = bl_onnx_build(m, c.batch, &net);
    if (!st) st = bl_precise(&net, &d, &c, &r);
    char *rec = st ? NULL : bl_precise_record(&c, &r, &net);
    if (rec) {
        /* and on what: the image folder and its resolved recipe, or the tensors' file */
        char data[1400];
        snprintf(data, sizeof data, "%s%s%s%s", o.images[0] ? o.images : o.tensors[0] ? o.tensors
                 : "fashion-mnist", o.images[0] ? " (" : "", o.images[0] ? o.resolved : "",
                 o.images[0] ? ")" : "");
        cJSON *j = cJSON_Parse(rec);
        char *with = j && cJSON_AddStringToObject(j, "data", data) ? cJSON_PrintUnformatted(j) : NULL;
        cJSON_Delete(j);
        if (with) free(rec), rec = with;
    }
    if (!st && !rec) st = BL_ERR_NOMEM;
    int split = 0, unnamed = 0;
    const int writer = dist->rank == 0;
    if (!st && out[0] && writer) st = bl_onnx_save(m, &net, out, rec, &split);
    if (!st && save_stats[0] && writer) st = bl_onnx_save_stats(m, &net, save_stats, rec, &unnamed);
    cli_decode_done();
    if (st) {
        /* bl_precise agrees its errors across the processes; a write fails on rank 0 alone */
        rc = writer ? 1 : 0;
        if (writer) cli_error("precise", opts, n);
    } else if (o.json) {
        printf("{\"layers\":%d,\"samples\":%ld,\"batch\":%d,\"sequential\":%s,\"forwards\":%.2f,"
               "\"worst_se\":%.6f,\"split\":%d}\n", r.layers, r.samples, c.batch,
               c.sequential ? "true" : "false", r.forwards, r.worst_se, split);
    } else {
        printf("%s: %s statistics of %d BN layers from %ld images, batch %d, %.1f forward "
               "passes\n", pos[0], c.sequential ? "exact sequential" : "PreciseBN", r.layers,
               r.samples, c.batch, r.forwards);
        printf("%-40s %8s %s\n", "layer", "channels", "largest standard error of a channel mean "
               "(in channel std)");
        for (int k = 0; k < r.layers; k++) {
            const bl_bn *bn = bl_net_bn_at(&net, k);
            printf("%-40s %8d %.4f\n", bn->name, bn->cfg.channels, r.max_se[k]);
        }
        printf("worst: %.4f std; it shrinks as 1/sqrt(--samples)\n", r.worst_se);
        if (out[0])
            printf("wrote %s: only the BN statistics changed%s\n", out,
                   split ? " (shared ones split off into initializers of their own)" : "");
        if (save_stats[0])
            printf("wrote %s: %d tensors%s\n", save_stats, 2 * r.layers,
                   unnamed ? " (some shared statistics under the names their BN reads them by)" : "");
    }
    free(rec);
    bl_net_free(&net);
    bl_onnx_free(m), bl_dataset_free(&d);
    return rc;
}

/* ---- inspect ------------------------------------------------------------------------------- */
/* The stored statistics' health before any forward: non-finite means or variances (mixed
 * precision gone wrong), dead channels (zero variance or zero gamma). Returns the layers with a
 * non-finite statistic; prints one line per layer with a finding. */
static int health(const bl_net *net, int json, int *dead_total)
{
    int bad_layers = 0;
    *dead_total = 0;
    for (int k = 0; k < bl_net_bn_count(net); k++) {
        const bl_bn *bn = bl_net_bn_at(net, k);
        int nonfinite = 0, dead = 0;
        for (int c = 0; c < bn->cfg.channels; c++) {
            nonfinite += !isfinite(bn->pop_mean[c]) || !isfinite(bn->pop_var[c]);
            dead += bn->pop_var[c] == 0 || bn->gamma[c] == 0;
        }
        bad_layers += nonfinite > 0;
        *dead_total += dead;
        if ((nonfinite || dead) && !json)
            printf("health: %s: %d of %d channels with non-finite statistics, %d dead (zero "
                   "variance or zero gamma)\n", bn->name, nonfinite, bn->cfg.channels, dead);
    }
    return bad_layers;
}

static int onnx_inspect_run(const char *model, const cli_onnx_data *op, bl_inspect_cfg *cp,
                            cli_dist *dist, const cli_opt *opts, int n);

static int onnx_inspect(int argc, char **argv)
{
    cli_onnx_data o;
    cli_onnx_data_defaults(&o);
    bl_inspect_cfg c = {.samples = 0, .precise_batch = 64, .batch = 16, .batches = 0, .seed = 1};
    const cli_opt opts[] = {
        {"--samples", OPT_LONG, &c.samples, 0, 0, 1e9, NULL, "PreciseBN images (0: all)"},
        {"--precise-batch", OPT_INT, &c.precise_batch, 0, 1, 65536, NULL, "PreciseBN's batch"},
        {"--batch", OPT_INT, &c.batch, 0, 2, 65536, NULL, "mini-batch size for the spread"},
        {"--batches", OPT_INT, &c.batches, 0, 0, 1e6, NULL,
         "mini-batches for the spread (0: as many as the data holds, at most 100)"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed"},
        {"--norm-batch", OPT_INT, &c.norm_batch, 0, 0, 65536, NULL,
         "the PreciseBN reference normalizes ghost groups of N images of its batch (0: the whole "
         "--precise-batch; under mpirun each process normalizes its share)"},
        ONNX_DATA_OPTS(&o),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("inspect", "MODEL.onnx [options]", argc, argv, opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1) return fprintf(stderr, "bnlab inspect: which model?\n"), 2;
    bl_threads_set(o.threads);
    /* under mpirun: the mini-batches dealt out and the PreciseBN reference sharded, merged
     * exactly (bl_inspect); rank 0 speaks */
    cli_dist dist;
    if (cli_dist_init(&dist, "inspect")) return 1;
    rc = onnx_inspect_run(pos[0], &o, &c, &dist, opts, n);
    cli_dist_free(&dist);
    return rc;
}

static int onnx_inspect_run(const char *model, const cli_onnx_data *op, bl_inspect_cfg *cp,
                            cli_dist *dist, const cli_opt *opts, int n)
{
    cli_onnx_data o = *op;
    bl_inspect_cfg c = *cp;
    const char *pos[1] = {model};
    int rc;
    if (dist->world > 1) c.reducer = &dist->red, c.rank = dist->rank, c.world = dist->world;
    bl_onnx *m = NULL;
    bl_dataset d;
    if ((rc = cli_onnx_open("inspect", pos[0], &o, &m, &d, &c.recipe)))
        return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (!bl_onnx_bn_count(m)) {
        rc = cli_onnx_no_bn("inspect", pos[0]);
        bl_onnx_free(m), bl_dataset_free(&d);
        return rc;
    }
    if (!c.samples || c.samples > d.n) c.samples = d.n;
    if (c.precise_batch > c.samples) c.precise_batch = (int)c.samples;
    if (!c.batches) c.batches = d.n / c.batch > 100 ? 100 : d.n / c.batch;
    bl_net net;
    static bl_inspect_report r;
    const int mb = c.batch > c.precise_batch ? c.batch : c.precise_batch;
    bl_status st = bl_onnx_build(m, mb, &net);
    int bad = 0, dead = 0;
    if (!st) bad = health(&net, o.json, &dead);
    if (!st && bad) {
        /* nothing to compare non-finite statistics with: say so, and how to mend them */
        if (o.json)
            printf("{\"checkpoint\":\"%s\",\"verdict\":\"non-finite\",\"nonfinite_layers\":%d,"
                   "\"dead_channels\":%d}\n", pos[0], bad, dead);
        else
            printf("verdict: %d BN layers hold non-finite statistics (mixed-precision training, "
                   "an overflow): the model's outputs are not usable\n", bad);
    } else if (!st) {
        st = bl_inspect(&net, &d, &c, &r);
        cli_decode_done();
        if (!st) {
            char desc[160];
            snprintf(desc, sizeof desc, "%s, opset %d", bl_onnx_producer(m), bl_onnx_opset(m));
            cli_inspect_print(pos[0], desc, "stored", -1, &c, &r, o.json);
            if (!o.json && dead)
                printf("health: %d dead channels in all (zero variance or zero gamma): pruned "
                       "or never active; harmless to the statistics' estimate\n", dead);
        }
    }
    if (st) {
        cli_error("inspect", opts, n);
        rc = 1;
    } else if (!o.json && (bad || r.flagged)) {
        /* the exact command that mends what was found */
        char data[1200] = "";
        if (o.tensors[0]) snprintf(data, sizeof data, " --tensors %s", o.tensors);
        if (o.images[0])
            snprintf(data, sizeof data, " --images %s --resize %d --crop %d%s", o.images,
                     o.resize_used, o.crop_used, o.color ? (o.color == 2 ? " --color gray" : " --color rgb") : "");
        printf("fix: bnlab precise %s%s -o fixed.onnx --save-stats fixed_stats.safetensors\n",
               pos[0], data);
    }
    bl_net_free(&net);
    bl_onnx_free(m), bl_dataset_free(&d);
    return rc;
}
#endif

int cli_is_onnx(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const size_t l = strlen(argv[i]);
        /* the value of an option (-o out.onnx) is not the model: every option takes one */
        if (argv[i][0] != '-' && l > 5 && !strcmp(argv[i] + l - 5, ".onnx") &&
            !(i > 1 && argv[i - 1][0] == '-'))
            return 1;
    }
    return 0;
}

int cmd_onnx(const char *cmd, int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    if (!strcmp(cmd, "eval")) return onnx_eval(argc, argv);
    if (!strcmp(cmd, "precise")) return onnx_precise(argc, argv);
    if (!strcmp(cmd, "adapt")) return cli_onnx_adapt(argc, argv);
    return onnx_inspect(argc, argv);
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab %s: built without zlib or cJSON (scripts/install-deps.sh)\n", cmd);
    return 1;
#endif
}
