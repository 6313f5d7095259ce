/* A dataset written as a torchvision ImageFolder (bnlab corrupt --format png): DIR/<class>/<index>
 * .png, one grey PNG per image, class folders named so that sorted() order is label order, so
 * torchvision's ImageFolder and bnlab's --images read the labels back. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const fmnist_classes[10] = {
    "0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal",     "6_shirt",   "7_sneaker",  "8_bag",   "9_ankle_boot"};

const char *bl_fmnist_class_folder(int label)
{
    return label >= 0 && label < 10 ? fmnist_classes[label] : NULL;
}

static bl_status make_dir(const char *path)
{
    if (mkdir(path, 0755) && errno != EEXIST)
        return bl_fail(BL_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    return BL_OK;
}

bl_status bl_dataset_save_folder(const bl_dataset *d, const char *dir)
{
    if (!d->pixels || bl_dataset_channels(d) != 1)
        return bl_fail(BL_ERR_ARG, "an image folder of grey uint8 images only (this data set has "
                       "%d channels%s)", bl_dataset_channels(d), d->pixels ? "" : " as floats");
    char path[1200];
    bl_status st = make_dir(dir);
    for (int k = 0; k < 10 && !st && d->labels; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, fmnist_classes[k]);
        st = make_dir(path);
    }
    for (int i = 0; i < d->n && !st; i++) {
        const int y = d->labels ? d->labels[i] : -1;
        if (d->labels && y > 9)
            return bl_fail(BL_ERR_ARG, "image %d has label %d: the folder names hold 10 classes", i, y);
        if (d->labels) snprintf(path, sizeof path, "%s/%s/%05d.png", dir, fmnist_classes[y], i);
        else snprintf(path, sizeof path, "%s/%05d.png", dir, i);
        st = bl_png_save_gray(path, d->w, d->h, d->pixels + (size_t)i * d->h * d->w);
    }
    return st;
}
