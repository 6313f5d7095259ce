/* The conv layer (chunked im2col + GEMM, the direct 3x3 kernel, threads, stride, padding) against a
 * direct convolution in double, for output, weight gradient and input gradient; and bl_gemm
 * against bl_gemm_ref. */
#include "bnlab/bnlab.h"
#include "check.h"

#include <math.h>

static void direct(const float *x, const float *w, int n, int h, int wd, int cin, int cout, int k,
                   int s, int p, int ho, int wo, double *y)
{
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++)
                for (int o = 0; o < cout; o++) {
                    double acc = 0;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * s - p + ky, ix = ox * s - p + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                            for (int c = 0; c < cin; c++) /* w: OHWI */
                                acc += (double)x[(((size_t)i * h + iy) * wd + ix) * cin + c] *
                                       w[(((size_t)o * k + ky) * k + kx) * cin + c];
                        }
                    y[(((size_t)i * ho + oy) * wo + ox) * cout + o] = acc;
                }
}

static void conv_case(int n, int h, int w, int cin, int cout, int k, int s, int p, int threads)
{
    bl_threads_set(threads);
    bl_net net;
    bl_net_init(&net, h, w, cin, n);
    /* a conv reading the input, then one reading the conv (so the first needs no dx, the
     * second does), then a linear head to make a loss */
    int t1, t2, t3, t4;
    CHECK(bl_net_conv(&net, "c1", 0, cout, k, s, p, &t1) == BL_OK &&
              bl_net_conv(&net, "c2", t1, cout, k, 1, k / 2, &t2) == BL_OK &&
              bl_net_gap(&net, "g", t2, &t3) == BL_OK && bl_net_linear(&net, "fc", t3, 3, &t4) == BL_OK,
          "build: %s", bl_error());
    CHECK(bl_net_finalize(&net) == BL_OK, "finalize: %s", bl_error());
    bl_net_init_params(&net, 3);
    size_t nx = (size_t)n * h * w * cin;
    float *x = malloc(sizeof(float) * nx);
    bl_rng r;
    bl_rng_seed(&r, 11);
    for (size_t i = 0; i < nx; i++) x[i] = (float)bl_rng_normal(&r);
    uint8_t lab[64];
    for (int i = 0; i < n; i++) lab[i] = (uint8_t)(i % 3);
    bl_net_zero_grad(&net);
    CHECK(bl_net_forward(&net, NULL, x, n) == BL_OK, "forward: %s", bl_error());
    double loss;
    int ok;
    bl_net_loss(&net, lab, 1, &loss, &ok);
    CHECK(bl_net_backward(&net, NULL) == BL_OK, "backward: %s", bl_error());
    const bl_tensor *a = bl_net_tensor_at(&net, t1), *b = bl_net_tensor_at(&net, t2);
    size_t na = (size_t)n * a->h * a->w * cout, nb = (size_t)n * b->h * b->w * cout;
    double *ya = malloc(sizeof(double) * na), *yb = malloc(sizeof(double) * nb);
    const bl_param *w1 = bl_net_param(&net, "c1.weight"), *w2 = bl_net_param(&net, "c2.weight");
    size_t ng = na > nb ? na : nb;
    double *got = malloc(sizeof(double) * (ng > w2->count ? ng : w2->count));
    direct(x, w1->data, n, h, w, cin, cout, k, s, p, a->h, a->w, ya);
    direct(a->data, w2->data, n, a->h, a->w, cout, cout, k, 1, k / 2, b->h, b->w, yb);
    char what[160];
    snprintf(what, sizeof what, "conv y (n=%d %dx%dx%d k=%d s=%d p=%d threads=%d)", n, h, w, cin,
             k, s, p, threads);
    for (size_t i = 0; i < na; i++) got[i] = a->data[i];
    CHECK_CLOSE(what, got, ya, na, 1e-4, 1e-4);
    for (size_t i = 0; i < nb; i++) got[i] = b->data[i];
    CHECK_CLOSE(what, got, yb, nb, 1e-4, 1e-4);
    /* dW2 = sum over outputs of dy2 (x) input patch; dx of conv2 = its input gradient */
    size_t nw = w2->count;
    double *dw = calloc(nw, sizeof(double)), *da = calloc(na, sizeof(double));
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < b->h; oy++)
            for (int ox = 0; ox < b->w; ox++)
                for (int o = 0; o < cout; o++) {
                    double g = b->grad[(((size_t)i * b->h + oy) * b->w + ox) * cout + o];
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy - k / 2 + ky, ix = ox - k / 2 + kx;
                            if (iy < 0 || iy >= a->h || ix < 0 || ix >= a->w) continue;
                            for (int c = 0; c < cout; c++) {
                                size_t xi = (((size_t)i * a->h + iy) * a->w + ix) * cout + c;
                                size_t wi = (((size_t)o * k + ky) * k + kx) * cout + c;
                                dw[wi] += g * a->data[xi];
                                da[xi] += g * w2->data[wi];
                            }
                        }
                }
    for (size_t i = 0; i < nw; i++)
        got[i] = bl_net_block(&net, BL_BLOCK_GRADS, NULL)[w2->offset + i];
    snprintf(what, sizeof what, "conv dW (n=%d k=%d s=%d threads=%d)", n, k, s, threads);
    CHECK_CLOSE(what, got, dw, nw, 1e-4, 1e-4);
    for (size_t i = 0; i < na; i++) got[i] = a->grad[i];
    snprintf(what, sizeof what, "conv dx (n=%d k=%d s=%d threads=%d)", n, k, s, threads);
    CHECK_CLOSE(what, got, da, na, 1e-4, 1e-4);
    free(dw), free(da), free(ya), free(yb), free(got), free(x);
    bl_net_free(&net);
}

