/* The statistics written back in place: when every BN statistic is an initializer of its own
 * node, held as float32 raw_data, the loaded file's bytes are kept and only those raw_data bytes
 * are overwritten (same length), an earlier "bnlab" metadata_props entry is cut out and the new one
 * appended (a top-level field: protobuf takes fields in any order, and a repeated one appended
 * goes last). Everything else - field order, unknown fields, encodings - stays as the exporter
 * wrote it. The file is walked as protobuf wire format, only as deep as these fields. */
#include <stdlib.h>
#include <string.h>

#include "bnlab/train.h"
#include "onnx/onnx_impl.h"
#include "onnx/wire.h"

#define OX_META_KEY "bnlab"
#define MAX_TARGETS 2048

static int str_is(const uint8_t *p, const ox_wire_field *f, const char *s)
{
    return f->wt == 2 && f->plen == strlen(s) && !memcmp(p + f->pay, s, f->plen);
}

/* one BN statistic to write: the initializer's name, the net's values, where its raw data is */
typedef struct {
    const char *name;
    const bl_param *p;
    size_t at;
    int found;
} target;

static const Onnx__TensorProto *init_of(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !strcmp(g->initializer[i]->name, name))
            return g->initializer[i];
    return NULL;
}

static int readers_of(const Onnx__GraphProto *g, const char *name)
{
    int n = 0;
    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_input; k++) n += !strcmp(g->node[i]->input[k], name);
    for (size_t i = 0; i < g->n_output; i++) n += !strcmp(g->output[i]->name, name);
    return n;
}

/* The statistics this splice writes; 0 when one of them cannot be written in place. */
static int collect(const bl_onnx *m, const bl_net *net, target *t, int *nt)
{
    const Onnx__GraphProto *g = m->graph;
    *nt = 0;
    for (size_t i = 0; i < g->n_node; i++) {
        if (!g->node[i]->op_type || strcmp(g->node[i]->op_type, "BatchNormalization")) continue;
        char names[4][96];
        ox_bn_names(m, (int)i, names);
        for (int k = 2; k < 4; k++) {
            const bl_param *p = bl_net_param(net, names[k]);
            const char *v = g->node[i]->input[k + 1];
            const Onnx__TensorProto *tp = init_of(g, v);
            if (!p || !tp || strchr(names[k], '#') || readers_of(g, v) != 1 || *nt == MAX_TARGETS ||
                !tp->has_raw_data || tp->raw_data.len != sizeof(float) * p->count ||
                !tp->has_data_type || tp->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
                return 0;
            t[(*nt)++] = (target){v, p, 0, 0};
        }
    }
    return 1;
}

/* Each target's raw data in the graph's initializers; 0 unless each is found exactly once. */
static int locate(const uint8_t *p, const ox_wire_field *graph, target *t, int nt)
{
    size_t i = graph->pay;
    const size_t end = graph->pay + graph->plen;
    ox_wire_field f;
    while (i < end) {
        if (!ox_wire_next(p, end, &i, &f)) return 0;
        if (f.num != 5 || f.wt != 2) continue; /* GraphProto.initializer */
        size_t j = f.pay, name_at = 0, name_len = 0, raw_at = 0, raw_len = 0;
        int names = 0, raws = 0;
        ox_wire_field e;
        while (j < f.pay + f.plen) {
            if (!ox_wire_next(p, f.pay + f.plen, &j, &e)) return 0;
            if (e.num == 8 && e.wt == 2) names++, name_at = e.pay, name_len = e.plen;
            if (e.num == 9 && e.wt == 2) raws++, raw_at = e.pay, raw_len = e.plen;
        }
        for (int k = 0; k < nt; k++) {
            if (names != 1 || strlen(t[k].name) != name_len || memcmp(p + name_at, t[k].name, name_len))
                continue;
            if (raws != 1 || raw_len != sizeof(float) * t[k].p->count || t[k].found) return 0;
            t[k].at = raw_at, t[k].found = 1;
        }
    }
    for (int k = 0; k < nt; k++)
        if (!t[k].found) return 0;
    return 1;
}

bl_status ox_splice(const bl_onnx *m, const bl_net *net, const char *record, uint8_t **out,
                    size_t *out_len)
{
    *out = NULL, *out_len = 0;
    target *t = bl_malloc(sizeof *t * MAX_TARGETS);
    if (!t) return bl_fail(BL_ERR_NOMEM, "out of memory");
    int nt;
    if (!collect(m, net, t, &nt)) return free(t), BL_OK;
    /* the top level: one graph, and the spans of earlier "bnlab" entries to cut out */
    const uint8_t *p = m->file;
    size_t i = 0, cut = 0;
    int graphs = 0;
    ox_wire_field f, graph = {0};
    size_t drop[16][2];
    int nd = 0;
    while (i < m->size) {
        if (!ox_wire_next(p, m->size, &i, &f)) return free(t), BL_OK;
        if (f.num == 7 && f.wt == 2) graphs++, graph = f;
        if (f.num == 14 && f.wt == 2 && record) { /* ModelProto.metadata_props */
            size_t j = f.pay;
            ox_wire_field e;
            int ours = 0;
            while (j < f.pay + f.plen)
                if (!ox_wire_next(p, f.pay + f.plen, &j, &e)) return free(t), BL_OK;
                else if (e.num == 1) ours = str_is(p, &e, OX_META_KEY);
            if (ours && nd == 16) return free(t), BL_OK;
            if (ours) drop[nd][0] = f.start, drop[nd][1] = f.end, cut += f.end - f.start, nd++;
        }
    }
    if (graphs != 1 || !locate(p, &graph, t, nt)) return free(t), BL_OK;
    /* the new entry: key 1 "bnlab", value 2 record */
    const size_t kl = strlen(OX_META_KEY), vl = record ? strlen(record) : 0;
    const size_t entry = record ? 1 + ox_wire_varint_len(kl) + kl + 1 + ox_wire_varint_len(vl) + vl : 0;
    const size_t add = record ? 1 + ox_wire_varint_len(entry) + entry : 0;
    const size_t len = m->size - cut + add;
    uint8_t *buf = bl_malloc(len ? len : 1);
    if (!buf) return free(t), bl_fail(BL_ERR_NOMEM, "out of memory");
    /* the file without the dropped entries, then the statistics' bytes over their raw data
     * (little-endian floats, as raw_data is), each moved up by the entries dropped before it */
    uint8_t *o = buf;
    size_t from = 0;
    for (int d = 0; d < nd; d++) {
        memcpy(o, p + from, drop[d][0] - from), o += drop[d][0] - from;
        from = drop[d][1];
    }
    memcpy(o, p + from, m->size - from), o += m->size - from;
    for (int k = 0; k < nt; k++) {
        size_t shift = 0;
        for (int d = 0; d < nd; d++) shift += drop[d][1] <= t[k].at ? drop[d][1] - drop[d][0] : 0;
        memcpy(buf + t[k].at - shift, t[k].p->data, sizeof(float) * t[k].p->count);
    }
    free(t);
    if (record) {
        *o++ = (14 << 3) | 2;
        o = ox_wire_put_varint(o, entry);
        *o++ = (1 << 3) | 2;
        o = ox_wire_put_varint(o, kl);
        memcpy(o, OX_META_KEY, kl), o += kl;
        *o++ = (2 << 3) | 2;
        o = ox_wire_put_varint(o, vl);
        memcpy(o, record, vl), o += vl;
    }
    *out = buf, *out_len = len;
    return BL_OK;
}
