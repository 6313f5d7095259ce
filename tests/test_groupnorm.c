/* GroupNorm against torch.nn.functional.group_norm (fixtures from tools/gen_gn_fixtures.py: several
 * groups, instance norm, layer norm, one value per group) in both layouts, float and double; the
 * double kernel's gradients against central finite differences of L = sum(w * y); bad input. */
#include "nn/groupnorm.h"
#include "check.h"
#include "fixture.h"

#define H 1e-5

static const char *cases[] = {"gn_3x8x4x5_g2", "gn_2x32x3x3_g8", "gn_2x6x3x2_g6", "gn_4x4x2x2_g1",
                              "gn_5x4x1x1_g4"};

static double loss(bl_shape s, int g, const double *x, const double *gamma, const double *beta,
                   const double *w, double *y, double *mean, double *rstd)
{
    if (bl_gn_f64_forward(s, g, 1e-5, x, gamma, beta, y, mean, rstd)) return NAN;
    double L = 0;
    for (size_t i = 0; i < bl_shape_numel(s); i++) L += w[i] * y[i];
    return L;
}

static double fd(bl_shape s, int g, double *v, size_t k, const double *x, const double *gamma,
                 const double *beta, const double *w, double *y, double *mean, double *rstd)
{
    const double keep = v[k];
    v[k] = keep + H;
    const double lp = loss(s, g, x, gamma, beta, w, y, mean, rstd);
    v[k] = keep - H;
    const double lm = loss(s, g, x, gamma, beta, w, y, mean, rstd);
    v[k] = keep;
    return (lp - lm) / (2 * H);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.txt", dir, cases[ci]);
        fixture f;
        if (fixture_load(&f, path)) {
            CHECK(0, "cannot read %s", path);
            continue;
        }
        const double *sh = fixture_get(&f, "shape", 4), *gr = fixture_get(&f, "groups", 1),
                     *ep = fixture_get(&f, "eps", 1);
        const int n = (int)sh[0], c = (int)sh[1], hw = (int)(sh[2] * sh[3]), g = (int)gr[0];
        const int numel = n * c * hw;
        CHECK(fabs(ep[0] - 1e-5) < 1e-12, "%s: eps %g", cases[ci], ep[0]);
        const double *x = fixture_get(&f, "x", numel), *gamma = fixture_get(&f, "gamma", c),
                     *beta = fixture_get(&f, "beta", c), *dy = fixture_get(&f, "dy", numel),
                     *y = fixture_get(&f, "y", numel), *dx = fixture_get(&f, "dx", numel),
                     *dgamma = fixture_get(&f, "dgamma", c), *dbeta = fixture_get(&f, "dbeta", c);
        double *got = malloc(sizeof(double) * numel), *mean = malloc(sizeof(double) * n * g),
               *rstd = malloc(sizeof(double) * n * g);
        float *xf = malloc(sizeof(float) * numel), *dyf = malloc(sizeof(float) * numel),
              *yf = malloc(sizeof(float) * numel), *dxf = malloc(sizeof(float) * numel);
        float gf[64], bf[64], dgf[64], dbf[64];
        for (int k = 0; k < c; k++) gf[k] = (float)gamma[k], bf[k] = (float)beta[k];
        double dgd[64], dbd[64];
        /* float kernels, both layouts, against PyTorch */
        for (int nhwc = 0; nhwc < 2; nhwc++) {
            const bl_shape s = {n, c, (int)sh[2], (int)sh[3], nhwc ? BL_NHWC : BL_NCHW};
            to_layout_f(x, xf, n, c, hw, nhwc);
            to_layout_f(dy, dyf, n, c, hw, nhwc);
            memset(dgf, 0, sizeof dgf), memset(dbf, 0, sizeof dbf);
            CHECK(bl_gn_forward(s, g, 1e-5, xf, gf, bf, yf, mean, rstd) == BL_OK &&
                      bl_gn_backward(s, g, xf, dyf, gf, mean, rstd, dxf, dgf, dbf) == BL_OK,
                  "%s: %s", cases[ci], bl_error());
            char what[96];
            snprintf(what, sizeof what, "%s %s y", cases[ci], nhwc ? "nhwc" : "nchw");
            from_layout_f(yf, got, n, c, hw, nhwc);
            CHECK_CLOSE(what, got, y, numel, 1e-5, 1e-5);
            what[strlen(what) - 1] = 0, strcat(what, "dx");
            from_layout_f(dxf, got, n, c, hw, nhwc);
            CHECK_CLOSE(what, got, dx, numel, 1e-5, 1e-4);
            for (int k = 0; k < c; k++) dgd[k] = dgf[k], dbd[k] = dbf[k];
            CHECK_CLOSE("dgamma", dgd, dgamma, c, 1e-4, 1e-5);
            CHECK_CLOSE("dbeta", dbd, dbeta, c, 1e-4, 1e-5);
        }
        /* the double kernel: PyTorch's float64 answer to 1e-10, and finite differences */
        const bl_shape s = {n, c, (int)sh[2], (int)sh[3], BL_NCHW};
        double *xd = malloc(sizeof(double) * numel), *yd = malloc(sizeof(double) * numel),
               *dxd = malloc(sizeof(double) * numel), gd[64], bd[64], dg0[64] = {0}, db0[64] = {0};
        memcpy(xd, x, sizeof(double) * numel);
        memcpy(gd, gamma, sizeof(double) * c), memcpy(bd, beta, sizeof(double) * c);
        CHECK(bl_gn_f64_forward(s, g, 1e-5, xd, gd, bd, yd, mean, rstd) == BL_OK &&
                  bl_gn_f64_backward(s, g, xd, dy, gd, mean, rstd, dxd, dg0, db0) == BL_OK,
              "%s: %s", cases[ci], bl_error());
        CHECK_CLOSE("f64 y", yd, y, numel, 1e-10, 1e-10);
        CHECK_CLOSE("f64 dx", dxd, dx, numel, 1e-10, 1e-9);
        CHECK_CLOSE("f64 dgamma", dg0, dgamma, c, 1e-10, 1e-10);
        double worst = 0;
        for (int k = 0; k < numel; k += 1 + numel / 40) {
            const double d = fd(s, g, xd, (size_t)k, xd, gd, bd, dy, yd, mean, rstd);
            worst = fmax(worst, fabs(d - dxd[k]) / (1e-6 + 1e-5 * fabs(d)));
        }
        for (int k = 0; k < c; k++) {
            const double a = fd(s, g, gd, (size_t)k, xd, gd, bd, dy, yd, mean, rstd);
            const double b = fd(s, g, bd, (size_t)k, xd, gd, bd, dy, yd, mean, rstd);
            worst = fmax(worst, fabs(a - dg0[k]) / (1e-6 + 1e-5 * fabs(a)));
            worst = fmax(worst, fabs(b - db0[k]) / (1e-6 + 1e-5 * fabs(b)));
        }
        CHECK(worst <= 1, "%s: finite differences at %.2f of the tolerance", cases[ci], worst);
        free(got), free(mean), free(rstd), free(xf), free(dyf), free(yf), free(dxf);
        free(xd), free(yd), free(dxd);
        fixture_free(&f);
    }
    /* the layer in a net: conv -> gn -> relu -> gap -> linear; what it computes and the gradients
     * it leaves are the kernels' on the same tensors */
    {
        bl_net net;
        int t1, t2, t3, t4, t5;
        CHECK(bl_net_init(&net, 6, 6, 3, 5) == BL_OK && bl_net_conv(&net, "c", 0, 8, 3, 1, 1, &t1) == BL_OK &&
                  bl_net_gn(&net, "g", t1, 4, &t2) == BL_OK && bl_net_relu(&net, "r", t2, &t3) == BL_OK &&
                  bl_net_gap(&net, "p", t3, &t4) == BL_OK && bl_net_linear(&net, "fc", t4, 3, &t5) == BL_OK &&
                  bl_net_finalize(&net) == BL_OK, "net: %s", bl_error());
        bl_net_init_params(&net, 4);
        const bl_param *gw = bl_net_param(&net, "g.weight"), *gb = bl_net_param(&net, "g.bias");
        CHECK(gw && gb && gw->kind == BL_P_BN && gw->data[0] == 1 && gb->data[0] == 0,
              "g.weight / g.bias declared as BN parameters, initialized to 1 and 0");
        for (int k = 0; k < 8; k++) gw->data[k] = 1 + 0.1f * k, gb->data[k] = 0.05f * k;
        float xin[5 * 6 * 6 * 3];
        bl_rng r;
        bl_rng_seed(&r, 9);
        for (int i = 0; i < 5 * 108; i++) xin[i] = (float)bl_rng_normal(&r);
        uint8_t lab[5] = {0, 1, 2, 1, 0};
        double ls;
        int ok;
        bl_net_zero_grad(&net);
        CHECK(bl_net_forward(&net, NULL, xin, 5) == BL_OK && bl_net_loss(&net, lab, 1, &ls, &ok) == BL_OK &&
                  bl_net_backward(&net, NULL) == BL_OK, "run: %s", bl_error());
        const bl_shape s = {5, 8, 6, 6, BL_NHWC};
        const int numel = 5 * 8 * 36;
        float *y = malloc(sizeof(float) * numel), *dxr = malloc(sizeof(float) * numel);
        float dg[8] = {0}, db[8] = {0};
        double mean[20], rstd[20];
        CHECK(bl_gn_forward(s, 4, 1e-5, bl_net_tensor_at(&net, t1)->data, gw->data, gb->data, y,
                            mean, rstd) == BL_OK &&
                  !memcmp(y, bl_net_tensor_at(&net, t2)->data, sizeof(float) * numel),
              "the layer's output is the kernel's");
        CHECK(bl_gn_backward(s, 4, bl_net_tensor_at(&net, t1)->data,
                             bl_net_tensor_at(&net, t2)->grad, gw->data, mean, rstd, dxr, dg,
                             db) == BL_OK &&
                  !memcmp(dxr, bl_net_tensor_at(&net, t1)->grad, sizeof(float) * numel),
              "the layer's input gradient");
        CHECK(!memcmp(dg, bl_net_block(&net, BL_BLOCK_GRADS, NULL) + gw->offset, sizeof dg) &&
                  !memcmp(db, bl_net_block(&net, BL_BLOCK_GRADS, NULL) + gb->offset, sizeof db),
              "the layer's parameter gradients");
        free(y), free(dxr);
        bl_net_free(&net);
        bl_net bad;
        CHECK(bl_net_init(&bad, 4, 4, 6, 2) == BL_OK && bl_net_gn(&bad, "g", 0, 4, &t1) == BL_ERR_ARG &&
                  strstr(bl_error(), "4 groups do not divide 6 channels"), "bad groups: %s", bl_error());
        bl_net_free(&bad);
    }
    /* bad input */
    const bl_shape s = {2, 12, 2, 2, BL_NHWC};
    float x[96] = {0}, gm[12] = {0}, y[96];
    double mean[16], rstd[16];
    CHECK(bl_gn_forward(s, 8, 1e-5, x, gm, gm, y, mean, rstd) == BL_ERR_ARG &&
              strstr(bl_error(), "8 groups do not divide 12 channels"), "%s", bl_error());
    CHECK(bl_gn_forward(s, 3, 0, x, gm, gm, y, mean, rstd) == BL_ERR_ARG, "eps 0");
    x[5] = NAN;
    CHECK(bl_gn_forward(s, 3, 1e-5, x, gm, gm, y, mean, rstd) == BL_ERR_NUMERIC &&
              strstr(bl_error(), "sample 0"), "NaN: %s", bl_error());
    return check_done("test_groupnorm");
}
