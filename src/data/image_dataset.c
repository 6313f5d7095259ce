/* An image folder as a data set (--images DIR): the folder scanned once, its labels in memory,
 * the images decoded batch by batch when a command asks for them (bl_data_source), so the folder
 * is never held in memory whole. */
#include "bnlab/data.h"
#include "bnlab/images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    bl_imgfolder f;
    bl_img_recipe r;
    int h, w;
} folder_ctx;

static bl_status fetch(void *ctx, const int *idx, int n, uint8_t *out)
{
    const folder_ctx *fc = ctx;
    return bl_imgfolder_fetch(&fc->f, &fc->r, idx, n, out, fc->h, fc->w);
}

static void release(bl_data_source *s)
{
    folder_ctx *fc = s->ctx;
    bl_imgfolder_free(&fc->f);
    free(fc);
    free(s);
}

bl_status bl_dataset_from_folder(const char *dir, const bl_img_recipe *r, bl_dataset *out,
                                 int *classes, char *skipped, size_t skipped_len)
{
    memset(out, 0, sizeof *out);
    bl_status st = bl_img_recipe_check(r);
    if (st) return st;
    folder_ctx *fc = bl_callocn(1, sizeof *fc);
    bl_data_source *s = bl_callocn(1, sizeof *s);
    if (!fc || !s) return free(fc), free(s), bl_fail(BL_ERR_NOMEM, "out of memory");
    fc->r = *r;
    int c = 0;
    if ((st = bl_imgfolder_scan(dir, &fc->f))) return free(fc), free(s), st;
    if (fc->f.classes > 256)
        st = bl_fail(BL_ERR_ARG, "%s: %d class folders: bnlab's labels hold at most 256", dir,
                     fc->f.classes);
    if (!st) st = bl_imgfolder_out_size(&fc->f, r, &fc->h, &fc->w, &c);
    if (!st && fc->f.labels && !(out->labels = bl_alloc((size_t)fc->f.n + 1)))
        st = bl_fail(BL_ERR_NOMEM, "out of memory for %d labels", fc->f.n);
    if (st) {
        bl_imgfolder_free(&fc->f);
        free(fc), free(s);
        bl_dataset_free(out);
        return st;
    }
    for (int i = 0; fc->f.labels && i < fc->f.n; i++) out->labels[i] = (uint8_t)fc->f.labels[i];
    *classes = fc->f.classes;
    if (skipped) snprintf(skipped, skipped_len, "%s", fc->f.skipped_what);
    s->ctx = fc, s->fetch = fetch, s->release = release, s->refs = 1;
    out->n = fc->f.n, out->h = fc->h, out->w = fc->w, out->c = c;
    out->source = s, out->owns_source = 1;
    return BL_OK;
}
