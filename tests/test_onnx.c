/* ONNX import against PyTorch (fixtures from tools/gen_onnx_fixtures.py, tests/fixtures/onnx):
 * each model built on the engine, its outputs on the shared input against PyTorch's within 1e-4
 * of the largest |output|, fused inference and the plain forward with population statistics
 * alike; its BN parameters found under the initializers' names. Bad files refused by name. */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "bnlab/bnlab.h"
#include "check.h"
#include "st_fixture.h"

static char dir[400] = "tests/fixtures/onnx";

/* the shared input, normalized as the fixture's metadata says: (n, 3, 32, 32) NCHW -> NHWC */
static float *load_inputs(const bl_safetensors *ref, int *n, int *h, int *w, int *c)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/inputs.npy", dir);
    bl_npy a;
    bl_status st = bl_npy_read(path, &a);
    CHECK(st == BL_OK && a.type == BL_NPY_U8 && a.ndim == 4, "inputs.npy: %s", bl_error());
    if (st) return NULL;
    *n = (int)a.shape[0], *c = (int)a.shape[1], *h = (int)a.shape[2], *w = (int)a.shape[3];
    float mean[4] = {0}, sd[4] = {1, 1, 1, 1};
    sscanf(bl_st_meta(ref, "mean"), "%f,%f,%f", &mean[0], &mean[1], &mean[2]);
    sscanf(bl_st_meta(ref, "std"), "%f,%f,%f", &sd[0], &sd[1], &sd[2]);
    float *x = malloc(sizeof(float) * a.count);
    for (int i = 0; i < *n; i++)
        for (int ch = 0; ch < *c; ch++)
            for (int y = 0; y < *h; y++)
                for (int xx = 0; xx < *w; xx++) {
                    const uint8_t v = a.u8[(((size_t)i * *c + ch) * *h + y) * *w + xx];
                    x[(((size_t)i * *h + y) * *w + xx) * *c + ch] = (v / 255.0f - mean[ch]) / sd[ch];
                }
    bl_npy_free(&a);
    return x;
}

#ifdef BL_TEST_PROTOBUF
#include "onnx.pb-c.h"

static Onnx__ModelProto *parse(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    Onnx__ModelProto *m = NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n)
        m = onnx__model_proto__unpack(NULL, (size_t)n, buf);
    fclose(f);
    free(buf);
    return m;
}

/* the message's encoding, for comparing two messages field by field */
static int same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    const size_t na = protobuf_c_message_get_packed_size(a), nb = protobuf_c_message_get_packed_size(b);
    if (na != nb) return 0;
    uint8_t *pa = malloc(na + 1), *pb = malloc(nb + 1);
    protobuf_c_message_pack(a, pa), protobuf_c_message_pack(b, pb);
    const int same = !memcmp(pa, pb, na);
    free(pa), free(pb);
    return same;
}

static int is_bn_stat_input(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_node; i++)
        if (!strcmp(g->node[i]->op_type, "BatchNormalization"))
            for (size_t k = 3; k < 5 && k < g->node[i]->n_input; k++)
                if (!strcmp(g->node[i]->input[k], name)) return 1;
    return 0;
}

/* The written model against the original, parsed: everything equal but the BN statistics'
 * data, the BN inputs repointed to split-off copies, those copies, and the "bnlab" entry. */
static void diff_models(const char *name, const char *orig, const char *written, int split)
{
    Onnx__ModelProto *a = parse(orig), *b = parse(written);
    CHECK(a && b, "%s: parse both models with protobuf-c", name);
    if (!a || !b) goto out;
    const Onnx__GraphProto *ga = a->graph, *gb = b->graph;
    int ok = a->ir_version == b->ir_version && a->n_opset_import == b->n_opset_import &&
             ga->n_node == gb->n_node && ga->n_input == gb->n_input && ga->n_output == gb->n_output;
    for (size_t i = 0; ok && i < a->n_opset_import; i++)
        ok &= same_msg(&a->opset_import[i]->base, &b->opset_import[i]->base);
    for (size_t i = 0; ok && i < ga->n_input; i++) ok &= same_msg(&ga->input[i]->base, &gb->input[i]->base);
    for (size_t i = 0; ok && i < ga->n_output; i++) ok &= same_msg(&ga->output[i]->base, &gb->output[i]->base);
    CHECK(ok, "%s: the model's header, inputs or outputs changed", name);
    int repointed = 0, nodes_ok = 1;
    for (size_t i = 0; nodes_ok && i < ga->n_node; i++) {
        const Onnx__NodeProto *p = ga->node[i], *q = gb->node[i];
        nodes_ok &= !strcmp(p->op_type, q->op_type) && p->n_input == q->n_input &&
                    p->n_output == q->n_output && p->n_attribute == q->n_attribute;
        for (size_t k = 0; nodes_ok && k < p->n_output; k++) nodes_ok &= !strcmp(p->output[k], q->output[k]);
        for (size_t k = 0; nodes_ok && k < p->n_attribute; k++)
            nodes_ok &= same_msg(&p->attribute[k]->base, &q->attribute[k]->base);
        for (size_t k = 0; nodes_ok && k < p->n_input; k++) {
            if (!strcmp(p->input[k], q->input[k])) continue;
            /* only a BN's statistics, to a copy of its own */
            nodes_ok &= !strcmp(p->op_type, "BatchNormalization") && (k == 3 || k == 4);
            repointed++;
        }
    }
    CHECK(nodes_ok && repointed == split, "%s: nodes changed beyond BN statistics (%d repointed, "
          "%d split off)", name, repointed, split);
    int inits_ok = gb->n_initializer == ga->n_initializer + (size_t)split, stats = 0;
    for (size_t i = 0; inits_ok && i < ga->n_initializer; i++) {
        const Onnx__TensorProto *p = ga->initializer[i], *q = NULL;
        for (size_t j = 0; j < gb->n_initializer && !q; j++)
            if (!strcmp(gb->initializer[j]->name, p->name)) q = gb->initializer[j];
        inits_ok &= q != NULL;
        if (!q) break;
        if (is_bn_stat_input(gb, p->name)) { /* a statistic of its BN: same dims, new values */
            stats++;
            inits_ok &= p->n_dims == q->n_dims && p->dims[0] == q->dims[0];
        } else {
            inits_ok &= same_msg(&p->base, &q->base);
        }
    }
    CHECK(inits_ok, "%s: initializers other than BN statistics changed", name);
    int meta = 0;
    for (size_t i = 0; i < b->n_metadata_props; i++) meta += !strcmp(b->metadata_props[i]->key, "bnlab");
    CHECK(meta == 1, "%s: the 'bnlab' metadata entry (%d)", name, meta);
    printf("%s: parsed and diffed: %zu nodes, %d statistics in place and %d split off changed, "
           "nothing else\n", name, ga->n_node, stats, split);
out:
    if (a) onnx__model_proto__free_unpacked(a, NULL);
    if (b) onnx__model_proto__free_unpacked(b, NULL);
}
#endif

