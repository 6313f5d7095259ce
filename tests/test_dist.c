/* SyncBN, per-process BN and PreciseBN across real processes (run under mpirun -np 4 and -np 2 by
 * ctest; alone it is a group of one). Every process builds the same global batch, takes its
 * share, and compares with one process computing BN over the concatenation:
 *   1. SyncBN with shares (3, 1, 0, 5): y, dx, dgamma/dbeta after the data-parallel sum and the
 *      running statistics within 1e-5 of one process; per-process BN does not match;
 *   2. the same 2 samples as 0+2 and 1+1: identical results;
 *   3. an empty process joins every collective (as many calls as the others), the result equals
 *      the run without it;  4. every process empty: no NaN, statistics unchanged, no hang;
 *   5. dgamma/dbeta summed once (not W times);  6. mean 1e4, unit variance: within 1e-3 of double;
 *   7. NCHW and NHWC, C = 3, 17, 100: identical;  8. population statistics: no collective call;
 *   per-process BN: every process's EMA fed all processes' moments by the ghost rule;
 *   the all-to-all with counts; routing rows by a global permutation (the shuffle) and back;
 *   9. PreciseBN across processes: the same bits on every process, 1e-6 from one process with the
 *      same groups (per-process: ghost groups of the share; SyncBN: the whole batch).
 * A failure on any process fails every process (the counts are summed). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

static bl_pg *pg;
static int R, W;
static bl_reducer red;

static uint64_t rng_state;
static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static double nrand(void)
{
    double u = urand() + 1e-12, v = urand();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* max |a - b| / max |b| (b the reference) */
static double rel(const float *a, const float *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
    }
    return m > 0 ? d / m : d;
}

/* One BN step on a share or the whole batch: y, dx, dgamma, dbeta, running mean/var. */
typedef struct {
    float *y, *dx, dgamma[128], dbeta[128], mean[128], var[128];
    long calls;
} result;

static void result_free(result *r) { free(r->y), free(r->dx); }

/* The global batch (N samples, C channels, 3x2 pixels, layout) with per-channel mean `mu`; this
 * process's share is counts[R] samples from offset sum(counts[< R]). sync: SyncBN; whole: one
 * process over the whole batch (the reference). */
static bl_status bn_step(const int *counts, int C, bl_layout layout, double mu, int sync, int whole,
                         result *out)
{
    int N = 0, off = 0;
    for (int r = 0; r < W; r++) N += counts[r], off += r < R ? counts[r] : 0;
    const int n = whole ? N : counts[R], o = whole ? 0 : off, H = 3, Wd = 2;
    const size_t per = (size_t)C * H * Wd;
    float *x = malloc(sizeof(float) * (per * N + 1)), *dy = malloc(sizeof(float) * (per * N + 1));
    rng_state = 12345;
    /* channel c of sample i at pixel p: mean mu + c, spread 1 + c/10, unequal everywhere */
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < H * Wd; p++) {
                size_t k = layout == BL_NCHW ? ((size_t)i * C + c) * H * Wd + p
                                             : ((size_t)i * H * Wd + p) * C + c;
                x[k] = (float)(mu + c + (1 + c / 10.0) * nrand());
                dy[k] = (float)(nrand() + 0.1 * c);
            }
    memset(out, 0, sizeof *out);
    out->y = calloc(per * n + 1, sizeof(float)), out->dx = calloc(per * n + 1, sizeof(float));
    bl_bn bn;
    bl_bn_config cfg = bl_bn_config_default(C);
    bl_status st = bl_bn_init(&bn, &cfg);
    if (st) return free(x), free(dy), st;
    for (int c = 0; c < C; c++) bn.gamma[c] = 0.5f + 0.01f * c, bn.beta[c] = 0.1f * c - 0.3f;
    bl_groups g;
    bl_groups_whole(&g, n);
    g.reducer = sync && !whole ? &red : NULL;
    const bl_shape s = {n, C, H, Wd, layout};
    const long c0 = bl_pg_calls(pg);
    st = bl_bn_forward(&bn, BL_BN_BATCH, &g, s, x + o * per, out->y);
    if (!st) st = bl_bn_backward(&bn, &g, x + o * per, dy + o * per, out->dx);
    /* the data-parallel sum of the parameter gradients (what training does once per step) */
    float gsum[256];
    for (int c = 0; c < C && !st; c++) gsum[c] = bn.dgamma[c], gsum[C + c] = bn.dbeta[c];
    if (!st && !whole) st = bl_pg_sum_float(pg, gsum, 2 * (size_t)C);
    for (int c = 0; c < C && !st; c++) out->dgamma[c] = gsum[c], out->dbeta[c] = gsum[C + c];
    if (!st) st = bl_bn_commit(&bn, BL_EST_EMA);
    for (int c = 0; c < C; c++) out->mean[c] = bn.pop_mean[c], out->var[c] = bn.pop_var[c];
    out->calls = bl_pg_calls(pg) - c0;
    bl_groups_free(&g);
    bl_bn_free(&bn);
    free(x), free(dy);
    return st;
}

