/* The graph builder's state (build.c, ops.c): every ONNX value by name - a constant (an
 * initializer, a Constant node, a folded shape chain) or a runtime tensor of the net - and the
 * parameters to fill from the constants once the net is finalized. */
#ifndef BNLAB_ONNX_GRAPH_H
#define BNLAB_ONNX_GRAPH_H

#include "onnx/onnx_impl.h"

/* A runtime value's storage: ONNX's logical dims (dims[0] the batch) held in bnlab tensor t,
 * either NHWC (spatial: rank 4, per-sample (H, W, C)) or in ONNX's own element order (flat:
 * per-sample (1, 1, prod dims[1..])). The two agree when H = W = 1. */
typedef struct {
    const char *name;
    int is_const;
    ox_const k;       /* is_const */
    const char *src;  /* is_const: the initializer or value the data comes from */
    int rank;         /* runtime */
    int64_t dims[OX_MAX_RANK];
    int t, spatial;
} ox_value;

/* A parameter to fill after finalize: from constant `from` (OIHW for conv weights), transposed
 * (a (K, M) matrix stored as (M, K)) and scaled when asked. */
typedef struct {
    char name[96];
    int from; /* index of the value (the table grows, so no pointer) */
    int transpose;
    float scale;
} ox_load;

typedef struct {
    const bl_onnx *m;
    bl_net *net;
    ox_value *v;
    int n, cap;
    ox_load *loads;
    int n_loads, cap_loads;
    int node;                  /* index of the node being built */
    const Onnx__NodeProto *nd; /* and the node */
    char desc[160];            /* "node 'x' (Conv, opset 13)" */
} ox_build;

ox_value *ox_find(ox_build *b, const char *name);
/* Input k of the node (an error naming it when undefined; optional inputs: "" or absent give
 * NULL with BL_OK when allow_absent). */
bl_status ox_input(ox_build *b, int k, int allow_absent, ox_value **out);
/* Defines output k of the node as a runtime value / a constant (taking c). */
bl_status ox_def_runtime(ox_build *b, int k, int t, int rank, const int64_t *dims, int spatial);
bl_status ox_def_const(ox_build *b, int k, ox_const *c);
/* Output k names the same value as v (Identity, Dropout). */
bl_status ox_def_alias(ox_build *b, int k, const ox_value *v);
/* The value's tensor as NHWC (a gather when it is held flat) / in ONNX's order. */
bl_status ox_spatial(ox_build *b, ox_value *v, int *t);
bl_status ox_flat(ox_build *b, ox_value *v, int *t);
/* Records a parameter's source. */
bl_status ox_load_add(ox_build *b, const char *param, const ox_value *from, int transpose,
                      float scale);
/* An error about the node: "file: node 'x' (Op, opset K): ..." */
bl_status ox_fail(ox_build *b, bl_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The layer name for the node (its name, or Op_index). */
const char *ox_layer_name(ox_build *b, char *buf, size_t len);

/* The op table (ops.c): NULL when unsupported; the list of supported ops for messages. */
typedef bl_status (*ox_op_fn)(ox_build *b);
ox_op_fn ox_op_find(const char *op);
const char *ox_op_list(void);

#endif
