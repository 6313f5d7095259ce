/* The engine against PyTorch (llm.c style): a resnet8 of width 4 with the weights of
 * tests/fixtures/resnet8_w4*.safetensors (tools/gen_resnet_fixture.py, float64), several SGD steps
 * (momentum 0.9, Nesterov, weight decay 5e-4 on weights only) in three BN regimes: batch
 * statistics over the whole batch; ghost groups (BN on x.split(2) of batches of 8, the ghost EMA
 * rule); FrozenBN (every BN in PyTorch's eval mode while the rest trains). First step: logits, loss,
 * every parameter gradient, BN running statistics; then the parameters after every step and the
 * running statistics after the last. Float32 here; |a - b| <= 1e-4 + 1e-3 |b|.
 * FrozenBN's gradients (before the first step) are also checked against finite differences of the
 * network's loss. */
#include "bnlab/bnlab.h"
#include "check.h"

#define ATOL 1e-4
#define RTOL 1e-3

static bl_safetensors st;
static const char *scenario;

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
        CHECK_CLOSE(name, a, b, n, ATOL, RTOL);
    }
    free(ref);
    free(a);
}

static int trained(const bl_param *p) { return p->kind != BL_P_BUFFER && p->kind != BL_P_COUNT; }

/* Compares every trained parameter (data or gradient) with "<prefix><name>". */
static void cmp_params(bl_net *net, const char *prefix, int grads)
{
    for (int i = 0; i < bl_net_param_count(net); i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (!trained(p)) continue;
        float *t = malloc(sizeof(float) * p->count);
        bl_param_export(p, grads ? bl_net_block(net, BL_BLOCK_GRADS, NULL) + p->offset : p->data,
                        t);
        char ref[160];
        snprintf(ref, sizeof ref, "%s%s", prefix, p->name);
        cmp(ref, t, ref, p->count);
        free(t);
    }
}

static void cmp_buffers(bl_net *net, const char *prefix)
{
    for (int i = 0; i < bl_net_param_count(net); i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->kind != BL_P_BUFFER) continue;
        char ref[160];
        snprintf(ref, sizeof ref, "%s%s", prefix, p->name);
        cmp(ref, p->data, ref, p->count);
    }
}

