/* Results back to the user: the ONNX model with the net's BN statistics written into it, and the
 * statistics alone as safetensors under the initializers' names. Where every statistic is its own
 * node's float32 raw data, the file's bytes are kept and those bytes overwritten (splice.c).
 * Otherwise the model is parsed again from the loaded file's bytes, only the running mean and variance tensors of BatchNormalization nodes
 * change (a statistic another node also reads, or one behind an Identity, is split off into an
 * initializer of its own and that BN node repointed), a metadata_props entry "bnlab" records the
 * run, and the result is packed and written atomically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnlab/train.h"
#include "onnx/onnx_impl.h"

#define OX_META_KEY "bnlab"

Onnx__TensorProto *ox_find_init(Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !strcmp(g->initializer[i]->name, name))
            return g->initializer[i];
    return NULL;
}

/* readers of a value: node inputs and graph outputs */
int ox_readers(const Onnx__GraphProto *g, const char *name)
{
    /* a nameless value (a value_info or initializer the loader never looks at) has no readers */
    if (!name) return 0;
    int n = 0;
    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_input; k++)
            n += g->node[i]->input[k] && !strcmp(g->node[i]->input[k], name);
    for (size_t i = 0; i < g->n_output; i++) n += g->output[i]->name && !strcmp(g->output[i]->name, name);
    return n;
}

/* the tensor's values replaced by C floats, as raw little-endian data */
bl_status ox_set_floats(Onnx__TensorProto *t, const float *v, int c)
{
    uint8_t *raw = bl_malloc(sizeof(float) * (size_t)c);
    int64_t *dims = bl_malloc(sizeof(int64_t));
    if (!raw || !dims) return free(raw), free(dims), bl_fail(BL_ERR_NOMEM, "out of memory");
    memcpy(raw, v, sizeof(float) * (size_t)c);
    if (t->has_raw_data) free(t->raw_data.data);
    free(t->float_data), free(t->double_data), free(t->dims);
    free(t->int32_data), free(t->int64_data), free(t->uint64_data);
    t->float_data = NULL, t->n_float_data = 0, t->double_data = NULL, t->n_double_data = 0;
    t->int32_data = NULL, t->n_int32_data = 0, t->int64_data = NULL, t->n_int64_data = 0;
    t->uint64_data = NULL, t->n_uint64_data = 0;
    t->dims = dims, t->n_dims = 1, dims[0] = c;
    t->has_data_type = 1, t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->has_raw_data = 1, t->raw_data.data = raw, t->raw_data.len = sizeof(float) * (size_t)c;
    return BL_OK;
}

/* a new initializer named `name` holding v, appended to the graph */
bl_status ox_add_init(Onnx__GraphProto *g, const char *name, const float *v, int c)
{
    Onnx__TensorProto *t = bl_malloc(sizeof *t);
    Onnx__TensorProto **arr = bl_malloc(sizeof *arr * (g->n_initializer + 1));
    char *nm = bl_strdup(name);
    if (!t || !arr || !nm) return free(t), free(arr), free(nm), bl_fail(BL_ERR_NOMEM, "out of memory");
    onnx__tensor_proto__init(t);
    t->name = nm;
    bl_status st = ox_set_floats(t, v, c);
    if (st) return free(nm), free(t), free(arr), st;
    if (g->n_initializer) memcpy(arr, g->initializer, sizeof *arr * g->n_initializer);
    arr[g->n_initializer] = t;
    free(g->initializer);
    g->initializer = arr;
    g->n_initializer++;
    return BL_OK;
}

bl_status ox_set_meta(Onnx__ModelProto *mp, const char *value)
{
    for (size_t i = 0; i < mp->n_metadata_props; i++)
        if (mp->metadata_props[i]->key && !strcmp(mp->metadata_props[i]->key, OX_META_KEY)) {
            char *v = bl_strdup(value);
            if (!v) return bl_fail(BL_ERR_NOMEM, "out of memory");
            free(mp->metadata_props[i]->value);
            mp->metadata_props[i]->value = v;
            return BL_OK;
        }
    Onnx__StringStringEntryProto *e = bl_malloc(sizeof *e);
    Onnx__StringStringEntryProto **arr = bl_malloc(sizeof *arr * (mp->n_metadata_props + 1));
    char *k = bl_strdup(OX_META_KEY), *v = bl_strdup(value);
    if (!e || !arr || !k || !v) {
        free(e), free(arr), free(k), free(v);
        return bl_fail(BL_ERR_NOMEM, "out of memory");
    }
    onnx__string_string_entry_proto__init(e);
    e->key = k, e->value = v;
    if (mp->n_metadata_props) memcpy(arr, mp->metadata_props, sizeof *arr * mp->n_metadata_props);
    arr[mp->n_metadata_props] = e;
    free(mp->metadata_props);
    mp->metadata_props = arr;
    mp->n_metadata_props++;
    return BL_OK;
}

