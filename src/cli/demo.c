/* bnlab demo: the BN core on real Fashion-MNIST pixels, before any training exists.
 * Features come from a fixed random 3x3 convolution (16 channels) + ReLU over normalized images, so
 * their population statistics are fixed and can be computed exactly. The demo shows
 *   A. train/test inconsistency: how far batch-statistics outputs at normalization batch 128..2
 *      are from population-statistics outputs for the same samples;
 *   B. estimators: EMA (momentum 0.1) vs PreciseBN against the exact population statistics, with
 *      whole-batch groups and with ghost groups of 2 (where averaging per-group variances misses
 *      the variance of the group means). */
#include "cli/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FC 16 /* feature channels */

#ifdef BL_HAVE_ZLIB
/* feats: (n, 28, 28, FC) NHWC features of images idx[0..n) */
static void features(const bl_dataset *d, const int *idx, int n, const float *w, float *feats)
{
    const int H = d->h, W = d->w;
    const bl_recipe r = bl_recipe_fmnist();
    const float mean = r.mean[0], std = r.std[0];
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const uint8_t *img = d->pixels + (size_t)idx[i] * H * W;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float *o = feats + (((size_t)i * H + y) * W + x) * FC;
                for (int c = 0; c < FC; c++) o[c] = 0;
                for (int ky = -1; ky <= 1; ky++)
                    for (int kx = -1; kx <= 1; kx++) {
                        int yy = y + ky, xx = x + kx;
                        if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                        float v = (img[yy * W + xx] / 255.0f - mean) / std;
                        const float *wk = w + ((ky + 1) * 3 + (kx + 1)) * FC;
                        for (int c = 0; c < FC; c++) o[c] += v * wk[c];
                    }
                for (int c = 0; c < FC; c++) o[c] = o[c] > 0 ? o[c] : 0;
            }
    }
}

static int fail(const char *what)
{
    fprintf(stderr, "bnlab demo: %s: %s\n", what, bl_error());
    return 1;
}

/* Largest |mean error| in population std units and largest |log var ratio| over channels. */
static void compare(const float *mean, const float *var, const bl_moments *pop, double *dm,
                    double *dv)
{
    *dm = *dv = 0;
    for (int c = 0; c < FC; c++) {
        double pv = pop->m2[c] / pop->n[c];
        double em = fabs(mean[c] - pop->mean[c]) / sqrt(pv), ev = fabs(log(var[c] / pv));
        if (em > *dm) *dm = em;
        if (ev > *dv) *dv = ev;
    }
}
#endif

