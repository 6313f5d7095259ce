/* The elementwise layer (bl_net_eltwise) against PyTorch's broadcasting add, sub, mul and div
 * (fixture from tools/gen_eltwise_fixture.py: full shapes, per-channel (1, 1, C), scalar, both
 * operands broadcast, constants first and second), its backward against the fixture and central
 * differences, a tensor read twice and gradients that add up; constant tensors (bl_net_const)
 * and their refusals; a layer of the test's own with seven inputs (any number of inputs). Only
 * the public layer API is used. */
#include "bnlab/bnlab.h"
#include "bnlab/layer.h"
#include "check.h"
#include "st_fixture.h"

/* A leaf: writes the values it holds into its outputs (operands of a batch); no gradient. */
typedef struct {
    int n;
    float *v[8];
} leaf_state;

static bl_status leaf_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const leaf_state *s = l->state;
    for (int k = 0; k < l->n_out; k++) {
        const bl_tensor *t = bl_net_tensor_at(net, l->out + k);
        memcpy(t->data, s->v[k], sizeof(float) * (size_t)bl_net_batch(net) * bl_tsize(t));
    }
    return BL_OK;
}

static bl_status leaf_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)l, (void)net, (void)ctx;
    return BL_OK;
}

static void leaf_free(bl_layer *l) { free(l->state); }

static const bl_layer_ops leaf_ops = {.kind = BL_LAYER_OTHER,
                                      .kind_name = "leaf",
                                      .forward = leaf_forward,
                                      .backward = leaf_backward,
                                      .free = leaf_free};

/* n_out outputs of shapes hwc[3k..], values v[k] (held, not copied); *first: the first id. */
static bl_status add_leaf(bl_net *net, int n_out, const int *hwc, float **v, int *first)
{
    leaf_state *s = calloc(1, sizeof *s);
    s->n = n_out;
    for (int k = 0; k < n_out; k++) s->v[k] = v[k];
    const int in = 0;
    bl_layer *l;
    bl_status st = bl_net_layer_n(net, &leaf_ops, "leaf", &in, 1, hwc, n_out, s, &l);
    if (st) return free(s), st;
    *first = l->out;
    return BL_OK;
}

/* The sum of any number of inputs of one shape: the layer API's many-input case. */
static bl_status sum_forward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const bl_tensor *y = bl_net_tensor_at(net, l->out);
    const size_t n = (size_t)bl_net_batch(net) * bl_tsize(y);
    for (size_t i = 0; i < n; i++) {
        float acc = 0;
        for (int k = 0; k < l->n_in; k++) acc += bl_net_tensor_at(net, l->in[k])->data[i];
        y->data[i] = acc;
    }
    return BL_OK;
}

static bl_status sum_backward(bl_layer *l, bl_net *net, const bl_ctx *ctx)
{
    (void)ctx;
    const bl_tensor *y = bl_net_tensor_at(net, l->out);
    const size_t n = (size_t)bl_net_batch(net) * bl_tsize(y);
    for (int k = 0; k < l->n_in; k++) {
        float *g = bl_net_tensor_at(net, l->in[k])->grad;
        for (size_t i = 0; i < n; i++) g[i] = (l->acc[k] ? g[i] : 0) + y->grad[i];
    }
    return BL_OK;
}

static const bl_layer_ops sum_ops = {
    .kind = BL_LAYER_OTHER, .kind_name = "sum", .forward = sum_forward, .backward = sum_backward};

/* One fixture case: the net leaf(batch operands) -> eltwise, checked against the fixture and by
 * central differences. */