/* The re-estimated statistics written back: the patched model, built again, holds them exactly,
 * and every other parameter bit for bit as before; the safetensors of the statistics too. */
static void write_back(const char *name, const bl_onnx *m, const bl_net *est)
{
    char out[] = "/tmp/bnlab_onnx_out_XXXXXX";
    int fd = mkstemp(out);
    close(fd);
    int split = 0, unnamed = 0;
    bl_status st = bl_onnx_save(m, est, out, "{\"estimator\":\"precise\"}", &split);
    CHECK(st == BL_OK, "%s: save: %s", name, bl_error());
    bl_onnx *back = NULL;
    bl_net a, b;
    if (!st) st = bl_onnx_load(out, &back);
    CHECK(st == BL_OK, "%s: the written model loads: %s", name, bl_error());
    if (!st) st = bl_onnx_build(back, 4, &b);
    if (!st) st = bl_onnx_build(m, 4, &a);
    CHECK(st == BL_OK, "%s: the written model builds: %s", name, bl_error());
    if (!st) {
        int same = 1, stats = 0, changed = 0;
        for (int i = 0; i < bl_net_param_count(est); i++) {
            const bl_param *p = bl_net_param_at(est, i), *q = bl_net_param_at(&b, i),
                           *o = bl_net_param_at(&a, i);
            if (p->kind == BL_P_COUNT) continue;
            const int is_stat = p->kind == BL_P_BUFFER;
            /* the parameters are declared in the same order: names agree but for split-offs */
            same &= q && q->count == p->count;
            if (!q || q->count != p->count) continue;
            if (is_stat) {
                stats++;
                same &= !memcmp(q->data, p->data, sizeof(float) * p->count);
                changed += memcmp(o->data, p->data, sizeof(float) * p->count) != 0;
            } else {
                same &= !strcmp(q->name, p->name) &&
                        !memcmp(q->data, o->data, sizeof(float) * p->count);
            }
        }
        CHECK(same && stats == 2 * bl_net_bn_count(est) && changed > 0,
              "%s: written back: %d statistics (%d changed), the rest identical: %d", name, stats,
              changed, same);
        printf("%s: written back, %d statistics (%d split off), every other parameter identical\n",
               name, stats, split);
        bl_net_free(&a), bl_net_free(&b);
    }
    bl_onnx_free(back);
#ifdef BL_TEST_PROTOBUF
    if (!st) diff_models(name, bl_onnx_path(m), out, split);
#endif
    char sf[] = "/tmp/bnlab_onnx_stats_XXXXXX";
    fd = mkstemp(sf);
    close(fd);
    st = bl_onnx_save_stats(m, est, sf, NULL, &unnamed);
    bl_safetensors s;
    if (!st) st = bl_st_read(sf, &s);
    CHECK(st == BL_OK && s.n == 2 * bl_net_bn_count(est), "%s: --save-stats: %s (%d tensors)",
          name, bl_error(), st ? 0 : s.n);
    if (!st) bl_st_free(&s);
    remove(out), remove(sf);
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) free(buf), buf = NULL;
    fclose(f);
    *n = buf ? (size_t)len : 0;
    return buf;
}

/* Where the statistics are each BN's own float32 raw data, the file's bytes are kept: the model
 * written back with its own statistics is the input byte for byte plus one metadata_props entry
 * at the end (encoded here by hand), and writing that output again replaces the entry instead of
 * adding a second. The input gets a second copy of its ir_version field at the end first (valid
 * protobuf, the same value), which a repack by protobuf-c would drop: an exporter's field order
 * is what protobuf-c writes too, so without it a repack would pass. `in_place` 0: a model that
 * must be repacked (shared statistics). */
