/* bnlab onnx: networks users bring, as ONNX files (docs/onnx.md). A model is loaded and checked
 * once (IR <= 8, default-domain opsets 7-17, every node's op supported, inputs defined before use),
 * then built as a bl_net on the one engine - the family "onnx" - whose parameters carry the
 * initializers' names, so its BN statistics are found, re-estimated and written back by name.
 * Built only with protobuf-c (BL_HAVE_ONNX); without it every call says how to get it. */
#ifndef BNLAB_ONNX_H
#define BNLAB_ONNX_H

#include "bnlab/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bl_onnx bl_onnx;

/* Reads and checks the file. Errors name the file and, for a node, its name, op and opset. */
bl_status bl_onnx_load(const char *path, bl_onnx **out);
void bl_onnx_free(bl_onnx *m);
/* The input's per-sample shape (channels, height, width) as the file declares it; BL_ERR_ARG
 * with a message naming the symbolic dimension when one is not fixed (give it with
 * bl_onnx_set_input_shape, the command's --input-shape C,H,W). */
bl_status bl_onnx_input_shape(const bl_onnx *m, int *c, int *h, int *w);
/* Fixes the input's per-sample shape (dimension 0 is always the batch). */
bl_status bl_onnx_set_input_shape(bl_onnx *m, int c, int h, int w);
/* Builds the graph for batches of up to max_batch into net (finalized, parameters loaded from the
 * initializers and Constant nodes). The net's output is the graph's first output, in ONNX's
 * (NCHW) element order. On failure the net is freed and the message names the node. */
bl_status bl_onnx_build(const bl_onnx *m, int max_batch, bl_net *net);
/* Writes the model to path (atomically) with the net's BN statistics (running mean and variance)
 * in place of the file's: nothing else changes but a metadata_props entry "bnlab" = record (NULL:
 * none). A statistic that another node reads too, or that comes through an Identity, is split off
 * into an initializer of its own for that BN node (*split counts them). */
bl_status bl_onnx_save(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       int *split);
/* The BN statistics alone as safetensors: each under the name of the initializer it came from
 * (a PyTorch export's state_dict key: model.load_state_dict(stats, strict=False)), or, when it was
 * shared, under the name the BN node reads it by (*unnamed counts those). */
bl_status bl_onnx_save_stats(const bl_onnx *m, const bl_net *net, const char *path,
                             const char *record, int *unnamed);
/* BN folded into the Conv or Gemm before it (fold.c, docs/onnx.md): every BN that reads the
 * output of a Conv or Gemm which nothing else reads, whose weight is a constant, with the net's
 * statistics, gamma and beta; the model written to path (atomically) without those BN nodes, a
 * metadata_props entry "bnlab" = record (NULL: none). Every other BN is kept and reported with
 * its reason; the report (bl_fold_report, nn.h) counts the starved channels per folded layer. */
bl_status bl_onnx_fold(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       bl_fold_report *r);
/* The number of BatchNormalization nodes (0: BN folded away at export). */
int bl_onnx_bn_count(const bl_onnx *m);
/* The file's path, producer ("pytorch 1.13.0") and default-domain opset. */
const char *bl_onnx_path(const bl_onnx *m);
const char *bl_onnx_producer(const bl_onnx *m);
int bl_onnx_opset(const bl_onnx *m);
/* The export recipe that keeps BN, for messages about a model without it. */
extern const char bl_onnx_export_recipe[];

#ifdef __cplusplus
}
#endif
#endif
