/* BN folded into the Conv or Gemm before it, as exporters do before deployment: W' = W k and
 * b' = (b - mu) k + beta per output channel, k = gamma / sqrt(var + eps), with the statistics the
 * net holds (the file's, or re-estimated ones). A BN is folded only when it reads a Conv's or
 * Gemm's output that nothing else reads and whose weight is a constant; every other BN is kept
 * and named with the reason. Per folded layer the report counts the channels a symmetric
 * per-tensor int8 scale would starve: with s = max|W'| / 127 a channel's values map to integers
 * in [-q, q], q = round(max|W'_c| / s), which is 2q + 1 levels; fewer than 16 (4 bits) means
 * q <= 7 (docs/onnx.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnlab/train.h"
#include "onnx/onnx_impl.h"

/* the node that writes value v (NULL: a graph input or an initializer) */
static Onnx__NodeProto *producer(Onnx__GraphProto *g, const char *v)
{
    for (size_t i = 0; v && i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            if (g->node[i]->output[k] && !strcmp(g->node[i]->output[k], v)) return g->node[i];
    return NULL;
}

static const char *node_name(const Onnx__NodeProto *n)
{
    return n->name && n->name[0] ? n->name : n->n_output ? n->output[0] : "(unnamed)";
}

/* t's data replaced by count floats of the given dims (raw little-endian data) */
static bl_status set_tensor(Onnx__TensorProto *t, const float *v, size_t count,
                            const int64_t *dims, int rank)
{
    int64_t *d = bl_malloc(sizeof(int64_t) * (size_t)(rank ? rank : 1));
    if (!d) return bl_fail(BL_ERR_NOMEM, "out of memory");
    bl_status st = ox_set_floats(t, v, (int)count); /* clears every typed field, 1-D */
    if (st) return free(d), st;
    memcpy(d, dims, sizeof(int64_t) * (size_t)rank);
    free(t->dims);
    t->dims = d, t->n_dims = (size_t)rank;
    return BL_OK;
}

/* a name no value or initializer of g has yet: base + suffix, then base + suffix + _2, ... */
static void fresh_name(Onnx__GraphProto *g, const char *base, const char *suffix, char *out,
                       size_t len)
{
    snprintf(out, len, "%.100s%s", base, suffix);
    for (int q = 2; ox_find_init(g, out) || ox_readers(g, out) || producer(g, out); q++)
        snprintf(out, len, "%.100s%s_%d", base, suffix, q);
}

/* input k of node n set to name (the input list grown with empty names where needed) */
static bl_status set_input(Onnx__NodeProto *n, size_t k, const char *name)
{
    if (k >= n->n_input) {
        char **in = bl_malloc(sizeof(char *) * (k + 1));
        if (!in) return bl_fail(BL_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i <= k; i++) in[i] = i < n->n_input ? n->input[i] : NULL;
        for (size_t i = n->n_input; i <= k; i++)
            if (!(in[i] = bl_strdup(""))) {
                for (size_t j = n->n_input; j < i; j++) free(in[j]);
                free(in);
                return bl_fail(BL_ERR_NOMEM, "out of memory");
            }
        free(n->input);
        n->input = in, n->n_input = k + 1;
    }
    char *dup = bl_strdup(name);
    if (!dup) return bl_fail(BL_ERR_NOMEM, "out of memory");
    free(n->input[k]);
    n->input[k] = dup;
    return BL_OK;
}

/* A tensor for node input k of p: written in place when p alone reads its initializer, else as a
 * new initializer p is repointed to (the old one stays for its other readers). */
static bl_status write_input(Onnx__GraphProto *g, Onnx__NodeProto *p, size_t k, const char *suffix,
                             const float *v, size_t count, const int64_t *dims, int rank)
{
    const char *cur = k < p->n_input ? p->input[k] : "";
    Onnx__TensorProto *t = cur[0] ? ox_find_init(g, cur) : NULL;
    if (t && ox_readers(g, cur) == 1) return set_tensor(t, v, count, dims, rank);
    char nm[160];
    fresh_name(g, p->output[0], suffix, nm, sizeof nm);
    bl_status st = ox_add_init(g, nm, v, (int)count);
    if (!st) st = set_tensor(g->initializer[g->n_initializer - 1], v, count, dims, rank);
    return st ? st : set_input(p, k, nm);
}

static void keep(bl_fold_report *r, const Onnx__NodeProto *bn, const char *why)
{
    if (r->kept < BL_FOLD_MAX) {
        snprintf(r->kept_name[r->kept], sizeof r->kept_name[0], "%s", node_name(bn));
        snprintf(r->kept_why[r->kept], sizeof r->kept_why[0], "%s", why);
    }
    r->kept++;
}

/* One BN node (index i in the file's graph) folded into its producer; 1 when folded, 0 when
 * kept (the reason in the report), -1 on an error. */
static int fold_one(const bl_onnx *m, const bl_net *net, Onnx__ModelProto *mp, size_t i,
                    bl_fold_report *r, bl_status *st)
{
    Onnx__GraphProto *g = mp->graph;
    Onnx__NodeProto *bn = g->node[i];
    char why[160], names[4][96];
    ox_bn_names(m, (int)i, names);
    const bl_param *pp[4];
    for (int k = 0; k < 4; k++)
        if (!(pp[k] = bl_net_param(net, names[k]))) {
            *st = bl_fail(BL_ERR_STATE, "%s: the net has no parameter '%s'", m->path, names[k]);
            return -1;
        }
    const int C = (int)pp[0]->count;
    if (ox_attr_int(bn, "training_mode", 0)) return keep(r, bn, "training_mode 1"), 0;
    for (size_t k = 1; k < bn->n_output; k++)
        if (bn->output[k][0]) return keep(r, bn, "writes its running statistics as outputs"), 0;
    const char *x = bn->input[0];
    Onnx__NodeProto *p = producer(g, x);
    if (!p) return keep(r, bn, "reads a graph input, not a Conv or Gemm"), 0;
    const int conv = p->op_type && !strcmp(p->op_type, "Conv");
    if (!conv && !(p->op_type && !strcmp(p->op_type, "Gemm"))) {
        snprintf(why, sizeof why, "follows a %s, not a Conv or Gemm", p->op_type ? p->op_type : "?");
        return keep(r, bn, why), 0;
    }
    if (ox_readers(g, x) != 1 || p->n_output != 1) {
        snprintf(why, sizeof why, "the output of %s is also read elsewhere", node_name(p));
        return keep(r, bn, why), 0;
    }
    const char *wsrc = p->n_input > 1 ? ox_source_of(g, p->input[1]) : NULL;
    const Onnx__TensorProto *wt = wsrc ? ox_find_init(g, wsrc) : NULL;
    if (!wt) return keep(r, bn, "its Conv's or Gemm's weight is not an initializer"), 0;
    ox_const w = {0}, b = {0};
    if ((*st = ox_tensor_read(m, wt, wsrc, &w))) return -1;
    const int64_t trans_b = conv ? 0 : ox_attr_int(p, "transB", 0);
    const float beta_g = conv ? 1.0f : ox_attr_float(p, "beta", 1.0f);
    const int64_t out_c = conv ? (w.rank ? w.dims[0] : 0) : w.rank == 2 ? w.dims[trans_b ? 0 : 1] : 0;
    int ok = !w.is_int && out_c == C && (conv ? w.rank >= 3 : w.rank == 2) && (conv || beta_g != 0);
    const char *bsrc = p->n_input > 2 && p->input[2][0] ? ox_source_of(g, p->input[2]) : NULL;
    const Onnx__TensorProto *bt = bsrc ? ox_find_init(g, bsrc) : NULL;
    if (ok && p->n_input > 2 && p->input[2][0]) {
        ok = bt && !(*st = ox_tensor_read(m, bt, bsrc, &b)) && !b.is_int &&
             (b.count == (size_t)C) && (b.rank == 1 || (b.rank == 2 && b.dims[0] == 1));
        if (*st) return ox_const_free(&w), -1;
    }
    /* a new initializer under IR 3 would have to be listed among the graph's inputs too */
    const int needs_new = !bt || ox_readers(g, p->input[1]) > 1 || (bsrc && ox_readers(g, bsrc) > 1) ||
                          strcmp(wsrc, p->input[1]) || (bsrc && strcmp(bsrc, p->input[2]));
    if (ok && needs_new && mp->ir_version < 4) {
        ox_const_free(&w), ox_const_free(&b);
        return keep(r, bn, "IR 3 lists initializers among the inputs: re-export with opset >= 9"), 0;
    }
    if (!ok) {
        snprintf(why, sizeof why, "the weight or bias of %s does not fit its %d channels",
                 node_name(p), C);
        ox_const_free(&w), ox_const_free(&b);
        return keep(r, bn, why), 0;
    }
    const float eps = ox_attr_float(bn, "epsilon", 1e-5f);
    float *nb = bl_malloc(sizeof(float) * (size_t)C);
    double *kk = bl_malloc(sizeof(double) * 2 * (size_t)C); /* k, then each channel's range */
    if (!nb || !kk) {
        free(nb), free(kk), ox_const_free(&w), ox_const_free(&b);
        *st = bl_fail(BL_ERR_NOMEM, "out of memory");
        return -1;
    }
    int finite = 1;
    for (int c = 0; c < C; c++) {
        kk[c] = pp[0]->data[c] / sqrt((double)pp[3]->data[c] + eps);
        finite &= isfinite(kk[c]) && isfinite(pp[2]->data[c]) && isfinite(pp[1]->data[c]);
        /* Gemm: beta C' = (beta C - mu) k + beta_bn */
        const double b0 = b.count ? (double)b.f[c] * beta_g : 0;
        nb[c] = (float)(((b0 - pp[2]->data[c]) * kk[c] + pp[1]->data[c]) / beta_g);
    }
    if (!finite) {
        free(nb), free(kk), ox_const_free(&w), ox_const_free(&b);
        return keep(r, bn, "non-finite statistics or parameters: run bnlab precise first"), 0;
    }
    /* the weight scaled per output channel: Conv's first axis, Gemm's N (rows under transB) */
    const size_t per = w.count / (size_t)C;
    double wmax = 0;
    for (int c = 0; c < C; c++) kk[C + c] = 0; /* each channel's max |W'| */
    for (size_t e = 0; e < w.count; e++) {
        const int c = conv || trans_b ? (int)(e / per) : (int)(e % (size_t)C);
        w.f[e] = (float)(w.f[e] * kk[c]);
        kk[C + c] = fmax(kk[C + c], fabs(w.f[e]));
        wmax = fmax(wmax, fabs(w.f[e]));
    }
    bl_fold_row *row = r->folded < BL_FOLD_MAX ? &r->row[r->folded] : NULL;
    if (row) {
        memset(row, 0, sizeof *row);
        snprintf(row->bn, sizeof row->bn, "%s", node_name(bn));
        snprintf(row->into, sizeof row->into, "%s", node_name(p));
        row->channels = C, row->min_ratio = 1;
        for (int c = 0; c < C; c++) {
            const double ratio = wmax > 0 ? kk[C + c] / wmax : 0;
            row->starved += bl_fold_starved(kk[C + c], wmax);
            row->min_ratio = fmin(row->min_ratio, ratio);
        }
        r->starved += row->starved, r->channels += C;
    }
    const int64_t bdim[1] = {C};
    *st = write_input(g, p, 1, ".folded_weight", w.f, w.count, w.dims, w.rank);
    if (!*st) *st = write_input(g, p, 2, ".folded_bias", nb, (size_t)C, bdim, 1);
    free(nb), free(kk), ox_const_free(&w), ox_const_free(&b);
    if (*st) return -1;
    /* the producer writes what the BN wrote; the BN goes (removed by the caller) */
    char *out = bl_strdup(bn->output[0]);
    if (!out) return *st = bl_fail(BL_ERR_NOMEM, "out of memory"), -1;
    free(p->output[0]);
    p->output[0] = out;
    r->folded++;
    return 1;
}

/* initializers and IR-3 graph inputs nothing reads any more (the folded BNs' parameters) */
static void drop_unread(Onnx__GraphProto *g)
{
    size_t k = 0;
    for (size_t i = 0; i < g->n_input; i++) {
        Onnx__ValueInfoProto *v = g->input[i];
        /* an initializer listed among the inputs (IR 3) goes with it; the model's inputs stay */
        if (!v->name || ox_readers(g, v->name) || !ox_find_init(g, v->name)) g->input[k++] = v;
        else onnx__value_info_proto__free_unpacked(v, &ox_pb_allocator);
    }
    g->n_input = k;
    k = 0;
    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *t = g->initializer[i];
        if (!t->name || ox_readers(g, t->name)) g->initializer[k++] = t;
        else onnx__tensor_proto__free_unpacked(t, &ox_pb_allocator);
    }
    g->n_initializer = k;
    k = 0;
    for (size_t i = 0; i < g->n_value_info; i++) {
        Onnx__ValueInfoProto *v = g->value_info[i];
        if (!v->name || ox_readers(g, v->name) || producer(g, v->name)) g->value_info[k++] = v;
        else onnx__value_info_proto__free_unpacked(v, &ox_pb_allocator);
    }
    g->n_value_info = k;
}

bl_status bl_onnx_fold(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       bl_fold_report *r)
{
    memset(r, 0, sizeof *r);
    Onnx__ModelProto *mp = onnx__model_proto__unpack(&ox_pb_allocator, m->size, m->file);
    if (!mp) return bl_fail(BL_ERR_NOMEM, "%s: out of memory parsing the model again", m->path);
    Onnx__GraphProto *g = mp->graph;
    bl_status st = BL_OK;
    const size_t n = g->n_node;
    unsigned char *gone = bl_callocn(n ? n : 1, 1);
    if (!gone) st = bl_fail(BL_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !st; i++)
        if (g->node[i]->op_type && !strcmp(g->node[i]->op_type, "BatchNormalization"))
            gone[i] = fold_one(m, net, mp, i, r, &st) == 1;
    if (!st) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (gone[i]) onnx__node_proto__free_unpacked(g->node[i], &ox_pb_allocator);
            else g->node[k++] = g->node[i];
        g->n_node = k;
        drop_unread(g);
    }
    free(gone);
    if (!st && record) st = ox_set_meta(mp, record);
    return ox_pack_write(mp, st, path, m->path);
}