static void splice_check(const char *name, const bl_onnx *orig, int in_place)
{
    size_t n0 = 0, n1 = 0, n2 = 0;
    uint8_t *b0 = slurp(bl_onnx_path(orig), &n0), *b1 = NULL, *b2 = NULL;
    CHECK(b0 && n0 > 2 && b0[0] == 0x08 && b0[1] < 0x80, "%s: the file starts with ir_version", name);
    if (!b0 || n0 < 2 || b0[0] != 0x08) return free(b0);
    char v0[] = "/tmp/bnlab_splice0_XXXXXX", o1[] = "/tmp/bnlab_splice1_XXXXXX",
         o2[] = "/tmp/bnlab_splice2_XXXXXX";
    close(mkstemp(v0)), close(mkstemp(o1)), close(mkstemp(o2));
    uint8_t *tmp = realloc(b0, n0 + 2);
    if (tmp) b0 = tmp, b0[n0] = 0x08, b0[n0 + 1] = b0[1], n0 += 2;
    FILE *vf = fopen(v0, "wb");
    if (vf) fwrite(b0, 1, n0, vf), fclose(vf);
    bl_onnx *m = NULL;
    bl_net net;
    bl_status st = bl_onnx_load(v0, &m);
    if (!st) st = bl_onnx_build(m, 4, &net);
    CHECK(st == BL_OK, "%s: build: %s", name, bl_error());
    if (st) return bl_onnx_free(m), free(b0), (void)remove(v0);
    int split = 0;
    st = bl_onnx_save(m, &net, o1, "{\"run\":1}", &split);
    CHECK(st == BL_OK && b0, "%s: save: %s", name, bl_error());
    bl_net_free(&net);
    bl_onnx *back = NULL;
    if (!st) st = bl_onnx_load(o1, &back);
    if (!st) st = bl_onnx_build(back, 4, &net);
    if (!st) st = bl_onnx_save(back, &net, o2, "{\"run\":22}", &split), bl_net_free(&net);
    CHECK(st == BL_OK, "%s: written again: %s", name, bl_error());
    if (!st) b1 = slurp(o1, &n1), b2 = slurp(o2, &n2);
    if (b0 && b1 && b2) {
        const char *rec = "{\"run\":22}";
        const size_t rl = strlen(rec), el = 2 + 5 + 2 + rl;
        uint8_t tail[64] = {0x72, (uint8_t)el, 0x0a, 5, 'b', 'n', 'l', 'a', 'b', 0x12, (uint8_t)rl};
        memcpy(tail + 11, rec, rl);
        const int kept1 = n1 > n0 && !memcmp(b0, b1, n0);
        const int kept2 = n2 == n0 + 2 + el && !memcmp(b0, b2, n0) && !memcmp(b2 + n0, tail, 2 + el);
        if (in_place)
            CHECK(kept1 && kept2, "%s: not spliced in place (%zu -> %zu -> %zu bytes, kept %d %d)",
                  name, n0, n1, n2, kept1, kept2);
        else
            CHECK(!kept1, "%s: shared statistics, yet the file's bytes were kept", name);
        printf("%s: written back %s: %zu -> %zu bytes, again %zu\n", name,
               kept1 && kept2 ? "in place, the file's bytes kept" : "repacked", n0, n1, n2);
    }
    free(b0), free(b1), free(b2);
    bl_onnx_free(back), bl_onnx_free(m);
    remove(v0), remove(o1), remove(o2);
}

/* bnlab fold: the folded model (read back) gives the unfolded net's outputs within 1e-4 of the
 * largest |output|, with as many BN nodes as were kept; on crafted_fold the starved channels per
 * folded layer are the generator's numpy count and the BN whose Conv output is also read by an
 * Add is kept. x: n images (NHWC, normalized). */
