/* Bad input gets a clear error naming the thing and changes nothing: a single value per channel
 * under batch statistics, domain ids out of range, zero channels, NaN/Inf input and gradients,
 * mismatched sizes, calls out of order, unusable population statistics, corrupt IDX files. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <sys/resource.h>
#include <unistd.h>

#define EXPECT(call, status, needle)                                                               \
    do {                                                                                           \
        bl_error_clear();                                                                          \
        bl_status st_ = (call);                                                                    \
        CHECK(st_ == (status) && strstr(bl_error(), needle), "%s: got status %d (%s), reason "    \
              "'%s', want status %d mentioning '%s'", #call, st_, bl_status_name(st_),            \
              bl_error(), status, needle);                                                         \
    } while (0)

static int all_finite(const float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

int main(void)
{
    for (int l = 0; l < 2; l++)
        for (int kern = 0; kern < 2; kern++) {
            bl_layout layout = l ? BL_NHWC : BL_NCHW;
            bl_bn_config cfg = bl_bn_config_default(3);
            cfg.name = "layer1.0.bn1";
            bl_bn bn;
            CHECK(bl_bn_init(&bn, &cfg) == BL_OK, "init");
            bn.kernel = kern ? BL_KERNEL_REF : BL_KERNEL_FAST;
            float x[5 * 3 * 4], y[5 * 3 * 4], dy[5 * 3 * 4], dx[5 * 3 * 4];
            for (int i = 0; i < 60; i++) x[i] = (float)(i % 7) - 2, dy[i] = 0.1f * (i % 5), y[i] = 0;

            /* one value per channel: N=1, H=W=1 */
            bl_shape s1 = {1, 3, 1, 1, layout};
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s1, x, y), BL_ERR_NUMERIC, "layer1.0.bn1");
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s1, x, y), BL_ERR_NUMERIC,
                   "single value per channel");
            CHECK(all_finite(y, 60), "a refused forward wrote NaN");
            EXPECT(bl_bn_commit(&bn, BL_EST_EMA), BL_ERR_STATE, "no batch statistics");
            /* ... and in the last ghost group: 5 samples in groups of 2 -> group 2 has one */
            bl_shape s5 = {5, 3, 1, 1, layout};
            bl_groups g;
            bl_groups_ghost(&g, 5, 2);
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, &g, s5, x, y), BL_ERR_NUMERIC, "group 2 of 3");
            bl_groups_free(&g);
            /* but one sample with several pixels is fine, and population mode is always fine */
            bl_shape s1p = {1, 3, 2, 2, layout};
            CHECK(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s1p, x, y) == BL_OK, "N=1, HW=4: %s", bl_error());
            CHECK(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s1, x, y) == BL_OK, "population N=1");

            /* shapes and sizes */
            bl_shape s0 = {4, 0, 2, 2, layout}, sc = {4, 2, 1, 1, layout}, sn = {-1, 3, 1, 1, layout};
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s0, x, y), BL_ERR_ARG, "C=0");
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, sc, x, y), BL_ERR_ARG, "2 channels");
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, sn, x, y), BL_ERR_ARG, "N=-1");
            bl_shape s4 = {4, 3, 2, 2, layout};
            bl_groups_whole(&g, 3);
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, &g, s4, x, y), BL_ERR_ARG, "describe 3 samples");
            bl_groups_free(&g);
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s4, NULL, y), BL_ERR_ARG, "NULL");

            /* domains: layer with 2 affine rows fed ids of 3 domains */
            bl_bn_config c2 = cfg;
            c2.affine_domains = 2;
            bl_bn bd;
            bl_bn_init(&bd, &c2);
            int dom[4] = {0, 2, 1, 0};
            bl_groups_make(&g, 4, 0, dom, 3, 1);
            EXPECT(bl_bn_forward(&bd, BL_BN_BATCH, &g, s4, x, y), BL_ERR_ARG, "3 domains");
            bl_groups_free(&g);
            /* per-domain statistics with groups that mix domains cannot be committed */
            bl_bn_config c3 = cfg;
            c3.stats_domains = 2;
            bl_bn bs;
            bl_bn_init(&bs, &c3);
            int dom2[4] = {0, 1, 1, 0};
            bl_groups_make(&g, 4, 0, dom2, 2, 0);
            CHECK(bl_bn_forward(&bs, BL_BN_BATCH, &g, s4, x, y) == BL_OK, "mixed forward");
            EXPECT(bl_bn_commit(&bs, BL_EST_EMA), BL_ERR_ARG, "mixes domains");
            CHECK(bs.num_batches_tracked[0] == 0 && bs.pop_var[0] == 1, "refused commit changed state");
            bl_groups_free(&g);
            bl_bn_free(&bd);
            bl_bn_free(&bs);

            /* NaN and Inf input: batch statistics refused, nothing pending, statistics unchanged */
            CHECK(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s4, x, y) == BL_OK, "%s", bl_error());
            CHECK(bl_bn_commit(&bn, BL_EST_EMA) == BL_OK, "commit");
            EXPECT(bl_bn_commit(&bn, BL_EST_EMA), BL_ERR_STATE, "commit once");
            float m0 = bn.pop_mean[1], v0 = bn.pop_var[1];
            int64_t t0 = bn.num_batches_tracked[0];
            float xn[48];
            memcpy(xn, x, sizeof xn);
            xn[5] = NAN;
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s4, xn, y), BL_ERR_NUMERIC, "NaN or Inf");
            EXPECT(bl_bn_commit(&bn, BL_EST_EMA), BL_ERR_STATE, "no batch statistics");
            xn[5] = INFINITY;
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s4, xn, y), BL_ERR_NUMERIC, "non-finite");
            EXPECT(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s4, xn, y), BL_ERR_NUMERIC, "NaN or Inf");
            CHECK(bn.pop_mean[1] == m0 && bn.pop_var[1] == v0 && bn.num_batches_tracked[0] == t0,
                  "a refused batch changed the statistics");
            /* NaN gradient */
            CHECK(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s4, x, y) == BL_OK, "forward");
            float dyn[48];
            memcpy(dyn, dy, sizeof dyn);
            dyn[7] = NAN;
            EXPECT(bl_bn_backward(&bn, NULL, x, dyn, dx), BL_ERR_NUMERIC, "gradient");
            CHECK(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s4, x, y) == BL_OK, "forward");
            EXPECT(bl_bn_backward(&bn, NULL, x, dyn, dx), BL_ERR_NUMERIC, "gradient");
            /* unusable population statistics */
            bn.pop_var[2] = -1;
            EXPECT(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s4, x, y), BL_ERR_NUMERIC, "unusable");
            bn.pop_var[2] = 1;
            bn.pop_mean[0] = NAN;
            EXPECT(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s4, x, y), BL_ERR_NUMERIC, "channel 0");
            bn.pop_mean[0] = 0;
            EXPECT(bl_bn_precise_apply(&bn), BL_ERR_STATE, "no sample");
            bl_bn_free(&bn);
            /* backward before any forward */
            bl_bn_init(&bn, &cfg);
            EXPECT(bl_bn_backward(&bn, NULL, x, dy, dx), BL_ERR_STATE, "without a successful forward");
            bl_bn_free(&bn);
        }

    /* estimators refuse non-finite statistics and change nothing */
    bl_moments gm;
    bl_moments_init(&gm, 2);
    gm.n[0] = gm.n[1] = 4;
    gm.mean[0] = 1, gm.mean[1] = NAN, gm.m2[0] = gm.m2[1] = 3;
    float mean[2] = {0, 0}, var[2] = {1, 1};
    int64_t nbt = 0;
    int gd = 0;
    EXPECT(bl_ema_update(mean, var, &nbt, 1, 2, 0.1, &gm, &gd, 1), BL_ERR_NUMERIC, "not finite");
    CHECK(mean[0] == 0 && var[0] == 1 && nbt == 0, "refused EMA update changed state");
    bl_moments pooled;
    bl_moments_init(&pooled, 2);
    EXPECT(bl_pooled_update(&pooled, 1, 2, &gm, &gd, 1), BL_ERR_NUMERIC, "not finite");
    CHECK(pooled.n[0] == 0, "refused pooled update changed state");
    bl_moments_free(&pooled);
    bl_moments_free(&gm);

    /* configuration */
    bl_bn bn;
    bl_bn_config bad = bl_bn_config_default(0);
    EXPECT(bl_bn_init(&bn, &bad), BL_ERR_ARG, "0 channels");
    bad = bl_bn_config_default(4);
    bad.eps = 0;
    EXPECT(bl_bn_init(&bn, &bad), BL_ERR_ARG, "eps");
    bad.eps = 1e-5;
    bad.momentum = 1.5;
    EXPECT(bl_bn_init(&bn, &bad), BL_ERR_ARG, "momentum");

