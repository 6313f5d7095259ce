/* bnlab data: datasets as uint8 images + labels (the IDX reader behind Fashion-MNIST), the data
 * recipe (what the data is and how a run normalizes and augments it), batches, and the sampler
 * (which samples a step and a rank take). */
#ifndef BNLAB_DATA_H
#define BNLAB_DATA_H

#include "bnlab/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BL_FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define BL_RECIPE_MAX_CHANNELS 4

/* The data recipe: the data set, its shape, the normalization x' = (x/255 - mean[c]) / std[c] and
 * the training augmentation. A run uses one, records it in its checkpoints, and eval, precise and
 * inspect read it back, so the model is always fed what it was trained on. The loaders are
 * one-channel, ten-class for now; the recipe already carries channels and classes. */
typedef struct {
    char name[32];   /* "fashion-mnist" */
    int channels, classes;
    float mean[BL_RECIPE_MAX_CHANNELS], std[BL_RECIPE_MAX_CHANNELS];
    int pad;         /* random crop: pad by this many pixels (black), take a window; 0: off */
    int flip;        /* horizontal flip with probability 1/2 */
} bl_recipe;

/* Fashion-MNIST: one channel, 10 classes, mean 0.2860, std 0.3530 (of the training images),
 * crop with padding 2 and flip: the recipe of every run so far, and of checkpoints without one. */
bl_recipe bl_recipe_fmnist(void);
/* Checks the values (channels 1..BL_RECIPE_MAX_CHANNELS, classes >= 2, std > 0, finite means,
 * pad >= 0); an error names the field as recipe.<field>. */
bl_status bl_recipe_check(const bl_recipe *r);
/* The recipe as one JSON object, as checkpoints record it; returns what snprintf returns. */
int bl_recipe_json(const bl_recipe *r, char *buf, size_t len);

/* ---- .npy arrays (NumPy's format 1.0 to 3.0, C order) --------------------------------------------
 * float32, float64 (read as float), uint8 and int64 arrays of up to 8 dimensions; little-endian.
 * Other dtypes, Fortran order, object arrays and truncated data are BL_ERR_FORMAT naming the file
 * and what it holds. */
typedef enum { BL_NPY_F32, BL_NPY_U8, BL_NPY_I64 } bl_npy_type;
typedef struct {
    bl_npy_type type;
    int ndim;
    long long shape[8];
    size_t count;
    float *f;      /* F32 (float64 converted) */
    uint8_t *u8;   /* U8 */
    int64_t *i64;  /* I64 */
} bl_npy;
bl_status bl_npy_read(const char *path, bl_npy *out);
/* Writes a float32 array atomically. */
bl_status bl_npy_write_f32(const char *path, const float *v, int ndim, const long long *shape);
void bl_npy_free(bl_npy *a);

/* Images read on demand instead of held in memory (an image folder, decoded batch by batch):
 * fetch writes images idx[0..n) as (n, h, w, c) uint8 HWC; release frees ctx and the source when
 * the last data set holding it (refs: the data set and its subsets) is freed. */
typedef struct bl_data_source {
    void *ctx;
    int refs;
    bl_status (*fetch)(void *ctx, const int *idx, int n, uint8_t *out);
    void (*release)(struct bl_data_source *s);
    /* optional: after each fetch, the images fetched so far and the source's size (a terminal's
     * progress line) */
    void (*progress)(void *pctx, long fetched, int n);
    void *progress_ctx;
    long fetched;
} bl_data_source;

typedef struct {
    int n, h, w;      /* images, rows, columns */
    uint8_t *pixels;  /* (n, h, w, c) HWC, normalized by the recipe in batches; or NULL */
    uint8_t *labels;  /* (n), or NULL: no labels (PreciseBN and inspect need none) */
    int c;            /* channels (0 means 1: the Fashion-MNIST loaders leave it) */
    float *values;    /* (n, h, w, c) HWC floats taken as they are (no recipe normalization),
                       * instead of pixels */
    bl_data_source *source; /* instead of pixels: uint8 images fetched per batch */
    int *map;               /* with a source: image i is the source's map[i] (NULL: i) */
    int owns_source;        /* holds one of the source's refs (every data set with a source) */
} bl_dataset;
static inline int bl_dataset_channels(const bl_dataset *d) { return d->c > 0 ? d->c : 1; }
/* Values of one sample (h * w * channels). */
static inline size_t bl_dataset_sample(const bl_dataset *d)
{
    return (size_t)d->h * d->w * bl_dataset_channels(d);
}
/* A dataset from an array of images (n, C, H, W) NCHW - uint8 (normalized by the recipe in
 * batches) or float (taken as they are) - and optional labels (n) of uint8 or int64 in
 * [0, 255]; what = the file, for errors. */
bl_status bl_dataset_from_npy(const bl_npy *images, const bl_npy *labels, const char *what,
                              bl_dataset *out);

/* Reads an IDX image file and its label file (gzip or plain). Corrupt or mismatched files are
 * BL_ERR_FORMAT with the file named. */
