/* torchvision's Resize and CenterCrop on PIL images, and the recipe that names them.
 *
 * Resize is PIL's Image.resize(size, BILINEAR) (Pillow's Resample.c, which torchvision calls for
 * PIL images: its antialiasing is always on): a triangle filter whose support is 1 scaled by the
 * downscale factor, coefficients per output pixel normalized to sum 1 in double, then rounded to
 * fixed point with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2); a horizontal pass, its rows
 * rounded and clipped to 8 bits, then a vertical pass; a pass whose size does not change is
 * skipped. The same arithmetic here, in the same order, so the output is PIL's bit for bit
 * (tests/test_images.c). Contracting the double expressions into FMAs changes nothing: the only
 * multiply-adds are 0 + a*b and a multiplication by 2^22.
 *
 * Each output pixel depends on its own row's and column's coefficients only, so resampling just
 * the window CenterCrop keeps gives the same pixels as resizing all and cropping. */
#include "bnlab/images.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define PRECISION_BITS 22

/* ---- the recipe ------------------------------------------------------------------------------ */
bl_status bl_img_recipe_check(const bl_img_recipe *r)
{
    if (r->resize < 0 || r->resize > BL_IMG_MAX_SIDE)
        return bl_fail(BL_ERR_ARG, "recipe.resize %d: must be in [1, %d], or 0 for none",
                       r->resize, BL_IMG_MAX_SIDE);
    if (r->crop < 0 || r->crop > BL_IMG_MAX_SIDE)
        return bl_fail(BL_ERR_ARG, "recipe.crop %d: must be in [1, %d], or 0 for none", r->crop,
                       BL_IMG_MAX_SIDE);
    if (r->gray != 0 && r->gray != 1)
        return bl_fail(BL_ERR_ARG, "recipe.gray %d: must be 0 (RGB) or 1 (L)", r->gray);
    return BL_OK;
}

int bl_img_recipe_str(const bl_img_recipe *r, char *buf, size_t len)
{
    char rs[32] = "", cs[32] = "";
    if (r->resize) snprintf(rs, sizeof rs, "Resize(%d)", r->resize);
    if (r->crop) snprintf(cs, sizeof cs, "CenterCrop(%d)", r->crop);
    const char *mode = r->gray ? "L" : "RGB";
    if (r->resize && r->crop) return snprintf(buf, len, "%s + %s, %s", rs, cs, mode);
    if (r->resize || r->crop) return snprintf(buf, len, "%s%s, %s", rs, cs, mode);
    return snprintf(buf, len, "original size, %s", mode);
}

void bl_img_resize_size(int h, int w, int s, int *oh, int *ow)
{
    /* torchvision's _compute_resized_output_size: int(s * long / short), a correctly rounded
     * double quotient (both operands are exact doubles here) truncated */
    if (w <= h) {
        *ow = s;
        *oh = (int)((double)((long long)s * h) / w);
    } else {
        *oh = s;
        *ow = (int)((double)((long long)s * w) / h);
    }
}

void bl_img_recipe_size(const bl_img_recipe *r, int h, int w, int *oh, int *ow)
{
    *oh = h, *ow = w;
    if (r->resize) bl_img_resize_size(h, w, r->resize, oh, ow);
    if (r->crop) *oh = *ow = r->crop;
}

/* ---- PIL's coefficients ---------------------------------------------------------------------- */
typedef struct {
    int ksize;
    int *first, *count;  /* per output pixel: its first input pixel and how many it takes */
    int *k;              /* (n, ksize) fixed point */
} coeffs;

static void coeffs_free(coeffs *c)
{
    bl_free(c->first), bl_free(c->count), bl_free(c->k);
    memset(c, 0, sizeof *c);
}

