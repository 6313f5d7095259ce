/* The BN core's parts (several tensors one BN normalizes: a head shared over feature levels) and
 * the engine pieces of the multi-level model, checked against their definitions:
 *   - merged statistics = BN over the levels' concatenation (a copy made here only): outputs,
 *     input gradients, dgamma, dbeta, the pooled EMA; the moments recorded per level equal each
 *     level's alone;
 *   - per-level statistics: each level = its own BN; the pool's EMA fed the pooled moments;
 *   - PreciseBN per level equals PreciseBN over each level alone, pooled over all of them;
 *   - a weight shared by two layers gets the sum of the gradients the untied copies get;
 *   - bad input: ghost groups under merged statistics, one value per channel over all levels,
 *     GN groups that do not divide the channels, per-level statistics a file does not have. */
#include "bnlab/bnlab.h"
#include "check.h"

#include <unistd.h>

#define C 3
#define L 3
#define N 4
static const int side[L] = {4, 2, 1};

static double urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0;
}

/* the levels' sizes in floats (NHWC) and their concatenation's */
static size_t lsize(int k) { return (size_t)N * side[k] * side[k] * C; }

static void cores_init(bl_bn *b, bl_bn **part)
{
    for (int k = 0; k <= L; k++) {
        bl_bn_config cfg = bl_bn_config_default(C);
        CHECK(bl_bn_init(&b[k], &cfg) == BL_OK, "init: %s", bl_error());
        if (k < L) part[k] = &b[k];
    }
    /* non-trivial affine parameters, shared by the levels (part k binds part 0's) */
    for (int c = 0; c < C; c++) b[0].gamma[c] = 1.0f + 0.3f * c, b[0].beta[c] = 0.1f * c - 0.1f;
    for (int k = 1; k <= L; k++)
        bl_bn_bind(&b[k], b[0].gamma, b[0].beta, b[0].dgamma, b[0].dbeta, NULL, NULL);
}

