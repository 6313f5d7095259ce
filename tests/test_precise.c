/* PreciseBN (bl_precise) on a small ResNet and synthetic images: with B = N the statistics are each
 * layer's exact input statistics in one pass; the first layer's statistics, and all statistics of
 * the sequential mode, do not depend on the batch split; the sequential mode gives the exact
 * inference-time input statistics of every layer; bad arguments change nothing. And bl_inspect
 * on the same model: consistent after PreciseBN, one corrupted layer flagged. */
#include "bnlab/bnlab.h"
#include "check.h"

#define NS 60  /* images in the synthetic split */
#define MAXB 64

static bl_dataset make_data(uint8_t *px, uint8_t *lab)
{
    bl_rng r;
    bl_rng_seed(&r, 99);
    for (int i = 0; i < NS * 784; i++) /* a per-image brightness, so images differ in mean */
        px[i] = (uint8_t)(bl_rng_below(&r, 128) + (i / 784 % 5) * 25);
    for (int i = 0; i < NS; i++) lab[i] = (uint8_t)(i % 10);
    bl_dataset d = {.n = NS, .h = 28, .w = 28, .pixels = px, .labels = lab};
    return d;
}

static void make_net(bl_net *net)
{
    CHECK(bl_resnet(net, 8, 4, 10, 28, 28, 1, MAXB) == BL_OK, "resnet: %s", bl_error());
    bl_net_init_params(net, 5);
    /* non-trivial affine parameters, so each layer's output depends on its statistics */
    bl_rng r;
    bl_rng_seed(&r, 7);
    for (int k = 0; k < bl_net_bn_count(net); k++) {
        bl_bn *bn = bl_net_bn_at(net, k);
        for (int c = 0; c < bn->cfg.channels; c++)
            bn->gamma[c] = (float)(1 + 0.3 * bl_rng_normal(&r)),
            bn->beta[c] = (float)(0.3 * bl_rng_normal(&r));
    }
}

/* Each BN layer's input mean and biased variance over a forward of the N chosen images (one
 * batch) in `mode`, in double, straight from the activations. */
static void direct_stats(bl_net *net, const bl_dataset *d, long N, uint64_t seed, bl_bn_mode mode,
                         double *mean, double *var, int maxc)
{
    int idx[NS];
    float *x = malloc(sizeof(float) * N * 784);
    uint8_t y[NS];
    CHECK(bl_precise_samples(d->n, N, seed, idx) == BL_OK, "samples: %s", bl_error());
    const bl_augment aug = {seed, BL_STREAM_PRECISE};
    const bl_recipe rc = bl_recipe_fmnist();
    bl_dataset_batch(d, &rc, idx, (int)N, &aug, x, y);
    const bl_ctx ctx = bl_ctx_all(mode, NULL);
    CHECK(bl_net_forward(net, &ctx, x, (int)N) == BL_OK, "forward: %s", bl_error());
    for (int k = 0; k < bl_net_bn_count(net); k++) {
        /* the inputs this BN core normalizes: one tensor, or every level of a multi-level layer */
        const bl_layer *l = bl_net_layer_at(net, bl_net_bn_layer(net, k));
        const int C = bl_net_tensor_at(net, l->in[0])->c;
        for (int c = 0; c < C; c++) {
            double s = 0, q = 0, m = 0;
            for (int pass = 0; pass < 2; pass++) { /* the mean, then squared deviations */
                for (int j = 0; j < l->n_in; j++) {
                    if (!(bl_net_bn_inputs(net, k) >> j & 1)) continue;
                    const bl_tensor *t = bl_net_tensor_at(net, l->in[j]);
                    const size_t np = (size_t)N * t->h * t->w;
                    for (size_t p = 0; p < np; p++) {
                        const double v = t->data[p * C + c];
                        if (pass) q += (v - s) * (v - s);
                        else s += v, m++;
                    }
                }
                if (!pass) s /= m;
            }
            mean[k * maxc + c] = s, var[k * maxc + c] = q / m;
        }
    }
    free(x);
}

static void stats_of(bl_net *net, double *mean, double *var, int maxc)
{
    for (int k = 0; k < bl_net_bn_count(net); k++) {
        bl_bn *bn = bl_net_bn_at(net, k);
        for (int c = 0; c < bn->cfg.channels; c++)
            mean[k * maxc + c] = bn->pop_mean[c], var[k * maxc + c] = bn->pop_var[c];
    }
}

/* Compares layer statistics a against reference b, layers [k0, k1), relative to the channel's std
 * for the mean (a mean near 0 has no useful relative scale) and relative for the variance. */