static void fold_check(const char *name, const bl_onnx *m, const bl_safetensors *ref,
                       const float *x, int n, int h, int w, int c)
{
    bl_net net, back_net;
    bl_onnx *back = NULL;
    static bl_fold_report r;
    char out[] = "/tmp/bnlab_fold_XXXXXX";
    close(mkstemp(out));
    bl_status st = bl_onnx_build(m, 16, &net);
    if (!st) st = bl_onnx_fold(m, &net, out, NULL, &r);
    CHECK(st == BL_OK, "%s: fold: %s", name, bl_error());
    if (st) return;
    st = bl_onnx_load(out, &back);
    if (!st) st = bl_onnx_build(back, 16, &back_net);
    CHECK(st == BL_OK, "%s: the folded model builds: %s", name, bl_error());
    if (!st) {
        const int K = bl_net_classes(&net);
        float *y1 = calloc((size_t)n * K, sizeof(float)), *y2 = calloc((size_t)n * K, sizeof(float));
        for (int i = 0; i < n && !st; i += 16) {
            const int nb = n - i < 16 ? n - i : 16;
            const float *xi = x + (size_t)i * h * w * c;
            if (!(st = bl_net_infer(&net, xi, nb)))
                memcpy(y1 + (size_t)i * K, bl_net_tensor_at(&net, bl_net_output(&net, 0))->data,
                       sizeof(float) * nb * K);
            if (!st && !(st = bl_net_infer(&back_net, xi, nb)))
                memcpy(y2 + (size_t)i * K,
                       bl_net_tensor_at(&back_net, bl_net_output(&back_net, 0))->data,
                       sizeof(float) * nb * K);
        }
        const double d = worst_rel(y2, y1, (size_t)n * K);
        CHECK(st == BL_OK && d <= 1e-4 && bl_net_classes(&back_net) == K,
              "%s: folded outputs %.3g from the unfolded: %s", name, d, bl_error());
        CHECK(bl_onnx_bn_count(back) == r.kept && r.folded + r.kept == bl_onnx_bn_count(m),
              "%s: %d BN folded, %d kept, %d left in the file of %d", name, r.folded, r.kept,
              bl_onnx_bn_count(back), bl_onnx_bn_count(m));
        printf("%s: fold: %d BN folded, %d kept, outputs within %.2g; %d of %d channels under "
               "4 bits\n", name, r.folded, r.kept, d, r.starved, r.channels);
        free(y1), free(y2);
        bl_net_free(&back_net);
    }
    const char *want = bl_st_meta(ref, "fold_starved");
    if (want) {
        char got[64] = "";
        for (int k = 0; k < r.folded; k++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", k ? "," : "", r.row[k].starved);
        CHECK(!strcmp(got, want) && r.kept == 1 && strstr(r.kept_why[0], "also read"),
              "%s: starved channels %s, numpy %s; kept %d (%s)", name, got, want, r.kept,
              r.kept ? r.kept_why[0] : "");
    }
    bl_net_free(&net);
    bl_onnx_free(back);
    remove(out);
}

/* PreciseBN of the ONNX net over the shared input in file order, batches of 16, against
 * PyTorch's pooled (or layer-by-layer) statistics: per channel |mean difference| / sd and
 * |variance difference| / variance, the worst over every BN layer. */
static void precise_vs_torch(const char *name, const bl_onnx *m, const bl_safetensors *ref,
                             int sequential)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/inputs.npy", dir);
    bl_npy a;
    bl_dataset d;
    bl_status st = bl_npy_read(path, &a);
    if (!st) st = bl_dataset_from_npy(&a, NULL, path, &d);
    bl_npy_free(&a);
    CHECK(st == BL_OK, "%s: the input as a dataset: %s", name, bl_error());
    if (st) return;
    bl_net net;
    st = bl_onnx_build(m, 16, &net);
    CHECK(st == BL_OK, "%s: build: %s", name, bl_error());
    if (st) {
        bl_dataset_free(&d);
        return;
    }
    bl_precise_cfg c;
    bl_precise_defaults(&c);
    c.samples = d.n, c.batch = 16, c.augment = 0, c.in_order = 1, c.sequential = sequential;
    c.recipe.channels = d.c, c.recipe.pad = 0, c.recipe.flip = 0;
    for (int k = 0; k < 3; k++) {
        float mv[3], sv[3];
        sscanf(bl_st_meta(ref, "mean"), "%f,%f,%f", &mv[0], &mv[1], &mv[2]);
        sscanf(bl_st_meta(ref, "std"), "%f,%f,%f", &sv[0], &sv[1], &sv[2]);
        c.recipe.mean[k] = mv[k], c.recipe.std[k] = sv[k];
    }
    bl_precise_report r;
    st = bl_precise(&net, &d, &c, &r);
    CHECK(st == BL_OK, "%s: precise: %s", name, bl_error());
    double worst_mean = 0, worst_var = 0;
    int layers = 0;
    char where[200] = "";
    for (int i = 0; !st && i < bl_net_param_count(&net); i++) {
        const bl_param *p = bl_net_param_at(&net, i);
        const size_t len = strlen(p->name);
        if (p->kind != BL_P_BUFFER || len < 13 || strcmp(p->name + len - 13, ".running_mean")) continue;
        char key[160], vkey[160];
        snprintf(key, sizeof key, "%s.%s", sequential ? "sequential" : "pooled", p->name);
        snprintf(vkey, sizeof vkey, "%s.%.*s.running_var", sequential ? "sequential" : "pooled",
                 (int)len - 13, p->name);
        const bl_param *pv = NULL;
        char vname[128];
        snprintf(vname, sizeof vname, "%.*s.running_var", (int)len - 13, p->name);
        pv = bl_net_param(&net, vname);
        float *mu = st_get(ref, key, p->count), *var = st_get(ref, vkey, p->count);
        for (size_t ch = 0; pv && ch < p->count; ch++) {
            worst_mean = fmax(worst_mean, fabs(p->data[ch] - mu[ch]) / sqrt(var[ch]));
            const double dv = fabs(pv->data[ch] - var[ch]) / var[ch];
            if (dv > worst_var)
                worst_var = dv, snprintf(where, sizeof where, "%s[%zu], variance %.3g", pv->name,
                                         ch, var[ch]);
        }
        layers += pv != NULL;
        free(mu), free(var);
    }
    CHECK(layers == bl_net_bn_count(&net), "%s: %d BN layers compared of %d", name, layers,
          bl_net_bn_count(&net));
    /* the bar: 1e-5, or twice what PyTorch's own float32 forward reaches against its float64
     * reference on this model (a deep one's last layers lose more to float32 rounding) */
    const char *tag = sequential ? "sequential" : "pooled";
    char km[64], kv[64];
    snprintf(km, sizeof km, "f32_%s_mean", tag), snprintf(kv, sizeof kv, "f32_%s_var", tag);
    const char *fm = bl_st_meta(ref, km), *fv = bl_st_meta(ref, kv);
    const double t32m = fm ? atof(fm) : 0, t32v = fv ? atof(fv) : 0;
    const double bar_m = fmax(1e-5, 2 * t32m), bar_v = fmax(1e-5, 2 * t32v);
    CHECK(worst_mean <= bar_m && worst_var <= bar_v, "%s: %s PreciseBN vs torch: mean %.3g sd, "
          "variance %.3g (at %s); bars %.3g and %.3g", name, tag, worst_mean, worst_var, where,
          bar_m, bar_v);
    printf("%s: %s PreciseBN within %.2g sd (means) and %.2g (variances) of PyTorch's float64, "
           "%d layers (PyTorch's float32: %.2g and %.2g)\n", name, tag, worst_mean, worst_var,
           layers, t32m, t32v);
    if (!sequential) write_back(name, m, &net);
    bl_net_free(&net);
    bl_dataset_free(&d);
}