static int get_batch(int k, int B, float *x, uint8_t *y)
{
    char name[32];
    snprintf(name, sizeof name, "input%d", k);
    if (bl_st_get_f32(&st, name, x, (size_t)B * 784)) return 0; /* C=1: NCHW = NHWC */
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

/* the scenario's BN regime: how every BN layer normalizes */
static bl_ctx regime;

/* forward + loss (+ backward) of one batch in the scenario's BN regime; the mean loss */
static double forward_loss(bl_net *net, const float *x, const uint8_t *y, int B, int backward)
{
    double loss;
    int correct;
    bl_net_zero_grad(net);
    CHECK(bl_net_forward(net, &regime, x, B) == BL_OK, "%s: forward: %s", scenario, bl_error());
    CHECK(bl_net_loss(net, y, 1, &loss, &correct) == BL_OK, "%s: loss: %s", scenario, bl_error());
    if (backward)
        CHECK(bl_net_backward(net, &regime) == BL_OK, "%s: backward: %s", scenario, bl_error());
    return loss / B;
}

/* FrozenBN gradients against finite differences of the float32 loss, three coordinates of every
 * trained tensor: the gradient vs (L(w + h) - L(w)) / h, (L(w) - L(w - h)) / h and the central
 * difference. Why one-sided quotients: a step moves the pre-activations of a whole channel, so a
 * ReLU kink may lie within h on one side (the slope there jumps); a correct gradient matches the
 * quotient on the side without one. h = 1e-4: the loss's float32 rounding (~1e-8) stays near 1e-4
 * in a quotient, against gradients of 1e-3..1e-1. */
static void frozen_fd(bl_net *net, const float *x, const uint8_t *y, int B)
{
    const float h = 1e-4f;
    const double L0 = forward_loss(net, x, y, B, 1);
    float *g = malloc(sizeof(float) * bl_net_floats(net, BL_BLOCK_PARAMS));
    memcpy(g, bl_net_block(net, BL_BLOCK_GRADS, NULL),
           sizeof(float) * bl_net_floats(net, BL_BLOCK_PARAMS));
    int n = 0, bad = 0;
    double worst = 0;
    for (int i = 0; i < bl_net_param_count(net); i++) {
        bl_param *p = bl_net_param_at(net, i);
        if (!trained(p)) continue;
        const size_t at[3] = {0, p->count / 2, p->count - 1};
        for (int k = 0; k < 3; k++) {
            float *v = p->data + at[k];
            const float keep = *v, up = keep + h, down = keep - h; /* the steps as stored */
            *v = up;
            const double lp = forward_loss(net, x, y, B, 0);
            *v = down;
            const double lm = forward_loss(net, x, y, B, 0);
            *v = keep;
            const double an = g[p->offset + at[k]], hu = (double)up - keep, hd = (double)keep - down;
            const double q[3] = {(lp - L0) / hu, (L0 - lm) / hd, (lp - lm) / (hu + hd)};
            double err = INFINITY;
            for (int j = 0; j < 3; j++) err = fmin(err, fabs(q[j] - an) / (1e-3 + 1e-2 * fabs(q[j])));
            if (err > 1) {
                bad++;
                fprintf(stderr, "  %s[%zu]: gradient %.6g; finite differences %.6g (forward) %.6g "
                        "(backward)\n", p->name, at[k], an, q[0], q[1]);
            }
            worst = fmax(worst, err);
            n++;
        }
    }
    CHECK(bad == 0 && n == 87, "%s: %d of %d gradient coordinates differ from finite differences "
          "(|diff| > 1e-3 + 1e-2 |fd|)", scenario, bad, n);
    printf("%s: %d gradient coordinates vs finite differences, worst at %.2f of the tolerance\n",
           scenario, n, worst);
    free(g);
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
    int64_t cfg[4] = {0};
    const bl_st_entry *ce = bl_st_find(&st, "config");
    CHECK(ce && ce->end - ce->begin == sizeof cfg, "%s: no config [batch, ghost, frozen, steps]", file);
    if (ce) memcpy(cfg, st.data + ce->begin, sizeof cfg);
    const int B = (int)cfg[0], ghost = (int)cfg[1], frozen = (int)cfg[2], steps = (int)cfg[3];
    bl_net net;
    CHECK(bl_resnet(&net, 8, 4, 10, 28, 28, 1, B) == BL_OK, "build: %s", bl_error());
    /* load the state dict (conv weights OIHW -> OHWI) */
    int loaded = 0;
    for (int i = 0; i < bl_net_param_count(&net); i++) {
        bl_param *p = bl_net_param_at(&net, i);
        if (p->kind == BL_P_COUNT) continue;
        float *t = malloc(sizeof(float) * p->count);
        CHECK(bl_st_get_f32(&st, p->name, t, p->count) == BL_OK, "%s", bl_error());
        bl_param_import(p, t, p->data);
        free(t);
        loaded++;
    }
    /* stem 1+4, layer1.0 10, layer2.0 and layer3.0 15 each (with shortcut), fc 2 */
    CHECK(loaded == 47, "loaded %d tensors, the resnet8 state dict has 47 float tensors", loaded);
    bl_groups groups;
    if (ghost) CHECK(bl_groups_ghost(&groups, B, ghost) == BL_OK, "%s", bl_error());
    regime = bl_ctx_all(frozen ? BL_BN_POPULATION : BL_BN_BATCH, ghost ? &groups : NULL);
    float *x = malloc(sizeof(float) * B * 784);
    uint8_t y[64];
    bl_sgd o = {0.9, 5e-4, 1, 0};
    float lr = 0;
    CHECK(bl_st_get_f32(&st, "lr", &lr, 1) == BL_OK && lr > 0, "%s: no lr", file);
    if (frozen && get_batch(0, B, x, y)) frozen_fd(&net, x, y, B);
    for (int k = 0; k < steps; k++) {
        if (!get_batch(k, B, x, y)) {
            CHECK(0, "%s: batch %d missing: %s", file, k, bl_error());
            break;
        }
        double loss = forward_loss(&net, x, y, B, 1);
        if (k == 0) {
            cmp("logits", bl_net_tensor_at(&net, bl_net_tensor_count(&net) - 1)->data, "logits",
                (size_t)B * 10);
            float l = (float)loss;
            cmp("loss", &l, "loss", 1);
            cmp_params(&net, "grad.", 1);
        }
        for (int b = 0; b < bl_net_bn_count(&net) && !frozen; b++)
            CHECK(bl_bn_commit(bl_net_bn_at(&net, b), BL_EST_EMA) == BL_OK, "commit: %s", bl_error());
        if (k == 0) cmp_buffers(&net, "after.");
        bl_sgd_step(&net, &o, lr);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "step%d.", k + 1);
        cmp_params(&net, prefix, 0);
    }
    cmp_buffers(&net, "final.");
    free(x);
    if (ghost) bl_groups_free(&groups);
    bl_net_free(&net);
    bl_st_free(&st);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    run(dir, "resnet8_w4");
    run(dir, "resnet8_w4_ghost2");
    run(dir, "resnet8_w4_frozen");
    return check_done("test_resnet_torch");
}
