/* Inside the ONNX import: the loaded model, tensors read out of TensorProtos, attributes. */
#ifndef BNLAB_ONNX_IMPL_H
#define BNLAB_ONNX_IMPL_H

#include <stdint.h>

#include "bnlab/layer.h"
#include "bnlab/onnx.h"
#include "onnx.pb-c.h"

#define OX_MAX_RANK 8
/* how deeply messages may nest: a graph in a node's attribute is 3 levels below its graph (node,
 * attribute, graph), so 64 allows 20 graphs within graphs; a real model's control flow is a few */
#define OX_MAX_NESTING 64
/* The batch in folded shape arithmetic (Shape of a runtime tensor): a Reshape target whose first
 * value is this keeps the batch. Any other arithmetic on it is refused. */
#define OX_BATCH ((int64_t)-(1LL << 40))

struct bl_onnx {
    char *path;
    uint8_t *file;
    size_t size;
    Onnx__ModelProto *model;
    const Onnx__GraphProto *graph;
    int opset;
    char producer[96];
    const Onnx__ValueInfoProto *input; /* the graph input that is no initializer */
    int in_c, in_h, in_w;              /* fixed per-sample input shape (0: not yet) */
    int n_bn;
};

/* A constant tensor read out of a TensorProto (or an attribute, or folded): float or int64. */
typedef struct {
    int rank;
    int64_t dims[OX_MAX_RANK];
    size_t count;
    int is_int;  /* int64 values (i), else float (f) */
    float *f;
    int64_t *i;
} ox_const;

void ox_const_free(ox_const *c);
/* Reads t (FLOAT, DOUBLE, FLOAT16 as float; INT64, INT32, INT8, UINT8, BOOL as int64). `what`
 * names it in errors. Raw data that is shorter than the dims claim, and external data, are
 * refused. */
bl_status ox_tensor_read(const bl_onnx *m, const Onnx__TensorProto *t, const char *what,
                         ox_const *out);

/* Attributes of a node: the attribute, or NULL. */
const Onnx__AttributeProto *ox_attr(const Onnx__NodeProto *n, const char *name);
int64_t ox_attr_int(const Onnx__NodeProto *n, const char *name, int64_t def);
float ox_attr_float(const Onnx__NodeProto *n, const char *name, float def);
/* ints: up to max values into v, *count the number (0 when absent). */
bl_status ox_attr_ints(const Onnx__NodeProto *n, const char *name, int64_t *v, int max,
                       int *count);
const char *ox_attr_string(const Onnx__NodeProto *n, const char *name, char *buf, size_t len);
/* The net's parameter names of BatchNormalization node `node`'s scale, bias, mean and var: the
 * names it reads, or NAME#node when an earlier BN node reads the same name, or NAME#node.slot when
 * an earlier slot of this node does (each BN keeps its own statistics; the writer splits shared
 * ones off). */
void ox_bn_names(const bl_onnx *m, int node, char names[4][96]);
/* The loaded file with the net's BN statistics written over their raw data and the "bnlab"
 * metadata entry replaced (splice.c): *out (malloc'd, *out_len bytes), or *out NULL when some
 * statistic cannot be written in place (shared, not float32 raw data) and the model must be
 * repacked. */
bl_status ox_splice(const bl_onnx *m, const bl_net *net, const char *record, uint8_t **out,
                    size_t *out_len);
/* Editing a parsed model (save.c): the initializer of that name (NULL: none); how many node
 * inputs and graph outputs read a value; a tensor's values replaced by c floats (raw data, 1-D);
 * a new 1-D float initializer; the "bnlab" metadata entry set; the initializer a value comes
 * from through Identity nodes (NULL: none); buf (freed here) written to path atomically. */
Onnx__TensorProto *ox_find_init(Onnx__GraphProto *g, const char *name);
int ox_readers(const Onnx__GraphProto *g, const char *name);
bl_status ox_set_floats(Onnx__TensorProto *t, const float *v, int c);
bl_status ox_add_init(Onnx__GraphProto *g, const char *name, const float *v, int c);
bl_status ox_set_meta(Onnx__ModelProto *mp, const char *value);
const char *ox_source_of(const Onnx__GraphProto *g, const char *v);
bl_status ox_write_file(const char *path, uint8_t *buf, size_t len);
/* A parsed model finished: packed and written to path atomically unless st is an error already
 * (what: the model, for messages); mp is freed either way. Returns st or the first failure. */
bl_status ox_pack_write(Onnx__ModelProto *mp, bl_status st, const char *path, const char *what);
/* protobuf-c's allocator through bnlab's */
extern ProtobufCAllocator ox_pb_allocator;
/* "node 'NAME' (Op, opset K)" for messages. */
const char *ox_node_desc(const bl_onnx *m, const Onnx__NodeProto *n, char *buf, size_t len);

#endif
