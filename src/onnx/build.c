/* Building a loaded ONNX graph as a bl_net: the initializers become constants, the nodes are
 * visited in file order (ONNX requires topological order; a node reading a value nobody defined
 * yet is a cycle or a missing input) and turned into layers by ops.c, then the parameters are
 * filled from the constants. The net is the family "onnx" (registered at first use), whose
 * model carries the loaded graph. */
#include "onnx/graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_status ox_fail(ox_build *b, bl_status s, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bl_fail(s, "%s: %s: %s", b->m->path, b->desc, msg);
}

const char *ox_layer_name(ox_build *b, char *buf, size_t len)
{
    const Onnx__NodeProto *n = b->nd;
    if (n->name && n->name[0]) snprintf(buf, len, "%s", n->name);
    else snprintf(buf, len, "%s_%d", n->op_type, b->node);
    return buf;
}

ox_value *ox_find(ox_build *b, const char *name)
{
    /* the latest definition wins (a name is defined once in a valid graph) */
    for (int i = b->n - 1; i >= 0; i--)
        if (!strcmp(b->v[i].name, name)) return &b->v[i];
    return NULL;
}

static bl_status grow_values(ox_build *b)
{
    if (b->n < b->cap) return BL_OK;
    int nc = b->cap ? 2 * b->cap : 64;
    ox_value *v = bl_realloc(b->v, sizeof *v * (size_t)nc);
    if (!v) return bl_fail(BL_ERR_NOMEM, "%s: out of memory for the graph's values", b->m->path);
    b->v = v, b->cap = nc;
    return BL_OK;
}

bl_status ox_input(ox_build *b, int k, int allow_absent, ox_value **out)
{
    *out = NULL;
    const Onnx__NodeProto *n = b->nd;
    if ((size_t)k >= n->n_input || !n->input[k][0]) {
        if (allow_absent) return BL_OK;
        return ox_fail(b, BL_ERR_FORMAT, "input %d is missing", k);
    }
    if (!(*out = ox_find(b, n->input[k])))
        return ox_fail(b, BL_ERR_FORMAT, "reads '%s', which no earlier node, graph input or "
                       "initializer defines (a cycle, or a missing input)", n->input[k]);
    return BL_OK;
}

static bl_status output_name(ox_build *b, int k, const char **name)
{
    *name = NULL;
    if ((size_t)k >= b->nd->n_output || !b->nd->output[k][0])
        return ox_fail(b, BL_ERR_FORMAT, "output %d is missing", k);
    *name = b->nd->output[k];
    return BL_OK;
}

bl_status ox_def_runtime(ox_build *b, int k, int t, int rank, const int64_t *dims_in, int spatial)
{
    const char *name;
    /* dims may point into the table, which growing moves */
    int64_t dims[OX_MAX_RANK];
    if (rank < 0 || rank > OX_MAX_RANK) return ox_fail(b, BL_ERR_FORMAT, "rank %d", rank);
    memcpy(dims, dims_in, sizeof(int64_t) * (size_t)rank);
    for (int d = 1; d < rank; d++)
        if (dims[d] < 1 || dims[d] > (1LL << 31))
            return ox_fail(b, BL_ERR_FORMAT, "dimension %d of the output is %lld", d,
                           (long long)dims[d]);
    bl_status st = output_name(b, k, &name);
    if (!st) st = grow_values(b);
    if (st) return st;
    ox_value *v = &b->v[b->n++];
    memset(v, 0, sizeof *v);
    v->name = name, v->t = t, v->rank = rank, v->spatial = spatial && rank == 4;
    memcpy(v->dims, dims, sizeof(int64_t) * (size_t)rank);
    v->dims[0] = OX_BATCH;
    return BL_OK;
}

