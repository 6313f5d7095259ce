/* The layers imported graphs are built from, against PyTorch (fixture from
 * tools/gen_import_layers_fixture.py): the general convolution (asymmetric pads, strides,
 * dilations, groups, depthwise with a multiplier, bias), max and average pooling (pads,
 * dilation, ceil_mode, count_include_pad), the activations and the softmax; the gather (a flatten
 * in C, H, W order) and the concatenation against loops of their definitions; forward-only
 * layers refusing a backward by name; bad specs refused. */
#include <cjson/cJSON.h>

#include "bnlab/bnlab.h"
#include "bnlab/layer.h"
#include "check.h"
#include "st_fixture.h"

static int ival(const cJSON *o, const char *k, int i)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, i);
    return v ? v->valueint : 0;
}

/* Runs the one-layer net built by `make` on fixture case NAME and compares with NAME.y. */
static void one_case(const bl_safetensors *st, const cJSON *c)
{
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    const char *kind = cJSON_GetObjectItem(c, "kind")->valuestring;
    char key[64];
    snprintf(key, sizeof key, "%s.x", name);
    const bl_st_entry *ex = bl_st_find(st, key);
    snprintf(key, sizeof key, "%s.y", name);
    const bl_st_entry *ey = bl_st_find(st, key);
    CHECK(ex && ey && ex->ndim == 4 && ey->ndim == 4, "%s: fixture tensors", name);
    if (!ex || !ey) return;
    const int N = (int)ex->shape[0], H = (int)ex->shape[1], W = (int)ex->shape[2];
    const int C = (int)ex->shape[3];
    const size_t nx = (size_t)N * H * W * C;
    const size_t ny = (size_t)ey->shape[0] * ey->shape[1] * ey->shape[2] * ey->shape[3];
    float *x = st_get(st, ex->name, nx), *yref = st_get(st, ey->name, ny);
    bl_net net;
    int t = -1;
    bl_status rc = bl_net_init(&net, H, W, C, N);
    if (!rc && !strcmp(kind, "conv")) {
        bl_conv_spec s = {.cout = ival(c, "cout", 0),
                          .kh = ival(c, "k", 0),
                          .kw = ival(c, "k", 1),
                          .sh = ival(c, "stride", 0),
                          .sw = ival(c, "stride", 1),
                          .dh = ival(c, "dil", 0),
                          .dw = ival(c, "dil", 1),
                          .groups = ival(c, "groups", 0)};
        for (int k = 0; k < 4; k++) s.pad[k] = ival(c, "pads", k);
        const int bias = cJSON_IsTrue(cJSON_GetObjectItem(c, "bias"));
        char wn[64], bn[64];
        snprintf(wn, sizeof wn, "%s.w", name), snprintf(bn, sizeof bn, "%s.b", name);
        rc = bl_net_conv_general(&net, name, 0, &s, wn, bias ? bn : NULL, &t);
        if (!rc) rc = bl_net_finalize(&net);
        for (int i = 0; !rc && i < bl_net_param_count(&net); i++) {
            bl_param *p = bl_net_param_at(&net, i);
            float *v = st_get(st, p->name, p->count);
            bl_param_import(p, v, p->data);
            free(v);
        }
    } else if (!rc && !strcmp(kind, "pool")) {
        bl_pool_spec s = {.max = ival(c, "max", 0),
                          .kh = ival(c, "k", 0),
                          .kw = ival(c, "k", 1),
                          .sh = ival(c, "stride", 0),
                          .sw = ival(c, "stride", 1),
                          .dh = ival(c, "dil", 0),
                          .dw = ival(c, "dil", 1),
                          .ceil_mode = ival(c, "ceil", 0),
                          .count_include_pad = ival(c, "incl", 0)};
        for (int k = 0; k < 4; k++) s.pad[k] = ival(c, "pads", k);
        rc = bl_net_pool(&net, name, 0, &s, &t);
        if (!rc) rc = bl_net_finalize(&net);
    } else if (!rc) {
        const float a = (float)cJSON_GetObjectItem(c, "a")->valuedouble;
        const float b = (float)cJSON_GetObjectItem(c, "b")->valuedouble;
        /* one layer after an identity-free input: the activation of tensor 0 */
        if (!strcmp(name, "softmax"))
            rc = bl_net_softmax(&net, name, 0, &t);
        else {
            bl_unary_op op = !strcmp(name, "sigmoid")       ? BL_UNARY_SIGMOID
                             : !strcmp(name, "hardsigmoid") ? BL_UNARY_HARDSIGMOID
                             : !strcmp(name, "hardswish")   ? BL_UNARY_HARDSWISH
                             : !strcmp(name, "leaky_relu")  ? BL_UNARY_LEAKY_RELU
                                                            : BL_UNARY_CLIP;
            rc = bl_net_unary(&net, name, op, 0, a, b, &t);
        }
        if (!rc) rc = bl_net_finalize(&net);
    }
    CHECK(rc == BL_OK, "%s: build: %s", name, bl_error());
    if (!rc) {
        const bl_tensor *y = bl_net_tensor_at(&net, t);
        CHECK((size_t)N * bl_tsize(y) == ny && y->h == (int)ey->shape[1] &&
                  y->w == (int)ey->shape[2],
              "%s: output %dx%dx%d, torch %dx%dx%d", name, y->h, y->w, y->c, (int)ey->shape[1],
              (int)ey->shape[2], (int)ey->shape[3]);
        rc = bl_net_forward(&net, NULL, x, N);
        CHECK(rc == BL_OK, "%s: forward: %s", name, bl_error());
        if (!rc && (size_t)N * bl_tsize(y) == ny)
            CHECK(worst_rel(y->data, yref, ny) <= 2e-6, "%s: vs torch %.3g", name,
                  worst_rel(y->data, yref, ny));
        CHECK(bl_net_backward(&net, NULL) == BL_ERR_STATE && strstr(bl_error(), "no backward") &&
                  strstr(bl_error(), name),
              "%s: a backward is refused by name: %s", name, bl_error());
    }
    bl_net_free(&net);
    free(x), free(yref);
}

