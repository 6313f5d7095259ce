/* Finite differences on the double instance of the reference kernels, for every mode: batch
 * statistics (whole batch, uneven ghost groups, per-domain groups, ghost groups within domains,
 * groups that mix domains under per-domain affine) and population statistics (shared, per domain),
 * in both layouts. L = sum(w * y); dy = w; central differences with h = 1e-5. */
#include "bn/kernels.h"
#include "check.h"

#define H 1e-5

typedef struct {
    const char *name;
    int batch, ghost, split, domains, affine_rows, stats_rows;
} mode_case;

static double loss(const bl_bn_kargs *a, int batch, const double *x, const double *gamma,
                   const double *beta, const double *mean, const double *var, const double *w,
                   double *y, bl_moments *gm)
{
    bl_status st = batch ? bl_bn_ref_f64_fwd_batch(a, x, gamma, beta, y, gm)
                         : bl_bn_ref_f64_fwd_pop(a, x, gamma, beta, mean, var, y);
    if (st) {
        fprintf(stderr, "forward failed: %s\n", bl_error());
        return NAN;
    }
    double L = 0;
    for (size_t i = 0; i < bl_shape_numel(a->s); i++) L += w[i] * y[i];
    return L;
}

/* d loss / d v[k] by central differences, restoring v[k]. */
#define FD(v, k, out)                                                                              \
    do {                                                                                           \
        double keep = v[k];                                                                        \
        v[k] = keep + H;                                                                           \
        double lp = loss(&a, mc->batch, x, gamma, beta, mean, var, w, y, &gm);                     \
        v[k] = keep - H;                                                                           \
        double lm = loss(&a, mc->batch, x, gamma, beta, mean, var, w, y, &gm);                     \
        v[k] = keep;                                                                               \
        out = (lp - lm) / (2 * H);                                                                 \
    } while (0)

static void run(const mode_case *mc, bl_layout layout)
{
    const int N = 7, C = 3;
    bl_shape s = {N, C, 2, 3, layout};
    size_t n = bl_shape_numel(s);
    int dom[7] = {1, 0, 0, 1, 1, 0, 1};
    bl_groups g;
    bl_status st = bl_groups_make(&g, N, mc->ghost, mc->domains > 1 ? dom : NULL, mc->domains,
                                  mc->split);
    CHECK(st == BL_OK, "%s: groups: %s", mc->name, bl_error());
    bl_scratch ws = {0};
    bl_bn_kargs a = {s, &g, mc->affine_rows, mc->stats_rows, 1e-3, mc->name, &ws, 0};
    bl_rng r;
    bl_rng_seed(&r, 42);
    double *x = malloc(sizeof(double) * n * 5), *w = x + n, *y = w + n, *dx = y + n, *dxn = dx + n;
    double gamma[6], beta[6], mean[6], var[6], dg[6] = {0}, db[6] = {0}, dgn[6], dbn[6];
    for (size_t i = 0; i < n; i++) x[i] = 1.5 + bl_rng_normal(&r), w[i] = bl_rng_normal(&r);
    for (int k = 0; k < 6; k++) {
        gamma[k] = 1 + 0.5 * bl_rng_normal(&r);
        beta[k] = bl_rng_normal(&r);
        mean[k] = 1.5 + 0.3 * bl_rng_normal(&r);
        var[k] = 0.5 + bl_rng_uniform(&r);
    }
    bl_moments gm;
    bl_moments_init(&gm, g.n_groups * C);
    loss(&a, mc->batch, x, gamma, beta, mean, var, w, y, &gm);
    st = mc->batch ? bl_bn_ref_f64_bwd_batch(&a, x, w, gamma, &gm, dx, dg, db)
                   : bl_bn_ref_f64_bwd_pop(&a, x, w, gamma, mean, var, dx, dg, db);
    CHECK(st == BL_OK, "%s: backward: %s", mc->name, bl_error());
    for (size_t i = 0; i < n; i++) FD(x, i, dxn[i]);
    int ac = mc->affine_rows * C;
    for (int k = 0; k < ac; k++) {
        FD(gamma, k, dgn[k]);
        FD(beta, k, dbn[k]);
    }
    char what[128];
    snprintf(what, sizeof what, "%s [%s] dx", mc->name, bl_layout_name(layout));
    CHECK_CLOSE(what, dx, dxn, n, 1e-7, 1e-6);
    snprintf(what, sizeof what, "%s [%s] dgamma", mc->name, bl_layout_name(layout));
    CHECK_CLOSE(what, dg, dgn, (size_t)ac, 1e-7, 1e-6);
    snprintf(what, sizeof what, "%s [%s] dbeta", mc->name, bl_layout_name(layout));
    CHECK_CLOSE(what, db, dbn, (size_t)ac, 1e-7, 1e-6);
    /* the gradient is not trivially zero */
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(dx[i]));
    CHECK(mx > 1e-3, "%s: dx is all zero", mc->name);
    bl_moments_free(&gm);
    bl_groups_free(&g);
    bl_scratch_free(&ws);
    free(x);
}

int main(void)
{
    const mode_case cases[] = {
        {"batch, whole batch", 1, 0, 0, 1, 1, 1},
        {"batch, ghost groups of 3 (7 samples: 3+3+1 -> last group of 1 sample, 6 values)", 1, 3,
         0, 1, 1, 1},
        {"batch, ghost groups of 2", 1, 2, 0, 1, 1, 1},
        {"batch, per-domain groups + per-domain affine", 1, 0, 1, 2, 2, 1},
        {"batch, ghost groups of 2 within domains + per-domain affine", 1, 2, 1, 2, 2, 2},
        {"batch, whole batch mixing domains + per-domain affine", 1, 0, 0, 2, 2, 1},
        {"population, shared", 0, 0, 0, 1, 1, 1},
        {"population, per-domain statistics + per-domain affine", 0, 0, 0, 2, 2, 2},
        {"population, per-domain statistics, shared affine", 0, 0, 0, 2, 1, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        run(&cases[k], BL_NCHW);
        run(&cases[k], BL_NHWC);
    }
    return check_done("test_bn_grad");
}
