/* The convolution kernels' rounding against a double reference, as relative L2 error
 * ||got - ref|| / ||ref|| per algorithm and pass, on post-ReLU, mean-shifted inputs (the inputs
 * a ResNet's convolutions see, where Winograd's transforms cancel the most): budgets direct
 * <= 1e-6, Winograd F(2x2, 3x3) <= 3e-6. The shapes are resnet20's three stages. */
#include "bnlab/bnlab.h"
#include "nn/conv3x3.h"
#include "check.h"

/* y = conv(x, w) (flip: the input gradient's, x has cout channels), padding 1, stride 1, double */
static void ref_conv(const float *x, const float *w, int n, int h, int wd, int cin, int cout,
                     int flip, double *y)
{
    const int ci_n = flip ? cout : cin, co_n = flip ? cin : cout;
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < h; oy++)
            for (int ox = 0; ox < wd; ox++)
                for (int o = 0; o < co_n; o++) {
                    double a = 0;
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            const int iy = oy - 1 + ky, ix = ox - 1 + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                            for (int c = 0; c < ci_n; c++) {
                                /* flip: dx[o=ci] = sum dy[c=co] W[co][2-ky][2-kx][ci] */
                                const double wv =
                                    flip ? w[(((size_t)c * 3 + (2 - ky)) * 3 + (2 - kx)) * cin + o]
                                         : w[(((size_t)o * 3 + ky) * 3 + kx) * cin + c];
                                a += x[(((size_t)i * h + iy) * wd + ix) * ci_n + c] * wv;
                            }
                        }
                    y[(((size_t)i * h + oy) * wd + ox) * co_n + o] = a;
                }
}

/* dW of a 3x3 convolution, padding 1, stride st (dy: (h - 1) / st + 1 rows and columns) */
static void ref_dw(const float *x, const float *dy, int n, int h, int wd, int cin, int cout,
                   int st, double *dw)
{
    const int ho = (h - 1) / st + 1, wo = (wd - 1) / st + 1;
    memset(dw, 0, sizeof(double) * 9 * cin * cout);
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++)
                for (int o = 0; o < cout; o++) {
                    const double g = dy[(((size_t)i * ho + oy) * wo + ox) * cout + o];
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            const int iy = oy * st - 1 + ky, ix = ox * st - 1 + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                            for (int c = 0; c < cin; c++)
                                dw[(((size_t)o * 3 + ky) * 3 + kx) * cin + c] +=
                                    g * x[(((size_t)i * h + iy) * wd + ix) * cin + c];
                        }
                }
}

static double rel_l2(const float *got, const double *ref, size_t n)
{
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = got[i] - ref[i];
        e += d * d, r += ref[i] * ref[i];
    }
    return r > 0 ? sqrt(e / r) : INFINITY;
}

static void stage(int n, int h, int w, int c)
{
    const size_t nx = (size_t)n * h * w * c, nw = (size_t)9 * c * c;
    float *x = malloc(nx * 4), *dy = malloc(nx * 4), *wt = malloc(nw * 4), *y = malloc(nx * 4);
    float *dw = malloc(nw * 4);
    double *ref = malloc(nx * 8), *rdw = malloc(nw * 8);
    bl_rng r;
    bl_rng_seed(&r, (uint64_t)(h * 131 + c));
    for (size_t i = 0; i < nx; i++) {
        const double v = 0.5 + bl_rng_normal(&r); /* mean-shifted, then ReLU */
        x[i] = (float)(v > 0 ? v : 0);
        dy[i] = (float)(0.3 + bl_rng_normal(&r));
    }
    for (size_t i = 0; i < nw; i++) wt[i] = (float)(bl_rng_normal(&r) / sqrt(9.0 * c));
    const int threads = bl_threads_get();
    const size_t ws_n = (size_t)9 * c * c * (threads + 1) + (size_t)threads * (h + 2) * (w + 2) * c +
                        bl_wino_ws_floats(h, w, c, c, threads) +
                        bl_wino_dw_ws_floats(h, w, c, c, threads);
    float *ws = malloc(ws_n * 4);
    for (int flip = 0; flip < 2; flip++) {
        ref_conv(flip ? dy : x, wt, n, h, w, c, c, flip, ref);
        const char *pass = flip ? "dx" : "fwd";
        if (bl_conv3x3_supported(c, c, 3, 1, 1)) {
            bl_conv3x3_pack(wt, c, c, flip, ws);
            bl_conv3x3(flip ? dy : x, n, h, w, c, c, 1, ws, y, 0, NULL, ws + nw);
            const double e = rel_l2(y, ref, nx);
            printf("%2dx%-2d c=%-2d %-3s direct   %.2e\n", h, w, c, pass, e);
            CHECK(e <= 1e-6, "direct %s %dx%dx%d: relative L2 error %.3g > 1e-6", pass, h, w, c, e);
        }
        if (bl_wino_supported(c, c, 3, 1, 1)) {
            bl_wino(flip ? dy : x, n, h, w, c, c, wt, flip, y, 0, NULL, ws);
            const double e = rel_l2(y, ref, nx);
            printf("%2dx%-2d c=%-2d %-3s winograd %.2e\n", h, w, c, pass, e);
            CHECK(e <= 3e-6, "winograd %s %dx%dx%d: relative L2 error %.3g > 3e-6", pass, h, w, c,
                  e);
        }
    }
    ref_dw(x, dy, n, h, w, c, c, 1, rdw);
    if (bl_conv3x3_supported(c, c, 3, 1, 1)) {
        memset(dw, 0, nw * 4);
        bl_conv3x3_dw(x, dy, n, h, w, c, c, 1, dw, ws);
        const double e = rel_l2(dw, rdw, nw);
        printf("%2dx%-2d c=%-2d dw  direct   %.2e\n", h, w, c, e);
        CHECK(e <= 1e-6, "direct dw %dx%dx%d: relative L2 error %.3g > 1e-6", h, w, c, e);
    }
    if (bl_wino_supported(c, c, 3, 1, 1)) {
        memset(dw, 0, nw * 4);
        bl_wino_dw(x, dy, n, h, w, c, c, dw, ws);
        const double e = rel_l2(dw, rdw, nw);
        printf("%2dx%-2d c=%-2d dw  winograd %.2e\n", h, w, c, e);
        CHECK(e <= 3e-6, "winograd dw %dx%dx%d: relative L2 error %.3g > 3e-6", h, w, c, e);
    }
    free(x), free(dy), free(wt), free(y), free(dw), free(ref), free(rdw), free(ws);
}