bl_status bl_idx_load(const char *images_path, const char *labels_path, bl_dataset *out);
/* Writes a dataset as two gzip IDX files (each atomically: temporary file, fsync, rename), which
 * bl_idx_load reads back. */
bl_status bl_idx_save(const bl_dataset *d, const char *images_path, const char *labels_path);
/* A grey data set as a torchvision ImageFolder: dir/<class>/<index>.png with Fashion-MNIST's
 * class folders ("0_tshirt_top" ... "9_ankle_boot": sorted order is label order), or dir/<index>
 * .png without labels; each PNG written atomically. */
bl_status bl_dataset_save_folder(const bl_dataset *d, const char *dir);
const char *bl_fmnist_class_folder(int label); /* NULL outside 0..9 */
/* A grayscale image as PNG (8 bits, zlib), atomically; pixels: (h, w). */
bl_status bl_png_save_gray(const char *path, int w, int h, const uint8_t *pixels);
/* Fashion-MNIST split "train" or "test" from dir (NULL: BL_FMNIST_DIR). */
bl_status bl_fmnist_load(const char *dir, const char *split, bl_dataset *out);
void bl_dataset_free(bl_dataset *d);


/* Moves the samples order[0..n) of src into a new dataset (e.g. a validation split). */
bl_status bl_dataset_subset(const bl_dataset *src, const int *order, int n, bl_dataset *out);

/* The augmentation stream of one batch: the recipe's random crop (pad with the value of a black
 * pixel, as torchvision pads before normalizing, then a random h x w window) and flip. The draws
 * of sample i come from (seed, epoch, i) alone, so a batch does not depend on which other samples
 * share it, on the rank that holds it, or on thread timing. */
typedef struct {
    uint64_t seed;
    int epoch;
} bl_augment;
/* x: (n, h, w, c) floats normalized by the recipe (float values as they are); y: (n) labels (0
 * without labels; y may be NULL); idx: dataset indices. aug NULL: normalization only. An error
 * only from a source (an image that does not decode: named); x is then zeros. */
bl_status bl_dataset_batch(const bl_dataset *d, const bl_recipe *r, const int *idx, int n,
                           const bl_augment *aug, float *x, uint8_t *y);

/* ---- corruptions (Fashion-MNIST-C) ----------------------------------------------------------------
 * ImageNet-C's / CIFAR-10-C's corruptions of grayscale images at severities 1-5, deterministic: an
 * image's corruption is a function of (image, corruption, severity, seed, sample index) alone.
 * Parameters and sources: docs/corruptions.md. */
typedef enum {
    BL_CORRUPT_GAUSSIAN_NOISE,
    BL_CORRUPT_SHOT_NOISE,
    BL_CORRUPT_IMPULSE_NOISE,
    BL_CORRUPT_DEFOCUS_BLUR,
    BL_CORRUPT_MOTION_BLUR,
    BL_CORRUPT_GLASS_BLUR,
    BL_CORRUPT_CONTRAST,
    BL_CORRUPT_BRIGHTNESS,
    BL_CORRUPT_JPEG,
    BL_CORRUPT_PIXELATE,
    BL_CORRUPT_ELASTIC,
    BL_CORRUPT_FOG,
    BL_CORRUPT_COUNT
} bl_corruption;
const char *bl_corruption_name(bl_corruption c); /* "gaussian_noise", ImageNet-C's names */
/* A name ('-' or '_'; "jpeg" and "elastic" also do); an unknown one is an error listing them. */
bl_status bl_corruption_parse(const char *name, bl_corruption *c);
/* 0 for the corruptions whose damage is not monotone in severity (docs/corruptions.md). */
int bl_corruption_monotone(bl_corruption c);
/* in, out: (h, w) uint8, may not overlap; index: the sample's index in its split. */
bl_status bl_corrupt_image(bl_corruption c, int severity, uint64_t seed, long index, int h, int w,
                           const uint8_t *in, uint8_t *out);
/* Every image of src corrupted (labels copied) into a new dataset. */
bl_status bl_corrupt_dataset(const bl_dataset *src, bl_corruption c, int severity, uint64_t seed,
                             bl_dataset *out);

/* ---- the sampler ---------------------------------------------------------------------------------
 * One global permutation per (seed, epoch), the same on every process: global batch s is
 * order[s*B, (s+1)*B). Rank r of W takes the r-th contiguous share of it, ceil(B/W) samples, the
 * last share smaller (or empty): exactly the groups bl_groups_ghost(B, ceil(B/W)) forms, so W
 * ranks see the samples of one process with batch B, and per-rank BN is ghost BN of that size. */
void bl_epoch_order(int n, uint64_t seed, int epoch, int *order);
/* Rank r's share [*offset, *offset + *count) of a global batch of B samples over W ranks. */
void bl_batch_share(int batch, int rank, int world, int *offset, int *count);

#ifdef __cplusplus
}
#endif
#endif
