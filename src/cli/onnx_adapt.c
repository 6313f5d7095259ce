/* bnlab adapt on a model.onnx: its BN statistics re-estimated on target-domain images, as for
 * built-in models. With labels, the held-out protocol (the first half of the images the pool,
 * the second half the evaluation set, the error with the source and the target statistics on the
 * same images; draws; --prior; --online); without labels, the statistics of all the images
 * (mixed by --prior) and no error. -o writes the model with the target statistics. */
#include "cli/cli.h"

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
#include <cjson/cJSON.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* the record of the run in the model's "bnlab" metadata: the adaptation and its PreciseBN */
static char *record(const bl_adapt_cfg *c, const char *data, int labelled, int n_used,
                    const char *precise)
{
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddObjectToObject(o, "adapt") : NULL;
    cJSON *p = precise ? cJSON_Parse(precise) : NULL;
    int ok = a && cJSON_AddStringToObject(a, "data", data) &&
             cJSON_AddBoolToObject(a, "held_out", labelled) &&
             cJSON_AddNumberToObject(a, "samples", n_used) &&
             cJSON_AddNumberToObject(a, "batch", c->batch) &&
             cJSON_AddNumberToObject(a, "prior", c->prior) &&
             cJSON_AddBoolToObject(a, "online", c->online) &&
             cJSON_AddBoolToObject(a, "sequential", c->sequential) &&
             cJSON_AddNumberToObject(a, "seed", (double)c->seed);
    if (ok && p) {
        cJSON_AddItemToObject(o, "precise", p);
        p = NULL; /* the object owns it now */
    }
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o), cJSON_Delete(p);
    if (!text) bl_fail(BL_ERR_NOMEM, "out of memory writing the record");
    return text;
}

static int adapt_run(const char *model, cli_onnx_data *o, bl_adapt_cfg *c, const char *out,
                     const char *save_stats, const cli_opt *opts, int n)
{
    bl_onnx *m = NULL;
    bl_dataset d;
    int rc;
    if ((rc = cli_onnx_open("adapt", model, o, &m, &d, &c->recipe)))
        return bl_onnx_free(m), bl_dataset_free(&d), rc;
    if (!bl_onnx_bn_count(m)) {
        rc = cli_onnx_no_bn("adapt", model);
        bl_onnx_free(m), bl_dataset_free(&d);
        return rc;
    }
    const int labelled = d.labels != NULL;
    char folder[1400];
    snprintf(folder, sizeof folder, "%s (%s)", o->images, o->resolved);
    const char *data = o->images[0] ? folder : o->tensors[0] ? o->tensors
                     : o->split ? "fashion-mnist train" : "fashion-mnist test";
    bl_status st = BL_OK;
    if (c->online && !labelled)
        st = bl_fail(BL_ERR_ARG, "--online predicts the stream and reports its error: it needs "
                     "labels (--labels); without them, plain adapt estimates from all the images");
    /* without labels every image goes to the statistics; with them, the pool (the first half) */
    const long avail = labelled ? d.n / 2 : d.n;
    if (!c->samples || c->samples > avail) c->samples = avail;
    if (c->batch > c->samples && !c->online) c->batch = (int)c->samples;
    bl_net net;
    int built = 0;
    if (!st) st = bl_onnx_build(m, c->batch > 64 ? c->batch : 64, &net), built = !st;
    static bl_adapt_report r;
    bl_precise_cfg pc;
    bl_precise_report pr;
    if (!st && labelled) {
        if (c->online && !o->json) c->stream = cli_adapt_stream;
        st = bl_adapt(&net, &d, c, out[0] || save_stats[0], &r);
        if (c->stream && isatty(2)) fprintf(stderr, "\n");
        pc = r.precise_cfg, pr = r.precise;
    } else if (!st) {
        bl_precise_defaults(&pc);
        pc.samples = c->samples, pc.batch = c->batch, pc.sequential = c->sequential;
        pc.augment = 0, pc.recipe = c->recipe, pc.prior = c->prior, pc.seed = c->seed;
        st = bl_precise(&net, &d, &pc, &pr);
    }
    char *prec = st || (c->online && labelled) ? NULL : bl_precise_record(&pc, &pr, &net);
    const int n_used = c->online ? r.n_eval : (int)c->samples;
    char *rec = st ? NULL : record(c, data, labelled, n_used, prec);
    if (!st && !rec) st = BL_ERR_NOMEM;
    int split = 0, unnamed = 0;
    if (!st && out[0]) st = bl_onnx_save(m, &net, out, rec, &split);
    if (!st && save_stats[0]) st = bl_onnx_save_stats(m, &net, save_stats, rec, &unnamed);
    cli_decode_done();
    if (st) {
        cli_error("adapt", opts, n);
        rc = 1;
    } else if (o->json) {
        printf("{\"model\":\"%s\",\"held_out\":%s,\"samples\":%d,\"batch\":%d,\"prior\":%g,"
               "\"online\":%s,\"sequential\":%s", model, labelled ? "true" : "false", n_used,
               c->batch, c->prior, c->online ? "true" : "false", c->sequential ? "true" : "false");
        if (labelled)
            printf(",\"n_eval\":%d,\"err_source\":%.4f,\"err_target\":%.4f,\"err_target_sd\":%.4f",
                   r.n_eval, r.err_source, r.err_target, r.err_target_sd);
        printf("}\n");
    } else {
        char pri[80] = "";
        if (c->prior > 0) snprintf(pri, sizeof pri, ", mixed with the source's by a prior N = %g", c->prior);
        if (labelled) {
            printf("%s: target %s, %d held-out images\n", model, data, r.n_eval);
            printf("  %-48s %6.2f%%\n", "error with the stored (source) statistics", r.err_source);
            char b[160];
            if (c->online)
                snprintf(b, sizeof b, "online (batches of %d, the statistics so far)", c->batch);
            else
                snprintf(b, sizeof b, "error with target statistics (n = %ld)", c->samples);
            printf("  %-48s %6.2f%%", b, r.err_target);
            if (r.draws > 1) printf(" +- %.2f (sd over %d draws)", r.err_target_sd, r.draws);
            printf("\n  %s%s\n", c->online ? "online" : c->sequential ? "exact sequential statistics"
                                                                     : "PreciseBN", pri);
        } else {
            printf("%s: target statistics from %ld unlabelled images of %s (%s, batch %d)%s; no "
                   "labels, no error (give --labels for the held-out protocol)\n", model,
                   c->samples, data, c->sequential ? "exact sequential" : "PreciseBN", c->batch, pri);
        }
        if (out[0])
            printf("wrote %s: only the BN statistics changed%s\n", out,
                   split ? " (shared ones split off into initializers of their own)" : "");
        if (save_stats[0]) printf("wrote %s\n", save_stats);
    }
    free(prec), free(rec);
    if (built) bl_net_free(&net);
    bl_onnx_free(m), bl_dataset_free(&d);
    return rc;
}

