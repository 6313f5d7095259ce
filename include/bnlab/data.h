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

#ifdef __cplusplus
}
#endif
#endif
