/* bnlab data: datasets as uint8 images + labels. For now the IDX (gzip) reader behind
 * Fashion-MNIST; augmentation, sampling and CIFAR come with the training engine. */
#ifndef BNLAB_DATA_H
#define BNLAB_DATA_H

#include "bnlab/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BL_FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define BL_FMNIST_MEAN 0.2860f
#define BL_FMNIST_STD 0.3530f

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

/* Normalization and augmentation of one batch. Random crop: pad `pad` pixels with the value of a
 * black pixel (as torchvision pads before normalizing), take a random h x w window; flip: mirror
 * horizontally with probability 1/2. The draws of sample i come from (seed, epoch, i) alone, so a
 * batch does not depend on which other samples share it or on thread timing. */
typedef struct {
    float mean, std;
    int pad, flip;  /* 0 = off */
    uint64_t seed;
    int epoch;
} bl_augment;
/* x: (n, h, w, 1) floats; y: (n) labels; idx: dataset indices. aug NULL: normalize only with the
 * Fashion-MNIST mean/std. */
void bl_dataset_batch(const bl_dataset *d, const int *idx, int n, const bl_augment *aug, float *x,
                      uint8_t *y);
/* The sample order of an epoch: a permutation of 0..n-1 from (seed, epoch, rank). */
void bl_epoch_order(int n, uint64_t seed, int epoch, int rank, int *order);

#ifdef __cplusplus
}
#endif
#endif