/* bl_net_infer (conv + BN + add + ReLU fused) against the layer-by-layer population forward: the
 * same floats, bit for bit, with population statistics and affine parameters far from 1 and 0. */
static void infer_case(int width, int threads)
{
    bl_threads_set(threads);
    bl_net net;
    const int n = 5;
    CHECK(bl_resnet(&net, 8, width, 10, 28, 28, 1, n) == BL_OK, "resnet: %s", bl_error());
    bl_net_init_params(&net, 7);
    bl_rng r;
    bl_rng_seed(&r, 21);
    for (int b = 0; b < bl_net_bn_count(&net); b++) {
        bl_bn *bn = bl_net_bn_at(&net, b);
        for (int c = 0; c < bn->cfg.channels; c++) {
            bn->pop_mean[c] = (float)(0.3 * bl_rng_normal(&r));
            bn->pop_var[c] = (float)(0.2 + bl_rng_uniform(&r));
            bn->gamma[c] = (float)(1 + 0.5 * bl_rng_normal(&r));
            bn->beta[c] = (float)(0.4 * bl_rng_normal(&r));
        }
    }
    float *x = malloc(sizeof(float) * n * 784);
    for (int i = 0; i < n * 784; i++) x[i] = (float)bl_rng_normal(&r);
    const bl_tensor *o = bl_net_tensor_at(&net, bl_net_tensor_count(&net) - 1);
    double a[50], b[50];
    const bl_ctx pop = bl_ctx_all(BL_BN_POPULATION, NULL);
    CHECK(bl_net_forward(&net, &pop, x, n) == BL_OK, "forward: %s", bl_error());
    for (int i = 0; i < n * 10; i++) a[i] = o->data[i], o->data[i] = 0;
    CHECK(bl_net_infer(&net, x, n) == BL_OK, "infer: %s", bl_error());
    for (int i = 0; i < n * 10; i++) b[i] = o->data[i];
    int same = 1;
    for (int i = 0; i < n * 10; i++) same &= a[i] == b[i];
    CHECK(same, "resnet8 w=%d threads=%d: fused inference differs from the population forward "
          "(logit 0: %.9g vs %.9g)", width, threads, b[0], a[0]);
    double amax = 0;
    for (int i = 0; i < n * 10; i++) amax = fabs(a[i]) > amax ? fabs(a[i]) : amax;
    CHECK(amax > 0, "resnet8 w=%d: all logits zero (nothing checked)", width);
    free(x);
    bl_net_free(&net);
}