#ifdef BL_HAVE_ZLIB
    /* corrupt and missing IDX files */
    char dir[] = "/tmp/bnlab_idx_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char ip[256], lp[256];
    snprintf(ip, sizeof ip, "%s/img", dir);
    snprintf(lp, sizeof lp, "%s/lab", dir);
    bl_dataset d;
    EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_IO, "cannot open");
    FILE *f = fopen(ip, "wb");
    fwrite("\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02", 1, 18, f);
    fclose(f); /* 2 images of 2x2 need 8 bytes: only 2 present */
    f = fopen(lp, "wb");
    fwrite("\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02", 1, 10, f);
    fclose(f);
    EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_FORMAT, "truncated");
    EXPECT(bl_idx_load(lp, ip, &d), BL_ERR_FORMAT, "magic");
    f = fopen(ip, "wb");
    fwrite("\x00\x00\x08\x03\x00\x00\x00\x03\x00\x00\x00\x01\x00\x00\x00\x01\x01\x02\x03", 1, 19, f);
    fclose(f); /* 3 images, 2 labels */
    EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_FORMAT, "3 images but");
    f = fopen(lp, "wb");
    fwrite("\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x0c", 1, 11, f);
    fclose(f); /* label 12 */
    EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_FORMAT, "outside 0..9");
    f = fopen(lp, "wb");
    fwrite("\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03", 1, 11, f);
    fclose(f);
    CHECK(bl_idx_load(ip, lp, &d) == BL_OK && d.n == 3 && d.labels[2] == 3, "valid tiny IDX: %s",
          bl_error());
    bl_dataset_free(&d);
    /* a 100-byte file whose header claims 10000 x 28 x 58112 bytes (15 GiB, under the 16 GiB
     * plausibility bound): truncated, found with memory for what the file holds - here under an
     * address-space limit of 2 GiB, which the old up-front allocation of 15 GiB failed as "out
     * of memory" (not under ASan, which reserves more address space than that) */
    {
        uint8_t big[100] = {0, 0, 8, 3, 0, 0, 0x27, 0x10, 0, 0, 0, 28, 0, 0, 0xe3, 0};
        f = fopen(ip, "wb");
        fwrite(big, 1, sizeof big, f);
        fclose(f);
#if !defined(__SANITIZE_ADDRESS__)
        struct rlimit old, lim;
        getrlimit(RLIMIT_AS, &old);
        lim = old;
        lim.rlim_cur = (rlim_t)2 << 30;
        setrlimit(RLIMIT_AS, &lim);
#endif
        EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_FORMAT, "truncated");