/* The statistics of BN node i's slot k (2 mean, 3 var) into the model: in place, or split off. */
static bl_status write_stat(const bl_onnx *m, Onnx__GraphProto *g, int i, int k,
                            const char names[4][96], const bl_net *net, int *split)
{
    const bl_param *p = bl_net_param(net, names[k]);
    if (!p) return bl_fail(BL_ERR_STATE, "%s: the net has no parameter '%s'", m->path, names[k]);
    Onnx__NodeProto *n = g->node[i];
    const char *v = n->input[k + 1];
    Onnx__TensorProto *t = ox_find_init(g, v);
    if (t && ox_readers(g, v) == 1 && !strchr(names[k], '#'))
        return ox_set_floats(t, p->data, (int)p->count);
    if (m->model->ir_version < 4)
        return bl_fail(BL_ERR_FORMAT, "%s: BN node %d shares its statistics '%s', and IR version "
                       "%lld lists initializers among the inputs: re-export with opset_version="
                       "13 to write them back", m->path, i, v, (long long)m->model->ir_version);
    char nm[160];
    snprintf(nm, sizeof nm, "%.120s.bn%d", v, i);
    for (int q = 2; ox_find_init(g, nm) || ox_readers(g, nm); q++) snprintf(nm, sizeof nm, "%.120s.bn%d_%d", v, i, q);
    bl_status st = ox_add_init(g, nm, p->data, (int)p->count);
    char *dup = st ? NULL : bl_strdup(nm);
    if (!st && !dup) st = bl_fail(BL_ERR_NOMEM, "out of memory");
    if (st) return st;
    free(n->input[k + 1]);
    n->input[k + 1] = dup;
    (*split)++;
    return BL_OK;
}

/* buf (freed here) written atomically to path */
bl_status ox_write_file(const char *path, uint8_t *buf, size_t len)
{
    bl_afile f;
    bl_status st = bl_afile_open(&f, path);
    if (!st) st = bl_afile_write(&f, buf, len);
    if (!st) st = bl_afile_commit(&f);
    else bl_afile_abort(&f);
    free(buf);
    return st;
}

bl_status bl_onnx_save(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       int *split)
{
    *split = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    bl_status st = ox_splice(m, net, record, &buf, &len);
    if (st || buf) return st ? st : ox_write_file(path, buf, len);
    Onnx__ModelProto *mp = onnx__model_proto__unpack(&ox_pb_allocator, m->size, m->file);
    if (!mp) return bl_fail(BL_ERR_NOMEM, "%s: out of memory parsing the model again", m->path);
    Onnx__GraphProto *g = mp->graph;
    for (size_t i = 0; i < g->n_node && !st; i++) {
        if (!g->node[i]->op_type || strcmp(g->node[i]->op_type, "BatchNormalization")) continue;
        char names[4][96];
        ox_bn_names(m, (int)i, names);
        for (int k = 2; k < 4 && !st; k++) st = write_stat(m, g, (int)i, k, names, net, split);
    }
    if (!st && record) st = ox_set_meta(mp, record);
    return ox_pack_write(mp, st, path, m->path);
}

bl_status ox_pack_write(Onnx__ModelProto *mp, bl_status st, const char *path, const char *what)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!st) {
        len = onnx__model_proto__get_packed_size(mp);
        if (!(buf = bl_malloc(len ? len : 1))) st = bl_fail(BL_ERR_NOMEM, "out of memory");
        else if (onnx__model_proto__pack(mp, buf) != len)
            st = bl_fail(BL_ERR_STATE, "%s: the model did not pack to its size", what);
    }
    onnx__model_proto__free_unpacked(mp, &ox_pb_allocator);
    if (st) return free(buf), st;
    return ox_write_file(path, buf, len);
}

/* the initializer a value comes from, through Identity nodes; NULL when none */
const char *ox_source_of(const Onnx__GraphProto *g, const char *v)
{
    for (int depth = 0; depth < 64; depth++) {
        for (size_t i = 0; i < g->n_initializer; i++)
            if (!strcmp(g->initializer[i]->name, v)) return v;
        const char *up = NULL;
        for (size_t i = 0; i < g->n_node && !up; i++) {
            const Onnx__NodeProto *n = g->node[i];
            if (n->op_type && !strcmp(n->op_type, "Identity") && n->n_output && n->n_input &&
                !strcmp(n->output[0], v))
                up = n->input[0];
        }
        if (!up) return NULL;
        v = up;
    }
    return NULL;
}

bl_status bl_onnx_save_stats(const bl_onnx *m, const bl_net *net, const char *path,
                             const char *record, int *unnamed)
{
    *unnamed = 0;
#ifndef BL_HAVE_CJSON
    (void)m, (void)net, (void)path, (void)record;
    return bl_fail(BL_ERR_STATE, "this bnlab was built without cJSON: no safetensors output");
#else
    bl_st_writer w;
    memset(&w, 0, sizeof w);
    bl_status st = BL_OK;
    const Onnx__GraphProto *g = m->graph;
    for (size_t i = 0; i < g->n_node && !st; i++) {
        if (!g->node[i]->op_type || strcmp(g->node[i]->op_type, "BatchNormalization")) continue;
        char names[4][96];
        ox_bn_names(m, (int)i, names);
        for (int k = 2; k < 4 && !st; k++) {
            const bl_param *p = bl_net_param(net, names[k]);
            if (!p) {
                st = bl_fail(BL_ERR_STATE, "%s: the net has no parameter '%s'", m->path, names[k]);
                break;
            }
            /* under the initializer's name (a PyTorch export's state_dict key) when it is that
             * BN's own; a shared one under the name the node reads it by */
            const char *src = ox_source_of(g, g->node[i]->input[k + 1]);
            const char *key = src && !strchr(names[k], '#') && ox_readers(g, src) == 1 ? src : names[k];
            *unnamed += key != src;
            const int64_t shape[1] = {(int64_t)p->count};
            st = bl_st_add(&w, key, BL_F32, 1, shape, p->data);
        }
    }
    if (!st && record) st = bl_st_set_meta(&w, "bnlab", record);
    if (!st) st = bl_st_write(&w, path);
    bl_st_writer_free(&w);
    return st;
#endif
}
