/* bnlab eval / precise / inspect on a model.onnx (docs/onnx.md): the network a user brings, fed
 * from --tensors (a .npy of NCHW images, uint8 normalized by --mean/--std or float32 as they
 * are, labels from --labels) or from the Fashion-MNIST IDX splits. The commands take the options
 * they take on checkpoints where those apply; results go back as a patched ONNX (-o) and as
 * safetensors of the statistics (--save-stats). */
#include "cli/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
typedef struct {
    char tensors[1024], labels[1024], mean[128], std[128], shape[64], data_dir[1024];
    int split, threads, json;
} onnx_data;

static int floats3(const char *s, float *v, int max)
{
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        char *end;
        v[n++] = strtof(p, &end);
        if (end == p) return -1;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *p ? -1 : n;
}

/* A safetensors file of images as an array: the tensor "images" (or the only 4-D one), uint8 or
 * float32/64 (N, C, H, W), and "labels" (N) uint8 or int64 when there is one. */
static bl_status st_arrays(const char *path, bl_npy *im, bl_npy *lab, int *has_labels)
{
    memset(im, 0, sizeof *im), memset(lab, 0, sizeof *lab);
    *has_labels = 0;
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    const bl_st_entry *e = bl_st_find(&st, "images"), *l = bl_st_find(&st, "labels");
    for (int i = 0; !e && i < st.n; i++)
        if (st.e[i].ndim == 4) {
            if (e) break;
            e = &st.e[i];
        }
    if (!e || e->ndim != 4 || e->dtype == BL_I64) {
        bl_st_free(&st);
        return bl_fail(BL_ERR_FORMAT, "%s: no (N, C, H, W) uint8 or float tensor named 'images' "
                       "(or a single 4-D one)", path);
    }
    const bl_st_entry *es[2] = {e, l};
    bl_npy *out[2] = {im, lab};
    for (int k = 0; k < 2 && !rc; k++) {
        if (!es[k]) continue;
        bl_npy *a = out[k];
        a->ndim = es[k]->ndim;
        for (int d = 0; d < a->ndim; d++) a->shape[d] = es[k]->shape[d];
        a->count = bl_st_numel(es[k]);
        const uint8_t *src = st.data + es[k]->begin;
        const size_t n = a->count ? a->count : 1;
        if (es[k]->dtype == BL_U8) {
            a->type = BL_NPY_U8;
            if ((a->u8 = bl_malloc(n))) memcpy(a->u8, src, a->count);
        } else if (es[k]->dtype == BL_I64) {
            a->type = BL_NPY_I64;
            if ((a->i64 = bl_malloc(n * 8))) memcpy(a->i64, src, a->count * 8);
        } else {
            a->type = BL_NPY_F32;
            if ((a->f = bl_malloc(n * sizeof(float))))
                rc = bl_st_get_f32(&st, es[k]->name, a->f, a->count);
        }
        if (!rc && !a->u8 && !a->i64 && !a->f) rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory", path);
    }
    *has_labels = l != NULL;
    bl_st_free(&st);
    if (rc) bl_npy_free(im), bl_npy_free(lab);
    return rc;
}