/* refname: whose references (a model exported with BN folded has its twin's outputs) */
static void model(const char *name, const char *refname)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.ref.safetensors", dir, refname);
    bl_safetensors ref;
    bl_status st = bl_st_read(path, &ref);
    CHECK(st == BL_OK, "%s", bl_error());
    if (st) return;
    int n = 0, h = 0, w = 0, c = 0;
    float *x = load_inputs(&ref, &n, &h, &w, &c);
    snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
    bl_onnx *m = NULL;
    st = bl_onnx_load(path, &m);
    CHECK(st == BL_OK, "load %s: %s", name, bl_error());
    int mc = 0, mh = 0, mw = 0;
    if (!st) st = bl_onnx_input_shape(m, &mc, &mh, &mw);
    CHECK(st == BL_OK && mc == c && mh == h && mw == w, "%s: input shape %d,%d,%d: %s", name, mc,
          mh, mw, bl_error());
    const int B = 16;
    bl_net net;
    if (!st) st = bl_onnx_build(m, B, &net);
    CHECK(st == BL_OK, "build %s: %s", name, bl_error());
    if (!st && x) {
        const bl_st_entry *e = bl_st_find(&ref, "logits");
        const int K = e ? (int)e->shape[1] : 0;
        float *want = st_get(&ref, "logits", (size_t)n * K);
        float *got = calloc((size_t)n * K, sizeof(float)), *plain = calloc((size_t)n * K, sizeof(float));
        CHECK(bl_net_classes(&net) == K && bl_net_bn_count(&net) == bl_onnx_bn_count(m),
              "%s: %d outputs (torch %d), %d BN layers (graph %d)", name, bl_net_classes(&net), K,
              bl_net_bn_count(&net), bl_onnx_bn_count(m));
        const bl_tensor *out = bl_net_tensor_at(&net, bl_net_output(&net, 0));
        bl_ctx pop = bl_ctx_all(BL_BN_POPULATION, NULL);
        for (int i = 0; i < n && !st; i += B) {
            const int nb = n - i < B ? n - i : B;
            st = bl_net_infer(&net, x + (size_t)i * h * w * c, nb);
            if (!st) memcpy(got + (size_t)i * K, out->data, sizeof(float) * nb * K);
            if (!st) st = bl_net_forward(&net, &pop, x + (size_t)i * h * w * c, nb);
            if (!st) memcpy(plain + (size_t)i * K, out->data, sizeof(float) * nb * K);
        }
        CHECK(st == BL_OK, "%s: forward: %s", name, bl_error());
        CHECK(worst_rel(got, want, (size_t)n * K) <= 1e-4, "%s: fused inference vs torch %.3g",
              name, worst_rel(got, want, (size_t)n * K));
        CHECK(worst_rel(plain, want, (size_t)n * K) <= 1e-4, "%s: plain forward vs torch %.3g",
              name, worst_rel(plain, want, (size_t)n * K));
        printf("%s: %d BN layers, outputs within %.2g (fused) and %.2g (plain) of PyTorch's\n",
               name, bl_net_bn_count(&net), worst_rel(got, want, (size_t)n * K),
               worst_rel(plain, want, (size_t)n * K));
        free(want), free(got), free(plain);
        bl_net_free(&net);
        const char *pr = bl_st_meta(&ref, "precise");
        if (bl_onnx_bn_count(m)) {
            splice_check(name, m, strcmp(name, "plain_identity") && strcmp(name, "crafted_twoslot"));
            fold_check(name, m, &ref, x, n, h, w, c);
        }
        if ((!pr || strcmp(pr, "0")) && bl_onnx_bn_count(m)) { /* crafted graphs: outputs only */
            precise_vs_torch(name, m, &ref, 0);
            precise_vs_torch(name, m, &ref, 1);
        }
    }
    bl_onnx_free(m);
    free(x);
    bl_st_free(&ref);
}

/* One BN reading one initializer as scale, mean and variance: three parameters, so PreciseBN
 * changes the statistics and not the scale; the written model (the two statistics split off)
 * gives the estimating net's outputs bit for bit. (Once the three were one parameter: the model
 * evaluated right, but wrote the stale statistics back.) */