static inline double triangle(double x)
{
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* precompute_coeffs + normalize_coeffs_8bpc of Pillow for output pixels [o0, o0 + n) of in_size
 * -> out_size (box (0, in_size)) */
static bl_status coeffs_make(int in_size, int out_size, int o0, int n, coeffs *c)
{
    memset(c, 0, sizeof *c);
    /* (double)(in1 - in0) / outSize with float box edges: exact for these sizes */
    const double scale = (double)(float)in_size / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 1.0 * filterscale, ss = 1.0 / filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    double *w = bl_callocn(ksize, sizeof *w);
    c->ksize = ksize;
    c->first = bl_callocn(n, sizeof *c->first);
    c->count = bl_callocn(n, sizeof *c->count);
    c->k = bl_callocn((size_t)n * ksize, sizeof *c->k);
    if (!w || !c->first || !c->count || !c->k) {
        bl_free(w);
        coeffs_free(c);
        return BL_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        const int xx = o0 + i;
        const double center = 0.0 + (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = triangle((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int *k = c->k + (size_t)i * ksize;
        for (int x = 0; x < xmax; x++) {
            const double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->first[i] = xmin;
        c->count[i] = xmax > 0 ? xmax : 0;
    }
    bl_free(w);
    return BL_OK;
}

static inline uint8_t clip8(int v)
{
    /* PIL's clip8_lookups[v >> 22] */
    if (v < 0) return 0;
    v >>= PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* The window [y0, y0 + nh) x [x0, x0 + nw) of in resized to oh x ow, into dst (row stride
 * dstride bytes). */
static bl_status resample(const bl_image *in, int oh, int ow, int y0, int nh, int x0, int nw,
                          uint8_t *dst, size_t dstride)
{
    const int c = in->c;
    const size_t istride = (size_t)in->w * c, nv = (size_t)nw * c;
    coeffs cv = {0}, ch = {0};
    uint8_t *tmp = NULL;
    int *acc = NULL;
    bl_status st = BL_OK;
    /* the input rows the window needs */
    int r0 = y0, r1 = y0 + nh;
    if (oh != in->h) {
        if ((st = coeffs_make(in->h, oh, y0, nh, &cv))) goto done;
        r0 = cv.first[0], r1 = cv.first[nh - 1] + cv.count[nh - 1];
        if (r1 < r0) r1 = r0;
    }
    /* the horizontal pass (or the input itself): rows r0..r1 of the window's columns */
    const uint8_t *hrows;
    size_t hstride;
    if (ow != in->w) {
        if ((st = coeffs_make(in->w, ow, x0, nw, &ch))) goto done;
        tmp = bl_malloc((size_t)(r1 - r0) * nv + 1);
        if (!tmp) {
            st = BL_ERR_NOMEM;
            goto done;
        }
        for (int y = r0; y < r1; y++) {
            const uint8_t *src = in->px + istride * y;
            uint8_t *o = tmp + nv * (y - r0);
            for (int i = 0; i < nw; i++) {
                const int *k = ch.k + (size_t)i * ch.ksize;
                const uint8_t *s = src + (size_t)ch.first[i] * c;
                for (int q = 0; q < c; q++) {
                    int ss0 = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < ch.count[i]; x++) ss0 += s[x * c + q] * k[x];
                    o[i * c + q] = clip8(ss0);
                }
            }
        }
        hrows = tmp, hstride = nv;
    } else {
        hrows = in->px + istride * r0 + (size_t)x0 * c, hstride = istride;
    }
    /* the vertical pass (or a copy of the rows) */
    if (oh != in->h) {
        acc = bl_malloc(nv * sizeof *acc + 1);
        if (!acc) {
            st = BL_ERR_NOMEM;
            goto done;
        }
        for (int i = 0; i < nh; i++) {
            const int *k = cv.k + (size_t)i * cv.ksize;
            for (size_t j = 0; j < nv; j++) acc[j] = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < cv.count[i]; y++) {
                const uint8_t *s = hrows + hstride * (cv.first[i] + y - r0);
                const int ky = k[y];
                for (size_t j = 0; j < nv; j++) acc[j] += s[j] * ky;
            }
            uint8_t *o = dst + dstride * i;
            for (size_t j = 0; j < nv; j++) o[j] = clip8(acc[j]);
        }
    } else {
        for (int i = 0; i < nh; i++) memcpy(dst + dstride * i, hrows + hstride * i, nv);
    }
done:
    coeffs_free(&cv);
    coeffs_free(&ch);
    bl_free(tmp);
    bl_free(acc);
    return st ? bl_fail(st, "out of memory resizing a %d x %d image to %d x %d", in->w, in->h,
                        ow, oh)
              : BL_OK;
}

/* torchvision's center_crop along one side: the image of `size` in a window of `crop`; where the
 * image is smaller, it is padded with (crop - size) // 2 zeros before, the rest after (pad), and
 * the window starts at 0; else the window starts at int(round((size - crop) / 2.0)), half to
 * even (off). n: how many image pixels the window takes. */
static void crop_side(int size, int crop, int *pad, int *off, int *n)
{
    if (crop > size) {
        *pad = (crop - size) / 2, *off = 0, *n = size;
        return;
    }
    const int d = size - crop;
    int k = d / 2;
    if (d % 2 && k % 2) k++; /* d/2 = k + 0.5: Python rounds to the even neighbour */
    *pad = 0, *off = k, *n = crop;
}

/* in resized to rh x rw, then center-cropped to ch x cw, into dst (ch, cw, in->c) */
static bl_status resize_crop(const bl_image *in, int rh, int rw, int ch, int cw, uint8_t *dst)
{
    int pt, ot, nh, pl, ol, nw;
    crop_side(rh, ch, &pt, &ot, &nh);
    crop_side(rw, cw, &pl, &ol, &nw);
    const size_t stride = (size_t)cw * in->c;
    if (nh < ch || nw < cw) memset(dst, 0, stride * ch);
    return resample(in, rh, rw, ot, nh, ol, nw, dst + stride * pt + (size_t)pl * in->c, stride);
}

static bl_status check_image(const bl_image *in, const char *who)
{
    if (!in || !in->px || in->h <= 0 || in->w <= 0 || (in->c != 1 && in->c != 3))
        return bl_fail(BL_ERR_ARG, "%s: not a decoded image (h, w > 0, c 1 or 3)", who);
    return BL_OK;
}

static bl_status alloc_image(int h, int w, int c, const char *what, bl_image *out)
{
    memset(out, 0, sizeof *out);
    if (h <= 0 || w <= 0 || h > BL_IMG_MAX_SIDE || w > BL_IMG_MAX_SIDE ||
        (long long)h * w > BL_IMG_MAX_PIXELS)
        return bl_fail(BL_ERR_ARG, "%s: %d x %d pixels (width x height): outside bnlab's limits "
                       "(sides 1 to %d, 2^26 pixels in all)", what, w, h, BL_IMG_MAX_SIDE);
    out->px = bl_malloc((size_t)h * w * c);
    if (!out->px) return BL_ERR_NOMEM;
    out->h = h, out->w = w, out->c = c;
    return BL_OK;
}

bl_status bl_img_resize(const bl_image *in, int oh, int ow, bl_image *out)
{
    bl_status st = check_image(in, "bl_img_resize");
    if (st || (st = alloc_image(oh, ow, in->c, "bl_img_resize", out))) return st;
    if ((st = resample(in, oh, ow, 0, oh, 0, ow, out->px, (size_t)ow * in->c))) bl_image_free(out);
    return st;
}

bl_status bl_img_center_crop(const bl_image *in, int ch, int cw, bl_image *out)
{
    bl_status st = check_image(in, "bl_img_center_crop");
    if (st || (st = alloc_image(ch, cw, in->c, "bl_img_center_crop", out))) return st;
    if ((st = resize_crop(in, in->h, in->w, ch, cw, out->px))) bl_image_free(out);
    return st;
}

bl_status bl_img_apply_into(const bl_image *in, const bl_img_recipe *r, uint8_t *dst, int oh,
                            int ow)
{
    bl_status st = check_image(in, "bl_img_apply");
    if (st || (st = bl_img_recipe_check(r))) return st;
    int rh = in->h, rw = in->w, eh, ew;
    if (r->resize) bl_img_resize_size(in->h, in->w, r->resize, &rh, &rw);
    bl_img_recipe_size(r, in->h, in->w, &eh, &ew);
    if (eh != oh || ew != ow)
        return bl_fail(BL_ERR_ARG, "a %d x %d image (width x height) comes out at %d x %d with "
                       "the recipe, not %d x %d", in->w, in->h, ew, eh, ow, oh);
    return resize_crop(in, rh, rw, oh, ow, dst);
}

bl_status bl_img_apply(const bl_image *in, const bl_img_recipe *r, bl_image *out)
{
    memset(out, 0, sizeof *out);
    bl_status st = check_image(in, "bl_img_apply");
    if (st || (st = bl_img_recipe_check(r))) return st;
    int oh, ow;
    bl_img_recipe_size(r, in->h, in->w, &oh, &ow);
    char rs[96], what[160];
    bl_img_recipe_str(r, rs, sizeof rs);
    snprintf(what, sizeof what, "%s of a %d x %d image", rs, in->w, in->h);
    if ((st = alloc_image(oh, ow, in->c, what, out))) return st;
    if ((st = bl_img_apply_into(in, r, out->px, oh, ow))) bl_image_free(out);
    return st;
}

void bl_image_free(bl_image *im)
{
    if (!im) return;
    bl_free(im->px);
    memset(im, 0, sizeof *im);
}