/* The model, its input shape fixed, and the data as a dataset with its recipe. */
static int open_all(const char *cmd, const char *path, const onnx_data *o, bl_onnx **m,
                    bl_dataset *d, bl_recipe *r)
{
    memset(d, 0, sizeof *d);
    bl_status st = bl_onnx_load(path, m);
    if (st) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 1;
    int c, h, w;
    if (o->shape[0]) {
        if (sscanf(o->shape, "%d,%d,%d", &c, &h, &w) != 3) {
            fprintf(stderr, "bnlab %s: --input-shape '%s': give C,H,W (e.g. 3,224,224)\n", cmd,
                    o->shape);
            return 2;
        }
        if ((st = bl_onnx_set_input_shape(*m, c, h, w)))
            return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    }
    if (o->tensors[0]) {
        bl_npy im, lab;
        memset(&lab, 0, sizeof lab);
        const size_t tl = strlen(o->tensors);
        int has_labels = 0;
        if (tl > 12 && !strcmp(o->tensors + tl - 12, ".safetensors"))
            st = st_arrays(o->tensors, &im, &lab, &has_labels);
        else
            st = bl_npy_read(o->tensors, &im);
        if (!st && o->labels[0]) bl_npy_free(&lab), has_labels = 0;
        if (!st && o->labels[0]) st = bl_npy_read(o->labels, &lab), has_labels = !st;
        if (!st) st = bl_dataset_from_npy(&im, has_labels ? &lab : NULL, o->tensors, d);
        bl_npy_free(&im), bl_npy_free(&lab);
        if (st) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 1;
    } else {
        if (cli_load_fmnist(cmd, o->data_dir, o->split ? "train" : "test", d)) return 1;
    }
    /* a symbolic input takes the data's shape */
    if (bl_onnx_input_shape(*m, &c, &h, &w) &&
        (st = bl_onnx_set_input_shape(*m, bl_dataset_channels(d), d->h, d->w)))
        return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    /* the normalization of uint8 images: given, or ImageNet's (3 channels), or Fashion-MNIST's */
    const int C = bl_dataset_channels(d);
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", o->tensors[0] ? "tensors" : "fashion-mnist");
    r->channels = C > BL_RECIPE_MAX_CHANNELS ? BL_RECIPE_MAX_CHANNELS : C, r->classes = 256;
    static const float in_mean[3] = {0.485f, 0.456f, 0.406f}, in_std[3] = {0.229f, 0.224f, 0.225f};
    for (int k = 0; k < r->channels; k++) {
        r->mean[k] = C == 3 ? in_mean[k] : C == 1 ? 0.2860f : 0.5f;
        r->std[k] = C == 3 ? in_std[k] : C == 1 ? 0.3530f : 0.5f;
    }
    const char *given[2] = {o->mean, o->std};
    for (int k = 0; k < 2; k++) {
        if (!given[k][0]) continue;
        float v[BL_RECIPE_MAX_CHANNELS];
        const int n = floats3(given[k], v, BL_RECIPE_MAX_CHANNELS);
        if (n != C && n != 1) {
            fprintf(stderr, "bnlab %s: --%s '%s': give %d comma-separated values (one per "
                    "channel)\n", cmd, k ? "std" : "mean", given[k], C);
            return 2;
        }
        for (int q = 0; q < r->channels; q++) (k ? r->std : r->mean)[q] = v[n == 1 ? 0 : q];
    }
    if ((st = bl_recipe_check(r))) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    return 0;
}

#define ONNX_DATA_OPTS(o)                                                                          \
    {"--tensors", OPT_STR, (o)->tensors, sizeof (o)->tensors, 0, 0, NULL,                          \
     "images as .npy or .safetensors ('images', and 'labels'), (N, C, H, W): uint8 (normalized " \
     "by --mean/--std) or float (as they are); default: the Fashion-MNIST split"},                 \
    {"--labels", OPT_STR, (o)->labels, sizeof (o)->labels, 0, 0, NULL,                             \
     "their labels as .npy, (N) uint8 or int64 (eval's error)"},                                   \
    {"--mean", OPT_STR, (o)->mean, sizeof (o)->mean, 0, 0, NULL,                                   \
     "per-channel mean of uint8 images in [0, 1] (default ImageNet's: 0.485,0.456,0.406)"},        \
    {"--std", OPT_STR, (o)->std, sizeof (o)->std, 0, 0, NULL,                                      \
     "per-channel std (default ImageNet's: 0.229,0.224,0.225)"},                                   \
    {"--input-shape", OPT_STR, (o)->shape, sizeof (o)->shape, 0, 0, NULL,                          \
     "C,H,W of a model whose input has symbolic dimensions (default: the data's)"},                \
    {"--split", OPT_CHOICE, &(o)->split, 0, 0, 0, "test|train", "the Fashion-MNIST split"},        \
    {"--data-dir", OPT_STR, (o)->data_dir, sizeof (o)->data_dir, 0, 0, NULL,                       \
     "Fashion-MNIST IDX files"},                                                                   \
    {"--threads", OPT_INT, &(o)->threads, 0, 1, 256, NULL, "threads"},                             \
    {"--json", OPT_ONOFF, &(o)->json, 0, 0, 0, NULL, "print one JSON object"}

