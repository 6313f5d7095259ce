/* bnlab images: folders of JPEG and PNG images (torchvision's ImageFolder layout) decoded and
 * preprocessed exactly as torchvision does it on PIL images, so a model sees the pixels it saw in
 * PyTorch:
 *     Compose([Resize(S), CenterCrop(C), ToTensor(), Normalize(mean, std)])
 * on Image.open(p).convert('RGB') (or convert('L')). This file goes as far as the uint8 image PIL
 * holds before ToTensor; normalization is the data recipe's (data.h). Decoding is libjpeg's and
 * libpng's (a build without them has these functions, returning an error that says to install
 * libjpeg-dev and libpng-dev); resizing is PIL's bilinear filter in its own fixed point. */
#ifndef BNLAB_IMAGES_H
#define BNLAB_IMAGES_H

#include "bnlab/core.h"
#include "bnlab/data.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Images above these are refused before anything is allocated (decoded or after Resize). */
#define BL_IMG_MAX_SIDE 32768
#define BL_IMG_MAX_PIXELS (1L << 26)

/* ---- the recipe ------------------------------------------------------------------------------
 * 0 means "not applied". Resize(S): the shorter side becomes S, the longer int(S * long / short)
 * (torchvision's rule), PIL's BILINEAR with its antialiasing. CenterCrop(C): the C x C window at
 * top = int(round((h - C) / 2.0)) (Python's round, half to even), left likewise; where the image
 * is smaller than C it is first padded with zeros, (C - h) // 2 rows above and the rest below
 * (columns likewise), as torchvision's center_crop pads. gray: convert('L') instead of
 * convert('RGB'), one channel. */
typedef struct {
    int resize;
    int crop;
    int gray;
} bl_img_recipe;

/* resize and crop in [0, BL_IMG_MAX_SIDE], gray 0 or 1; errors name the field (recipe.crop). */
bl_status bl_img_recipe_check(const bl_img_recipe *r);
/* "Resize(256) + CenterCrop(224), RGB", "CenterCrop(28), L", "original size, RGB": for logs and
 * metadata. Returns what snprintf returns. */
int bl_img_recipe_str(const bl_img_recipe *r, char *buf, size_t len);
static inline int bl_img_recipe_channels(const bl_img_recipe *r) { return r->gray ? 1 : 3; }

/* ---- one image ------------------------------------------------------------------------------ */
typedef struct {
    int h, w, c;   /* c: 3 (RGB) or 1 (L) */
    uint8_t *px;   /* (h, w, c), HWC */
} bl_image;
void bl_image_free(bl_image *im);

typedef enum { BL_IMG_JPEG = 1, BL_IMG_PNG = 2 } bl_img_format;

/* The format (by magic bytes, never the extension) and size from the file's header alone; sizes
 * over the limits are refused as bl_img_decode refuses them. */
bl_status bl_img_probe(const char *path, bl_img_format *fmt, int *h, int *w);
/* Decodes a JPEG or PNG as PIL's Image.open(path).convert('RGB') (gray: convert('L')) would, bit
 * for bit: grey replicated; alpha dropped (no compositing); palettes expanded (tRNS ignored,
 * indices past the palette grey, i -> (i, i, i), as PIL's palette is a grey ramp where the file's
 * ends); 16-bit RGB, RGBA and grey+alpha PNGs reduced to their high byte; 16-bit grey PNGs
 * clipped to 255 (PIL opens them as 32-bit 'I' and clips: a 16-bit value v becomes min(v, 255),
 * so most of such an image is white - PIL's behaviour, kept); L = (R*19595 + G*38470 + B*7471 +
 * 0x8000) >> 16, PIL's rounding of R*299/1000 + G*587/1000 + B*114/1000. CMYK and YCCK JPEGs are
 * refused (PIL's conversion of them is not reproduced), and so are truncated files (PIL: "image
 * file is truncated"; a PNG is complete at its last row, as for PIL), corrupt ones (libjpeg's or
 * libpng's message), images over the limits and progressive JPEGs of more than 500 scans (a
 * guard against files made to take minutes): errors name the file. */
bl_status bl_img_decode(const char *path, int gray, bl_image *out);
/* The same from memory; name is the file for errors. */
bl_status bl_img_decode_mem(const void *data, size_t len, const char *name, int gray,
                            bl_image *out);