#if !defined(__SANITIZE_ADDRESS__)
        setrlimit(RLIMIT_AS, &old);
#endif
    }
    /* a gzip stream that is corrupt after its header */
    f = fopen(ip, "wb");
    fwrite("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff\x00\x01\x02\x03", 1, 18, f);
    fclose(f);
    EXPECT(bl_idx_load(ip, lp, &d), BL_ERR_FORMAT, "corrupt");
    bl_dataset_free(&d);
    unlink(ip);
    unlink(lp);
    rmdir(dir);
#endif
    /* a non-finite scale or shift in any channel but the first reaches the output and is named,
     * in both layouts and kernels (the fast NHWC kernel checks every channel of every sample) */
    for (int l = 0; l < 2; l++)
        for (int kern = 0; kern < 2; kern++) {
            bl_bn_config cfg = bl_bn_config_default(32);
            cfg.name = "layer2.0.bn2";
            bl_bn bn;
            CHECK(bl_bn_init(&bn, &cfg) == BL_OK, "init");
            bn.kernel = kern ? BL_KERNEL_REF : BL_KERNEL_FAST;
            const bl_shape s = {3, 32, 2, 2, l ? BL_NHWC : BL_NCHW};
            float x[3 * 32 * 4], y[3 * 32 * 4];
            for (int i = 0; i < 3 * 32 * 4; i++) x[i] = (float)(i % 11) - 5;
            bn.gamma[21] = INFINITY;
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s, x, y), BL_ERR_NUMERIC, "non-finite");
            bn.gamma[21] = 1, bn.beta[30] = NAN;
            EXPECT(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s, x, y), BL_ERR_NUMERIC, "non-finite");
            bl_bn_free(&bn);
        }
    return check_done("test_bad_input");
}
