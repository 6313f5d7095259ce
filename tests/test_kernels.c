/* Fast kernels against the plain reference, through the layer, over layouts, modes, group kinds,
 * per-domain affine and statistics, odd shapes and a large mean, with the streaming-store paths
 * forced on as well as off; and the fast kernels give bit-identical results with 1 and 2 threads. */
#include "bnlab/bn.h"
#include "check.h"

typedef struct {
    int n, c, h, w, ghost, domains, split, arows, srows;
    double offset;
} kcase;

static void init_layer(bl_bn *bn, const kcase *k, bl_kernel kern, bl_rng *r)
{
    bl_bn_config cfg = bl_bn_config_default(k->c);
    cfg.affine_domains = k->arows;
    cfg.stats_domains = k->srows;
    bl_bn_init(bn, &cfg);
    bn->kernel = kern;
    for (int i = 0; i < k->arows * k->c; i++)
        bn->gamma[i] = (float)(1 + 0.5 * bl_rng_normal(r)), bn->beta[i] = (float)bl_rng_normal(r);
    for (int i = 0; i < k->srows * k->c; i++)
        bn->pop_mean[i] = (float)(k->offset + 0.2 * bl_rng_normal(r)),
        bn->pop_var[i] = (float)(0.5 + bl_rng_uniform(r));
}

typedef struct {
    float *y, *dx, *yp, *dxp;
    float dg[2][256], db[2][256], mean[256], var[256];
} outputs;

/* Runs batch forward/backward + EMA commit, then population forward/backward. */
static int run(const kcase *k, bl_layout layout, bl_kernel kern, size_t stream_bytes,
               const float *x, const float *dy, const int *dom, outputs *o)
{
    bl_rng r;
    bl_rng_seed(&r, 99);
    bl_bn bn;
    init_layer(&bn, k, kern, &r);
    bn.stream_bytes = stream_bytes;
    bl_shape s = {k->n, k->c, k->h, k->w, layout};
    bl_groups g;
    bl_groups_make(&g, k->n, k->ghost, k->domains > 1 ? dom : NULL, k->domains, k->split);
    int bad = 0;
    bad |= bl_bn_forward(&bn, BL_BN_BATCH, &g, s, x, o->y) != BL_OK;
    bad |= bl_bn_backward(&bn, &g, x, dy, o->dx) != BL_OK;
    memcpy(o->dg[0], bn.dgamma, sizeof(float) * k->arows * k->c);
    memcpy(o->db[0], bn.dbeta, sizeof(float) * k->arows * k->c);
    if (k->srows == 1 || k->split) bad |= bl_bn_commit(&bn, BL_EST_EMA) != BL_OK;
    memcpy(o->mean, bn.pop_mean, sizeof(float) * k->srows * k->c);
    memcpy(o->var, bn.pop_var, sizeof(float) * k->srows * k->c);
    bl_bn_zero_grad(&bn);
    bad |= bl_bn_forward(&bn, BL_BN_POPULATION, &g, s, x, o->yp) != BL_OK;
    bad |= bl_bn_backward(&bn, &g, x, dy, o->dxp) != BL_OK;
    memcpy(o->dg[1], bn.dgamma, sizeof(float) * k->arows * k->c);
    memcpy(o->db[1], bn.dbeta, sizeof(float) * k->arows * k->c);
    if (bad) fprintf(stderr, "run failed: %s\n", bl_error());
    bl_groups_free(&g);
    bl_bn_free(&bn);
    return bad;
}

static void cmp(const char *what, const kcase *k, bl_layout l, const float *a, const float *b,
                size_t n)
{
    double *x = malloc(sizeof(double) * n * 2), *y = x + n;
    for (size_t i = 0; i < n; i++) x[i] = a[i], y[i] = b[i];
    char msg[200];
    snprintf(msg, sizeof msg, "%s (N=%d C=%d %dx%d ghost=%d domains=%d split=%d rows=%d/%d "
             "offset=%g %s)", what, k->n, k->c, k->h, k->w, k->ghost, k->domains, k->split,
             k->arows, k->srows, k->offset, bl_layout_name(l));
    /* float vs float: a few ulps of the output scale, more for a large mean (inputs ulp ~ 1e-4) */
    double atol = k->offset > 100 ? 5e-4 : 2e-5;
    CHECK_CLOSE(msg, x, y, n, atol, 2e-4);
    free(x);
}

