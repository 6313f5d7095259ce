/* bnlab inspect: a checkpoint's stored BN statistics against fresh PreciseBN statistics and the
 * spread of mini-batch statistics, per layer, with a verdict. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

void cli_inspect_print(const char *path, const char *desc, const char *src, int epoch,
                       const bl_inspect_cfg *c, const bl_inspect_report *r, int json)
{
    if (json) {
        printf("{\"checkpoint\":\"%s\",\"estimator\":\"%s\",\"epoch\":", path, src);
        if (epoch >= 0) printf("%d", epoch);
        else printf("null");
        printf(",\"verdict\":\"%s\",\"flagged\":%d,\"samples\":%ld,\"batch\":%d,"
               "\"batches\":%d,\"layers\":[", r->flagged ? "off" : "consistent", r->flagged,
               c->samples, c->batch, c->batches);
        for (int k = 0; k < r->layers; k++) {
            const bl_inspect_row *w = &r->row[k];
            printf("%s{\"name\":\"%s\",\"channels\":%d,\"shift_mean\":%.5g,\"shift_max\":%.5g,"
                   "\"logvar_max\":%.5g,\"kl_mean\":%.5g,\"kl_max\":%.5g,\"outside\":%.4f,"
                   "\"flagged\":%s}", k ? "," : "", w->name, w->channels, w->shift_mean,
                   w->shift_max, w->logvar_max, w->kl_mean, w->kl_max, w->outside,
                   w->flagged ? "true" : "false");
        }
        printf("]}\n");
        return;
    }
    printf("%s (%s): stored (%s) statistics vs PreciseBN on %ld images and %d mini-batches of "
           "%d\n", path, desc, src, c->samples, c->batches, c->batch);
    printf("%-22s %4s %10s %10s %10s %10s %10s %8s\n", "layer", "C", "shift", "shift max",
           "|logvar|", "KL mean", "KL max", "outside");
    for (int k = 0; k < r->layers; k++) {
        const bl_inspect_row *w = &r->row[k];
        printf("%-22s %4d %10.4f %10.4f %10.4f %10.2e %10.2e %7.0f%%%s\n", w->name, w->channels,
               w->shift_mean, w->shift_max, w->logvar_max, w->kl_mean, w->kl_max, 100 * w->outside,
               w->flagged ? "  <- off" : "");
    }
    printf("shift: |stored - precise mean| in precise std; KL(precise || stored) per channel; "
           "outside: channels whose stored mean is outside the 5-95%% range of the mini-batch "
           "means. Flagged: KL max > %g or outside > %.0f%%.\n",
           BL_INSPECT_KL_MAX, 100 * BL_INSPECT_OUTSIDE_MAX);
    if (r->flagged)
        printf("verdict: stored statistics are off in %d of %d layers: run bnlab precise\n",
               r->flagged, r->layers);
    else
        printf("verdict: consistent (no layer flagged)\n");
}

int cmd_inspect(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    bl_inspect_cfg c;
    bl_inspect_defaults(&c);
    int json = 0, threads = 2;
    cli_foreign fo;
    cli_foreign_init(&fo);
    char images[1024] = "", data_dir[1024];
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt base[] = {
        {"--samples", OPT_LONG, &c.samples, 0, 1, 60000, NULL,
         "training images for the PreciseBN reference"},
        {"--batch", OPT_INT, &c.batch, 0, 2, 60000, NULL,
         "mini-batch size for the spread of mini-batch statistics"},
        {"--batches", OPT_INT, &c.batches, 0, 2, 30000, NULL, "mini-batches for that spread"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of the images and augmentation"},
        {"--norm-batch", OPT_INT, &c.norm_batch, 0, 0, 60000, NULL,
         "the PreciseBN reference normalizes ghost groups of N images of its batch (0: the whole "
         "batch; under mpirun each process normalizes its share)"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--json", OPT_ONOFF, &json, 0, 0, 0, NULL, "print one JSON object"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
        {"--images", OPT_STR, images, sizeof images, 0, 0, NULL,
         "the images to compare with: a folder instead of the training split (resized and cropped to the model's input)"},
        CLI_FOREIGN_OPTS(&fo),
    };
    cli_opt opts[64];
    const int n = cli_table(opts, 64, base, sizeof base / sizeof *base, &fo.fam);
    const char *pos[1];
    int np;
    int rc = cli_parse("inspect", "CHECKPOINT [options]", argc, argv, opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1) {
        fprintf(stderr, "bnlab inspect: which checkpoint? usage: bnlab inspect CHECKPOINT "
                        "[options]\n");
        return 2;
    }
    bl_threads_set(threads);
    /* under mpirun: the mini-batches dealt out, the PreciseBN reference sharded (bl_inspect);
     * rank 0 speaks */
    cli_dist dist;
    if (cli_dist_init(&dist, "inspect")) return 1;
    if (dist.world > 1) c.reducer = &dist.red, c.rank = dist.rank, c.world = dist.world;
    bl_net net;
    bl_ckpt_info info;
    const int mb = c.batch > c.precise_batch ? c.batch : c.precise_batch;
    if ((rc = cli_open_checkpoint("inspect", pos[0], mb, &fo, opts, n, &net, &info)))
        return cli_dist_free(&dist), rc;
    c.recipe = info.recipe;
    bl_dataset train;
    if (cli_load_data("inspect", data_dir, images, "train", &net, &train)) {
        bl_net_free(&net), bl_ckpt_info_free(&info), cli_dist_free(&dist);
        return 1;
    }
    static bl_inspect_report r;
    const char *src = bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source);
    rc = bl_inspect(&net, &train, &c, &r);
    cli_decode_done();
    if (rc) {
        cli_error("inspect", opts, n);
    } else {
        char desc[160];
        snprintf(desc, sizeof desc, "%s w=%d, epoch %d", bl_net_arch(&net), bl_net_width(&net),
                 info.epoch);
        cli_inspect_print(pos[0], desc, src, info.epoch, &c, &r, json);
    }
    bl_dataset_free(&train);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    cli_dist_free(&dist);
    return rc ? 1 : 0;
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab inspect: built without zlib or cJSON: install zlib1g-dev and "
                    "libcjson-dev (scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
