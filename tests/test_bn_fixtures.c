/* The BN layer against PyTorch (tests/fixtures, from tools/gen_bn_fixtures.py): train and eval
 * mode outputs and gradients, ghost groups vs BN on x.split(G), the ghost EMA rule over several
 * steps, running statistics with momentum 0.1 and momentum=None. Every case runs in both layouts
 * and with both kernels. Tolerance: |a - b| <= 1e-5 + 1e-4 |b|. */
#include "bnlab/bn.h"
#include "check.h"
#include "fixture.h"

#include <dirent.h>

#define ATOL 1e-5
#define RTOL 1e-4

typedef struct {
    int n, c, h, w, hw;
    size_t numel;
} dims;

static dims get_dims(const fixture *f)
{
    double *s = fixture_get(f, "shape", 4);
    dims d = {(int)s[0], (int)s[1], (int)s[2], (int)s[3], (int)(s[2] * s[3]), 0};
    d.numel = (size_t)d.n * d.c * d.hw;
    return d;
}

/* Compares a float buffer in `nhwc` layout against an NCHW reference. */
static void cmp_tensor(const char *what, const float *got, const double *want, dims d, int nhwc)
{
    double *g = malloc(sizeof(double) * d.numel);
    from_layout_f(got, g, d.n, d.c, d.hw, nhwc);
    CHECK_CLOSE(what, g, want, d.numel, ATOL, RTOL);
    free(g);
}

static void cmp_vec(const char *what, const float *got, const double *want, int n)
{
    double g[4096];
    for (int i = 0; i < n; i++) g[i] = got[i];
    CHECK_CLOSE(what, g, want, (size_t)n, ATOL, RTOL);
}

static void set_affine(bl_bn *bn, const fixture *f, int c)
{
    double *g = fixture_get(f, "gamma", c), *b = fixture_get(f, "beta", c);
    for (int i = 0; i < c; i++) bn->gamma[i] = (float)g[i], bn->beta[i] = (float)b[i];
}