int cmd_demo(int argc, char **argv)
{
    long pop_n = 20000, batches = 100;
    uint64_t seed = 1;
    char dirbuf[1024];
    snprintf(dirbuf, sizeof dirbuf, "%s", BL_FMNIST_DIR);
    const cli_opt opts[] = {
        {"--population", OPT_LONG, &pop_n, 0, 1000, 60000, NULL,
         "training images whose features form the population"},
        {"--batches", OPT_LONG, &batches, 0, 1, 100000, NULL, "batches of 64 fed to the estimators"},
        {"--seed", OPT_U64, &seed, 0, 0, 9e15, NULL, "seed of the random features and sampling"},
        {"--data-dir", OPT_STR, dirbuf, sizeof dirbuf, 0, 0, NULL, "Fashion-MNIST IDX files"},
    };
    const char *pos[1];
    int np, rc = cli_parse("demo", "[options]", argc, argv, opts, 4, pos, 0, &np);
    if (rc) return rc == 1 ? 0 : 2;
    const char *dir = dirbuf;
#ifndef BL_HAVE_ZLIB
    (void)pop_n; (void)batches; (void)seed; (void)dir;
    fprintf(stderr, "bnlab demo: built without zlib, cannot read Fashion-MNIST: install "
                    "zlib1g-dev and rebuild\n");
    return 1;
#else
    bl_dataset d;
    if (bl_fmnist_load(dir, "train", &d)) return fail("loading Fashion-MNIST");
    printf("bnlab demo: %d Fashion-MNIST training images, features = ReLU(random 3x3 conv, %d "
           "channels), population = %ld images, seed %llu\n\n", d.n, FC, pop_n,
           (unsigned long long)seed);
    bl_rng rng;
    bl_rng_seed(&rng, seed);
    float w[9 * FC];
    for (int k = 0; k < 9 * FC; k++) w[k] = (float)(bl_rng_normal(&rng) / 3.0);
    int *perm = bl_malloc(sizeof(int) * d.n);
    if (!perm) return fail("the sample order");
    for (int i = 0; i < d.n; i++) perm[i] = i;
    bl_rng_shuffle(&rng, perm, d.n);

    /* exact population statistics, in chunks */
    const int chunk = 1000, hw = d.h * d.w;
    float *f = bl_alloc((size_t)chunk * hw * FC * sizeof(float));
    float *y = bl_alloc((size_t)chunk * hw * FC * sizeof(float));
    float *y2 = bl_alloc((size_t)chunk * hw * FC * sizeof(float));
    if (!f || !y || !y2) return fail("the feature buffers");
    bl_moments pop;
    if (bl_moments_init(&pop, FC)) return fail("the population moments");
    for (long s = 0; s < pop_n; s += chunk) {
        int n = (int)(pop_n - s < chunk ? pop_n - s : chunk);
        features(&d, perm + s, n, w, f);
        bl_shape sh = {n, FC, d.h, d.w, BL_NHWC};
        if (bl_moments_add(&pop, sh, f)) return fail("population moments");
    }

    /* A: the same 128 samples normalized by their groups vs by the population */
    bl_bn bn;
    bl_bn_config cfg = bl_bn_config_default(FC);
    cfg.name = "demo";
    if (bl_bn_init(&bn, &cfg)) return fail("bn init");
    for (int c = 0; c < FC; c++) {
        bn.pop_mean[c] = (float)pop.mean[c];
        bn.pop_var[c] = (float)(pop.m2[c] / pop.n[c]);
    }
    const int B = 128;
    bl_shape sb = {B, FC, d.h, d.w, BL_NHWC};
    features(&d, perm, B, w, f);
    if (bl_bn_forward(&bn, BL_BN_POPULATION, NULL, sb, f, y2)) return fail("population forward");
    printf("A. train/test inconsistency: %d samples, output with batch statistics of groups of "
           "NBS vs with population statistics\n", B);
    printf("   %-6s %-24s %s\n", "NBS", "mean |y_batch - y_pop|", "max |y_batch - y_pop|");
    const int nbs[] = {128, 32, 8, 4, 2};
    size_t total = (size_t)B * hw * FC;
    for (int k = 0; k < 5; k++) {
        bl_groups g;
        bl_groups_ghost(&g, B, nbs[k]);
        if (bl_bn_forward(&bn, BL_BN_BATCH, &g, sb, f, y)) return fail("batch forward");
        double sum = 0, mx = 0;
        for (size_t e = 0; e < total; e++) {
            double a = fabs((double)y[e] - y2[e]);
            sum += a;
            if (a > mx) mx = a;
        }
        printf("   %-6d %-24.4f %.3f\n", nbs[k], sum / total, mx);
        bl_groups_free(&g);
    }

    /* B: estimators fed the same stream of batches of 64 */
    printf("\nB. population statistics from %ld batches of 64 vs the exact ones "
           "(worst channel)\n", batches);
    printf("   %-22s %-26s %s\n", "groups", "estimator", "|mean err|/std   |log var ratio|");
    const int BB = 64, ghosts[] = {0, 2};
    bl_shape s64 = {BB, FC, d.h, d.w, BL_NHWC};
    for (int gi = 0; gi < 2; gi++) {
        bl_bn ema, pre;
        bl_bn_init(&ema, &cfg);
        bl_bn_init(&pre, &cfg);
        bl_bn_precise_reset(&pre);
        bl_groups g;
        if (ghosts[gi]) bl_groups_ghost(&g, BB, ghosts[gi]);
        else bl_groups_whole(&g, BB);
        bl_rng r2;
        bl_rng_seed(&r2, seed + 7);
        int idx[64];
        for (long b = 0; b < batches; b++) {
            for (int i = 0; i < BB; i++) idx[i] = perm[bl_rng_below(&r2, (uint32_t)pop_n)];
            features(&d, idx, BB, w, f);
            if (bl_bn_forward(&ema, BL_BN_BATCH, &g, s64, f, y) ||
                bl_bn_commit(&ema, BL_EST_EMA))
                return fail("EMA");
            if (bl_bn_forward(&pre, BL_BN_BATCH, &g, s64, f, y) ||
                bl_bn_commit(&pre, BL_EST_PRECISE))
                return fail("PreciseBN");
        }
        if (bl_bn_precise_apply(&pre)) return fail("PreciseBN apply");
        double dm, dv;
        char gname[32];
        snprintf(gname, sizeof gname, ghosts[gi] ? "ghost groups of %d" : "whole batch (64)",
                 ghosts[gi]);
        compare(ema.pop_mean, ema.pop_var, &pop, &dm, &dv);
        printf("   %-22s %-26s %-16.4f %.4f\n", gname, "EMA, momentum 0.1", dm, dv);
        compare(pre.pop_mean, pre.pop_var, &pop, &dm, &dv);
        printf("   %-22s %-26s %-16.4f %.4f\n", gname, "PreciseBN (pooled)", dm, dv);
        bl_groups_free(&g);
        bl_bn_free(&ema);
        bl_bn_free(&pre);
    }
    printf("\nReading: smaller normalization batches move outputs further from inference-time "
           "outputs (A);\nEMA follows the last few batches while PreciseBN pools all of them "
           "with equal weight per sample,\nand with ghost groups EMA's mean of per-group "
           "variances misses the spread of the group means (B).\n");
    bl_bn_free(&bn);
    bl_moments_free(&pop);
    bl_free(f);
    bl_free(y);
    bl_free(y2);
    free(perm);
    bl_dataset_free(&d);
    return 0;
#endif
}
