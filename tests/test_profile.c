/* The profiler: a profiled pass computes the same bits as an unprofiled one, its table names every
 * timed layer and pass and the step's phases, the convolutions' costs count what their algorithm
 * does, and the measured FMA peak is a rate. */
#include "bnlab/bnlab.h"
#include "check.h"

#include <stdint.h>

static void build(bl_net *net, int n)
{
    int t1, t2, t3, t4, t5, t6;
    CHECK(bl_net_init(net, 8, 8, 16, n) == BL_OK &&
              bl_net_conv(net, "c3", 0, 16, 3, 1, 1, &t1) == BL_OK &&
              bl_net_bn(net, "bn", t1, &t2) == BL_OK && bl_net_relu(net, "r", t2, &t3) == BL_OK &&
              bl_net_conv(net, "c3s2", t3, 32, 3, 2, 1, &t4) == BL_OK &&
              bl_net_gap(net, "g", t4, &t5) == BL_OK &&
              bl_net_linear(net, "fc", t5, 4, &t6) == BL_OK && bl_net_finalize(net) == BL_OK,
          "build: %s", bl_error());
    bl_net_init_params(net, 3);
}

/* one training step's passes; returns the logits' checksum bits */
static uint64_t step(bl_net *net, const float *x, const uint8_t *y, int n)
{
    double loss;
    int ok;
    bl_net_zero_grad(net);
    CHECK(bl_net_forward(net, NULL, x, n) == BL_OK, "forward: %s", bl_error());
    CHECK(bl_net_loss(net, y, 1, &loss, &ok) == BL_OK, "loss: %s", bl_error());
    CHECK(bl_net_backward(net, NULL) == BL_OK, "backward: %s", bl_error());
    const bl_tensor *o = bl_net_tensor_at(net, bl_net_output(net, 0));
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n * o->c; i++) {
        uint32_t b;
        memcpy(&b, &o->data[i], 4);
        h = (h ^ b) * 1099511628211ull;
    }
    const float *g = bl_net_block(net, BL_BLOCK_GRADS, NULL);
    for (int i = 0; i < 64; i++) {
        uint32_t b;
        memcpy(&b, &g[i], 4);
        h = (h ^ b) * 1099511628211ull;
    }
    return h;
}

static int sunk, sunk_has_fc;
static void sink(const char *text)
{
    sunk++;
    sunk_has_fc |= strstr(text, "fc ") != NULL;
}

int main(void)
{
    const int n = 6;
    float x[6 * 8 * 8 * 16];
    uint8_t y[6];
    bl_rng r;
    bl_rng_seed(&r, 5);
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = (float)bl_rng_normal(&r);
    for (int i = 0; i < n; i++) y[i] = (uint8_t)(i % 4);

    bl_profile_set(0);
    bl_net a;
    build(&a, n);
    const uint64_t plain = step(&a, x, y, n);
    bl_profile_set(1);
    bl_net b;
    build(&b, n);
    uint64_t prof = 0;
    for (int k = 0; k < 3; k++) prof = step(&b, x, y, n);
    CHECK(bl_net_infer(&b, x, n) == BL_OK, "infer: %s", bl_error());
    CHECK(plain == prof, "profiling changed the step's bits");

    /* the convolutions' costs: the stride-2 one is direct or im2col, 9 cin cout per output pixel;
     * the stride-1 one either that or Winograd's 16 products per 2x2 tile plus its transforms */
    const bl_layer *c3 = bl_net_layer_at(&b, 0), *c3s2 = bl_net_layer_at(&b, 3);
    CHECK(c3->ops->cost && c3s2->ops->cost, "the conv layer has no cost");
    bl_cost c = {0};
    c3s2->ops->cost(c3s2, &b, BL_PASS_FWD, &c);
    CHECK(c.slots == 4.0 * 4 * 9 * 16 * 32, "stride-2 conv: %.0f slots", c.slots);
    CHECK(c.bytes == 4.0 * (8 * 8 * 16 + 4 * 4 * 32), "stride-2 conv: %.0f bytes", c.bytes);
    memset(&c, 0, sizeof c);
    c3->ops->cost(c3, &b, BL_PASS_FWD, &c);
    const double direct = 8.0 * 8 * 9 * 16 * 16, wino = 16.0 * (16 * 16 * 16 + 32 * 16 + 24 * 16);
    CHECK(c.algo && (strcmp(c.algo, "winograd") ? c.slots == direct : c.slots == wino),
          "stride-1 conv: %s, %.0f slots", c.algo ? c.algo : "(none)", c.slots);
    memset(&c, 0, sizeof c);
    c3->ops->cost(c3, &b, BL_PASS_BWD, &c); /* it reads the input: no input gradient */
    const double wdw = 16.0 * (16 * 16 * 16 + 32 * 16 + 12 * 16);
    CHECK(c.algo && (strcmp(c.algo, "dw winograd") ? c.slots == direct : c.slots == wdw),
          "stride-1 conv backward: %s, %.0f slots", c.algo ? c.algo : "(none)", c.slots);
    memset(&c, 0, sizeof c);
    c3s2->ops->cost(c3s2, &b, BL_PASS_BWD, &c); /* weight and input gradients */
    CHECK(c.slots == 2 * 4.0 * 4 * 9 * 16 * 32, "stride-2 conv backward: %.0f slots", c.slots);

    /* the table */
    char *buf = bl_net_profile_report(&b);
    const char *want[] = {"FMA peak", "c3 ", "c3s2", "bn ", "fc ", " fwd ", " bwd ", " infer ",
                          "loss", "zero grad", "pass bwd", "+bn+1"};
    for (size_t k = 0; k < sizeof want / sizeof *want; k++)
        CHECK(buf && strstr(buf, want[k]), "the table lacks '%s':\n%s", want[k], buf ? buf : "");
    CHECK(buf && strstr(buf, "     3 "), "the table does not count 3 calls:\n%s", buf ? buf : "");
    free(buf);
    /* an unprofiled net prints nothing */
    buf = bl_net_profile_report(&a);
    CHECK(!buf, "an unprofiled net has a table:\n%s", buf);
    free(buf);
    /* the sink receives the table when a profiled net is freed */
    bl_profile_set_sink(sink);

    const char *isa = NULL;
    const double peak = bl_fma_peak(2, &isa);
    CHECK(peak > 0.1 && peak < 1e5 && isa, "FMA peak %.3f GFLOP/s (%s)", peak, isa ? isa : "?");
    bl_net_free(&a);
    bl_net_free(&b);
    CHECK(sunk == 1 && sunk_has_fc, "the sink got %d tables (expected 1, naming fc: %d)", sunk,
          sunk_has_fc);
    bl_profile_set(0);
    return check_done("test_profile");
}
