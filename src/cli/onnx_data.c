/* The data of the commands on a model.onnx: --tensors (a .npy or safetensors of NCHW images,
 * uint8 normalized by --mean/--std or float32 as they are, labels from --labels or the file) or
 * the Fashion-MNIST IDX splits, and the model opened with its input shape fixed. */
#include "cli/cli.h"
#include "bnlab/images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)

static int floats3(const char *s, float *v, int max)
{
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        char *end;
        v[n++] = strtof(p, &end);
        if (end == p) return -1;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *p ? -1 : n;
}

/* A safetensors file of images as an array: the tensor "images" (or the only 4-D one), uint8 or
 * float32/64 (N, C, H, W), and "labels" (N) uint8 or int64 when there is one. */
static bl_status st_arrays(const char *path, bl_npy *im, bl_npy *lab, int *has_labels)
{
    memset(im, 0, sizeof *im), memset(lab, 0, sizeof *lab);
    *has_labels = 0;
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    const bl_st_entry *e = bl_st_find(&st, "images"), *l = bl_st_find(&st, "labels");
    for (int i = 0; !e && i < st.n; i++)
        if (st.e[i].ndim == 4) {
            if (e) break;
            e = &st.e[i];
        }
    if (!e || e->ndim != 4 || e->dtype == BL_I64) {
        bl_st_free(&st);
        return bl_fail(BL_ERR_FORMAT, "%s: no (N, C, H, W) uint8 or float tensor named 'images' "
                       "(or a single 4-D one)", path);
    }
    const bl_st_entry *es[2] = {e, l};
    bl_npy *out[2] = {im, lab};
    for (int k = 0; k < 2 && !rc; k++) {
        if (!es[k]) continue;
        bl_npy *a = out[k];
        a->ndim = es[k]->ndim;
        for (int d = 0; d < a->ndim; d++) a->shape[d] = es[k]->shape[d];
        a->count = bl_st_numel(es[k]);
        const uint8_t *src = st.data + es[k]->begin;
        const size_t n = a->count ? a->count : 1;
        if (es[k]->dtype == BL_U8) {
            a->type = BL_NPY_U8;
            if ((a->u8 = bl_malloc(n))) memcpy(a->u8, src, a->count);
        } else if (es[k]->dtype == BL_I64) {
            a->type = BL_NPY_I64;
            if ((a->i64 = bl_malloc(n * 8))) memcpy(a->i64, src, a->count * 8);
        } else {
            a->type = BL_NPY_F32;
            if ((a->f = bl_malloc(n * sizeof(float))))
                rc = bl_st_get_f32(&st, es[k]->name, a->f, a->count);
        }
        if (!rc && !a->u8 && !a->i64 && !a->f) rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory", path);
    }
    *has_labels = l != NULL;
    bl_st_free(&st);
    if (rc) bl_npy_free(im), bl_npy_free(lab);
    return rc;
}