static void run_case(const bl_safetensors *st, int k, bl_elt_op op)
{
    char name[32];
    const bl_st_entry *e[2];
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "%d.%c", k, "ab"[j]);
        e[j] = bl_st_find(st, name);
    }
    CHECK(e[0] && e[1] && e[0]->ndim == 4 && e[1]->ndim == 4, "case %d: operands", k);
    if (!e[0] || !e[1]) return;
    float *v[2];
    int konst[2], hwc[2][3], N = 0;
    size_t cnt[2];
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "%d.d%c", k, "ab"[j]);
        konst[j] = !bl_st_find(st, name);
        for (int d = 0; d < 3; d++) hwc[j][d] = (int)e[j]->shape[d + 1];
        if (!konst[j]) N = (int)e[j]->shape[0];
        cnt[j] = (size_t)e[j]->shape[0] * hwc[j][0] * hwc[j][1] * hwc[j][2];
        snprintf(name, sizeof name, "%d.%c", k, "ab"[j]);
        v[j] = st_get(st, name, cnt[j]);
    }
    bl_net net;
    int id[2], leaf = -1, y = -1;
    bl_status rc = bl_net_init(&net, 1, 1, 1, N);
    int nb = 0, shapes[6];
    float *bv[2];
    for (int j = 0; j < 2; j++)
        if (!konst[j]) memcpy(shapes + 3 * nb, hwc[j], sizeof hwc[j]), bv[nb++] = v[j];
    if (!rc) rc = add_leaf(&net, nb, shapes, bv, &leaf);
    for (int j = 0, b = 0; j < 2 && !rc; j++)
        if (konst[j])
            rc = bl_net_const(&net, hwc[j][0], hwc[j][1], hwc[j][2], v[j], &id[j]);
        else
            id[j] = leaf + b++;
    if (!rc) rc = bl_net_eltwise(&net, "elt", op, id[0], id[1], &y);
    if (!rc) rc = bl_net_finalize(&net);
    CHECK(rc == BL_OK, "case %d: build: %s", k, bl_error());
    if (rc) {
        bl_net_free(&net);
        return;
    }
    const bl_tensor *Y = bl_net_tensor_at(&net, y);
    const size_t ny = (size_t)N * bl_tsize(Y);
    snprintf(name, sizeof name, "%d.y", k);
    float *yref = st_get(st, name, ny);
    snprintf(name, sizeof name, "%d.dy", k);
    float *dy = st_get(st, name, ny);
    float x[64] = {0};
    CHECK(bl_net_forward(&net, NULL, x, N) == BL_OK, "case %d: forward: %s", k, bl_error());
    CHECK(worst_rel(Y->data, yref, ny) <= 1e-6, "case %d: y vs torch %.3g", k,
          worst_rel(Y->data, yref, ny));
    float *first = malloc(sizeof(float) * ny);
    memcpy(first, Y->data, sizeof(float) * ny);
    CHECK(bl_net_infer(&net, x, N) == BL_OK && !memcmp(first, Y->data, sizeof(float) * ny),
          "case %d: inference differs from the forward", k);
    CHECK(bl_net_forward(&net, NULL, x, N) == BL_OK, "case %d: forward", k);
    memcpy(Y->grad, dy, sizeof(float) * ny);
    CHECK(bl_net_backward(&net, NULL) == BL_OK, "case %d: backward: %s", k, bl_error());
    for (int j = 0; j < 2; j++) {
        if (konst[j]) {
            CHECK(bl_net_tensor_at(&net, id[j])->grad == NULL, "case %d: a constant's gradient", k);
            continue;
        }
        snprintf(name, sizeof name, "%d.d%c", k, "ab"[j]);
        float *gref = st_get(st, name, cnt[j]);
        const float *g = bl_net_tensor_at(&net, id[j])->grad;
        CHECK(worst_rel(g, gref, cnt[j]) <= 1e-5, "case %d: d%c vs torch %.3g", k, "ab"[j],
              worst_rel(g, gref, cnt[j]));
        /* central differences of sum(dy * y) at a few elements, in the leaf's own values */
        double worst = 0;
        for (size_t i = 0; i < cnt[j]; i += cnt[j] / 7 + 1) {
            const float keep = v[j][i], h = 1e-2f;
            double f[2];
            for (int s = 0; s < 2; s++) {
                v[j][i] = keep + (s ? h : -h);
                bl_net_forward(&net, NULL, x, N);
                f[s] = 0;
                for (size_t q = 0; q < ny; q++) f[s] += (double)dy[q] * Y->data[q];
            }
            v[j][i] = keep;
            const double fd = (f[1] - f[0]) / (2.0 * h);
            worst = fmax(worst, fabs(fd - g[i]) / fmax(1.0, fabs(fd)));
        }
        CHECK(worst <= 2e-3, "case %d: d%c vs central differences %.3g", k, "ab"[j], worst);
        free(gref);
    }
    free(first), free(yref), free(dy), free(v[0]), free(v[1]);
    bl_net_free(&net);
}