static void compare(const char *what, bl_net *net, const double *am, const double *av,
                    const double *bm, const double *bv, int maxc, int k0, int k1, double tol)
{
    for (int k = k0; k < k1; k++) {
        int C = bl_net_bn_at(net, k)->cfg.channels;
        double worst_m = 0, worst_v = 0;
        for (int c = 0; c < C; c++) {
            int i = k * maxc + c;
            double em = fabs(am[i] - bm[i]) / sqrt(bv[i]), ev = fabs(av[i] - bv[i]) / bv[i];
            worst_m = em > worst_m ? em : worst_m, worst_v = ev > worst_v ? ev : worst_v;
        }
        CHECK(worst_m <= tol && worst_v <= tol, "%s: layer %d (%s): mean off by %.3g std, var by "
              "%.3g relative (limit %g)", what, k, bl_net_bn_at(net, k)->name, worst_m, worst_v,
              tol);
    }
}

int main(void)
{
    static uint8_t px[NS * 784], lab[NS];
    bl_dataset d = make_data(px, lab);
    bl_threads_set(2);
    bl_net net;
    make_net(&net);
    const int K = bl_net_bn_count(&net), maxc = 16;
    const long N = 50;
    double *m1 = calloc(K * maxc, sizeof(double)), *v1 = calloc(K * maxc, sizeof(double));
    double *m2 = calloc(K * maxc, sizeof(double)), *v2 = calloc(K * maxc, sizeof(double));
    double *m3 = calloc(K * maxc, sizeof(double)), *v3 = calloc(K * maxc, sizeof(double));
    bl_precise_cfg c;
    bl_precise_defaults(&c);
    c.samples = N;
    bl_precise_report rep;

    /* 1. B = N: every layer's statistics are those of its input in one batch-mode pass */
    c.batch = (int)N;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise B=N: %s", bl_error());
    CHECK(bl_net_bn_at(&net, 0)->pop_source == BL_EST_PRECISE, "pop_source not precise");
    stats_of(&net, m1, v1, maxc);
    direct_stats(&net, &d, N, c.seed, BL_BN_BATCH, m2, v2, maxc);
    compare("B = N vs one pass", &net, m1, v1, m2, v2, maxc, 0, K, 1e-6);
    CHECK(rep.layers == K && rep.samples == N && fabs(rep.forwards - 1) < 1e-12,
          "report: %d layers, %ld samples, %g forwards", rep.layers, rep.samples, rep.forwards);
    int se_ok = 1;
    for (int k = 0; k < K; k++) se_ok &= rep.max_se[k] > 0 && rep.max_se[k] < 1;
    CHECK(se_ok && rep.worst_se > 0, "standard errors out of (0, 1): worst %g", rep.worst_se);

    /* 2. another split: the first layer agrees (its input does not depend on the batch), the
     * deeper ones do not have to (small-batch error); a last partial batch is used (50 = 7*7+1) */
    c.batch = 7;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise B=7: %s", bl_error());
    stats_of(&net, m3, v3, maxc);
    compare("first layer, B = 7 vs B = N", &net, m3, v3, m1, v1, maxc, 0, 1, 1e-6);
    c.batch = 2;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise B=2: %s", bl_error());
    stats_of(&net, m3, v3, maxc);
    double dev = 0;
    for (int i = 0; i < maxc; i++) {
        int k = K - 1;
        double e = fabs(v3[k * maxc + i] - v1[k * maxc + i]) / v1[k * maxc + i];
        dev = e > dev ? e : dev;
    }
    CHECK(dev > 1e-3, "B = 2 vs B = N: the last layer agrees to %g: the small-batch error the "
          "sequential mode removes should show", dev);

    /* 3. sequential: independent of the split, and exactly the inference-time statistics */
    c.sequential = 1;
    c.batch = (int)N;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "sequential B=N: %s", bl_error());
    CHECK(rep.forwards > 1 && rep.forwards < K, "sequential cost %g forwards", rep.forwards);
    stats_of(&net, m1, v1, maxc);
    direct_stats(&net, &d, N, c.seed, BL_BN_POPULATION, m2, v2, maxc);
    compare("sequential vs the population forward", &net, m1, v1, m2, v2, maxc, 0, K, 1e-6);
    const int splits[2] = {7, 1};
    for (int j = 0; j < 2; j++) {
        c.batch = splits[j];
        CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "sequential B=%d: %s", c.batch, bl_error());
        stats_of(&net, m3, v3, maxc);
        compare(j ? "sequential B = 1 vs B = N" : "sequential B = 7 vs B = N", &net, m3, v3, m1,
                v1, maxc, 0, K, 1e-6);
    }

    /* 4. the standard error shrinks like 1/sqrt(N) */
    c.sequential = 0;
    c.batch = 10;
    c.samples = 10;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise N=10: %s", bl_error());
    double se10 = rep.max_se[0];
    c.samples = 40;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise N=40: %s", bl_error());
    CHECK(rep.max_se[0] < se10 && rep.max_se[0] > se10 / 4,
          "first layer's standard error: %g at N=10, %g at N=40 (expected about half)", se10,
          rep.max_se[0]);

    /* 5. bad arguments: an error naming the fix, and the statistics unchanged */
    stats_of(&net, m1, v1, maxc);
    c.samples = NS + 1;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_ERR_ARG && strstr(bl_error(), "cfg.samples"),
          "too many samples: %s", bl_error());
    c.samples = 10;
    c.batch = MAXB + 1;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_ERR_ARG, "batch above the net's: %s", bl_error());
    c.batch = 0;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_ERR_ARG, "batch 0: %s", bl_error());
    /* a non-finite weight makes the sequential passes fail half way, after the first layers got
     * new statistics: nothing may change */
    c.batch = 10;
    c.sequential = 1;
    const bl_param *w = bl_net_param(&net, "layer2.0.conv2.weight");
    float keep = w->data[0];
    w->data[0] = NAN;
    CHECK(bl_precise(&net, &d, &c, &rep) != BL_OK, "a NaN weight went unnoticed");
    w->data[0] = keep;
    stats_of(&net, m3, v3, maxc);
    int same = 1;
    for (int i = 0; i < K * maxc; i++) same &= m1[i] == m3[i] && v1[i] == v3[i];
    CHECK(same, "a failed precise pass changed the statistics");
    CHECK(bl_net_bn_at(&net, 0)->pop_source == BL_EST_PRECISE, "pop_source changed on failure");

    /* 6. inspect: consistent right after PreciseBN; one layer's stored variance x4 is flagged
     * (that layer only), and inspect leaves the statistics as they were */
    c.sequential = 0;
    c.samples = NS;
    c.batch = 20;
    CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "precise before inspect: %s", bl_error());
    bl_inspect_cfg ic;
    bl_inspect_defaults(&ic);
    ic.samples = NS, ic.precise_batch = 20, ic.batch = 6, ic.batches = 10;
    static bl_inspect_report ir;
    CHECK(bl_inspect(&net, &d, &ic, &ir) == BL_OK, "inspect: %s", bl_error());
    CHECK(ir.flagged == 0 && ir.layers == K, "inspect right after PreciseBN: %d layers flagged",
          ir.flagged);
    bl_bn *bad = bl_net_bn_at(&net, 4);
    for (int ch = 0; ch < bad->cfg.channels; ch++) bad->pop_var[ch] *= 4;
    stats_of(&net, m1, v1, maxc);
    CHECK(bl_inspect(&net, &d, &ic, &ir) == BL_OK, "inspect: %s", bl_error());
    int only = ir.row[4].flagged && ir.flagged == 1 && fabs(ir.row[4].logvar_max - log(4)) < 0.05;
    CHECK(only, "inspect with layer 4's variance x4: %d flagged, layer 4 %s, |logvar| %g",
          ir.flagged, ir.row[4].flagged ? "flagged" : "not flagged", ir.row[4].logvar_max);
    stats_of(&net, m3, v3, maxc);
    same = 1;
    for (int i = 0; i < K * maxc; i++) same &= m1[i] == m3[i] && v1[i] == v3[i];
    CHECK(same, "inspect changed the stored statistics");
    CHECK(bl_net_bn_at(&net, 0)->pop_source == BL_EST_PRECISE, "inspect changed pop_source");

    free(m1), free(v1), free(m2), free(v2), free(m3), free(v3);
    bl_net_free(&net);

    /* 7. a multi-level head: the sequential mode estimates each head BN's cores (per level and
     * pooled) in one pass, and gives the exact inference-time statistics of every core with either
     * kind of head statistics in use */
    for (int pop_level = 0; pop_level < 2; pop_level++) {
        bl_model m;
        bl_model_init(&m, "resnet8-ml");
        m.width = 4;
        bl_model_option(&m, "head_width", 8), bl_model_option(&m, "head_pop", pop_level);
        CHECK(bl_model_build(&net, &m, 10, 28, 28, 1, MAXB) == BL_OK, "%s", bl_error());
        bl_net_init_params(&net, 3);
        const int KM = bl_net_bn_count(&net), mc = 32;
        double *a = calloc((size_t)KM * mc * 4, sizeof(double)), *av = a + KM * mc,
               *b = av + KM * mc, *bv = b + KM * mc;
        c.sequential = 1, c.samples = N, c.batch = 16;
        CHECK(bl_precise(&net, &d, &c, &rep) == BL_OK, "ml sequential: %s", bl_error());
        stats_of(&net, a, av, mc);
        direct_stats(&net, &d, N, c.seed, BL_BN_POPULATION, b, bv, mc);
        compare(pop_level ? "ml sequential (per-level head statistics) vs the population forward"
                          : "ml sequential (pooled head statistics) vs the population forward",
                &net, a, av, b, bv, mc, 0, KM, 1e-5);
        CHECK(rep.layers == KM && rep.forwards > 1, "ml report: %d cores, %g forwards", rep.layers,
              rep.forwards);
        free(a);
        bl_net_free(&net);
    }
    return check_done("test_precise");
}