int main(void)
{
    const kcase cases[] = {
        {8, 16, 5, 5, 0, 1, 0, 1, 1, 0},    {13, 7, 3, 5, 4, 1, 0, 1, 1, 1},
        {6, 3, 1, 1, 0, 1, 0, 1, 1, 0},     {32, 64, 4, 4, 8, 1, 0, 1, 1, -2},
        {10, 5, 3, 3, 0, 3, 1, 3, 3, 0},    {12, 6, 2, 2, 2, 3, 1, 3, 3, 0.5},
        {9, 4, 3, 2, 0, 2, 0, 2, 1, 0},     {9, 4, 3, 2, 0, 2, 0, 1, 2, 0},
        {16, 8, 6, 6, 0, 1, 0, 1, 1, 1000}, {5, 130, 2, 3, 2, 1, 0, 1, 1, 3},
        {6, 16, 4, 8, 2, 1, 0, 1, 1, 0.5},  {6, 32, 4, 4, 0, 2, 1, 2, 2, 0},
    };
    bl_rng r;
    bl_rng_seed(&r, 2024);
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const kcase *k = &cases[ci];
        size_t n = (size_t)k->n * k->c * k->h * k->w;
        float *x = malloc(sizeof(float) * n), *dy = malloc(sizeof(float) * n);
        int dom[64];
        for (int i = 0; i < k->n; i++) dom[i] = (int)bl_rng_below(&r, (uint32_t)k->domains);
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(k->offset + bl_rng_normal(&r)), dy[i] = (float)bl_rng_normal(&r);
        for (int l = 0; l < 2; l++) {
            bl_layout layout = l ? BL_NHWC : BL_NCHW;
            outputs f, rf, f1, fs;
            outputs *all[4] = {&f, &rf, &f1, &fs};
            for (int t = 0; t < 4; t++) {
                memset(all[t], 0, sizeof f);
                all[t]->y = bl_alloc(sizeof(float) * n * 4 + 256);
                /* each output 64-byte aligned so the streaming paths can run */
                size_t n64 = (n + 15) & ~(size_t)15;
                all[t]->dx = all[t]->y + n64;
                all[t]->yp = all[t]->dx + n64;
                all[t]->dxp = all[t]->yp + n64;
            }
            bl_threads_set(2);
            CHECK(!run(k, layout, BL_KERNEL_FAST, BL_BN_STREAM_BYTES, x, dy, dom, &f), "fast run");
            CHECK(!run(k, layout, BL_KERNEL_REF, BL_BN_STREAM_BYTES, x, dy, dom, &rf), "ref run");
            CHECK(!run(k, layout, BL_KERNEL_FAST, 0, x, dy, dom, &fs), "fast run, streaming");
            bl_threads_set(1);
            CHECK(!run(k, layout, BL_KERNEL_FAST, BL_BN_STREAM_BYTES, x, dy, dom, &f1),
                  "fast run, 1 thread");
            bl_threads_set(2);
            size_t ac = (size_t)k->arows * k->c, sc = (size_t)k->srows * k->c;
            cmp("batch y", k, layout, f.y, rf.y, n);
            cmp("batch dx", k, layout, f.dx, rf.dx, n);
            cmp("batch dgamma", k, layout, f.dg[0], rf.dg[0], ac);
            cmp("batch dbeta", k, layout, f.db[0], rf.db[0], ac);
            cmp("EMA mean", k, layout, f.mean, rf.mean, sc);
            cmp("EMA var", k, layout, f.var, rf.var, sc);
            cmp("population y", k, layout, f.yp, rf.yp, n);
            cmp("population dx", k, layout, f.dxp, rf.dxp, n);
            cmp("population dgamma", k, layout, f.dg[1], rf.dg[1], ac);
            cmp("population dbeta", k, layout, f.db[1], rf.db[1], ac);
            size_t fb = sizeof(float) * n;
            CHECK(!memcmp(f.y, f1.y, fb) && !memcmp(f.dx, f1.dx, fb) && !memcmp(f.yp, f1.yp, fb) &&
                      !memcmp(f.dxp, f1.dxp, fb) &&
                      !memcmp(f.dg, f1.dg, sizeof f.dg) && !memcmp(f.db, f1.db, sizeof f.db),
                  "case %zu %s: fast kernels differ between 1 and 2 threads", ci,
                  bl_layout_name(layout));
            cmp("streamed batch y", k, layout, fs.y, rf.y, n);
            cmp("streamed batch dx", k, layout, fs.dx, rf.dx, n);
            cmp("streamed population y", k, layout, fs.yp, rf.yp, n);
            for (int t = 0; t < 4; t++) bl_free(all[t]->y);
        }
        free(x);
        free(dy);
    }
    return check_done("test_kernels");
}