bl_status ox_def_const(ox_build *b, int k, ox_const *c)
{
    const char *name;
    bl_status st = output_name(b, k, &name);
    if (!st) st = grow_values(b);
    if (st) return ox_const_free(c), st;
    ox_value *v = &b->v[b->n++];
    memset(v, 0, sizeof *v);
    v->name = name, v->is_const = 1, v->k = *c, v->src = name;
    memset(c, 0, sizeof *c);
    return BL_OK;
}

bl_status ox_def_alias(ox_build *b, int k, const ox_value *from)
{
    const char *name;
    bl_status st = output_name(b, k, &name);
    const ptrdiff_t at = from - b->v; /* the table may move */
    if (!st) st = grow_values(b);
    if (st) return st;
    ox_value *v = &b->v[b->n++];
    *v = b->v[at];
    v->name = name;
    if (v->is_const) {
        /* a copy of the data: each value owns its constant; src keeps naming the origin */
        ox_const c = b->v[at].k;
        v->k.f = NULL, v->k.i = NULL;
        size_t bytes = (c.count ? c.count : 1) * (c.is_int ? sizeof(int64_t) : sizeof(float));
        void *d = bl_malloc(bytes);
        if (!d) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
        memcpy(d, c.is_int ? (void *)c.i : (void *)c.f, bytes);
        if (c.is_int) v->k.i = d;
        else v->k.f = d;
    }
    return BL_OK;
}

/* per-sample logical dims (C, H, W) of a rank-4 value */
static void chw(const ox_value *v, int *c, int *h, int *w)
{
    *c = (int)v->dims[1], *h = (int)v->dims[2], *w = (int)v->dims[3];
}

bl_status ox_spatial(ox_build *b, ox_value *v, int *t)
{
    if (v->is_const) return ox_fail(b, BL_ERR_ARG, "'%s' is a constant where a tensor of the "
                                    "batch is expected", v->name);
    if (v->spatial || v->rank == 2) return *t = v->t, BL_OK; /* (N, K): (1, 1, K) either way */
    if (v->rank != 4)
        return ox_fail(b, BL_ERR_ARG, "'%s' has %d dimensions where an (N, C, H, W) map is "
                       "expected", v->name, v->rank);
    int c, h, w;
    chw(v, &c, &h, &w);
    if (h * w == 1) return *t = v->t, BL_OK;
    int *map = bl_callocn((size_t)c * h * w, sizeof(int));
    if (!map) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    /* NHWC element (y, x, ch) <- logical (ch, y, x) */
    for (int y = 0, k = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < c; ch++) map[k++] = (ch * h + y) * w + x;
    char ln[96];
    snprintf(ln, sizeof ln, "%s.to_nhwc", v->name);
    bl_status st = bl_net_gather(b->net, ln, v->t, h, w, c, map, t);
    free(map);
    if (!st) v->t = *t, v->spatial = 1;
    return st;
}

bl_status ox_flat(ox_build *b, ox_value *v, int *t)
{
    if (v->is_const) return ox_fail(b, BL_ERR_ARG, "'%s' is a constant where a tensor of the "
                                    "batch is expected", v->name);
    if (!v->spatial) return *t = v->t, BL_OK;
    int c, h, w;
    chw(v, &c, &h, &w);
    if (h * w == 1) return *t = v->t, BL_OK;
    int *map = bl_callocn((size_t)c * h * w, sizeof(int));
    if (!map) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    /* logical (ch, y, x) <- NHWC (y, x, ch) */
    for (int ch = 0, k = 0; ch < c; ch++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) map[k++] = (y * w + x) * c + ch;
    char ln[96];
    snprintf(ln, sizeof ln, "%s.to_nchw", v->name);
    /* a new value: the spatial one stays for other readers */
    bl_status st = bl_net_gather(b->net, ln, v->t, 1, 1, c * h * w, map, t);
    free(map);
    return st;
}