static void run_case(const char *path, const char *base, int nhwc, bl_kernel kern)
{
    fixture f;
    if (fixture_load(&f, path)) {
        CHECK(0, "fixture %s unreadable", path);
        return;
    }
    dims d = get_dims(&f);
    bl_shape s = {d.n, d.c, d.h, d.w, nhwc ? BL_NHWC : BL_NCHW};
    bl_bn_config cfg = bl_bn_config_default(d.c);
    double *eps = fixture_opt(&f, "eps"), *mom = fixture_opt(&f, "momentum");
    if (eps) cfg.eps = eps[0];
    if (mom) cfg.momentum = mom[0] < 0 ? BL_BN_CUMULATIVE : mom[0];
    cfg.name = base;
    bl_bn bn;
    CHECK(bl_bn_init(&bn, &cfg) == BL_OK, "%s: init: %s", base, bl_error());
    bn.kernel = kern;
    float *x = malloc(sizeof(float) * d.numel), *y = malloc(sizeof(float) * d.numel);
    float *dy = malloc(sizeof(float) * d.numel), *dx = malloc(sizeof(float) * d.numel);
    char what[320]; /* base is at most 255 characters: room for the rest */
#define WHAT(s) (snprintf(what, sizeof what, "%.255s [%s, %s] %s", base, nhwc ? "nhwc" : "nchw",   \
                          kern == BL_KERNEL_REF ? "ref" : "fast", s), what)

    if (!strncmp(base, "train_", 6) || !strncmp(base, "eval_", 5)) {
        int train = base[0] == 't';
        set_affine(&bn, &f, d.c);
        if (!train) {
            double *rm = fixture_get(&f, "running_mean", d.c), *rv = fixture_get(&f, "running_var", d.c);
            for (int i = 0; i < d.c; i++) bn.pop_mean[i] = (float)rm[i], bn.pop_var[i] = (float)rv[i];
        }
        to_layout_f(fixture_get(&f, "x", (int)d.numel), x, d.n, d.c, d.hw, nhwc);
        to_layout_f(fixture_get(&f, "dy", (int)d.numel), dy, d.n, d.c, d.hw, nhwc);
        bl_bn_mode mode = train ? BL_BN_BATCH : BL_BN_POPULATION;
        bl_status st = bl_bn_forward(&bn, mode, NULL, s, x, y);
        CHECK(st == BL_OK, "%s: %s", WHAT("forward"), bl_error());
        st = bl_bn_backward(&bn, NULL, x, dy, dx);
        CHECK(st == BL_OK, "%s: %s", WHAT("backward"), bl_error());
        cmp_tensor(WHAT("y"), y, fixture_get(&f, "y", (int)d.numel), d, nhwc);
        cmp_tensor(WHAT("dx"), dx, fixture_get(&f, "dx", (int)d.numel), d, nhwc);
        cmp_vec(WHAT("dgamma"), bn.dgamma, fixture_get(&f, "dgamma", d.c), d.c);
        cmp_vec(WHAT("dbeta"), bn.dbeta, fixture_get(&f, "dbeta", d.c), d.c);
        if (train) {
            CHECK(bl_bn_commit(&bn, BL_EST_EMA) == BL_OK, "%s: %s", WHAT("commit"), bl_error());
            cmp_vec(WHAT("running_mean"), bn.pop_mean, fixture_get(&f, "running_mean", d.c), d.c);
            cmp_vec(WHAT("running_var"), bn.pop_var, fixture_get(&f, "running_var", d.c), d.c);
        }
    } else if (!strncmp(base, "ghost_", 6) || !strncmp(base, "running_", 8)) {
        int ghost = !strncmp(base, "ghost_", 6);
        int steps = (int)fixture_get(&f, "steps", 1)[0];
        bl_groups g;
        if (ghost) {
            set_affine(&bn, &f, d.c);
            bl_groups_ghost(&g, d.n, (int)fixture_get(&f, "ghost", 1)[0]);
        } else {
            bl_groups_whole(&g, d.n);
        }
        for (int k = 0; k < steps; k++) {
            char xn[16];
            snprintf(xn, sizeof xn, "x%d", k);
            to_layout_f(fixture_get(&f, xn, (int)d.numel), x, d.n, d.c, d.hw, nhwc);
            CHECK(bl_bn_forward(&bn, BL_BN_BATCH, &g, s, x, y) == BL_OK, "%s: %s",
                  WHAT("forward"), bl_error());
            CHECK(bl_bn_commit(&bn, BL_EST_EMA) == BL_OK, "%s: %s", WHAT("commit"), bl_error());
        }
        if (ghost) {
            to_layout_f(fixture_get(&f, "dy", (int)d.numel), dy, d.n, d.c, d.hw, nhwc);
            CHECK(bl_bn_backward(&bn, &g, x, dy, dx) == BL_OK, "%s: %s", WHAT("backward"),
                  bl_error());
            cmp_tensor(WHAT("y"), y, fixture_get(&f, "y", (int)d.numel), d, nhwc);
            cmp_tensor(WHAT("dx"), dx, fixture_get(&f, "dx", (int)d.numel), d, nhwc);
            cmp_vec(WHAT("dgamma"), bn.dgamma, fixture_get(&f, "dgamma", d.c), d.c);
            cmp_vec(WHAT("dbeta"), bn.dbeta, fixture_get(&f, "dbeta", d.c), d.c);
        } else {
            double *nbt = fixture_get(&f, "num_batches_tracked", 1);
            CHECK(nbt && bn.num_batches_tracked[0] == (int64_t)nbt[0],
                  "%s: num_batches_tracked %lld", WHAT("count"),
                  (long long)bn.num_batches_tracked[0]);
        }
        cmp_vec(WHAT("running_mean"), bn.pop_mean, fixture_get(&f, "running_mean", d.c), d.c);
        cmp_vec(WHAT("running_var"), bn.pop_var, fixture_get(&f, "running_var", d.c), d.c);
        bl_groups_free(&g);
    } else {
        CHECK(0, "unknown fixture kind %s", base);
    }
    free(x);
    free(y);
    free(dy);
    free(dx);
    bl_bn_free(&bn);
    fixture_free(&f);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    DIR *dp = opendir(dir);
    if (!dp) return fprintf(stderr, "cannot open fixture directory %s\n", dir), 1;
    struct dirent *e;
    int files = 0;
    while ((e = readdir(dp))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".txt")) continue;
        if (!strncmp(e->d_name, "gn_", 3)) continue; /* GroupNorm's: tests/test_groupnorm.c */
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        files++;
        for (int nhwc = 0; nhwc < 2; nhwc++)
            for (int k = 0; k < 2; k++) run_case(path, e->d_name, nhwc, k ? BL_KERNEL_REF : BL_KERNEL_FAST);
    }
    closedir(dp);
    CHECK(files >= 12, "expected at least 12 fixture files in %s, found %d", dir, files);
    return check_done("test_bn_fixtures");
}