static void test_merged(void)
{
    bl_bn b[L + 1], *part[L], cat;
    cores_init(b, part);
    bl_bn_config cfg = bl_bn_config_default(C);
    CHECK(bl_bn_init(&cat, &cfg) == BL_OK, "%s", bl_error());
    memcpy(cat.gamma, b[0].gamma, sizeof(float) * C), memcpy(cat.beta, b[0].beta, sizeof(float) * C);
    bl_bn_parts p;
    CHECK(bl_bn_parts_init(&p, L, part, &b[L]) == BL_OK, "%s", bl_error());
    size_t total = 0;
    for (int k = 0; k < L; k++) total += lsize(k);
    float *x = malloc(sizeof(float) * total * 5), *y = x + total, *dy = y + total, *dx = dy + total,
          *ref = dx + total;
    uint64_t seed = 3;
    for (size_t i = 0; i < total; i++) {
        int c = (int)(i % C); /* the levels differ in mean and scale, as FPN levels do */
        x[i] = (float)((urand(&seed) - 0.5) * (1 + c) + c), dy[i] = (float)(urand(&seed) - 0.5);
    }
    for (size_t i = 0, o = 0; i < (size_t)L; o += lsize((int)i), i++)
        for (size_t j = 0; j < lsize((int)i); j++) x[o + j] += 2.0f * (float)i;
    bl_shape s[L];
    const float *xs[L], *dys[L];
    float *ys[L], *dxs[L];
    for (size_t k = 0, o = 0; k < L; o += lsize((int)k), k++) {
        s[k] = (bl_shape){N, C, side[k], side[k], BL_NHWC};
        xs[k] = x + o, ys[k] = y + o, dys[k] = dy + o, dxs[k] = dx + o;
    }
    CHECK(bl_bn_parts_forward(&p, BL_BN_BATCH, 1, NULL, s, xs, ys) == BL_OK, "%s", bl_error());
    CHECK(bl_bn_parts_backward(&p, NULL, xs, dys, dxs) == BL_OK, "%s", bl_error());
    /* the reference: one BN over the concatenated pixels, as (pixels, C) */
    const bl_shape sc = {(int)(total / C), C, 1, 1, BL_NHWC};
    CHECK(bl_bn_forward(&cat, BL_BN_BATCH, NULL, sc, x, ref) == BL_OK, "%s", bl_error());
    double a[3 * 64 * 3 * 2], r[sizeof a / sizeof *a];
    for (size_t i = 0; i < total; i++) a[i] = y[i], r[i] = ref[i];
    CHECK_CLOSE("merged forward = BN over the concatenation", a, r, total, 1e-5, 1e-5);
    CHECK(bl_bn_backward(&cat, NULL, x, dy, ref) == BL_OK, "%s", bl_error());
    for (size_t i = 0; i < total; i++) a[i] = dx[i], r[i] = ref[i];
    CHECK_CLOSE("merged backward dx", a, r, total, 1e-5, 1e-5);
    for (int c = 0; c < C; c++)
        a[c] = b[0].dgamma[c], a[C + c] = b[0].dbeta[c], r[c] = cat.dgamma[c], r[C + c] = cat.dbeta[c];
    CHECK_CLOSE("merged dgamma, dbeta (summed over the levels)", a, r, 2 * C, 1e-5, 1e-5);
    /* recorded: each level's own moments, the pool's merged */
    for (int k = 0; k < L; k++) {
        bl_moments m;
        bl_moments_init(&m, C);
        bl_moments_add(&m, s[k], xs[k]);
        for (int c = 0; c < C; c++)
            a[c] = b[k].batch.mean[c], a[C + c] = b[k].batch.m2[c], r[c] = m.mean[c], r[C + c] = m.m2[c];
        CHECK_CLOSE("a level's recorded moments = its moments alone", a, r, 2 * C, 1e-12, 1e-12);
        CHECK(b[k].pending && b[k].batch.n[0] == (double)N * side[k] * side[k], "level %d pending", k);
        bl_moments_free(&m);
    }
    for (int k = 0; k <= L; k++) CHECK(bl_bn_commit(&b[k], BL_EST_EMA) == BL_OK, "%s", bl_error());
    CHECK(bl_bn_commit(&cat, BL_EST_EMA) == BL_OK, "%s", bl_error());
    for (int c = 0; c < C; c++)
        a[c] = b[L].pop_mean[c], a[C + c] = b[L].pop_var[c], r[c] = cat.pop_mean[c], r[C + c] = cat.pop_var[c];
    CHECK_CLOSE("the pool's EMA = the concatenation's", a, r, 2 * C, 1e-6, 1e-6);

    /* per-level statistics: each level its own BN; the pool's EMA still the concatenation's */
    bl_bn own;
    CHECK(bl_bn_init(&own, &cfg) == BL_OK, "%s", bl_error());
    memcpy(own.gamma, b[0].gamma, sizeof(float) * C), memcpy(own.beta, b[0].beta, sizeof(float) * C);
    CHECK(bl_bn_parts_forward(&p, BL_BN_BATCH, 0, NULL, s, xs, ys) == BL_OK, "%s", bl_error());
    for (int k = 0; k < L; k++) {
        CHECK(bl_bn_forward(&own, BL_BN_BATCH, NULL, s[k], xs[k], ref) == BL_OK, "%s", bl_error());
        for (size_t i = 0; i < lsize(k); i++) a[i] = ys[k][i], r[i] = ref[i];
        CHECK_CLOSE("per-level forward = the level's own BN", a, r, lsize(k), 1e-6, 1e-6);
    }
    bl_bn_forward(&cat, BL_BN_BATCH, NULL, sc, x, ref);
    for (int c = 0; c < C; c++)
        a[c] = b[L].batch.mean[c], a[C + c] = b[L].batch.m2[c], r[c] = cat.batch.mean[c], r[C + c] = cat.batch.m2[c];
    CHECK_CLOSE("per-level mode: the pool's pending moments = the concatenation's", a, r, 2 * C,
                1e-9, 1e-9);

    /* population mode, pooled statistics (FrozenBN, inference): every level with the pool's, ghost
     * groups allowed (they do not matter without batch statistics) = the concatenation with them */
    bl_groups g;
    memcpy(cat.pop_mean, b[L].pop_mean, sizeof(float) * C);
    memcpy(cat.pop_var, b[L].pop_var, sizeof(float) * C);
    bl_bn_zero_grad(&b[0]), bl_bn_zero_grad(&cat);
    bl_groups_ghost(&g, N, 2);
    CHECK(bl_bn_parts_forward(&p, BL_BN_POPULATION, 1, &g, s, xs, ys) == BL_OK &&
              bl_bn_parts_backward(&p, &g, xs, dys, dxs) == BL_OK, "population, pooled: %s", bl_error());
    bl_groups_free(&g);
    CHECK(bl_bn_forward(&cat, BL_BN_POPULATION, NULL, sc, x, ref) == BL_OK, "%s", bl_error());
    for (size_t i = 0; i < total; i++) a[i] = y[i], r[i] = ref[i];
    CHECK_CLOSE("population forward with the pool's statistics", a, r, total, 1e-6, 1e-6);
    CHECK(bl_bn_backward(&cat, NULL, x, dy, ref) == BL_OK, "%s", bl_error());
    for (size_t i = 0; i < total; i++) a[i] = dx[i], r[i] = ref[i];
    CHECK_CLOSE("population backward with the pool's statistics", a, r, total, 1e-6, 1e-6);
    for (int c = 0; c < C; c++)
        a[c] = b[0].dgamma[c], a[C + c] = b[0].dbeta[c], r[c] = cat.dgamma[c], r[C + c] = cat.dbeta[c];
    CHECK_CLOSE("population dgamma, dbeta", a, r, 2 * C, 1e-5, 1e-5);

    /* bad input: ghost groups under merged statistics; one value per channel over all levels */
    bl_groups_ghost(&g, N, 2);
    CHECK(bl_bn_parts_forward(&p, BL_BN_BATCH, 1, &g, s, xs, ys) == BL_ERR_ARG &&
              strstr(bl_error(), "whole batch"), "ghost groups under merged statistics: %s", bl_error());
    bl_groups_free(&g);
    bl_bn_parts p1;
    CHECK(bl_bn_parts_init(&p1, 1, &part[2], &b[L]) == BL_OK, "%s", bl_error());
    bl_shape one = {1, C, 1, 1, BL_NHWC};
    CHECK(bl_bn_parts_forward(&p1, BL_BN_BATCH, 1, NULL, &one, xs, ys) == BL_ERR_NUMERIC &&
              strstr(bl_error(), "one value per channel"), "one value: %s", bl_error());
    CHECK(bl_bn_parts_backward(&p1, NULL, xs, dys, dxs) == BL_ERR_STATE, "backward after a failure");
    bl_bn_parts_free(&p1);
    bl_bn_parts_free(&p);
    for (int k = 0; k <= L; k++) bl_bn_free(&b[k]);
    bl_bn_free(&cat), bl_bn_free(&own);
    free(x);
}