/* the stem's weight gradient (1 to 3 input channels) */
static void stem(int n, int h, int w, int cin, int cout)
{
    if (!bl_conv3x3_dw_small_supported(cin, cout, 3, 1, 1)) return;
    const size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * h * w * cout, nw = (size_t)9 * cin * cout;
    float *x = malloc(nx * 4), *dy = malloc(ny * 4), *dw = calloc(nw, 4);
    float *ws = malloc((size_t)bl_threads_get() * nw * 4);
    double *rdw = malloc(nw * 8);
    bl_rng r;
    bl_rng_seed(&r, (uint64_t)(cin * 7 + cout));
    for (size_t i = 0; i < nx; i++) x[i] = (float)(0.5 + bl_rng_normal(&r));
    for (size_t i = 0; i < ny; i++) dy[i] = (float)(0.3 + bl_rng_normal(&r));
    ref_dw(x, dy, n, h, w, cin, cout, 1, rdw);
    bl_conv3x3_dw_small(x, dy, n, h, w, cin, cout, dw, ws);
    const double e = rel_l2(dw, rdw, nw);
    printf("%2dx%-2d c=%d->%-2d dw  direct   %.2e\n", h, w, cin, cout, e);
    CHECK(e <= 1e-6, "stem dw %dx%dx%d->%d: relative L2 error %.3g > 1e-6", h, w, cin, cout, e);
    free(x), free(dy), free(dw), free(ws), free(rdw);
}

/* the direct weight gradient at stride 2 (resnet20's down-sampling convolutions) */
static void stride2(int n, int h, int w, int cin, int cout)
{
    if (!bl_conv3x3_dw_supported(cin, cout, 3, 2, 1)) return;
    const int ho = (h - 1) / 2 + 1, wo = (w - 1) / 2 + 1;
    const size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * ho * wo * cout;
    const size_t nw = (size_t)9 * cin * cout;
    float *x = malloc(nx * 4), *dy = malloc(ny * 4), *dw = calloc(nw, 4);
    float *ws = malloc((size_t)bl_threads_get() * (nw + (size_t)(h + 2) * (w + 2) * cin) * 4);
    double *rdw = malloc(nw * 8);
    bl_rng r;
    bl_rng_seed(&r, (uint64_t)(h * 17 + cin));
    for (size_t i = 0; i < nx; i++) {
        const double v = 0.5 + bl_rng_normal(&r);
        x[i] = (float)(v > 0 ? v : 0);
    }
    for (size_t i = 0; i < ny; i++) dy[i] = (float)(0.3 + bl_rng_normal(&r));
    ref_dw(x, dy, n, h, w, cin, cout, 2, rdw);
    bl_conv3x3_dw(x, dy, n, h, w, cin, cout, 2, dw, ws);
    const double e = rel_l2(dw, rdw, nw);
    printf("%2dx%-2d c=%d->%-2d dw  direct s2 %.2e\n", h, w, cin, cout, e);
    CHECK(e <= 1e-6, "stride-2 dw %dx%dx%d->%d: relative L2 error %.3g > 1e-6", h, w, cin, cout,
          e);
    free(x), free(dy), free(dw), free(ws), free(rdw);
}

int main(void)
{
    bl_threads_set(2);
    stage(16, 28, 28, 16);
    stage(16, 14, 14, 32);
    stage(16, 7, 7, 64);
    stage(5, 9, 10, 16); /* odd tiles, a padded group */
    stride2(16, 28, 28, 16, 32);
    stride2(16, 14, 14, 32, 64);
    stride2(3, 15, 9, 16, 16); /* odd sizes */
    stem(16, 28, 28, 1, 16);
    stem(3, 9, 7, 3, 32);
    stem(2, 5, 6, 2, 16);
    CHECK(check_passed > 0 || !bl_conv3x3_supported(16, 16, 3, 1, 1),
          "no kernel checked although the build has them");
    return check_done("test_conv_error");
}