static void data_defaults(onnx_data *o)
{
    memset(o, 0, sizeof *o);
    o->threads = 2;
    snprintf(o->data_dir, sizeof o->data_dir, "%s", BL_FMNIST_DIR);
}

/* ---- eval ---------------------------------------------------------------------------------- */
static int onnx_eval(int argc, char **argv)
{
    onnx_data o;
    data_defaults(&o);
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
    if ((rc = open_all("eval", pos[0], &o, &m, &d, &r))) return bl_onnx_free(m), bl_dataset_free(&d), rc;
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
        if ((st = bl_evaluate(&net, &d, &r, BL_BN_BATCH, norm_batch, 1, 0, &er))) {
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
            bl_dataset_batch(&d, &r, idx, nb, NULL, x, NULL);
            if ((st = bl_net_infer(&net, x, nb))) break;
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

static int no_bn(const char *cmd, const char *path)
{
    fprintf(stderr, "bnlab %s: %s has no BatchNormalization node: its BN was folded into the "
            "convolutions at export, so there are no statistics to %s. Export it with BN kept:\n"
            "  %s\n(PyTorch 1.13's default export folds every BN, even with constant folding "
            "off.) bnlab eval runs it as it is.\n", cmd, path,
            strcmp(cmd, "precise") ? "inspect" : "recompute", bl_onnx_export_recipe);
    return 1;
}

static int onnx_precise_run(const char *model, const onnx_data *op, bl_precise_cfg *cp,
                            const char *out, const char *save_stats, cli_dist *dist,
                            const cli_opt *opts, int n);

static int onnx_precise(int argc, char **argv)
{
    onnx_data o;
    data_defaults(&o);
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

static int onnx_precise_run(const char *model, const onnx_data *op, bl_precise_cfg *cp,
                            const char *out, const char *save_stats, cli_dist *dist,
                            const cli_opt *opts, int n)
{
    const onnx_data o = *op;
    bl_precise_cfg c = *cp;
    const char *pos[1] = {model};
    int rc;
    if (dist->world > 1) c.reducer = &dist->red, c.rank = dist->rank, c.world = dist->world;
    bl_onnx *m = NULL;
    bl_dataset d;
    if ((rc = open_all("precise", pos[0], &o, &m, &d, &c.recipe)))
        return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (!bl_onnx_bn_count(m)) {
        rc = no_bn("precise", pos[0]);
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
    if (!st && !rec) st = BL_ERR_NOMEM;
    int split = 0, unnamed = 0;
    const int writer = dist->rank == 0;
    if (!st && out[0] && writer) st = bl_onnx_save(m, &net, out, rec, &split);
    if (!st && save_stats[0] && writer) st = bl_onnx_save_stats(m, &net, save_stats, rec, &unnamed);
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

static int onnx_inspect_run(const char *model, const onnx_data *op, bl_inspect_cfg *cp,
                            cli_dist *dist, const cli_opt *opts, int n);

static int onnx_inspect(int argc, char **argv)
{
    onnx_data o;
    data_defaults(&o);
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

static int onnx_inspect_run(const char *model, const onnx_data *op, bl_inspect_cfg *cp,
                            cli_dist *dist, const cli_opt *opts, int n)
{
    const onnx_data o = *op;
    bl_inspect_cfg c = *cp;
    const char *pos[1] = {model};
    int rc;
    if (dist->world > 1) c.reducer = &dist->red, c.rank = dist->rank, c.world = dist->world;
    bl_onnx *m = NULL;
    bl_dataset d;
    if ((rc = open_all("inspect", pos[0], &o, &m, &d, &c.recipe)))
        return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (!bl_onnx_bn_count(m)) {
        rc = no_bn("inspect", pos[0]);
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
        printf("fix: bnlab precise %s%s%s -o fixed.onnx --save-stats fixed_stats.safetensors\n",
               pos[0], o.tensors[0] ? " --tensors " : "", o.tensors);
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
    return onnx_inspect(argc, argv);
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab %s: built without zlib or cJSON (scripts/install-deps.sh)\n", cmd);
    return 1;
#endif
}