/* PreciseBN over three batches: per level = each level's pixels alone, pooled = all of them,
 * whichever statistics the forward normalized with. */
static void test_precise(void)
{
    bl_bn b[L + 1], *part[L];
    cores_init(b, part);
    bl_bn_parts p;
    CHECK(bl_bn_parts_init(&p, L, part, &b[L]) == BL_OK, "%s", bl_error());
    bl_moments lev[L], all;
    for (int k = 0; k < L; k++) bl_moments_init(&lev[k], C);
    bl_moments_init(&all, C);
    static float x[3][L][N * 16 * C], y[L][N * 16 * C];
    bl_shape s[L];
    uint64_t seed = 11;
    for (int k = 0; k < L; k++) s[k] = (bl_shape){N, C, side[k], side[k], BL_NHWC};
    for (int bt = 0; bt < 3; bt++)
        for (int k = 0; k < L; k++) {
            for (size_t i = 0; i < lsize(k); i++) x[bt][k][i] = (float)(urand(&seed) * (k + 1) + k);
            bl_moments_add(&lev[k], s[k], x[bt][k]);
            bl_moments_add(&all, s[k], x[bt][k]);
        }
    for (int merged = 0; merged < 2; merged++) {
        for (int k = 0; k <= L; k++) bl_bn_precise_reset(&b[k]);
        for (int bt = 0; bt < 3; bt++) {
            const float *xs[L];
            float *ys[L];
            for (int k = 0; k < L; k++) xs[k] = x[bt][k], ys[k] = y[k];
            CHECK(bl_bn_parts_forward(&p, BL_BN_BATCH, merged, NULL, s, xs, ys) == BL_OK, "%s", bl_error());
            for (int k = 0; k <= L; k++) CHECK(bl_bn_commit(&b[k], BL_EST_PRECISE) == BL_OK, "%s", bl_error());
        }
        for (int k = 0; k <= L; k++) CHECK(bl_bn_precise_apply(&b[k]) == BL_OK, "%s", bl_error());
        double a[2 * C], r[2 * C];
        for (int k = 0; k <= L; k++) {
            const bl_moments *m = k < L ? &lev[k] : &all;
            for (int c = 0; c < C; c++)
                a[c] = b[k].pop_mean[c], a[C + c] = b[k].pop_var[c], r[c] = m->mean[c], r[C + c] = m->m2[c] / m->n[c];
            CHECK_CLOSE(k < L ? "PreciseBN of a level = over the level alone" : "PreciseBN pooled = over all levels",
                        a, r, 2 * C, 1e-6, 1e-6);
        }
    }
    for (int k = 0; k < L; k++) bl_moments_free(&lev[k]);
    bl_moments_free(&all);
    bl_bn_parts_free(&p);
    for (int k = 0; k <= L; k++) bl_bn_free(&b[k]);
}