/* The gather as a flatten in C, H, W order, then the concatenation of a map with itself. */
static void gather_concat(void)
{
    enum { N = 2, H = 3, W = 2, C = 4, S = H * W * C };
    float x[N * S];
    for (int i = 0; i < N * S; i++) x[i] = (float)i;
    int map[S];
    for (int c = 0, k = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) map[k++] = (y * W + xx) * C + c;
    bl_net net;
    int f, cat;
    bl_status rc = bl_net_init(&net, H, W, C, N);
    if (!rc) rc = bl_net_gather(&net, "flatten", 0, 1, 1, S, map, &f);
    const int two[3] = {0, 0, 0};
    if (!rc) rc = bl_net_concat(&net, "cat", two, 3, &cat);
    if (!rc) rc = bl_net_set_outputs(&net, &cat, 1);
    if (!rc) rc = bl_net_finalize(&net);
    if (!rc) rc = bl_net_forward(&net, NULL, x, N);
    CHECK(rc == BL_OK, "gather and concat: %s", bl_error());
    if (rc) {
        bl_net_free(&net);
        return;
    }
    int ok = 1;
    const float *g = bl_net_tensor_at(&net, f)->data, *cc = bl_net_tensor_at(&net, cat)->data;
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    ok &= g[i * S + (c * H + y) * W + xx] == x[i * S + (y * W + xx) * C + c];
    CHECK(ok, "the gather is not the C, H, W flatten");
    ok = bl_net_tensor_at(&net, cat)->c == 3 * C;
    for (int p = 0; p < N * H * W; p++)
        for (int k = 0; k < 3 * C; k++) ok &= cc[p * 3 * C + k] == x[p * C + k % C];
    CHECK(ok, "the concatenation of three inputs");
    bl_net_free(&net);
    /* refusals */
    CHECK(bl_net_init(&net, H, W, C, N) == BL_OK, "init");
    map[3] = S;
    CHECK(bl_net_gather(&net, "g", 0, 1, 1, S, map, &f) == BL_ERR_ARG &&
              strstr(bl_error(), "outside the input"),
          "a map past the input: %s", bl_error());
    bl_conv_spec cs = {
        .cout = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .dh = 1, .dw = 1, .groups = 3};
    CHECK(bl_net_conv_general(&net, "c", 0, &cs, "w", NULL, &f) == BL_ERR_ARG &&
              strstr(bl_error(), "group 3"),
          "a group that divides nothing: %s", bl_error());
    cs.groups = 1, cs.kh = 9;
    CHECK(bl_net_conv_general(&net, "c", 0, &cs, "w", NULL, &f) == BL_ERR_ARG &&
              strstr(bl_error(), "larger than the padded input"),
          "a kernel too large: %s", bl_error());
    bl_pool_spec ps = {.max = 0, .kh = 2, .kw = 2, .sh = 1, .sw = 1, .dh = 2, .dw = 1};
    CHECK(bl_net_pool(&net, "p", 0, &ps, &f) == BL_ERR_ARG && strstr(bl_error(), "no dilations"),
          "average pooling with a dilation: %s", bl_error());
    CHECK(bl_net_unary(&net, "u", BL_UNARY_CLIP, 0, 2.0f, 1.0f, &f) == BL_ERR_ARG &&
              strstr(bl_error(), "min 2 above max 1"),
          "clip min > max: %s", bl_error());
    bl_net_free(&net);
}

int main(int argc, char **argv)
{
    bl_safetensors st;
    if (st_fixture_open(argc, argv, "import_layers.safetensors", "test_import_layers", &st))
        return 1;
    cJSON *cases = cJSON_Parse(bl_st_meta(&st, "cases"));
    CHECK(cJSON_GetArraySize(cases) >= 20, "fixture cases: %d", cJSON_GetArraySize(cases));
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) one_case(&st, c);
    cJSON_Delete(cases);
    bl_st_free(&st);
    gather_concat();
    return check_done("test_import_layers");
}
