/* Loading an ONNX model: the file read whole, parsed by the protobuf-c code generated from
 * Debian's onnx.proto, and checked before anything is built - IR version, opsets, the graph's
 * input, every tensor's data against its dims. */
#define _POSIX_C_SOURCE 200809L
#include "onnx/onnx_impl.h"
#include "onnx/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char bl_onnx_export_recipe[] =
    "model.eval(); torch.onnx.export(model, x, path, "
    "training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, opset_version=13)";

/* protobuf-c's allocations through bnlab's (the fault hooks reach them) */
static void *pb_alloc(void *d, size_t n)
{
    (void)d;
    return bl_malloc(n ? n : 1);
}
static void pb_free(void *d, void *p)
{
    (void)d;
    free(p);
}
ProtobufCAllocator ox_pb_allocator = {pb_alloc, pb_free, NULL};

void bl_onnx_free(bl_onnx *m)
{
    if (!m) return;
    if (m->model) onnx__model_proto__free_unpacked(m->model, &ox_pb_allocator);
    free(m->file);
    free(m->path);
    free(m);
}

static bl_status read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return bl_fail(BL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return bl_fail(BL_ERR_IO, "%s is a directory, not an ONNX model", path);
    }
    bl_status rc = BL_OK;
    if (fseek(f, 0, SEEK_END) || (sb.st_size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        rc = bl_fail(BL_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    else if (sb.st_size == 0)
        rc = bl_fail(BL_ERR_FORMAT, "%s: empty file, not an ONNX model", path);
    else if ((uint64_t)sb.st_size > ((uint64_t)2 << 30))
        rc = bl_fail(BL_ERR_FORMAT, "%s: %lld bytes: a protobuf holds at most 2 GiB (external "
                     "data files are not supported)", path, (long long)sb.st_size);
    else if (!(*data = bl_malloc((size_t)sb.st_size)))
        rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory for %lld bytes", path, (long long)sb.st_size);
    else if (fread(*data, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size)
        rc = bl_fail(BL_ERR_IO, "%s: read failed", path);
    *size = (size_t)sb.st_size;
    fclose(f);
    if (rc) free(*data), *data = NULL;
    return rc;
}

static int is_initializer(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !strcmp(g->initializer[i]->name, name)) return 1;
    return 0;
}

/* The graph's input that no initializer shadows, its dims checked: (N, C, H, W) or (N, K). */
static bl_status find_input(bl_onnx *m)
{
    const Onnx__GraphProto *g = m->graph;
    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *v = g->input[i];
        if (!v->name || is_initializer(g, v->name)) continue;
        if (m->input)
            return bl_fail(BL_ERR_FORMAT, "%s: inputs '%s' and '%s': bnlab feeds models of one "
                           "input", m->path, m->input->name, v->name);
        m->input = v;
    }
    if (!m->input) return bl_fail(BL_ERR_FORMAT, "%s: the graph has no input", m->path);
    const Onnx__TypeProto *t = m->input->type;
    if (!t || t->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !t->tensor_type ||
        (t->tensor_type->has_elem_type &&
         t->tensor_type->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT))
        return bl_fail(BL_ERR_FORMAT, "%s: input '%s' is not a float tensor", m->path,
                       m->input->name);
    const Onnx__TensorShapeProto *s = t->tensor_type->shape;
    if (s && s->n_dim != 4)
        return bl_fail(BL_ERR_FORMAT, "%s: input '%s' has %zu dimensions: bnlab feeds images, "
                       "(N, C, H, W)", m->path, m->input->name, s->n_dim);
    int d[3] = {0, 0, 0};
    for (int k = 0; s && k < 3; k++) {
        const Onnx__TensorShapeProto__Dimension *dm = s->dim[k + 1];
        if (dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (dm->dim_value < 1 || dm->dim_value > 4096)
                return bl_fail(BL_ERR_FORMAT, "%s: input '%s' dimension %d is %lld", m->path,
                               m->input->name, k + 1, (long long)dm->dim_value);
            d[k] = (int)dm->dim_value;
        }
    }
    m->in_c = d[0], m->in_h = d[1], m->in_w = d[2];
    return BL_OK;
}

bl_status bl_onnx_load(const char *path, bl_onnx **out)
{
    *out = NULL;
    bl_onnx *m = bl_callocn(1, sizeof *m);
    if (!m || !(m->path = bl_strdup(path))) {
        free(m);
        return bl_fail(BL_ERR_NOMEM, "%s: out of memory", path);
    }
    bl_status rc = read_file(path, &m->file, &m->size);
    /* protobuf-c recurses into nested messages without a limit: a file of graphs in graphs
     * (100 KB of them) would overflow the stack */
    const int depth = rc ? 0 : ox_wire_depth(m->file, m->size, OX_MAX_NESTING);
    if (depth > OX_MAX_NESTING)
        rc = bl_fail(BL_ERR_FORMAT, "%s: messages nested more than %d deep (graphs within graphs, "
                     "or types within types): a corrupt or hostile file", path, OX_MAX_NESTING);
    if (!rc) {
        m->model = onnx__model_proto__unpack(&ox_pb_allocator, m->size, m->file);
        if (!m->model)
            rc = bl_fail(BL_ERR_FORMAT, "%s: not an ONNX model (the protobuf does not parse: a "
                         "truncated or corrupt file, or another format)", path);
    }
    if (!rc && !m->model->graph) rc = bl_fail(BL_ERR_FORMAT, "%s: the model has no graph", path);
    if (!rc && (!m->model->has_ir_version || m->model->ir_version < 3 ||
                m->model->ir_version > 8))
        rc = bl_fail(BL_ERR_FORMAT, "%s: IR version %lld: bnlab reads IR 3 to 8 (export with "
                     "opset_version <= 17)", path, (long long)m->model->ir_version);
    for (size_t i = 0; !rc && i < m->model->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = m->model->opset_import[i];
        if (!o->domain || !o->domain[0] || !strcmp(o->domain, "ai.onnx")) m->opset = (int)o->version;
    }
    if (!rc && (m->opset < 7 || m->opset > 17))
        rc = bl_fail(BL_ERR_FORMAT, "%s: opset %d: bnlab reads opsets 7 to 17 (export with "
                     "opset_version=13)", path, m->opset);
    if (!rc) {
        m->graph = m->model->graph;
        snprintf(m->producer, sizeof m->producer, "%s %s",
                 m->model->producer_name ? m->model->producer_name : "?",
                 m->model->producer_version ? m->model->producer_version : "");
        rc = find_input(m);
    }
    for (size_t i = 0; !rc && i < m->graph->n_node; i++)
        m->n_bn += m->graph->node[i]->op_type &&
                   !strcmp(m->graph->node[i]->op_type, "BatchNormalization");
    if (!rc && !m->graph->n_output) rc = bl_fail(BL_ERR_FORMAT, "%s: the graph has no output", path);
    for (size_t i = 0; !rc && i < m->graph->n_output; i++)
        if (!m->graph->output[i]->name || !m->graph->output[i]->name[0])
            rc = bl_fail(BL_ERR_FORMAT, "%s: graph output %zu has no name", path, i);
    for (size_t i = 0; !rc && i < m->graph->n_node; i++) {
        const Onnx__NodeProto *n = m->graph->node[i];
        for (size_t k = 0; k < n->n_input && !rc; k++)
            if (!n->input[k]) rc = bl_fail(BL_ERR_FORMAT, "%s: node %zu has a null input", path, i);
        for (size_t k = 0; k < n->n_output && !rc; k++)
            if (!n->output[k]) rc = bl_fail(BL_ERR_FORMAT, "%s: node %zu has a null output", path, i);
    }
    if (rc) {
        bl_onnx_free(m);
        return rc;
    }
    *out = m;
    return BL_OK;
}

bl_status bl_onnx_input_shape(const bl_onnx *m, int *c, int *h, int *w)
{
    *c = m->in_c, *h = m->in_h, *w = m->in_w;
    if (m->in_c && m->in_h && m->in_w) return BL_OK;
    return bl_fail(BL_ERR_ARG, "%s: input '%s' has symbolic dimensions (C, H, W) = (%s, %s, %s): "
                   "give them with --input-shape C,H,W", m->path, m->input->name,
                   m->in_c ? "fixed" : "?", m->in_h ? "fixed" : "?", m->in_w ? "fixed" : "?");
}

bl_status bl_onnx_set_input_shape(bl_onnx *m, int c, int h, int w)
{
    if (c < 1 || h < 1 || w < 1 || c > 64 || h > 4096 || w > 4096)
        return bl_fail(BL_ERR_ARG, "input shape %d,%d,%d: give C,H,W within 1..64 and 1..4096", c,
                       h, w);
    if ((m->in_c && m->in_c != c) || (m->in_h && m->in_h != h) || (m->in_w && m->in_w != w))
        return bl_fail(BL_ERR_ARG, "%s: input '%s' is declared (C, H, W) = (%d, %d, %d); "
                       "--input-shape %d,%d,%d disagrees (0: symbolic)", m->path, m->input->name,
                       m->in_c, m->in_h, m->in_w, c, h, w);
    m->in_c = c, m->in_h = h, m->in_w = w;
    return BL_OK;
}

int bl_onnx_bn_count(const bl_onnx *m) { return m->n_bn; }
const char *bl_onnx_path(const bl_onnx *m) { return m->path; }
const char *bl_onnx_producer(const bl_onnx *m) { return m->producer; }
int bl_onnx_opset(const bl_onnx *m) { return m->opset; }

/* ---- tensors --------------------------------------------------------------------------------- */
void ox_const_free(ox_const *c)
{
    free(c->f);
    free(c->i);
    memset(c, 0, sizeof *c);
}

static float half_to_float(uint16_t h)
{
    const int s = h >> 15, e = (h >> 10) & 31, f = h & 1023;
    double v = e == 0 ? ldexp(f, -24) : e == 31 ? (f ? NAN : INFINITY) : ldexp(f + 1024, e - 25);
    return (float)(s ? -v : v);
}

bl_status ox_tensor_read(const bl_onnx *m, const Onnx__TensorProto *t, const char *what,
                         ox_const *out)
{
    memset(out, 0, sizeof *out);
    if (t->n_external_data || (t->has_data_location && t->data_location ==
                               ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL))
        return bl_fail(BL_ERR_FORMAT, "%s: %s keeps its data in an external file: not supported "
                       "(export a model under 2 GiB, which keeps every tensor inside)", m->path,
                       what);
    if (t->n_dims > OX_MAX_RANK)
        return bl_fail(BL_ERR_FORMAT, "%s: %s has %zu dimensions (at most %d)", m->path, what,
                       t->n_dims, OX_MAX_RANK);
    size_t count = 1;
    out->rank = (int)t->n_dims;
    for (size_t d = 0; d < t->n_dims; d++) {
        if (t->dims[d] < 0 || t->dims[d] > (1LL << 31) ||
            (t->dims[d] && count > ((size_t)1 << 34) / (size_t)t->dims[d]))
            return bl_fail(BL_ERR_FORMAT, "%s: %s has dimension %lld: corrupt", m->path, what,
                           (long long)t->dims[d]);
        out->dims[d] = t->dims[d];
        count *= (size_t)t->dims[d];
    }
    out->count = count;
    const int dt = t->has_data_type ? t->data_type : 0;
    size_t esize;
    switch (dt) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: esize = 4; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: esize = 8; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16: esize = 2; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: esize = 1; break;
    default:
        return bl_fail(BL_ERR_FORMAT, "%s: %s has data type %d: bnlab reads float, double, "
                       "float16 and integer tensors", m->path, what, dt);
    }
    const int is_float = dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ||
                         dt == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ||
                         dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16;
    out->is_int = !is_float;
    /* the values' source: raw bytes, or the typed repeated field */
    size_t have;
    if (t->has_raw_data) have = t->raw_data.len / esize;
    else if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) have = t->n_float_data;
    else if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE) have = t->n_double_data;
    else if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) have = t->n_int64_data;
    else have = t->n_int32_data; /* int32, int8, uint8, bool, float16 */
    if (have != count || (t->has_raw_data && t->raw_data.len != count * esize))
        return bl_fail(BL_ERR_FORMAT, "%s: %s claims %zu values and holds %zu: truncated or "
                       "corrupt", m->path, what, count, have);
    if (is_float ? !(out->f = bl_callocn(count ? count : 1, sizeof(float)))
                 : !(out->i = bl_callocn(count ? count : 1, sizeof(int64_t))))
        return bl_fail(BL_ERR_NOMEM, "%s: out of memory for %s (%zu values)", m->path, what, count);
    const uint8_t *raw = t->has_raw_data ? t->raw_data.data : NULL;
    for (size_t k = 0; k < count; k++) {
        /* little-endian raw data, as ONNX defines it */
        uint64_t u = 0;
        if (raw)
            for (size_t b = 0; b < esize; b++) u |= (uint64_t)raw[k * esize + b] << (8 * b);
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: {
            float v;
            uint32_t u32 = (uint32_t)u;
            if (raw) memcpy(&v, &u32, 4);
            else v = t->float_data[k];
            out->f[k] = v;
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: {
            double v;
            if (raw) memcpy(&v, &u, 8);
            else v = t->double_data[k];
            out->f[k] = (float)v;
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
            out->f[k] = half_to_float(raw ? (uint16_t)u : (uint16_t)t->int32_data[k]);
            break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
            out->i[k] = raw ? (int64_t)u : t->int64_data[k];
            break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
            out->i[k] = raw ? (int32_t)(uint32_t)u : t->int32_data[k];
            break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT8:
            out->i[k] = raw ? (int8_t)(uint8_t)u : t->int32_data[k];
            break;
        default: /* uint8, bool */
            out->i[k] = raw ? (int64_t)u : t->int32_data[k];
        }
    }
    return BL_OK;
}