/* ops of the fixture's "cases" metadata, in order: ["add 4,5,6 4,5,6 -", ...] */
static int read_ops(const char *cases, bl_elt_op *ops, int max)
{
    static const char *names[] = {"add", "sub", "mul", "div"};
    int n = 0;
    for (const char *p = cases; p && (p = strchr(p, '"')) && n < max; p = strchr(p + 1, '"'), p++) {
        int o = -1;
        for (int j = 0; j < 4; j++)
            if (!strncmp(p + 1, names[j], 3)) o = j;
        if (o < 0) return -1;
        ops[n++] = (bl_elt_op)o;
    }
    return n;
}

/* A tensor read twice by one layer (a * a) and by two layers (a * b + a): the gradients add. */
static void shared_reads(void)
{
    enum { N = 2, C = 5 };
    float a[N * C], b[N * C], dy[N * C];
    for (int i = 0; i < N * C; i++)
        a[i] = 0.3f * i - 1, b[i] = 0.7f - 0.2f * i, dy[i] = 1 + 0.1f * i;
    const int hwc[6] = {1, 1, C, 1, 1, C};
    float *v[2] = {a, b};
    for (int variant = 0; variant < 2; variant++) {
        bl_net net;
        int t, y1, y;
        bl_status rc = bl_net_init(&net, 1, 1, 1, N);
        if (!rc) rc = add_leaf(&net, 2, hwc, v, &t);
        if (!rc) rc = bl_net_eltwise(&net, "m", BL_ELT_MUL, t, variant ? t + 1 : t, &y1);
        if (!rc && variant)
            rc = bl_net_eltwise(&net, "s", BL_ELT_ADD, y1, t, &y);
        else
            y = y1;
        if (!rc) rc = bl_net_finalize(&net);
        float x[N] = {0};
        if (!rc) rc = bl_net_forward(&net, NULL, x, N);
        if (!rc) memcpy(bl_net_tensor_at(&net, y)->grad, dy, sizeof dy);
        if (!rc) rc = bl_net_backward(&net, NULL);
        CHECK(rc == BL_OK, "shared reads %d: %s", variant, bl_error());
        if (!rc) {
            const float *g = bl_net_tensor_at(&net, t)->grad;
            double worst = 0;
            for (int i = 0; i < N * C; i++) {
                const double want = variant ? (double)dy[i] * b[i] + dy[i] : 2.0 * a[i] * dy[i];
                worst = fmax(worst, fabs(g[i] - want));
            }
            CHECK(worst <= 1e-6, "%s: gradient off by %.3g", variant ? "a * b + a" : "a * a",
                  worst);
        }
        bl_net_free(&net);
    }
}

/* Seven inputs into one layer of the test's own: forward and every input's gradient. */
static void many_inputs(void)
{
    enum { N = 3, C = 4, K = 7 };
    static float val[K][N * C];
    float *v[K];
    int hwc[3 * K], in[K], t, y;
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < N * C; i++) val[k][i] = (float)(k * 10 + i);
        v[k] = val[k];
        hwc[3 * k] = 1, hwc[3 * k + 1] = 1, hwc[3 * k + 2] = C;
    }
    bl_net net;
    bl_layer *l = NULL;
    bl_status rc = bl_net_init(&net, 1, 1, 1, N);
    if (!rc) rc = add_leaf(&net, K, hwc, v, &t);
    for (int k = 0; k < K; k++) in[k] = t + k;
    if (!rc) rc = bl_net_layer(&net, &sum_ops, "sum7", in, K, 1, 1, C, NULL, &l);
    if (!rc) y = l->out, rc = bl_net_finalize(&net);
    float x[N] = {0};
    if (!rc) rc = bl_net_forward(&net, NULL, x, N);
    CHECK(rc == BL_OK && l && l->n_in == K, "a layer of %d inputs: %s", K, bl_error());
    if (rc) {
        bl_net_free(&net);
        return;
    }
    const bl_tensor *Y = bl_net_tensor_at(&net, y);
    int ok = 1;
    for (int i = 0; i < N * C; i++) ok &= Y->data[i] == (float)(10 * K * (K - 1) / 2 + K * i);
    CHECK(ok, "the sum of %d inputs", K);
    for (int i = 0; i < N * C; i++) Y->grad[i] = (float)i;
    CHECK(bl_net_backward(&net, NULL) == BL_OK, "backward: %s", bl_error());
    ok = 1;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N * C; i++) ok &= bl_net_tensor_at(&net, t + k)->grad[i] == (float)i;
    CHECK(ok, "every one of %d inputs gets the gradient", K);
    bl_net_free(&net);
}