int main(void)
{
    /* fused inference: direct kernels with stride 1 and 2, the stem (1 input channel), 1x1
     * shortcuts (w=16); the im2col path with the epilogue as a separate pass (w=4) */
    infer_case(16, 1);
    infer_case(4, 2);
    /* many samples per chunk, one sample per chunk, stride 2, 1x1 (the direct GEMM path) */
    conv_case(9, 6, 5, 3, 4, 3, 1, 1, 2);
    conv_case(7, 28, 28, 8, 16, 3, 1, 1, 2); /* 28*28*72 floats per sample: several chunks */
    conv_case(7, 28, 28, 8, 16, 3, 1, 1, 1);
    conv_case(5, 9, 9, 4, 6, 3, 2, 1, 2);
    conv_case(6, 8, 8, 5, 7, 1, 1, 0, 2);
    conv_case(6, 8, 8, 5, 7, 1, 2, 0, 2);
    /* channels x16, stride 1: Winograd (odd and even maps: 49 tiles in groups of 7, 196 of 14,
     * 16 of 8, 25 padded to 28) and, turned off, the direct kernel (widths 13 = 7+4+1+1 pixel row
     * blocks, 28, 7); accumulation into a shared gradient */
    for (int wino = 1; wino >= 0; wino--) {
        bl_conv_set_winograd(wino);
        conv_case(3, 13, 13, 32, 32, 3, 1, 1, 2);
        conv_case(2, 28, 28, 16, 16, 3, 1, 1, 2);
        conv_case(2, 7, 7, 16, 48, 3, 1, 1, 1);
        conv_case(2, 10, 9, 32, 16, 3, 1, 1, 2);
        infer_case(16, 2);
    }
    bl_conv_set_winograd(1);
    /* its forward at stride 2 (odd and even sizes) and with one input channel (the stem) */
    conv_case(3, 15, 15, 16, 32, 3, 2, 1, 2);
    conv_case(2, 28, 28, 16, 16, 3, 2, 1, 1);
    conv_case(3, 28, 28, 1, 16, 3, 1, 1, 2);
    conv_case(2, 9, 9, 3, 16, 3, 2, 1, 2);
    /* GEMM: CBLAS against the plain loop, all transposes */
    bl_rng r;
    bl_rng_seed(&r, 5);
    float a[35 * 29], b[29 * 31], c1[35 * 31], c2[35 * 31];
    for (int i = 0; i < 35 * 29; i++) a[i] = (float)bl_rng_normal(&r);
    for (int i = 0; i < 29 * 31; i++) b[i] = (float)bl_rng_normal(&r);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (int i = 0; i < 35 * 31; i++) c1[i] = c2[i] = 0.5f;
            bl_gemm(ta, tb, 35, 31, 29, 1.5f, a, ta ? 35 : 29, b, tb ? 29 : 31, 0.5f, c1, 31);
            bl_gemm_ref(ta, tb, 35, 31, 29, 1.5f, a, ta ? 35 : 29, b, tb ? 29 : 31, 0.5f, c2, 31);
            double x1[35 * 31], x2[35 * 31];
            for (int i = 0; i < 35 * 31; i++) x1[i] = c1[i], x2[i] = c2[i];
            CHECK_CLOSE("gemm vs reference", x1, x2, 35 * 31, 1e-4, 1e-5);
        }
    return check_done("test_conv");
}