/* ---- attributes -------------------------------------------------------------------------------- */
const Onnx__AttributeProto *ox_attr(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && !strcmp(n->attribute[i]->name, name)) return n->attribute[i];
    return NULL;
}

int64_t ox_attr_int(const Onnx__NodeProto *n, const char *name, int64_t def)
{
    const Onnx__AttributeProto *a = ox_attr(n, name);
    return a && a->has_i ? a->i : def;
}

float ox_attr_float(const Onnx__NodeProto *n, const char *name, float def)
{
    const Onnx__AttributeProto *a = ox_attr(n, name);
    return a && a->has_f ? a->f : def;
}

bl_status ox_attr_ints(const Onnx__NodeProto *n, const char *name, int64_t *v, int max,
                       int *count)
{
    const Onnx__AttributeProto *a = ox_attr(n, name);
    *count = 0;
    if (!a) return BL_OK;
    if (a->n_ints > (size_t)max)
        return bl_fail(BL_ERR_FORMAT, "attribute '%s' has %zu values (at most %d)", name,
                       a->n_ints, max);
    for (size_t k = 0; k < a->n_ints; k++) v[k] = a->ints[k];
    *count = (int)a->n_ints;
    return BL_OK;
}

const char *ox_attr_string(const Onnx__NodeProto *n, const char *name, char *buf, size_t len)
{
    const Onnx__AttributeProto *a = ox_attr(n, name);
    if (!a || !a->has_s) return NULL;
    size_t k = a->s.len < len - 1 ? a->s.len : len - 1;
    memcpy(buf, a->s.data, k);
    buf[k] = 0;
    return buf;
}

