/* bnlab core: status codes and error reasons, tensor layouts and shapes, aligned memory, scratch
 * buffers and an explicit-state RNG. Everything above (bn, nn, data, train) builds on this.
 * Not here: anything about BatchNorm itself (bn.h). */
#ifndef BNLAB_CORE_H
#define BNLAB_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status -------------------------------------------------------------------------------
 * Library functions return a bl_status and, on failure, leave a human-readable reason (what went
 * wrong and what to do) that bl_error() returns. The reason is per thread, like errno. Library code
 * never exits. */
typedef enum {
    BL_OK = 0,
    BL_ERR_ARG,      /* an argument is invalid: wrong size, out of range, NULL */
    BL_ERR_NUMERIC,  /* NaN/Inf, or a statistic that cannot be computed (a single value per channel) */
    BL_ERR_NOMEM,
    BL_ERR_IO,
    BL_ERR_FORMAT,   /* a file is corrupt or not what it claims to be */
    BL_ERR_STATE     /* a call out of order, e.g. commit with no pending batch statistics */
} bl_status;

#define BNLAB_VERSION "0.1.0"

const char *bl_error(void);                 /* the reason for the last failure on this thread */
const char *bl_status_name(bl_status s);
/* Records a reason and returns s, so that `return bl_fail(BL_ERR_ARG, "...", ...)` reads well. */
bl_status bl_fail(bl_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bl_error_clear(void);
/* Puts context before the current reason, "<context>: <reason>", and returns s: how a caller
 * says where a callee's failure happened (`return bl_fail_ctx(st, "%s", path);`). */
bl_status bl_fail_ctx(bl_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Adds text after the current reason (what the caller does about it, e.g. "; the run stops"). */
void bl_error_append(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- layouts and shapes -------------------------------------------------------------------- */
typedef enum { BL_NCHW = 0, BL_NHWC = 1 } bl_layout;

/* A 4-d activation shape. (N,C) data is (N,C,1,1). */
typedef struct {
    int n, c, h, w;
    bl_layout layout;
} bl_shape;

static inline size_t bl_shape_numel(bl_shape s) { return (size_t)s.n * s.c * s.h * s.w; }
static inline size_t bl_shape_hw(bl_shape s) { return (size_t)s.h * s.w; }
const char *bl_layout_name(bl_layout l);
/* Parses "nchw"/"nhwc" (case-insensitive); BL_ERR_ARG otherwise. */
bl_status bl_layout_parse(const char *s, bl_layout *out);

/* ---- memory -------------------------------------------------------------------------------- */
/* 64-byte aligned allocation (cache line, AVX-512). NULL on failure with a reason set. */
void *bl_alloc(size_t bytes);
void *bl_calloc(size_t bytes);
/* Every other allocation of the library goes through these (malloc, calloc(n, size) with its
 * product checked, realloc, strdup; cJSON's too): one place where a failure can be injected
 * (bl_fault_set). NULL on failure with a reason set. bl_free frees any of them. */
void *bl_malloc(size_t bytes);
void *bl_callocn(size_t n, size_t size);
void *bl_realloc(void *p, size_t bytes);
char *bl_strdup(const char *s);
void bl_free(void *p);

/* ---- files ---------------------------------------------------------------------------------
 * Every file the library writes is written whole or not at all: bl_afile writes path.tmp and
 * renames it over path only after a flush to disk, so the old file stays intact and loadable
 * whatever fails. Its errors name the file and the step (create, write, fsync, rename). */
typedef struct {
    int fd;
    int failed;        /* a write failed: commit refuses, the temporary is removed */
    int done;          /* published or removed */
    char path[4096];
    char tmp[4112];
} bl_afile;
bl_status bl_afile_open(bl_afile *f, const char *path);
bl_status bl_afile_write(bl_afile *f, const void *data, size_t len);
bl_status bl_afile_commit(bl_afile *f); /* finish, then publish */
/* The two halves of commit, for files that belong together (an IDX pair): finish each (fsync,
 * close), then publish each (rename, fsync of the directory), so a failed write changes none. */
bl_status bl_afile_finish(bl_afile *f);
bl_status bl_afile_publish(bl_afile *f);
void bl_afile_abort(bl_afile *f);      /* closes and removes the temporary */
/* Appends a whole line to a log (metrics.jsonl): on any failure the file is cut back to its old
 * length, so it never holds part of a line. */
bl_status bl_append_line(const char *path, const char *line);

/* ---- fault injection (tests) ----------------------------------------------------------------
 * Makes the nth call (0-based, counted from this bl_fault_set) of one operation fail as the
 * system would: an allocation returns NULL, write fails with ENOSPC, fsync and rename with EIO.
 * nth < 0 disarms it. bl_fault_calls: the calls of that operation since its last bl_fault_set,
 * so a test counts a run's calls once and then fails each in turn. The command line arms these
 * from BNLAB_FAULT="alloc:N" (or write:N, fsync:N, rename:N; several with commas) and prints a
 * count at exit for BNLAB_FAULT_COUNT=write (or alloc, fsync, rename). */
typedef enum { BL_FAULT_ALLOC, BL_FAULT_WRITE, BL_FAULT_FSYNC, BL_FAULT_RENAME, BL_FAULT_N } bl_fault;
void bl_fault_set(bl_fault f, long nth);
long bl_fault_calls(bl_fault f);
/* 1 if this call of f is the one to fail (counts the call); for the wrappers in core. */
int bl_fault_hit(bl_fault f);
/* "write:3" arms write's 4th call; "write" only restarts its count; op (may be NULL) gets which.
 * BL_ERR_ARG for anything else. */
bl_status bl_fault_parse(const char *spec, bl_fault *op);
const char *bl_fault_name(bl_fault f); /* "alloc", "write", "fsync", "rename" */

/* A grow-only scratch buffer: kernels take their temporaries from it so a training loop does not
 * allocate per step. Not shared between threads. */
typedef struct {
    void *p;
    size_t cap;
} bl_scratch;
void *bl_scratch_get(bl_scratch *s, size_t bytes);
void bl_scratch_free(bl_scratch *s);

/* ---- RNG ------------------------------------------------------------------------------------
 * xoshiro256** with explicit state: no hidden globals, reproducible from a seed. Streams for
 * (seed, rank, epoch) come from bl_rng_seed with a mixed key. */
typedef struct {
    uint64_t s[4];
} bl_rng;
void bl_rng_seed(bl_rng *r, uint64_t seed);
uint64_t bl_rng_u64(bl_rng *r);
double bl_rng_uniform(bl_rng *r);          /* [0, 1) */
double bl_rng_normal(bl_rng *r);           /* standard normal (Box-Muller, one value per call) */
uint32_t bl_rng_below(bl_rng *r, uint32_t n); /* uniform in [0, n), unbiased */
void bl_rng_shuffle(bl_rng *r, int *a, int n);
/* A key for bl_rng_seed from two values (a seed and a stream, an epoch, a sample index...). */
uint64_t bl_rng_mix(uint64_t a, uint64_t b);

/* ---- random streams -------------------------------------------------------------------------
 * Every random draw is a function of (seed, stream, salt, index) alone, so every process and a
 * resumed run draw the same. The stream says which pass draws (a training epoch is a stream of its
 * own: 0, 1, ...; the other passes have the negative numbers below), the salt which kind of draw.
 * This is the one table of both: a new pass takes a free stream here. The values are those every
 * checkpoint so far was trained with; bit-exact resume depends on them, so they never change.
 *
 *   pass                         stream                 seed                   draws (salt)
 *   training                     the epoch (0, 1, ...)  the run's              order, augment, crops
 *   a training step's shuffle    (the step)             the run's              shuffle
 *   validation split             0                      BL_SEED_VAL            order
 *   train-split curve            BL_STREAM_TRAIN_CURVE  the run's              order
 *   evaluation                   BL_STREAM_EVAL         --seed; crops:         order, crops
 *                                                       BL_SEED_EVAL_CROPS
 *   PreciseBN                    BL_STREAM_PRECISE      its seed               order, augment, crops
 *   inspect                      BL_STREAM_INSPECT      its seed               order, augment, crops
 *   Fashion-MNIST-C              (severity)             --seed                 corrupt + corruption */
typedef enum {
    BL_STREAM_EVAL = -1,        /* evaluation: the mini-batch order, the crop head's test crops */
    BL_STREAM_PRECISE = -2,     /* PreciseBN: the sample choice, augmentation, crops */
    BL_STREAM_INSPECT = -3,     /* inspect: the mini-batches, augmentation, crops */
    BL_STREAM_TRAIN_CURVE = -4  /* the training images of the train-split curve */
} bl_stream;
#define BL_SALT_ORDER 0x5eed0000u   /* bl_epoch_order: + stream */
#define BL_SALT_AUGMENT 0xa0a0u     /* random crop and flip: + stream, then the sample index */
#define BL_SALT_CROPS 0xc7090000u   /* a crop head's boxes: + stream, then the sample index */
#define BL_SALT_SHUFFLE 0x5f0ff1e0u /* the shuffle of a step's rows, then the step */
#define BL_SALT_CORRUPT 0xc0de0000u /* Fashion-MNIST-C: + corruption, then severity, sample */
#define BL_SEED_VAL 0x7a1u          /* the validation split carved from training */
#define BL_SEED_EVAL_CROPS 0x7e57u  /* evaluation crops: the same for every model */

/* ---- threads ------------------------------------------------------------------------------- */
int bl_threads_get(void);       /* threads our loops (and BLAS) will use */
void bl_threads_set(int n);     /* n <= 0: leave the OpenMP default */

#ifdef __cplusplus
}
#endif
#endif