static void refusals(void)
{
    const float c6[6] = {1, 2, 3, 4, 5, 6};
    bl_net net;
    int a, b, k1, k2, out;
    CHECK(bl_net_init(&net, 4, 5, 6, 2) == BL_OK, "init");
    CHECK(bl_net_relu(&net, "r", 0, &a) == BL_OK && bl_net_const(&net, 1, 1, 6, c6, &k1) == BL_OK &&
              bl_net_const(&net, 1, 1, 4, c6, &k2) == BL_OK,
          "a batch tensor and two constants");
    bl_status st = bl_net_eltwise(&net, "bad", BL_ELT_ADD, a, k2, &out);
    CHECK(st == BL_ERR_ARG && strstr(bl_error(), "(4, 5, 6) and (1, 1, 4) do not broadcast"),
          "shapes that do not broadcast: %s", bl_error());
    st = bl_net_eltwise(&net, "two", BL_ELT_MUL, k1, k2, &out);
    CHECK(st == BL_ERR_ARG && strstr(bl_error(), "both inputs are constants"), "two constants: %s",
          bl_error());
    st = bl_net_eltwise(&net, "op", (bl_elt_op)9, a, k1, &out);
    CHECK(st == BL_ERR_ARG && strstr(bl_error(), "none of add"), "unknown op: %s", bl_error());
    st = bl_net_relu(&net, "rc", k1, &out);
    CHECK(st == BL_ERR_ARG && strstr(bl_error(), "reads constant tensor"),
          "a relu reading a constant: %s", bl_error());
    st = bl_net_const(&net, 0, 1, 6, c6, &out);
    CHECK(st == BL_ERR_ARG && strstr(bl_error(), "constant of shape (0, 1, 6)"),
          "empty constant: %s", bl_error());
    CHECK(bl_net_set_outputs(&net, &k1, 1) == BL_ERR_ARG && strstr(bl_error(), "a constant"),
          "a constant as the output: %s", bl_error());
    CHECK(bl_net_eltwise(&net, "ok", BL_ELT_MUL, a, k1, &b) == BL_OK, "x * c: %s", bl_error());
    bl_net_free(&net);
    /* the last tensor a constant: the outputs must be declared */
    CHECK(bl_net_init(&net, 1, 1, 6, 2) == BL_OK && bl_net_relu(&net, "r", 0, &a) == BL_OK &&
              bl_net_const(&net, 1, 1, 6, c6, &k1) == BL_OK,
          "init 2");
    CHECK(bl_net_finalize(&net) == BL_ERR_ARG && strstr(bl_error(), "declare the outputs"),
          "last tensor a constant: %s", bl_error());
    bl_net_free(&net);
}

int main(int argc, char **argv)
{
    bl_safetensors st;
    if (st_fixture_open(argc, argv, "eltwise.safetensors", "test_eltwise", &st)) return 1;
    bl_elt_op ops[32];
    const int n = read_ops(bl_st_meta(&st, "cases"), ops, 32);
    CHECK(n >= 10, "fixture cases: %d", n);
    for (int k = 0; k < n; k++) run_case(&st, k, ops[k]);
    bl_st_free(&st);
    shared_reads();
    many_inputs();
    refusals();
    return check_done("test_eltwise");
}