const char *ox_node_desc(const bl_onnx *m, const Onnx__NodeProto *n, char *buf, size_t len)
{
    snprintf(buf, len, "node '%s' (%s, opset %d)", n->name && n->name[0] ? n->name : "(unnamed)",
             n->op_type ? n->op_type : "?", m->opset);
    return buf;
}

void ox_bn_names(const bl_onnx *m, int node, char names[4][96])
{
    const Onnx__NodeProto *n = m->graph->node[node];
    for (int k = 0; k < 4; k++) {
        const char *v = (size_t)k + 1 < n->n_input ? n->input[k + 1] : "";
        int shared = 0;
        for (int j = 0; j < node && !shared; j++) {
            const Onnx__NodeProto *o = m->graph->node[j];
            if (!o->op_type || strcmp(o->op_type, "BatchNormalization")) continue;
            for (size_t q = 1; q < o->n_input && q < 5; q++) shared |= !strcmp(o->input[q], v);
        }
        /* one tensor in two slots of this node (scale and variance, say) is two parameters */
        int again = 0;
        for (int j = 0; j < k && !again; j++)
            again = (size_t)j + 1 < n->n_input && !strcmp(n->input[j + 1], v);
        if (again) snprintf(names[k], 96, "%.80s#%d.%d", v, node, k);
        else if (shared) snprintf(names[k], 96, "%.80s#%d", v, node);
        else snprintf(names[k], 96, "%s", v);
    }
}