int cli_onnx_open(const char *cmd, const char *path, cli_onnx_data *o, bl_onnx **m,
                  bl_dataset *d, bl_recipe *r)
{
    memset(d, 0, sizeof *d);
    bl_status st = bl_onnx_load(path, m);
    if (st) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 1;
    int c, h, w;
    if (o->shape[0]) {
        if (sscanf(o->shape, "%d,%d,%d", &c, &h, &w) != 3) {
            fprintf(stderr, "bnlab %s: --input-shape '%s': give C,H,W (e.g. 3,224,224)\n", cmd,
                    o->shape);
            return 2;
        }
        if ((st = bl_onnx_set_input_shape(*m, c, h, w)))
            return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    }
    if (o->images[0] && o->tensors[0]) {
        fprintf(stderr, "bnlab %s: --images or --tensors, not both\n", cmd);
        return 2;
    }
    if (o->images[0]) {
        /* the recipe: given, or from the model's input (CenterCrop to it, Resize to 256/224 of
         * that as torchvision's ImageNet evaluation does) */
        int mc = 0, mh = 0, mw = 0;
        const int fixed = !bl_onnx_input_shape(*m, &mc, &mh, &mw);
        bl_error_clear();
        bl_img_recipe ir = {0, 0, 0};
        if (o->crop >= 0) ir.crop = o->crop;
        else if (fixed && mh == mw) ir.crop = mh;
        else {
            fprintf(stderr, "bnlab %s: the model's input is %s: give --crop (and --resize) for "
                    "the images\n", cmd, fixed ? "not square" : "of symbolic size");
            return 2;
        }
        ir.resize = o->resize >= 0 ? o->resize : (int)(ir.crop * 256.0 / 224 + 0.5);
        ir.gray = o->color ? o->color == 2 : fixed && mc == 1;
        int classes = 0;
        char skipped[256] = "", rs[128];
        if ((st = bl_dataset_from_folder(o->images, &ir, d, &classes, skipped, sizeof skipped)))
            return fprintf(stderr, "bnlab %s: --images: %s\n", cmd, bl_error()), 1;
        bl_img_recipe_str(&ir, rs, sizeof rs);
        snprintf(o->resolved, sizeof o->resolved, "%s", rs); /* for the caller's records */
        cli_decode_progress(cmd, d);
        o->resize_used = ir.resize, o->crop_used = ir.crop;
        char what[96];
        if (classes)
            snprintf(what, sizeof what, "in %d class folders (labels 0..%d, sorted)", classes,
                     classes - 1);
        else
            snprintf(what, sizeof what, "without class folders (no labels)");
        fprintf(stderr, "%s: %d images %s%s%s; %s\n", o->images, d->n, what,
                skipped[0] ? ", skipped " : "", skipped, rs);
        if (classes == 1)
            fprintf(stderr, "%s: one class folder: every image has label 0 (unlabelled images go "
                    "in a flat folder, without subfolders)\n", o->images);

    } else if (o->tensors[0]) {
        bl_npy im, lab;
        memset(&lab, 0, sizeof lab);
        const size_t tl = strlen(o->tensors);
        int has_labels = 0;
        if (tl > 12 && !strcmp(o->tensors + tl - 12, ".safetensors"))
            st = st_arrays(o->tensors, &im, &lab, &has_labels);
        else
            st = bl_npy_read(o->tensors, &im);
        if (!st && o->labels[0]) bl_npy_free(&lab), has_labels = 0;
        if (!st && o->labels[0]) st = bl_npy_read(o->labels, &lab), has_labels = !st;
        if (!st) st = bl_dataset_from_npy(&im, has_labels ? &lab : NULL, o->tensors, d);
        bl_npy_free(&im), bl_npy_free(&lab);
        if (st) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 1;
    } else {
        if (cli_load_fmnist(cmd, o->data_dir, o->split ? "train" : "test", d)) return 1;
    }
    /* a symbolic input takes the data's shape */
    if (bl_onnx_input_shape(*m, &c, &h, &w) &&
        (st = bl_onnx_set_input_shape(*m, bl_dataset_channels(d), d->h, d->w)))
        return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    /* the normalization of uint8 images: given, or ImageNet's (3 channels), or Fashion-MNIST's */
    const int C = bl_dataset_channels(d);
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s",
             o->images[0] ? "images" : o->tensors[0] ? "tensors" : "fashion-mnist");
    r->channels = C > BL_RECIPE_MAX_CHANNELS ? BL_RECIPE_MAX_CHANNELS : C, r->classes = 256;
    static const float in_mean[3] = {0.485f, 0.456f, 0.406f}, in_std[3] = {0.229f, 0.224f, 0.225f};
    for (int k = 0; k < r->channels; k++) {
        r->mean[k] = C == 3 ? in_mean[k] : C == 1 ? 0.2860f : 0.5f;
        r->std[k] = C == 3 ? in_std[k] : C == 1 ? 0.3530f : 0.5f;
    }
    const char *given[2] = {o->mean, o->std};
    for (int k = 0; k < 2; k++) {
        if (!given[k][0]) continue;
        float v[BL_RECIPE_MAX_CHANNELS];
        const int n = floats3(given[k], v, BL_RECIPE_MAX_CHANNELS);
        if (n != C && n != 1) {
            fprintf(stderr, "bnlab %s: --%s '%s': give %d comma-separated values (one per "
                    "channel)\n", cmd, k ? "std" : "mean", given[k], C);
            return 2;
        }
        for (int q = 0; q < r->channels; q++) (k ? r->std : r->mean)[q] = v[n == 1 ? 0 : q];
    }
    if ((st = bl_recipe_check(r))) return fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error()), 2;
    return 0;
}

void cli_onnx_data_defaults(cli_onnx_data *o)
{
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->resize = o->crop = -1;
    snprintf(o->data_dir, sizeof o->data_dir, "%s", BL_FMNIST_DIR);
}
#endif