bl_status ox_load_add(ox_build *b, const char *param, const ox_value *from, int transpose,
                      float scale)
{
    if (!from->is_const || from->k.is_int)
        return ox_fail(b, BL_ERR_FORMAT, "'%s' must be a float constant (an initializer or a "
                       "Constant node)", from->name);
    if (strlen(param) >= sizeof b->loads[0].name)
        return ox_fail(b, BL_ERR_FORMAT, "the name '%s' is longer than %zu characters", param,
                       sizeof b->loads[0].name - 1);
    if (b->n_loads == b->cap_loads) {
        int nc = b->cap_loads ? 2 * b->cap_loads : 64;
        ox_load *l = bl_realloc(b->loads, sizeof *l * (size_t)nc);
        if (!l) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
        b->loads = l, b->cap_loads = nc;
    }
    ox_load *l = &b->loads[b->n_loads++];
    snprintf(l->name, sizeof l->name, "%s", param);
    l->from = (int)(from - b->v);
    l->transpose = transpose, l->scale = scale;
    return BL_OK;
}

/* The parameters from their constants (OIHW -> OHWI for convolutions, by bl_param_import). */
static bl_status fill(ox_build *b)
{
    float *tmp = NULL;
    size_t cap = 0;
    bl_status st = BL_OK;
    for (int i = 0; i < b->n_loads && !st; i++) {
        const ox_load *l = &b->loads[i];
        const bl_param *pc = bl_net_param(b->net, l->name);
        if (!pc) continue; /* a shared parameter loaded already */
        bl_param *p = (bl_param *)pc;
        if (p->kind == BL_P_COUNT) continue;
        const ox_const *k = &b->v[l->from].k;
        if (k->count != p->count) {
            st = bl_fail(BL_ERR_FORMAT, "%s: '%s' holds %zu values, its layer needs %zu",
                         b->m->path, l->name, k->count, p->count);
            break;
        }
        if (p->count > cap) {
            free(tmp);
            if (!(tmp = bl_malloc(sizeof(float) * p->count))) {
                st = bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
                break;
            }
            cap = p->count;
        }
        const float *src = k->f;
        if (l->transpose) { /* (K, M) -> (M, K) */
            const int M = p->shape[0], K = p->shape[1];
            for (int r = 0; r < K; r++)
                for (int c = 0; c < M; c++) tmp[(size_t)c * K + r] = src[(size_t)r * M + c];
            src = tmp;
        }
        bl_param_import(p, src, p->data);
        if (l->scale != 1.0f)
            for (size_t k = 0; k < p->count; k++) p->data[k] *= l->scale;
        /* NaN or Inf in a weight is a corrupt model; in BN statistics it is what precise mends
         * (and inspect reports) */
        for (size_t k = 0; p->kind != BL_P_BUFFER && k < p->count; k++)
            if (!isfinite(p->data[k])) {
                st = bl_fail(BL_ERR_FORMAT, "%s: '%s' holds %s at element %zu: a corrupt model "
                             "(a weight must be finite)", b->m->path, l->name,
                             p->data[k] != p->data[k] ? "NaN" : "Inf", k);
                break;
            }
    }
    free(tmp);
    return st;
}

/* ---- the family "onnx" ---------------------------------------------------------------------- */
typedef struct {
    const bl_onnx *onnx;
} onnx_opts;

static int family_parse(const char *name, void *opts)
{
    (void)opts;
    return !strcmp(name, "onnx");
}