/* crafted_twoslot's reference and the shared inputs normalized (NULL when the reference does not
 * read: the failure is counted) */
static float *twoslot_ref(bl_safetensors *ref, int *n, int *h, int *w, int *c)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/crafted_twoslot.ref.safetensors", dir);
    if (bl_st_read(path, ref)) {
        CHECK(0, "%s", bl_error());
        return NULL;
    }
    float *x = load_inputs(ref, n, h, w, c);
    if (!x) bl_st_free(ref);
    return x;
}

static void two_slots(void)
{
    char path[1024];
    bl_safetensors ref;
    int n = 0, h = 0, w = 0, c = 0;
    float *x = twoslot_ref(&ref, &n, &h, &w, &c);
    if (!x) return;
    snprintf(path, sizeof path, "%s/crafted_twoslot.onnx", dir);
    bl_onnx *m = NULL, *back = NULL;
    bl_net net, net2;
    bl_status st = bl_onnx_load(path, &m);
    if (!st) st = bl_onnx_build(m, 16, &net);
    CHECK(st == BL_OK && x, "twoslot: %s", bl_error());
    if (st || !x) return free(x), bl_onnx_free(m), bl_st_free(&ref);
    /* PreciseBN over the 64 inputs, as a dataset (NHWC floats, already normalized) */
    bl_dataset d = {0};
    d.n = n, d.h = h, d.w = w, d.c = c, d.values = x;
    bl_precise_cfg pc;
    bl_precise_defaults(&pc);
    pc.samples = n, pc.batch = 16, pc.augment = 0, pc.in_order = 1;
    pc.recipe.channels = c, pc.recipe.pad = 0, pc.recipe.flip = 0;
    for (int k = 0; k < 3; k++) pc.recipe.mean[k] = 0, pc.recipe.std[k] = 1;
    bl_precise_report r;
    st = bl_precise(&net, &d, &pc, &r);
    CHECK(st == BL_OK, "twoslot: precise: %s", bl_error());
    const bl_bn *bn = st ? NULL : bl_net_bn_at(&net, 0);
    float *mu = st_get(&ref, "pooled_mean", 6), *var = st_get(&ref, "pooled_var", 6);
    double wm = 0, wv = 0;
    for (int ch = 0; bn && ch < 6; ch++) {
        wm = fmax(wm, fabs(bn->pop_mean[ch] - mu[ch]) / sqrt(var[ch]));
        wv = fmax(wv, fabs(bn->pop_var[ch] - var[ch]) / var[ch]);
    }
    CHECK(bn && wm <= 1e-5 && wv <= 1e-5, "twoslot: PreciseBN vs float64: %.3g, %.3g", wm, wv);
    const bl_param *scale = bl_net_param(&net, "s");
    float s0[6] = {0};
    if (scale) memcpy(s0, scale->data, sizeof s0);
    CHECK(scale && scale->count == 6 && bn && memcmp(bn->pop_mean, s0, sizeof s0),
          "twoslot: the scale is not its own parameter");
    char out[] = "/tmp/bnlab_twoslot_XXXXXX";
    close(mkstemp(out));
    int split = 0;
    float *y1 = calloc((size_t)n * 4, sizeof(float)), *y2 = calloc((size_t)n * 4, sizeof(float));
    if (!st) st = bl_onnx_save(m, &net, out, NULL, &split);
    if (!st) st = bl_onnx_load(out, &back);
    if (!st) st = bl_onnx_build(back, 16, &net2);
    CHECK(st == BL_OK && split == 2, "twoslot: written back (%d split off): %s", split, bl_error());
    for (int i = 0; !st && i < n; i += 16) {
        const bl_tensor *o1 = bl_net_tensor_at(&net, bl_net_output(&net, 0));
        const bl_tensor *o2 = bl_net_tensor_at(&net2, bl_net_output(&net2, 0));
        if ((st = bl_net_infer(&net, x + (size_t)i * h * w * c, 16))) break;
        memcpy(y1 + (size_t)i * 4, o1->data, sizeof(float) * 16 * 4);
        if ((st = bl_net_infer(&net2, x + (size_t)i * h * w * c, 16))) break;
        memcpy(y2 + (size_t)i * 4, o2->data, sizeof(float) * 16 * 4);
    }
    CHECK(st == BL_OK && !memcmp(y1, y2, sizeof(float) * (size_t)n * 4),
          "twoslot: the written model's outputs differ from the estimating net's: %s", bl_error());
    printf("twoslot: PreciseBN within %.2g sd and %.2g of float64, written back with %d split "
           "off, the same outputs\n", wm, wv, split);
    if (back) bl_net_free(&net2);
    bl_net_free(&net);
    bl_onnx_free(m), bl_onnx_free(back);
    free(y1), free(y2), free(mu), free(var), free(x);
    bl_st_free(&ref);
    remove(out);
}

static double online_errs[8];
static int online_batches;
static void online_stream(void *ctx, long seen, double err)
{
    (void)ctx, (void)seen;
    if (online_batches < 8) online_errs[online_batches] = err;
    online_batches++;
}

/* bnlab adapt's formulas on crafted_twoslot against the generator's float64 reference (labels %
 * 4): the source prior N = 32 mixed with the pool's statistics (the first 32 images), and the
 * online mode over the other 32 in batches of 8 - its final statistics and the error after each
 * batch. */