/* input -> conv a (w) ; relu(input) -> conv b (w, or its untied copy w2) ; add ; gap ; linear */
static void tiny(bl_net *net, int tied)
{
    int t0, t1, t2, t3;
    CHECK(bl_net_init(net, 4, 4, 2, 3) == BL_OK, "%s", bl_error());
    CHECK(bl_net_conv_param(net, "a", "w", 0, 3, 3, 1, 1, &t1) == BL_OK, "%s", bl_error());
    CHECK(bl_net_relu(net, "r", 0, &t0) == BL_OK, "%s", bl_error());
    CHECK(bl_net_conv_param(net, "b", tied ? "w" : "w2", t0, 3, 3, 1, 1, &t2) == BL_OK, "%s", bl_error());
    CHECK(bl_net_add(net, "add", t1, t2, &t3) == BL_OK && bl_net_gap(net, "gap", t3, &t3) == BL_OK &&
              bl_net_linear(net, "fc", t3, 4, &t3) == BL_OK && bl_net_finalize(net) == BL_OK,
          "%s", bl_error());
    bl_net_init_params(net, 5);
}

static void test_shared_weight(void)
{
    bl_net tied, untied;
    tiny(&tied, 1), tiny(&untied, 0);
    CHECK(bl_net_param_count(&tied) == bl_net_param_count(&untied) - 1,
          "a shared weight is declared once");
    const bl_param *w = bl_net_param(&tied, "w"), *u1 = bl_net_param(&untied, "w"),
                   *u2 = bl_net_param(&untied, "w2");
    /* the same values everywhere */
    for (int i = 0; i < bl_net_param_count(&tied); i++) {
        const bl_param *p = bl_net_param_at(&tied, i);
        memcpy(bl_net_param(&untied, p->name)->data, p->data, sizeof(float) * p->count);
    }
    memcpy(u2->data, w->data, sizeof(float) * w->count);
    float x[3 * 32];
    uint64_t seed = 7;
    for (int i = 0; i < 96; i++) x[i] = (float)(urand(&seed) - 0.4);
    const uint8_t lab[3] = {0, 3, 1};
    bl_net *nets[2] = {&tied, &untied};
    for (int k = 0; k < 2; k++) {
        double ls;
        int ok;
        bl_net_zero_grad(nets[k]);
        CHECK(bl_net_forward(nets[k], NULL, x, 3) == BL_OK && bl_net_loss(nets[k], lab, 1, &ls, &ok) == BL_OK &&
                  bl_net_backward(nets[k], NULL) == BL_OK, "%s", bl_error());
    }
    double a[54], r[54];
    for (size_t i = 0; i < w->count; i++)
        a[i] = bl_net_block(&tied, BL_BLOCK_GRADS, NULL)[w->offset + i],
        r[i] = (double)bl_net_block(&untied, BL_BLOCK_GRADS, NULL)[u1->offset + i] +
               bl_net_block(&untied, BL_BLOCK_GRADS, NULL)[u2->offset + i];
    CHECK(w->count == 54, "weight size %zu", w->count);
    CHECK_CLOSE("shared weight gradient = sum of the untied copies'", a, r, w->count, 1e-6, 1e-5);
    /* a clash: the same name with another shape */
    bl_net bad;
    int t;
    bl_net_init(&bad, 4, 4, 2, 1);
    CHECK(bl_net_conv_param(&bad, "a", "w", 0, 3, 3, 1, 1, &t) == BL_OK, "%s", bl_error());
    CHECK(bl_net_conv_param(&bad, "b", "w", 0, 3, 1, 1, 0, &t) == BL_ERR_ARG &&
              strstr(bl_error(), "shared by layers of different shapes"), "clash: %s", bl_error());
    CHECK(bl_net_gn(&bad, "gn", 1, 2, &t) == BL_ERR_ARG && strstr(bl_error(), "do not divide"),
          "GN groups that do not divide the channels: %s", bl_error());
    bl_net_free(&bad);
    bl_net_free(&tied), bl_net_free(&untied);
}