static bl_status family_build(bl_net *net, const bl_model *m, int classes)
{
    (void)classes;
    const bl_onnx *om = ((const onnx_opts *)bl_model_opts_c(m))->onnx;
    if (!om) /* a checkpoint naming the family: the graph lives in its .onnx file */
        return bl_fail(BL_ERR_ARG, "an imported ONNX model is opened from its .onnx file (bnlab "
                       "eval MODEL.onnx), not from a checkpoint");
    ox_build b = {.m = om, .net = net};
    bl_status st = BL_OK;
    /* the input, then every initializer as a constant */
    if (!(st = grow_values(&b))) {
        ox_value *in = &b.v[b.n++];
        memset(in, 0, sizeof *in);
        in->name = om->input->name, in->t = 0, in->rank = 4, in->spatial = 1;
        in->dims[0] = OX_BATCH, in->dims[1] = om->in_c, in->dims[2] = om->in_h;
        in->dims[3] = om->in_w;
    }
    for (size_t i = 0; !st && i < om->graph->n_initializer; i++) {
        const Onnx__TensorProto *t = om->graph->initializer[i];
        char what[160];
        snprintf(what, sizeof what, "initializer '%s'", t->name ? t->name : "?");
        if (!t->name || !t->name[0]) {
            st = bl_fail(BL_ERR_FORMAT, "%s: an initializer without a name", om->path);
            break;
        }
        if ((st = grow_values(&b))) break;
        ox_value *v = &b.v[b.n];
        memset(v, 0, sizeof *v);
        if ((st = ox_tensor_read(om, t, what, &v->k))) break;
        v->name = t->name, v->is_const = 1, v->src = t->name;
        b.n++;
    }
    for (size_t i = 0; !st && i < om->graph->n_node; i++) {
        b.node = (int)i;
        b.nd = om->graph->node[i];
        ox_node_desc(om, b.nd, b.desc, sizeof b.desc);
        if (b.nd->domain && b.nd->domain[0] && strcmp(b.nd->domain, "ai.onnx")) {
            st = ox_fail(&b, BL_ERR_FORMAT, "domain '%s' is not ONNX's: bnlab supports %s",
                         b.nd->domain, ox_op_list());
            break;
        }
        ox_op_fn fn = b.nd->op_type ? ox_op_find(b.nd->op_type) : NULL;
        if (!fn) {
            st = ox_fail(&b, BL_ERR_FORMAT, "unsupported operator; bnlab supports %s",
                         ox_op_list());
            break;
        }
        st = fn(&b);
    }
    /* the first graph output, in ONNX's element order */
    ox_value *out = NULL;
    int t = -1;
    if (!st && !(out = ox_find(&b, om->graph->output[0]->name)))
        st = bl_fail(BL_ERR_FORMAT, "%s: the graph's output '%s' is computed by no node",
                     om->path, om->graph->output[0]->name);
    if (!st && out->is_const)
        st = bl_fail(BL_ERR_FORMAT, "%s: the graph's output '%s' is a constant", om->path,
                     out->name);
    if (!st) {
        snprintf(b.desc, sizeof b.desc, "output '%s'", out->name);
        st = ox_flat(&b, out, &t);
    }
    if (!st && t == 0)
        st = bl_fail(BL_ERR_FORMAT, "%s: the graph's output is its input", om->path);
    if (!st) st = bl_net_set_outputs(net, &t, 1);
    if (!st) st = bl_net_finalize(net);
    if (!st) st = fill(&b);
    for (int i = 0; i < b.n; i++) ox_const_free(&b.v[i].k);
    free(b.v);
    free(b.loads);
    return st;
}

static const bl_family onnx_family = {
    .name = "onnx",
    .usage = "a model.onnx file",
    .help = "a network imported from ONNX (evaluation and statistics; no training)",
    .opts_size = sizeof(onnx_opts),
    .parse = family_parse,
    .build = family_build,
};

bl_status bl_onnx_build(const bl_onnx *m, int max_batch, bl_net *net)
{
    memset(net, 0, sizeof *net);
    int c, h, w;
    bl_status st = bl_onnx_input_shape(m, &c, &h, &w);
    if (!st) st = bl_family_register(&onnx_family);
    bl_model md;
    if (!st) st = bl_model_init(&md, "onnx");
    if (st) return st;
    ((onnx_opts *)bl_model_opts(&md))->onnx = m;
    return bl_model_build(net, &md, 0, h, w, c, max_batch);
}
