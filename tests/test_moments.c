/* Moments: the statistics of a batch equal the merge of any split of it, empty parts included
 * (1e-12 relative, double); the PreciseBN pooled estimator equals the biased variance of the
 * concatenated batches whatever the split; the fast per-sample pass stays accurate far from zero. */
#include "bn/kernels.h"
#include "check.h"

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

/* Exact-ish reference: two passes in long double over all samples. */
static void direct(bl_shape s, const float *x, int c, long double *mean, long double *var)
{
    long double sum = 0, ss = 0;
    size_t hw = bl_shape_hw(s), n = (size_t)s.n * hw;
    for (int i = 0; i < s.n; i++)
        for (size_t p = 0; p < hw; p++) sum += x[bl_idx(s, i, c, p)];
    *mean = sum / n;
    for (int i = 0; i < s.n; i++)
        for (size_t p = 0; p < hw; p++) {
            long double d = x[bl_idx(s, i, c, p)] - *mean;
            ss += d * d;
        }
    *var = ss / n;
}

static void split_merge(bl_layout layout, double offset, bl_rng *r)
{
    const int N = 37, C = 5;
    bl_shape s = {N, C, 3, 4, layout};
    size_t per = (size_t)C * 12;
    float *x = malloc(sizeof(float) * N * per);
    for (size_t i = 0; i < N * per; i++) x[i] = (float)(offset + 2 * bl_rng_normal(r));
    bl_moments whole, parts, part;
    bl_moments_init(&whole, C);
    bl_moments_init(&parts, C);
    bl_moments_init(&part, C);
    CHECK(bl_moments_add(&whole, s, x) == BL_OK, "add: %s", bl_error());
    for (int trial = 0; trial < 20; trial++) {
        /* random cut points, repeated cuts give empty parts */
        int cuts[8], nc = 1 + (int)bl_rng_below(r, 6);
        for (int k = 0; k < nc; k++) cuts[k] = (int)bl_rng_below(r, N + 1);
        for (int a = 0; a < nc; a++)
            for (int b = a + 1; b < nc; b++)
                if (cuts[b] < cuts[a]) { int t = cuts[a]; cuts[a] = cuts[b]; cuts[b] = t; }
        if (trial % 3 == 0) cuts[0] = 0; /* an empty first part */
        bl_moments_zero(&parts);
        int start = 0;
        for (int k = 0; k <= nc; k++) {
            int end = k < nc ? cuts[k] : N;
            bl_shape sp = s;
            sp.n = end - start;
            bl_moments_zero(&part);
            CHECK(bl_moments_add(&part, sp, x + (size_t)start * per) == BL_OK, "part: %s", bl_error());
            CHECK(bl_moments_merge(&parts, &part) == BL_OK, "merge: %s", bl_error());
            start = end;
        }
        double worst = 0;
        for (int c = 0; c < C; c++) {
            worst = fmax(worst, rel(parts.mean[c], whole.mean[c]));
            worst = fmax(worst, rel(parts.m2[c], whole.m2[c]));
            worst = fmax(worst, rel(parts.n[c], whole.n[c]));
        }
        CHECK(worst <= 1e-12, "[%s, offset %g] split into %d parts: relative difference %.3g",
              bl_layout_name(layout), offset, nc + 1, worst);
    }
    /* against a direct long-double computation, and biased/unbiased variance */
    for (int c = 0; c < C; c++) {
        long double m, v;
        direct(s, x, c, &m, &v);
        double n = whole.n[c];
        CHECK(rel(whole.mean[c], (double)m) < 1e-12 * fmax(1, fabs(offset)),
              "mean %.17g vs %.17Lg", whole.mean[c], m);
        CHECK(rel(bl_moments_var(&whole, c, 0), (double)v) < 1e-10, "biased var %.17g vs %.17Lg",
              bl_moments_var(&whole, c, 0), v);
        CHECK(rel(bl_moments_var(&whole, c, 1), (double)(v * n / (n - 1))) < 1e-10,
              "unbiased var");
    }
    free(x);
    bl_moments_free(&whole);
    bl_moments_free(&parts);
    bl_moments_free(&part);
}

/* PreciseBN through the layer: batches of random sizes committed to the pooled estimator give
 * the biased variance of their concatenation, whatever the split. */
static void pooled(bl_layout layout, bl_rng *r)
{
    const int N = 40, C = 4;
    bl_shape s = {N, C, 2, 2, layout};
    size_t per = (size_t)C * 4;
    float *x = malloc(sizeof(float) * N * per), *y = malloc(sizeof(float) * N * per);
    for (size_t i = 0; i < N * per; i++) x[i] = (float)(5 + 3 * bl_rng_normal(r));
    bl_bn_config cfg = bl_bn_config_default(C);
    bl_bn bn;
    bl_bn_init(&bn, &cfg);
    for (int trial = 0; trial < 5; trial++) {
        bl_bn_precise_reset(&bn);
        int start = 0;
        while (start < N) {
            int b = 2 + (int)bl_rng_below(r, 12);
            if (start + b > N || N - (start + b) == 1) b = N - start;
            bl_shape sb = s;
            sb.n = b;
            CHECK(bl_bn_forward(&bn, BL_BN_BATCH, NULL, sb, x + (size_t)start * per, y) == BL_OK,
                  "forward: %s", bl_error());
            CHECK(bl_bn_commit(&bn, BL_EST_PRECISE) == BL_OK, "commit: %s", bl_error());
            start += b;
        }
        CHECK(bl_bn_precise_apply(&bn) == BL_OK, "apply: %s", bl_error());
        CHECK(bn.pop_source == BL_EST_PRECISE, "source");
        for (int c = 0; c < C; c++) {
            long double m, v;
            direct(s, x, c, &m, &v);
            CHECK(rel(bn.pop_mean[c], (double)m) < 1e-6 && rel(bn.pop_var[c], (double)v) < 1e-6,
                  "[%s] pooled channel %d: mean %g var %g, want %Lg %Lg", bl_layout_name(layout),
                  c, bn.pop_mean[c], bn.pop_var[c], m, v);
            CHECK(rel(bn.pooled.m2[c] / bn.pooled.n[c], (double)v) < 1e-12,
                  "pooled (double) var %.17g vs %.17Lg", bn.pooled.m2[c] / bn.pooled.n[c], v);
        }
    }
    bl_bn_free(&bn);
    free(x);
    free(y);
}

int main(void)
{
    bl_rng r;
    bl_rng_seed(&r, 7);
    for (int l = 0; l < 2; l++) {
        split_merge(l ? BL_NHWC : BL_NCHW, 0.0, &r);
        split_merge(l ? BL_NHWC : BL_NCHW, 1000.0, &r); /* a large mean must not cancel digits */
        pooled(l ? BL_NHWC : BL_NCHW, &r);
    }
    /* merge with empty sides, both ways */
    double n = 0, m = 0, m2 = 0;
    bl_moments_merge1(&n, &m, &m2, 0, 5, 7);
    CHECK(n == 0 && m == 0 && m2 == 0, "merging an empty part changed the moments");
    bl_moments_merge1(&n, &m, &m2, 3, 2, 8);
    CHECK(n == 3 && m == 2 && m2 == 8, "merging into an empty part must copy");
    CHECK(isnan(bl_moments_var(&(bl_moments){1, &n, &m, &m2}, 0, 1)) == 0, "var defined at n=3");
    double one = 1, z = 0;
    CHECK(isnan(bl_moments_var(&(bl_moments){1, &one, &z, &z}, 0, 1)),
          "unbiased variance of one value must be NaN");
    return check_done("test_moments");
}
