/* The multi-level model (resnet8-ml, width 4, head width 8, 12x12 inputs) against its PyTorch twin
 * (tests/fixtures/ml_*.safetensors from tools/gen_ml_fixture.py): two SGD steps with each head
 * normalization - BN with batch statistics merged over the levels or per level, affine shared or
 * per level; GN with affine shared or per level; none. First step: the mean logits and each level's, the loss, every gradient
 * (the shared head weights' included: their gradient is the sum over the levels), the running
 * statistics pooled and per level; then the parameters after each step, the running statistics
 * after the last, and inference with pooled and with per-level population statistics.
 * Float32 here; |a - b| <= 1e-4 + 1e-3 |b|. */
#include "bnlab/bnlab.h"
#include "check.h"

#define ATOL 1e-4
#define RTOL 1e-3

static bl_safetensors st;
static const char *scenario;

/* running statistics are compared tighter: pooled and per-level ones differ by ~3e-3 */
static double tol_abs = ATOL, tol_rel = RTOL;

static void cmp(const char *what, const float *got, const char *ref_name, size_t n)
{
    float *ref = malloc(sizeof(float) * n);
    double *a = malloc(sizeof(double) * n * 2), *b = a + n;
    char name[200];
    snprintf(name, sizeof name, "%s: %s", scenario, what);
    if (bl_st_get_f32(&st, ref_name, ref, n)) {
        CHECK(0, "%s: %s", name, bl_error());
    } else {
        for (size_t i = 0; i < n; i++) a[i] = got[i], b[i] = ref[i];
        CHECK_CLOSE(name, a, b, n, tol_abs, tol_rel);
    }
    free(ref);
    free(a);
}

/* Compares parameters (kind: 0 trained data, 1 their gradients, 2 buffers) with prefix + name. */
static int cmp_params(bl_net *net, const char *prefix, int what)
{
    int n = 0;
    for (int i = 0; i < bl_net_param_count(net); i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->kind == BL_P_COUNT || (p->kind == BL_P_BUFFER) != (what == 2)) continue;
        float *t = malloc(sizeof(float) * p->count);
        bl_param_export(
            p, what == 1 ? bl_net_block(net, BL_BLOCK_GRADS, NULL) + p->offset : p->data, t);
        char ref[160];
        snprintf(ref, sizeof ref, "%s%s", prefix, p->name);
        if (what == 2) tol_abs = 2e-5, tol_rel = 1e-4;
        cmp(ref, t, ref, p->count);
        tol_abs = ATOL, tol_rel = RTOL;
        free(t);
        n++;
    }
    return n;
}

static int get_batch(int k, int B, int hw, float *x, uint8_t *y)
{
    char name[32];
    snprintf(name, sizeof name, "input%d", k);
    if (bl_st_get_f32(&st, name, x, (size_t)B * hw)) return 0; /* one channel: NCHW = NHWC */
    snprintf(name, sizeof name, "labels%d", k);
    const bl_st_entry *le = bl_st_find(&st, name);
    if (!le) return 0;
    for (int i = 0; i < B; i++) {
        int64_t v;
        memcpy(&v, st.data + le->begin + 8 * i, 8);
        y[i] = (uint8_t)v;
    }
    return 1;
}

/* The index of the largest of z[0..10). */
static int arg10(const float *z)
{
    int a = 0;
    for (int j = 1; j < 10; j++) a = z[j] > z[a] ? j : a;
    return a;
}

/* The mean logits and each level's against prefix "logits" (+ ".k"); with labels, the correct
 * counts of the mean and of each level against the reference logits' argmax. */
static void cmp_logits(bl_net *net, const char *prefix, int B, const uint8_t *y, int correct)
{
    float mean[64 * 10] = {0};
    char key[64];
    for (int k = 0; k < bl_net_output_count(net); k++) {
        const float *z = bl_net_tensor_at(net, bl_net_output(net, k))->data;
        for (int i = 0; i < B * 10; i++) mean[i] += z[i] / bl_net_output_count(net);
        snprintf(key, sizeof key, "%s.%d", prefix, k);
        cmp(key, z, key, (size_t)B * 10);
    }
    cmp(prefix, mean, prefix, (size_t)B * 10);
    if (!y) return;
    float ref[64 * 10];
    int want = 0, lev[BL_NET_MAX_OUTPUTS], want_lev;
    if (bl_st_get_f32(&st, prefix, ref, (size_t)B * 10)) return;
    for (int i = 0; i < B; i++) want += arg10(ref + 10 * i) == y[i];
    CHECK(correct == want, "%s: %d correct of the mean logits, the reference %d", scenario, correct, want);
    bl_net_output_correct(net, y, lev);
    for (int k = 0; k < bl_net_output_count(net); k++) {
        char name[64];
        snprintf(name, sizeof name, "%s.%d", prefix, k);
        if (bl_st_get_f32(&st, name, ref, (size_t)B * 10)) continue;
        want_lev = 0;
        for (int i = 0; i < B; i++) want_lev += arg10(ref + 10 * i) == y[i];
        CHECK(lev[k] == want_lev, "%s: level %d: %d correct, the reference %d", scenario, k, lev[k], want_lev);
    }
}

