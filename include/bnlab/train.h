/* bnlab train: checkpoints (safetensors), SGD, schedules, the training loop and evaluation. */
#ifndef BNLAB_TRAIN_H
#define BNLAB_TRAIN_H

#include "bnlab/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors ------------------------------------------------------------------------------
 * File: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [b, e]},
 * "__metadata__": {string: string}}, then the data. Offsets are relative to the data start, the
 * tensors contiguous (row-major) and non-overlapping. */
typedef enum { BL_F32, BL_F64, BL_I64, BL_U8 } bl_dtype;

typedef struct {
    char name[128];
    bl_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t begin, end; /* byte offsets in the data section */
} bl_st_entry;

typedef struct {
    int n;
    bl_st_entry *e;
    int n_meta;
    char (*meta_key)[64];
    char **meta_val;
    uint8_t *data;   /* the data section */
    size_t data_len;
} bl_safetensors;

/* Reads and validates a whole file: sizes, offsets, dtypes, JSON; BL_ERR_FORMAT names the file
 * and what is wrong (truncated, foreign, corrupt). */
bl_status bl_st_read(const char *path, bl_safetensors *st);
void bl_st_free(bl_safetensors *st);
const bl_st_entry *bl_st_find(const bl_safetensors *st, const char *name);
const char *bl_st_meta(const bl_safetensors *st, const char *key);
/* Copies an entry into float (F32 or F64 converted), checking the element count. */
bl_status bl_st_get_f32(const bl_safetensors *st, const char *name, float *out, size_t count);
size_t bl_st_numel(const bl_st_entry *e);

typedef struct {
    int n, cap;
    struct bl_st_item {
        char name[128];
        bl_dtype dtype;
        int ndim;
        int64_t shape[8];
        const void *data;
        size_t bytes;
        void *owned;
    } *items;
    int n_meta, cap_meta;
    char (*meta_key)[64];
    char **meta_val;
} bl_st_writer;

/* Adds a tensor (the data is copied, so the caller may reuse its buffer). */
bl_status bl_st_add(bl_st_writer *w, const char *name, bl_dtype dtype, int ndim,
                    const int64_t *shape, const void *data);
bl_status bl_st_set_meta(bl_st_writer *w, const char *key, const char *value);
/* Writes atomically: path.tmp, fsync, rename, fsync of the directory. */
bl_status bl_st_write(const bl_st_writer *w, const char *path);
void bl_st_writer_free(bl_st_writer *w);

/* ---- SGD, exactly PyTorch's torch.optim.SGD (dampening 0) ---------------------------------------
 *   g = grad + wd * p        (wd on conv/linear weights; on BN and biases only with wd_bn)
 *   buf = momentum * buf + g (buf starts at 0, which equals PyTorch's first-step copy)
 *   g = nesterov ? g + momentum * buf : buf
 *   p -= lr * g
 * The momentum buffers live in the net's optimizer block. */
typedef struct {
    double momentum, wd;
    int nesterov, wd_bn;
} bl_sgd;
void bl_sgd_step(bl_net *net, const bl_sgd *o, double lr);

#ifdef __cplusplus
}
#endif
#endif