/* A checkpoint without the per-level statistics (pooled only) loads; per-level inference is
 * refused until PreciseBN estimated them. */
static void test_pooled_only_file(void)
{
    bl_model m;
    CHECK(bl_model_init(&m, "resnet8-ml") == BL_OK, "%s", bl_error());
    m.width = 4;
    bl_model_option(&m, "head_width", 8);
    bl_net net;
    CHECK(bl_model_build(&net, &m, 10, 12, 12, 1, 2) == BL_OK, "%s", bl_error());
    CHECK(bl_net_output_count(&net) == 3 && bl_net_bn_count(&net) == 9 + 8,
          "ml net: %d outputs, %d BN cores", bl_net_output_count(&net), bl_net_bn_count(&net));
    char full[64], pooled[64];
    snprintf(full, sizeof full, "/tmp/bnlab_levels_%d.safetensors", (int)getpid());
    snprintf(pooled, sizeof pooled, "/tmp/bnlab_levels_%d_pooled.safetensors", (int)getpid());
    for (int i = 0; i < bl_net_bn_count(&net); i++) bl_net_bn_at(&net, i)->pop_source = BL_EST_EMA;
    CHECK(bl_checkpoint_save(&net, full, NULL) == BL_OK, "%s", bl_error());
    /* the same file without head.normX.{k}.* statistics */
    bl_safetensors st;
    bl_st_writer w = {0};
    CHECK(bl_st_read(full, &st) == BL_OK, "%s", bl_error());
    int dropped = 0;
    for (int i = 0; i < st.n; i++) {
        const bl_st_entry *e = &st.e[i];
        if (!strncmp(e->name, "head.norm", 9) && strchr(e->name + 11, '.') &&
            e->name[11] >= '0' && e->name[11] <= '9' && !strstr(e->name, "weight") && !strstr(e->name, "bias")) {
            dropped++;
            continue;
        }
        CHECK(bl_st_add(&w, e->name, e->dtype, e->ndim, e->shape, st.data + e->begin) == BL_OK, "%s", bl_error());
    }
    for (int i = 0; i < st.n_meta; i++) bl_st_set_meta(&w, st.meta_key[i], st.meta_val[i]);
    CHECK(dropped == 2 * 3 * 3, "dropped %d per-level statistics tensors", dropped);
    CHECK(bl_st_write(&w, pooled) == BL_OK, "%s", bl_error());
    bl_st_writer_free(&w);
    /* one of a level's statistics missing (not all): a missing tensor like any other */
    char partial[80];
    snprintf(partial, sizeof partial, "/tmp/bnlab_levels_%d_partial.safetensors", (int)getpid());
    memset(&w, 0, sizeof w);
    for (int i = 0; i < st.n; i++)
        if (strcmp(st.e[i].name, "head.norm1.0.running_var"))
            bl_st_add(&w, st.e[i].name, st.e[i].dtype, st.e[i].ndim, st.e[i].shape, st.data + st.e[i].begin);
    for (int i = 0; i < st.n_meta; i++) bl_st_set_meta(&w, st.meta_key[i], st.meta_val[i]);
    CHECK(bl_st_write(&w, partial) == BL_OK, "%s", bl_error());
    bl_st_writer_free(&w);
    bl_net bad;
    CHECK(bl_checkpoint_open(partial, 2, NULL, &bad, NULL) != BL_OK &&
              strstr(bl_error(), "head.norm1.0.running_var"), "a partial level loaded: %s", bl_error());
    remove(partial);
    /* malformed head metadata: an unknown choice, a width outside its range */
    static const char *bad_head[][2] = {{"{\"norm\":\"xx\",\"width\":8}", "its 'norm'"},
                                        {"{\"norm\":\"bn\",\"width\":1e9}", "its 'width'"},
                                        {"[3]", "the 'head' metadata is malformed"}};
    for (int k = 0; k < 3; k++) {
        memset(&w, 0, sizeof w);
        for (int i = 0; i < st.n; i++)
            bl_st_add(&w, st.e[i].name, st.e[i].dtype, st.e[i].ndim, st.e[i].shape, st.data + st.e[i].begin);
        for (int i = 0; i < st.n_meta; i++) bl_st_set_meta(&w, st.meta_key[i], st.meta_val[i]);
        bl_st_set_meta(&w, "head", bad_head[k][0]);
        CHECK(bl_st_write(&w, partial) == BL_OK, "%s", bl_error());
        bl_st_writer_free(&w);
        const bl_status hs = bl_checkpoint_open(partial, 2, NULL, &bad, NULL);
        CHECK(hs == BL_ERR_FORMAT && strstr(bl_error(), bad_head[k][1]), "head metadata %s: %d '%s'",
              bad_head[k][0], hs, bl_error());
        if (!hs) bl_net_free(&bad);
        remove(partial);
    }
    bl_st_free(&st);
    bl_net back;
    memset(&back, 0, sizeof back);
    bl_ckpt_info info;
    CHECK(bl_checkpoint_open(pooled, 2, NULL, &back, &info) == BL_OK, "pooled-only file: %s", bl_error());
    if (bl_net_layer_count(&back)) {
        /* inference with per-level statistics refused where it happens too (a default of the file) */
        bl_net_set_levels_pop(&back, 0);
        float x[2 * 144] = {0};
        CHECK(bl_net_infer(&back, x, 2) == BL_ERR_STATE && strstr(bl_error(), "head.norm1.0"),
              "per-level inference on a pooled-only file: %s", bl_error());
        CHECK(bl_net_head_pop(&back, 0) == BL_OK, "pooled statistics: %s", bl_error());
        CHECK(bl_net_head_pop(&back, 1) == BL_ERR_STATE && strstr(bl_error(), "no per-level population"),
              "per-level statistics of a pooled-only file: %s", bl_error());
        bl_net_free(&back);
        bl_ckpt_info_free(&info);
    }
    CHECK(bl_checkpoint_open(full, 2, NULL, &back, &info) == BL_OK && bl_net_head_pop(&back, 1) == BL_OK,
          "full file, per level: %s", bl_error());
    CHECK(((bl_resnet_ml_opts *)bl_model_opts(&info.model))->head_width == 8 &&
              ((const bl_resnet_ml_opts *)bl_model_opts_c(bl_net_model(&back)))->head_width == 8 &&
              !strcmp(bl_net_arch(&back), "resnet8-ml"),
          "head restored");
    bl_net_free(&back);
    bl_ckpt_info_free(&info);
    remove(full), remove(pooled);
    bl_net_free(&net);
}

int main(void)
{
    test_merged();
    test_precise();
    test_shared_weight();
    test_pooled_only_file();
    return check_done("test_levels");
}