/* A process's slice of the reference (the whole batch) */
static void slice(const int *counts, int C, const result *ref, const float **y, const float **dx)
{
    size_t off = 0, per = (size_t)C * 6;
    for (int r = 0; r < R; r++) off += counts[r];
    *y = ref->y + off * per, *dx = ref->dx + off * per;
}

static void test_sync_matches(const int *counts, int C, bl_layout layout, const char *what)
{
    result a, ref;
    CHECK(bn_step(counts, C, layout, 0, 1, 0, &a) == BL_OK, "%s: sync: %s", what, bl_error());
    CHECK(bn_step(counts, C, layout, 0, 1, 1, &ref) == BL_OK, "%s: one process: %s", what, bl_error());
    const float *y, *dx;
    slice(counts, C, &ref, &y, &dx);
    size_t n = (size_t)counts[R] * C * 6;
    CHECK(rel(a.y, y, n) <= 1e-5, "%s: y off by %.3g", what, rel(a.y, y, n));
    CHECK(rel(a.dx, dx, n) <= 1e-5, "%s: dx off by %.3g", what, rel(a.dx, dx, n));
    /* summed once: a sum taken W times would be W times the reference */
    CHECK(rel(a.dgamma, ref.dgamma, C) <= 1e-5 && rel(a.dbeta, ref.dbeta, C) <= 1e-5,
          "%s: dgamma off by %.3g, dbeta by %.3g", what, rel(a.dgamma, ref.dgamma, C),
          rel(a.dbeta, ref.dbeta, C));
    CHECK(rel(a.mean, ref.mean, C) <= 1e-5 && rel(a.var, ref.var, C) <= 1e-5,
          "%s: running mean off by %.3g, var by %.3g", what, rel(a.mean, ref.mean, C),
          rel(a.var, ref.var, C));
    result_free(&a), result_free(&ref);
}

/* values of every process's share, rank order, as doubles on every process */
static double *gather(const float *v, size_t n, size_t *total)
{
    double *d = malloc(sizeof(double) * (n + 1)), *all = NULL;
    for (size_t i = 0; i < n; i++) d[i] = v[i];
    CHECK(bl_pg_allgatherv(pg, d, n, &all, total, NULL) == BL_OK, "gather: %s", bl_error());
    free(d);
    return all;
}