/* torchvision's Resize(s) output size of an h x w image. */
void bl_img_resize_size(int h, int w, int s, int *oh, int *ow);
/* PIL's Image.resize((ow, oh), BILINEAR): the same size is a copy. */
bl_status bl_img_resize(const bl_image *in, int oh, int ow, bl_image *out);
/* torchvision's center_crop to ch x cw (zero padding where the image is smaller). */
bl_status bl_img_center_crop(const bl_image *in, int ch, int cw, bl_image *out);
/* The size an h x w image has after the recipe's Resize and CenterCrop. */
void bl_img_recipe_size(const bl_img_recipe *r, int h, int w, int *oh, int *ow);
/* Resize then CenterCrop, as the recipe says, into dst (oh, ow, in->c) of the size
 * bl_img_recipe_size gives; only the pixels that survive the crop are resampled (each output
 * pixel of PIL's resampling depends on its own row and column alone, so this is exact). */
bl_status bl_img_apply_into(const bl_image *in, const bl_img_recipe *r, uint8_t *dst, int oh,
                            int ow);
bl_status bl_img_apply(const bl_image *in, const bl_img_recipe *r, bl_image *out);

/* ---- image folders ------------------------------------------------------------------------------
 * torchvision's ImageFolder: a folder of class folders, classes in sorted order (by bytes, as
 * Python's sorted() on str) labelled 0..K-1, each walked recursively (symbolic links followed) in
 * the order of sorted(os.walk(...)) - directories by their full path, so "a/x-y" comes before
 * "a/x/z" - and files sorted within each. A folder without subfolders is a flat folder of images
 * without labels. Images are .jpg, .jpeg, .png in any case; other files are counted and skipped;
 * names starting with '.' (files and folders) are ignored, where torchvision would take a hidden
 * .png or a .ipynb_checkpoints class. Files at the top of a folder of classes are skipped (and
 * counted) as torchvision skips them. A class folder without images is an error, as it is in
 * torchvision, and so is a folder without any. */
typedef struct {
    char *root;
    int n;               /* images */
    char **paths;        /* (n) root/class/..., in ImageFolder's order */
    int *labels;         /* (n) class indices, or NULL: a flat folder */
    int classes;         /* K (0: a flat folder) */
    char **class_names;  /* (K), sorted */
    int skipped;         /* files that are not images (hidden ones not counted) */
    char skipped_what[256]; /* "3 .txt, 1 .webp" by count, then extension; "" when none */
} bl_imgfolder;
bl_status bl_imgfolder_scan(const char *dir, bl_imgfolder *out);
void bl_imgfolder_free(bl_imgfolder *f);

/* The size (h, w, channels) of every image of a batch with the recipe. With a crop it is C x C.
 * Without one, images of other shapes come out at other sizes (Resize keeps the aspect ratio),
 * and a batch has one size: it is the first image's (read from its header, not decoded), and
 * bl_imgfolder_fetch refuses an image that comes out otherwise, naming it and suggesting a crop. */
bl_status bl_imgfolder_out_size(const bl_imgfolder *f, const bl_img_recipe *r, int *h, int *w,
                                int *c);
/* Decodes images idx[0..n) in parallel and writes each, resized and cropped by the recipe, to
 * out (n, h, w, c) HWC uint8, h and w from bl_imgfolder_out_size (c from the recipe). Each image's
 * result depends on it alone. An error is that of the first failing image in index order, naming
 * it; out is then unspecified. */
bl_status bl_imgfolder_fetch(const bl_imgfolder *f, const bl_img_recipe *r, const int *idx, int n,
                             uint8_t *out, int h, int w);

/* ---- an image folder as a data set (image_dataset.c) --------------------------------------------
 * The folder scanned once, its labels in memory, its images decoded batch by batch with the
 * recipe when a command asks for them (bl_dataset.source): the folder is never in memory whole.
 * *classes: the class folders (0: flat, no labels); skipped: what was skipped ("3 .txt"; may be
 * NULL). */
bl_status bl_dataset_from_folder(const char *dir, const bl_img_recipe *r, bl_dataset *out,
                                 int *classes, char *skipped, size_t skipped_len);

#ifdef __cplusplus
}
#endif
#endif