int cli_onnx_adapt(int argc, char **argv)
{
    cli_onnx_data o;
    cli_onnx_data_defaults(&o);
    char out[1024] = "", save_stats[1024] = "";
    bl_adapt_cfg c;
    bl_adapt_defaults(&c);
    c.samples = 0, c.batch = 64;
    /* a user's data may come in class order (an image folder always does): cut and stream it in
     * a seeded permutation */
    c.permute = 1;
    const cli_opt opts[] = {
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL,
         "the model with the target statistics (.onnx; only they change)"},
        {"--save-stats", OPT_STR, save_stats, sizeof save_stats, 0, 0, NULL,
         "also the statistics alone, safetensors under the initializers' names"},
        {"--samples", OPT_LONG, &c.samples, 0, 0, 1e9, NULL,
         "target images for the statistics (0: the whole pool, or every image without labels)"},
        {"--batch", OPT_INT, &c.batch, 0, 1, 65536, NULL, "PreciseBN batch; --online's batch"},
        {"--sequential", OPT_ONOFF, &c.sequential, 0, 0, 0, NULL,
         "the exact layer-by-layer mode (see bnlab precise --help)"},
        {"--draws", OPT_INT, &c.draws, 0, 1, BL_ADAPT_MAX_DRAWS, NULL,
         "independent draws of --samples images (with labels: mean and spread of the error)"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of the draws (draw k: seed + k)"},
        {"--prior", OPT_DOUBLE, &c.prior, 0, 0, 1e12, NULL,
         "N: mix the target statistics with the stored ones as (N stored + n target) / (N + n) "
         "(Schneider et al. 2020; 0: target alone)"},
        {"--online", OPT_ONOFF, &c.online, 0, 0, 0, NULL,
         "stream the held-out images in batches of --batch, each predicted with the statistics "
         "of all batches so far, mixed by --prior (needs labels)"},
        ONNX_DATA_OPTS(&o),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("adapt", "MODEL.onnx --tensors TARGET.npy [-o OUT.onnx] [options]", argc,
                       argv, opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1) return fprintf(stderr, "bnlab adapt: which model?\n"), 2;
    if (out[0] && !strcmp(out, pos[0])) {
        fprintf(stderr, "bnlab adapt: -o %s would overwrite the input: write to another file\n",
                out);
        return 2;
    }
    bl_threads_set(o.threads);
    return adapt_run(pos[0], &o, &c, out, save_stats, opts, n);
}
#else
int cli_onnx_adapt(int argc, char **argv)
{
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab adapt: built without zlib or cJSON (scripts/install-deps.sh)\n");
    return 1;
}
#endif