int main(int argc, char **argv)
{
    if (bl_pg_init(&pg, &argc, &argv)) {
        fprintf(stderr, "test_dist: %s\n", bl_error());
        return 1;
    }
    R = bl_pg_rank(pg), W = bl_pg_size(pg);
    red = bl_pg_reducer(pg);
    int counts[64] = {0}, base[4] = {3, 1, 0, 5};
    if (W > 64) return fprintf(stderr, "test_dist: at most 64 processes\n"), 1;

    /* 1, 5, 7: SyncBN over uneven shares, both layouts, C = 3, 17, 100 */
    for (int r = 0; r < W; r++) counts[r] = base[r % 4];
    if (W == 1) counts[0] = 9;
    const int Cs[3] = {3, 17, 100};
    for (int k = 0; k < 3; k++)
        for (int l = 0; l < 2; l++) {
            char what[64];
            snprintf(what, sizeof what, "syncbn C=%d %s", Cs[k], l ? "nhwc" : "nchw");
            test_sync_matches(counts, Cs[k], (bl_layout)l, what);
        }
    /* 7: the two layouts give the same bits (sample by sample, channel by channel) */
    for (int k = 0; k < 3; k++) {
        result a, b;
        const int C = Cs[k];
        CHECK(!bn_step(counts, C, BL_NCHW, 0, 1, 0, &a) && !bn_step(counts, C, BL_NHWC, 0, 1, 0, &b),
              "layouts: %s", bl_error());
        double worst = 0;
        for (int i = 0; i < counts[R]; i++)
            for (int c = 0; c < C; c++)
                for (int p = 0; p < 6; p++)
                    worst = fmax(worst, fabs((double)a.y[((size_t)i * C + c) * 6 + p] -
                                             b.y[((size_t)i * 6 + p) * C + c]));
        CHECK(worst == 0 && rel(a.dgamma, b.dgamma, C) == 0 && rel(a.mean, b.mean, C) == 0,
              "C=%d: NCHW and NHWC differ by %.3g (y)", C, worst);
        result_free(&a), result_free(&b);
    }
    /* 1: per-process BN on the same data does not match one process (the test can fail) */
    if (W > 1) {
        result a, ref;
        CHECK(!bn_step(counts, 17, BL_NHWC, 0, 0, 0, &a) && !bn_step(counts, 17, BL_NHWC, 0, 1, 1, &ref),
              "per-process: %s", bl_error());
        const float *y, *dx;
        slice(counts, 17, &ref, &y, &dx);
        double mism[1] = {counts[R] > 0 && rel(a.y, y, (size_t)counts[R] * 17 * 6) > 1e-3};
        CHECK(bl_pg_sum(pg, mism, 1) == BL_OK && mism[0] >= 1,
              "per-process BN matched SyncBN on every process");
        result_free(&a), result_free(&ref);
    }

    /* per-process BN: each process normalizes its share, the EMA of every process is fed all
     * processes' moments (bl_bn_gather_pending) by the ghost rule: the mean over the non-empty
     * shares of their means and unbiased variances; every process stores the same bits */
    {
        const int C = 5, H = 2, Wd = 2, P = H * Wd;
        int N = 0, off = 0;
        for (int r = 0; r < W; r++) N += counts[r], off += r < R ? counts[r] : 0;
        float *x = malloc(sizeof(float) * (size_t)N * C * P + 4), *y = malloc(sizeof(float) * (size_t)N * C * P + 4);
        rng_state = 777;
        for (int i = 0; i < N * C * P; i++) x[i] = (float)(3 + 2 * nrand());
        bl_bn bn;
        bl_bn_config cfg = bl_bn_config_default(C);
        bl_bn_init(&bn, &cfg);
        bl_groups g;
        bl_groups_whole(&g, counts[R]);
        CHECK(bl_bn_forward(&bn, BL_BN_BATCH, &g, (bl_shape){counts[R], C, H, Wd, BL_NCHW},
                            x + (size_t)off * C * P, y) == BL_OK &&
                  bl_bn_gather_pending(&bn, &red) == BL_OK && bl_bn_commit(&bn, BL_EST_EMA) == BL_OK,
              "per-process EMA: %s", bl_error());
        double worst = 0;
        for (int c = 0; c < C; c++) {
            double sm = 0, sv = 0;
            int k = 0;
            for (int r = 0, o = 0; r < W; o += counts[r], r++) {
                if (!counts[r]) continue;
                double m = 0, v = 0, n = (double)counts[r] * P;
                for (int i = o; i < o + counts[r]; i++)
                    for (int p = 0; p < P; p++) m += x[((size_t)i * C + c) * P + p];
                m /= n;
                for (int i = o; i < o + counts[r]; i++)
                    for (int p = 0; p < P; p++) {
                        double d = x[((size_t)i * C + c) * P + p] - m;
                        v += d * d;
                    }
                sm += m, sv += v / (n - 1), k++;
            }
            worst = fmax(worst, fabs(bn.pop_mean[c] - 0.1 * sm / k) / fmax(1, fabs(0.1 * sm / k)));
            worst = fmax(worst, fabs(bn.pop_var[c] - (0.9 + 0.1 * sv / k)) / (0.9 + 0.1 * sv / k));
        }
        CHECK(worst <= 1e-6, "per-process EMA off the ghost rule by %.3g", worst);
        double mine[10], all[640];
        for (int c = 0; c < C; c++) mine[c] = bn.pop_mean[c], mine[C + c] = bn.pop_var[c];
        CHECK(bl_pg_allgather(pg, mine, 10, all) == BL_OK, "gather");
        for (int r = 1; r < W; r++)
            CHECK(!memcmp(all, all + 10 * r, 10 * sizeof(double)), "rank %d stores other statistics", r);
        bl_groups_free(&g);
        bl_bn_free(&bn);
        free(x), free(y);
    }

    /* 2: the same two samples as 0+2 and 1+1 (the other processes empty) */
    if (W >= 2) {
        int c02[64] = {0}, c11[64] = {0};
        c02[1] = 2, c11[0] = 1, c11[1] = 1;
        result a, b;
        CHECK(!bn_step(c02, 17, BL_NHWC, 0, 1, 0, &a) && !bn_step(c11, 17, BL_NHWC, 0, 1, 0, &b),
              "split: %s", bl_error());
        size_t na, nb;
        double *ya = gather(a.y, (size_t)c02[R] * 17 * 6, &na), *yb = gather(b.y, (size_t)c11[R] * 17 * 6, &nb);
        double *da = gather(a.dx, (size_t)c02[R] * 17 * 6, &na), *db = gather(b.dx, (size_t)c11[R] * 17 * 6, &nb);
        CHECK(na == nb && !memcmp(ya, yb, na * sizeof(double)) && !memcmp(da, db, na * sizeof(double)),
              "0+2 and 1+1 differ (y, dx)");
        CHECK(!memcmp(a.mean, b.mean, 17 * sizeof(float)) && !memcmp(a.var, b.var, 17 * sizeof(float)),
              "0+2 and 1+1 differ (running statistics: mean %.3g, var %.3g)",
              rel(a.mean, b.mean, 17), rel(a.var, b.var, 17));
        /* the parameter gradients are floats summed over processes: 0 + s against s0 + s1, one
         * rounding apart */
        CHECK(rel(a.dgamma, b.dgamma, 17) <= 2e-7 && rel(a.dbeta, b.dbeta, 17) <= 2e-7,
              "0+2 and 1+1 differ (dgamma %.3g, dbeta %.3g)", rel(a.dgamma, b.dgamma, 17),
              rel(a.dbeta, b.dbeta, 17));
        free(ya), free(yb), free(da), free(db);
        result_free(&a), result_free(&b);
    }

    /* 3: an empty process in the middle: as many collective calls as the others, nothing out,
     * the same result as the shares without it */
    if (W >= 3) {
        int ce[64] = {0}, cn[64] = {0};
        ce[0] = 2, ce[1] = 0, ce[2] = 3; /* the empty one: rank 1 */
        cn[0] = 2, cn[1] = 3;            /* without it */
        result a, b;
        CHECK(!bn_step(ce, 17, BL_NCHW, 0, 1, 0, &a) && !bn_step(cn, 17, BL_NCHW, 0, 1, 0, &b),
              "empty: %s", bl_error());
        double calls[1] = {(double)a.calls}, all[64];
        CHECK(bl_pg_allgather(pg, calls, 1, all) == BL_OK, "gather");
        for (int r = 1; r < W; r++) CHECK(all[r] == all[0], "rank %d made %g collective calls, rank 0 %g", r, all[r], all[0]);
        size_t na, nb;
        double *ya = gather(a.y, (size_t)ce[R] * 17 * 6, &na), *yb = gather(b.y, (size_t)cn[R] * 17 * 6, &nb);
        CHECK(na == nb && na == 5 * 17 * 6 && !memcmp(ya, yb, na * sizeof(double)),
              "an empty process changed y");
        CHECK(!memcmp(a.dgamma, b.dgamma, 17 * sizeof(float)) && !memcmp(a.mean, b.mean, 17 * sizeof(float)),
              "an empty process changed dgamma or the statistics");
        free(ya), free(yb);
        result_free(&a), result_free(&b);
    }

    /* 4: every process empty: nothing changes, nothing is NaN */
    {
        int c0[64] = {0};
        result a;
        CHECK(bn_step(c0, 17, BL_NHWC, 0, 1, 0, &a) == BL_OK, "all empty: %s", bl_error());
        int ok = 1;
        for (int c = 0; c < 17; c++)
            ok &= a.mean[c] == 0 && a.var[c] == 1 && a.dgamma[c] == 0 && a.dbeta[c] == 0;
        CHECK(ok, "all empty: statistics or gradients changed");
        result_free(&a);
    }

    /* 6: mean 1e4, unit variance: the float limit against a double reference */
    {
        int cb[64];
        for (int r = 0; r < W; r++) cb[r] = 10 * base[r % 4] + 1;
        result a;
        const int C = 3, H = 3, Wd = 2;
        CHECK(bn_step(cb, C, BL_NCHW, 1e4, 1, 0, &a) == BL_OK, "mean 1e4: %s", bl_error());
        int N = 0, off = 0;
        for (int r = 0; r < W; r++) N += cb[r], off += r < R ? cb[r] : 0;
        /* the same data in double */
        double *x = malloc(sizeof(double) * N * C * H * Wd);
        rng_state = 12345;
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++)
                for (int p = 0; p < H * Wd; p++) {
                    x[((size_t)i * C + c) * H * Wd + p] = (double)(float)(1e4 + c + (1 + c / 10.0) * nrand());
                    nrand();
                }
        double worst = 0;
        for (int c = 0; c < C; c++) {
            double m = 0, v = 0;
            for (int i = 0; i < N; i++)
                for (int p = 0; p < H * Wd; p++) m += x[((size_t)i * C + c) * H * Wd + p];
            m /= (double)N * H * Wd;
            for (int i = 0; i < N; i++)
                for (int p = 0; p < H * Wd; p++) {
                    double d = x[((size_t)i * C + c) * H * Wd + p] - m;
                    v += d * d;
                }
            v /= (double)N * H * Wd;
            for (int i = 0; i < cb[R]; i++)
                for (int p = 0; p < H * Wd; p++) {
                    double xh = (x[((size_t)(off + i) * C + c) * H * Wd + p] - m) / sqrt(v + 1e-5);
                    double want = (0.5 + 0.01 * c) * xh + (0.1 * c - 0.3);
                    worst = fmax(worst, fabs(a.y[((size_t)i * C + c) * H * Wd + p] - want));
                }
            CHECK(a.var[c] > 0 && isfinite(a.var[c]), "mean 1e4: running var %g", a.var[c]);
        }
        CHECK(worst <= 1e-3, "mean 1e4: outputs off by %.3g from double", worst);
        double all[64], w1[1] = {worst};
        if (!bl_pg_allgather(pg, w1, 1, all) && R == 0) {
            for (int r = 1; r < W; r++) w1[0] = fmax(w1[0], all[r]);
            printf("mean 1e4, unit variance: outputs within %.3g of double\n", w1[0]);
        }
        free(x);
        result_free(&a);
    }

    /* 8: population statistics make no collective call, even with a reducer on the groups */
    {
        bl_bn bn;
        bl_bn_config cfg = bl_bn_config_default(5);
        bl_bn_init(&bn, &cfg);
        bl_groups g;
        bl_groups_whole(&g, 4);
        g.reducer = &red;
        float x[4 * 5 * 4], y[4 * 5 * 4], dx[4 * 5 * 4];
        for (int i = 0; i < 80; i++) x[i] = (float)i / 7;
        const long c0 = bl_pg_calls(pg);
        CHECK(bl_bn_forward(&bn, BL_BN_POPULATION, &g, (bl_shape){4, 5, 2, 2, BL_NHWC}, x, y) == BL_OK &&
                  bl_bn_backward(&bn, &g, x, x, dx) == BL_OK,
              "population: %s", bl_error());
        CHECK(bl_pg_calls(pg) == c0, "population statistics made %ld collective calls",
              bl_pg_calls(pg) - c0);
        bl_groups_free(&g);
        bl_bn_free(&bn);
    }

    /* the process group's all-to-all with counts (the shuffle to come): process p sends p + q + 1
     * values to q (value 1000 p + 100 q + i), none to itself when p is 1 */
    {
        int sc[64], rc[64], ns = 0, nr = 0;
        for (int q = 0; q < W; q++) {
            sc[q] = (R == 1 && q == 1) ? 0 : R + q + 1, ns += sc[q];
            rc[q] = (q == 1 && R == 1) ? 0 : q + R + 1, nr += rc[q];
        }
        float *snd = malloc(sizeof(float) * (ns + 1)), *rcv = malloc(sizeof(float) * (nr + 1));
        for (int q = 0, o = 0; q < W; o += sc[q], q++)
            for (int i = 0; i < sc[q]; i++) snd[o + i] = (float)(1000 * R + 100 * q + i);
        CHECK(bl_pg_alltoallv(pg, snd, sc, rcv, rc) == BL_OK, "alltoallv: %s", bl_error());
        int ok = 1;
        for (int q = 0, o = 0; q < W; o += rc[q], q++)
            for (int i = 0; i < rc[q]; i++) ok &= rcv[o + i] == (float)(1000 * q + 100 * R + i);
        CHECK(ok, "alltoallv: wrong values received");
        free(snd), free(rcv);
    }

    /* routing rows by a global permutation (the shuffle): uneven counts with an empty process,
     * the rows every process gets, the way back (identity), and the gradient with a different dy
     * on every process against the one-process computation */
    {
        int cnt[64], T = 0, mine = 0;
        const int d = 3;
        for (int r = 0; r < W; r++) cnt[r] = (r * 3 + 2) % 5, T += cnt[r], mine += r < R ? cnt[r] : 0;
        int *perm = malloc(sizeof(int) * (T + 1)), *inv = malloc(sizeof(int) * (T + 1));
        CHECK(bl_shuffle_perm(5, 9, T, perm) == BL_OK, "perm");
        for (int s2 = 0; s2 < T; s2++) inv[perm[s2]] = s2;
        const int n = cnt[R];
        float *in = malloc(sizeof(float) * (n * d + 1)), *out = malloc(sizeof(float) * (n * d + 1));
        float *back = malloc(sizeof(float) * (n * d + 1)), *dy = malloc(sizeof(float) * (n * d + 1));
        float *din = malloc(sizeof(float) * (n * d + 1));
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) in[i * d + j] = (float)(1000 * (mine + i) + j);
        CHECK(bl_pg_route(pg, cnt, perm, 1, d, in, out) == BL_OK &&
                  bl_pg_route(pg, cnt, perm, -1, d, out, back) == BL_OK, "route: %s", bl_error());
        int ok_out = 1, ok_back = 1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) {
                ok_out &= out[i * d + j] == (float)(1000 * perm[mine + i] + j);
                ok_back &= back[i * d + j] == in[i * d + j];
            }
        CHECK(ok_out, "route: slot s did not get item perm[s]");
        CHECK(ok_back, "route there and back is not the identity");
        /* L = sum over slots of dy[s] . out[s], dy different everywhere: dL/din[item i] = dy[inv[i]] */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) dy[i * d + j] = (float)(7 * (mine + i) + 3 * j + 1);
        CHECK(bl_pg_route(pg, cnt, perm, -1, d, dy, din) == BL_OK, "route back: %s", bl_error());
        int ok_grad = 1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) ok_grad &= din[i * d + j] == (float)(7 * inv[mine + i] + 3 * j + 1);
        CHECK(ok_grad, "route: the gradient of item i is not dy of its slot");
        free(perm), free(inv), free(in), free(out), free(back), free(dy), free(din);
    }

    /* 9: PreciseBN across processes on a small ResNet and synthetic images */
    {
        bl_dataset d = {.n = 300, .h = 28, .w = 28};
        d.pixels = malloc(300 * 784), d.labels = malloc(300);
        rng_state = 99;
        for (int i = 0; i < 300 * 784; i++) d.pixels[i] = (uint8_t)(urand() * 256);
        for (int i = 0; i < 300; i++) d.labels[i] = (uint8_t)(i % 10);
        for (int sync = 0; sync < 2; sync++) {
            bl_net a, b;
            CHECK(!bl_resnet(&a, 8, 4, 10, 28, 28, 1, 100) && !bl_resnet(&b, 8, 4, 10, 28, 28, 1, 100),
                  "build: %s", bl_error());
            bl_net_init_params(&a, 3), bl_net_init_params(&b, 3);
            bl_precise_cfg pc;
            bl_precise_defaults(&pc);
            pc.samples = 300, pc.batch = 100; /* whole batches: shares = ghost groups */
            bl_precise_cfg one = pc;
            pc.reducer = &red, pc.rank = R, pc.world = W, pc.plan.sync_bn = sync;
            one.plan.norm_batch = sync ? 0 : (100 + W - 1) / W;
            bl_precise_report ra, rb;
            CHECK(bl_precise(&a, &d, &pc, &ra) == BL_OK, "precise across processes: %s", bl_error());
            CHECK(bl_precise(&b, &d, &one, &rb) == BL_OK, "precise alone: %s", bl_error());
            const size_t nb = bl_net_floats(&a, BL_BLOCK_BUFFERS);
            double *mine = malloc(sizeof(double) * nb), *all = malloc(sizeof(double) * nb * W);
            for (size_t i = 0; i < nb; i++) mine[i] = bl_net_block(&a, BL_BLOCK_BUFFERS, NULL)[i];
            CHECK(bl_pg_allgather(pg, mine, nb, all) == BL_OK, "gather");
            int same = 1;
            for (int r = 1; r < W; r++) same &= !memcmp(all, all + (size_t)r * nb, nb * sizeof(double));
            CHECK(same, "precise %s: statistics differ between processes", sync ? "sync" : "per-process");
            double worst = rel(bl_net_block(&a, BL_BLOCK_BUFFERS, NULL),
                               bl_net_block(&b, BL_BLOCK_BUFFERS, NULL), nb);
            CHECK(worst <= 1e-6, "precise %s: %.3g from one process with the same groups",
                  sync ? "sync" : "per-process", worst);
            if (R == 0)
                printf("PreciseBN %s: statistics %.3g from one process, the same bits on every "
                       "process: %s\n", sync ? "SyncBN" : "per-process", worst, same ? "yes" : "no");
            CHECK(fabs(ra.worst_se - rb.worst_se) <= 1e-6 * rb.worst_se + 1e-12,
                  "precise: standard error %g vs %g", ra.worst_se, rb.worst_se);
            free(mine), free(all);
            bl_net_free(&a), bl_net_free(&b);
        }
        free(d.pixels), free(d.labels);
    }

    double failed[1] = {check_failed};
    if (bl_pg_sum(pg, failed, 1)) failed[0] = 1;
    if (R == 0) printf("test_dist: %d processes\n", W);
    int rc = check_done(R == 0 ? "test_dist" : "test_dist (another rank)");
    bl_pg_free(pg);
    return rc ? rc : failed[0] > 0;
}
