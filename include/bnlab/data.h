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

typedef struct {
    int n, h, w;      /* images, rows, columns (one channel) */
    uint8_t *pixels;  /* (n, h, w) */
    uint8_t *labels;  /* (n) */
} bl_dataset;

/* Reads an IDX image file and its label file (gzip or plain). Corrupt or mismatched files are
 * BL_ERR_FORMAT with the file named. */
bl_status bl_idx_load(const char *images_path, const char *labels_path, bl_dataset *out);
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
/* x: (n, h, w, 1) floats normalized by the recipe; y: (n) labels; idx: dataset indices. aug NULL:
 * normalization only. */
void bl_dataset_batch(const bl_dataset *d, const bl_recipe *r, const int *idx, int n,
                      const bl_augment *aug, float *x, uint8_t *y);

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