static void adapt_formulas(void)
{
    char path[1024];
    bl_safetensors ref;
    int n = 0, h = 0, w = 0, c = 0;
    float *x = twoslot_ref(&ref, &n, &h, &w, &c);
    if (!x) return;
    snprintf(path, sizeof path, "%s/labels.npy", dir);
    bl_npy lab;
    bl_status st = bl_npy_read(path, &lab);
    CHECK(st == BL_OK && lab.type == BL_NPY_I64 && (int)lab.count == n, "labels.npy: %s", bl_error());
    uint8_t *y = malloc((size_t)n);
    for (int i = 0; !st && i < n; i++) y[i] = (uint8_t)(lab.i64[i] % 4);
    if (!st) bl_npy_free(&lab);
    snprintf(path, sizeof path, "%s/crafted_twoslot.onnx", dir);
    bl_onnx *m = NULL;
    if (!st) st = bl_onnx_load(path, &m);
    bl_dataset d = {0};
    d.n = n, d.h = h, d.w = w, d.c = c, d.values = x, d.labels = y;
    bl_adapt_cfg cfg;
    bl_adapt_defaults(&cfg);
    cfg.recipe.channels = c, cfg.recipe.pad = 0, cfg.recipe.flip = 0;
    for (int k = 0; k < 3; k++) cfg.recipe.mean[k] = 0, cfg.recipe.std[k] = 1;
    cfg.prior = 32;
    static const char *names[2][3] = {{"prior_mean", "prior_var", "prior"},
                                      {"online_mean", "online_var", "online"}};
    for (int mode = 0; mode < 2 && !st; mode++) {
        bl_net net;
        if ((st = bl_onnx_build(m, 32, &net))) break;
        cfg.online = mode;
        cfg.samples = 32, cfg.batch = mode ? 8 : 32;
        cfg.stream = mode ? online_stream : NULL;
        online_batches = 0;
        static bl_adapt_report r;
        st = bl_adapt(&net, &d, &cfg, 1, &r);
        CHECK(st == BL_OK, "adapt %s: %s", names[mode][2], bl_error());
        float *mu = st_get(&ref, names[mode][0], 6), *var = st_get(&ref, names[mode][1], 6);
        const bl_bn *bn = bl_net_bn_at(&net, 0);
        double wm = 0, wv = 0;
        for (int ch = 0; !st && ch < 6; ch++) {
            wm = fmax(wm, fabs(bn->pop_mean[ch] - mu[ch]) / sqrt(var[ch]));
            wv = fmax(wv, fabs(bn->pop_var[ch] - var[ch]) / var[ch]);
        }
        CHECK(!st && wm <= 1e-5 && wv <= 1e-5, "adapt %s vs float64: mean %.3g sd, var %.3g",
              names[mode][2], wm, wv);
        if (mode) {
            float *errs = st_get(&ref, "online_err", 4);
            int same = online_batches == 4;
            for (int b = 0; same && b < 4; b++) same = fabs(online_errs[b] - errs[b]) < 1e-4; /* float32 of the reference */
            CHECK(same && fabs(r.err_online - errs[3]) < 1e-4,
                  "adapt online: %d batches, errors %.2f %.2f %.2f %.2f, reference %.2f %.2f "
                  "%.2f %.2f", online_batches, online_errs[0], online_errs[1], online_errs[2],
                  online_errs[3], errs[0], errs[1], errs[2], errs[3]);
            free(errs);
        }
        printf("adapt %s: statistics within %.2g sd and %.2g of the float64 formulas%s\n",
               names[mode][2], wm, wv, mode ? ", the stream's errors equal" : "");
        free(mu), free(var);
        bl_net_free(&net);
    }
    CHECK(st == BL_OK, "adapt formulas: %s", bl_error());
    bl_onnx_free(m);
    free(x), free(y);
    bl_st_free(&ref);
}

/* bad files: each refused with the thing named */
/* prepends n bytes to buf[*pos, ...) */
static void prepend(uint8_t *buf, size_t *pos, const void *b, size_t n)
{
    *pos -= n;
    memcpy(buf + *pos, b, n);
}

/* prepends the key and length of field `num` (< 16) whose payload is buf[*pos, end) */
static void prepend_len(uint8_t *buf, size_t *pos, unsigned num, size_t end)
{
    uint8_t v[12];
    size_t n = 0, len = end - *pos;
    v[n++] = (uint8_t)(num << 3 | 2);
    for (; len >= 0x80; len >>= 7) v[n++] = (uint8_t)(len | 0x80);
    v[n++] = (uint8_t)len;
    prepend(buf, pos, v, n);
}

/* A model whose graph holds an If node whose attribute holds a graph with an If node ... `depth`
 * graphs deep, written backwards so each length is known (every message ends at the buffer's
 * end). protobuf-c alone would recurse once per level, without a limit. */
