/* The engine against PyTorch (llm.c style): a resnet8 of width 4 with the weights of
 * tests/fixtures/resnet8_w4.safetensors (tools/gen_resnet_fixture.py, float64), one batch of 4
 * images in train mode: logits, loss, every parameter gradient, BN running statistics after the
 * forward, and the parameters after one and two SGD steps (momentum 0.9, Nesterov, weight decay
 * 5e-4 on weights only). Float32 here; |a - b| <= 1e-4 + 1e-3 |b|. */
#include "bnlab/bnlab.h"
#include "check.h"

#define ATOL 1e-4
#define RTOL 1e-3

static bl_safetensors st;

static void cmp(const char *what, const float *got, const char *ref_name, size_t n)
{
    float *ref = malloc(sizeof(float) * n);
    double *a = malloc(sizeof(double) * n * 2), *b = a + n;
    if (bl_st_get_f32(&st, ref_name, ref, n)) {
        CHECK(0, "%s: %s", what, bl_error());
    } else {
        for (size_t i = 0; i < n; i++) a[i] = got[i], b[i] = ref[i];
        CHECK_CLOSE(what, a, b, n, ATOL, RTOL);
    }
    free(ref);
    free(a);
}

/* Compares every trained parameter (data or gradient) with "<prefix><name>". */
static void cmp_params(bl_net *net, const char *prefix, int grads)
{
    for (int i = 0; i < net->n_params; i++) {
        const bl_param *p = &net->params[i];
        if (p->kind == BL_P_BUFFER || p->kind == BL_P_COUNT) continue;
        float *t = malloc(sizeof(float) * p->count);
        bl_param_export(p, grads ? net->grad_block + p->offset : p->data, t);
        char ref[160];
        snprintf(ref, sizeof ref, "%s%s", prefix, p->name);
        cmp(ref, t, ref, p->count);
        free(t);
    }
}

static void step(bl_net *net, const float *x, const uint8_t *y, int check_forward)
{
    net->bn_mode = BL_BN_BATCH;
    bl_net_zero_grad(net);
    CHECK(bl_net_forward(net, x, 4) == BL_OK, "forward: %s", bl_error());
    double loss;
    int correct;
    CHECK(bl_net_loss(net, y, 1, &loss, &correct) == BL_OK, "loss: %s", bl_error());
    if (check_forward) {
        cmp("logits", net->t[net->n_tensors - 1].data, "logits", 40);
        float l = (float)(loss / 4);
        cmp("loss", &l, "loss", 1);
    }
    CHECK(bl_net_backward(net) == BL_OK, "backward: %s", bl_error());
    if (check_forward) {
        cmp_params(net, "grad.", 1);
        for (int i = 0; i < bl_net_bn_count(net); i++)
            CHECK(bl_bn_commit(bl_net_bn_at(net, i), BL_EST_EMA) == BL_OK, "commit: %s", bl_error());
        for (int i = 0; i < net->n_params; i++) {
            const bl_param *p = &net->params[i];
            if (p->kind != BL_P_BUFFER) continue;
            char ref[160];
            snprintf(ref, sizeof ref, "after.%s", p->name);
            cmp(ref, p->data, ref, p->count);
        }
    }
    bl_sgd o = {0.9, 5e-4, 1, 0};
    bl_sgd_step(net, &o, 0.1);
}

int main(int argc, char **argv)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/resnet8_w4.safetensors", argc > 1 ? argv[1] : "tests/fixtures");
    if (bl_st_read(path, &st)) return fprintf(stderr, "%s\n", bl_error()), 1;
    bl_net net;
    CHECK(bl_resnet(&net, 8, 4, 10, 28, 28, 1, 4) == BL_OK, "build: %s", bl_error());
    /* load the state dict (conv weights OIHW -> OHWI) */
    int loaded = 0;
    for (int i = 0; i < net.n_params; i++) {
        bl_param *p = &net.params[i];
        if (p->kind == BL_P_COUNT) continue;
        float *t = malloc(sizeof(float) * p->count);
        CHECK(bl_st_get_f32(&st, p->name, t, p->count) == BL_OK, "%s", bl_error());
        bl_param_import(p, t, p->data);
        free(t);
        loaded++;
    }
    /* stem 1+4, layer1.0 10, layer2.0 and layer3.0 15 each (with shortcut), fc 2 */
    CHECK(loaded == 47, "loaded %d tensors, the resnet8 state dict has 47 float tensors", loaded);
    float x[4 * 784];
    CHECK(bl_st_get_f32(&st, "input", x, 4 * 784) == BL_OK, "%s", bl_error()); /* C=1: NCHW = NHWC */
    const bl_st_entry *le = bl_st_find(&st, "labels");
    uint8_t y[4];
    for (int i = 0; i < 4; i++) {
        int64_t v;
        memcpy(&v, st.data + le->begin + 8 * i, 8);
        y[i] = (uint8_t)v;
    }
    step(&net, x, y, 1);
    cmp_params(&net, "step1.", 0);
    step(&net, x, y, 0);
    cmp_params(&net, "step2.", 0);
    bl_net_free(&net);
    bl_st_free(&st);
    return check_done("test_resnet_torch");
}