static void run(const char *dir, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, file);
    scenario = file;
    if (bl_st_read(path, &st)) {
        CHECK(0, "%s", bl_error());
        return;
    }
    int64_t cfg[8] = {0};
    const bl_st_entry *ce = bl_st_find(&st, "config");
    CHECK(ce && ce->end - ce->begin == sizeof cfg, "%s: no config", file);
    if (ce) memcpy(cfg, st.data + ce->begin, sizeof cfg);
    const int B = (int)cfg[0], H = (int)cfg[5], W = (int)cfg[6], steps = (int)cfg[7];
    bl_model m;
    bl_model_init(&m, "resnet8-ml");
    m.width = 4;
    bl_resnet_ml_opts *head = bl_model_opts(&m);
    head->head_sgd = (int)cfg[1], head->head_affine = (int)cfg[2];
    head->head_norm = (int)cfg[3], head->head_width = (int)cfg[4];
    bl_net net;
    if (B < 1 || B > 64 || bl_model_build(&net, &m, 10, H, W, 1, B)) {
        CHECK(0, "%s: build: %s", file, bl_error());
        bl_st_free(&st);
        return;
    }
    for (int i = 0; i < bl_net_param_count(&net); i++) {
        bl_param *p = bl_net_param_at(&net, i);
        if (p->kind == BL_P_COUNT) continue;
        float *t = malloc(sizeof(float) * p->count);
        CHECK(bl_st_get_f32(&st, p->name, t, p->count) == BL_OK, "%s", bl_error());
        bl_param_import(p, t, p->data);
        free(t);
    }
    float *x = malloc(sizeof(float) * B * H * W);
    uint8_t y[64];
    bl_sgd o = {0.9, 5e-4, 1, 0};
    float lr = 0;
    CHECK(bl_st_get_f32(&st, "lr", &lr, 1) == BL_OK && lr > 0, "%s: no lr", file);
    for (int k = 0; k < steps; k++) {
        if (!get_batch(k, B, H * W, x, y)) {
            CHECK(0, "%s: batch %d missing: %s", file, k, bl_error());
            break;
        }
        double loss;
        int correct;
        bl_net_zero_grad(&net);
        CHECK(bl_net_forward(&net, NULL, x, B) == BL_OK && bl_net_loss(&net, y, 1, &loss, &correct) == BL_OK &&
                  bl_net_backward(&net, NULL) == BL_OK,
              "%s: step %d: %s", file, k, bl_error());
        if (k == 0) {
            cmp_logits(&net, "logits", B, y, correct);
            float l = (float)(loss / B);
            cmp("loss", &l, "loss", 1);
            CHECK(cmp_params(&net, "grad.", 1) > 0, "no gradient compared");
        }
        CHECK(bl_net_bn_commit(&net, BL_EST_EMA) == BL_OK, "%s: commit: %s", file, bl_error());
        if (k == 0) cmp_params(&net, "after.", 2);
        bl_sgd_step(&net, &o, lr);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "step%d.", k + 1);
        cmp_params(&net, prefix, 0);
    }
    cmp_params(&net, "final.", 2);
    if (head->head_norm == BL_HEAD_BN && get_batch(0, B, H * W, x, y)) {
        /* inference, both kinds of population statistics on the same weights */
        CHECK(bl_net_head_pop(&net, 0) == BL_OK && bl_net_infer(&net, x, B) == BL_OK, "%s", bl_error());
        cmp_logits(&net, "eval_shared.logits", B, NULL, 0);
        CHECK(bl_net_head_pop(&net, 1) == BL_OK && bl_net_infer(&net, x, B) == BL_OK, "%s", bl_error());
        cmp_logits(&net, "eval_level.logits", B, NULL, 0);
    }
    free(x);
    bl_net_free(&net);
    bl_st_free(&st);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    static const char *files[] = {"ml_sss", "ml_dds", "ml_ddd", "ml_ssd", "ml_gn", "ml_gnd", "ml_none"};
    for (int i = 0; i < 7; i++) run(dir, files[i]);
    return check_done("test_ml_torch");
}