static void nested_graphs(const char *path, int depth)
{
    const size_t cap = (size_t)depth * 24 + 64;
    uint8_t *buf = malloc(cap);
    size_t pos = cap;
    static const uint8_t attr_head[] = {0x0a, 1, 'g', 0xa0, 0x01, 5}; /* name "g", type GRAPH */
    static const uint8_t node_head[] = {0x22, 2, 'I', 'f'};           /* op_type "If" */
    static const uint8_t model_head[] = {0x08, 7, 0x42, 4, 0x0a, 0, 0x10, 13}; /* IR 7, opset 13 */
    for (int k = 0; k < depth; k++) {
        prepend_len(buf, &pos, 6, cap); /* AttributeProto.g */
        prepend(buf, &pos, attr_head, sizeof attr_head);
        prepend_len(buf, &pos, 5, cap); /* NodeProto.attribute */
        prepend(buf, &pos, node_head, sizeof node_head);
        prepend_len(buf, &pos, 1, cap); /* GraphProto.node */
    }
    prepend_len(buf, &pos, 7, cap); /* ModelProto.graph */
    prepend(buf, &pos, model_head, sizeof model_head);
    FILE *f = fopen(path, "wb");
    if (f) fwrite(buf + pos, 1, cap - pos, f), fclose(f);
    free(buf);
}

static void refusals(void)
{
    char path[] = "/tmp/bnlab_onnx_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "wb");
    fputs("this is not a protobuf at all, not even close", f);
    fclose(f);
    bl_onnx *m;
    CHECK(bl_onnx_load(path, &m) == BL_ERR_FORMAT && strstr(bl_error(), "not an ONNX model"),
          "garbage: %s", bl_error());
    f = fopen(path, "wb");
    fclose(f);
    CHECK(bl_onnx_load(path, &m) == BL_ERR_FORMAT && strstr(bl_error(), "empty file"),
          "empty: %s", bl_error());
    /* a truncated model: the first half of a real one */
    char src[1024];
    snprintf(src, sizeof src, "%s/resnet18_w8.onnx", dir);
    FILE *in = fopen(src, "rb");
    f = fopen(path, "wb");
    char buf[4096];
    size_t got, total = 0;
    while (in && (got = fread(buf, 1, sizeof buf, in)) > 0 && total < 300000)
        fwrite(buf, 1, got, f), total += got;
    if (in) fclose(in);
    fclose(f);
    CHECK(bl_onnx_load(path, &m) == BL_ERR_FORMAT, "truncated: %s", bl_error());
    /* graphs nested 5000 deep (once a stack overflow in protobuf-c) are refused before parsing;
     * 20 deep (61 messages) parse and fail on the If node */
    nested_graphs(path, 5000);
    CHECK(bl_onnx_load(path, &m) == BL_ERR_FORMAT && strstr(bl_error(), "nested more than 64"),
          "nested 5000 deep: %s", bl_error());
    nested_graphs(path, 20);
    bl_status nst = bl_onnx_load(path, &m);
    CHECK(nst == BL_OK || !strstr(bl_error(), "nested"), "nested 20 deep: %s", bl_error());
    if (!nst) {
        bl_net nn;
        CHECK(bl_onnx_build(m, 1, &nn) != BL_OK, "a graph of If nodes builds");
        bl_onnx_free(m);
    }
    remove(path);
    CHECK(bl_onnx_load("/nonexistent/model.onnx", &m) == BL_ERR_IO &&
              strstr(bl_error(), "cannot open"), "missing: %s", bl_error());
    CHECK(bl_onnx_load("/tmp", &m) == BL_ERR_IO && strstr(bl_error(), "directory"),
          "directory: %s", bl_error());
    /* crafted malformed graphs (tools/gen_onnx_crafted.py): each refused, naming the thing */
    static const char *bad[][2] = {
        {"unsupported", "unsupported operator; bnlab supports Add"},
        {"cycle", "reads 'd', which no earlier node"},
        {"missing", "reads 'w2', which no earlier node"},
        {"shape", "group 1 with 3 input channels"},
        {"truncated", "claims 108 values and holds 25"},
        {"external", "external file"},
        {"nan", "holds NaN at element"},
        {"gather_rank", "more than 8 dimensions"},
        {"concat_dims", "inputs differ in dimension 0"},
        {"reshape_neg", "a constant of dimension -2"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        snprintf(src, sizeof src, "%s/bad_%s.onnx", dir, bad[k][0]);
        bl_net net;
        bl_status st = bl_onnx_load(src, &m);
        if (!st) {
            st = bl_onnx_build(m, 2, &net);
            if (!st) bl_net_free(&net);
            bl_onnx_free(m);
        }
        CHECK(st == BL_ERR_FORMAT && strstr(bl_error(), bad[k][1]), "bad_%s: %d '%s'", bad[k][0],
              st, bl_error());
    }
}

int main(int argc, char **argv)
{
    if (argc > 1) snprintf(dir, sizeof dir, "%s/onnx", argv[1]); /* the fixtures directory */
    bl_threads_set(2);
    static const char *models[] = {"resnet18_w8",         "mobilenet_v2_w02",
                                   "mobilenet_v3_small_w025", "efficientnet_b0_w025",
                                   "smallcat",            "plain_identity",
                                   "crafted_ops",         "crafted_opset7",
                                   "crafted_opset11",     "crafted_twoslot",
                                   "crafted_fold"};
    for (size_t k = 0; k < sizeof models / sizeof *models; k++) model(models[k], models[k]);
    model("smallcat_folded", "smallcat"); /* BN folded at export: the same outputs */
    two_slots();
    adapt_formulas();
    refusals();
    return check_done("test_onnx");
}
