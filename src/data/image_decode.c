/* One image file decoded as PIL decodes it: JPEG through libjpeg (the libjpeg62-turbo PIL links
 * too, with PIL's settings: libjpeg's own colour conversion, ISLOW DCT, fancy upsampling), PNG
 * through libpng, then converted as Image.convert('RGB') or convert('L') converts PIL's mode of
 * the file. What PIL does, checked with Pillow 9.4 (tools/gen_image_fixtures.py):
 *   L, 1, 2/4-bit grey   replicated (1-bit: 0 or 255; 2 and 4 bits scaled by 85 and 17)
 *   LA, RGBA             the alpha dropped, nothing composited
 *   P                    the palette expanded, tRNS ignored; an index past the file's palette is
 *                        grey (i, i, i): PIL's palette starts as a grey ramp
 *   16-bit RGB/RGBA/LA   the high byte of each sample (PIL unpacks "RGB;16B" that way; LA;16B
 *                        opens as RGBA with R = G = B)
 *   16-bit grey          opened as 32-bit 'I', converted by clipping: min(v, 255), not v >> 8
 *   to L                 (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (PIL's L24: exactly equal
 *                        to PIL's convert('L') on all 2^24 colours; R*299/1000 + ... rounded
 *                        differs on 9112 of them); L and LA take L; a palette maps each entry
 * Truncated files are errors, as in PIL (LOAD_TRUNCATED_IMAGES off): libjpeg's "premature end"
 * warning, after which it would fill the rest with grey, is taken as an error. libjpeg and libpng
 * report through handlers here (setjmp/longjmp back into the decode function, which frees
 * everything): they never print, exit or leak. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/images.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

/* The pixels a decoder hands over, as PIL's mode of the file matters for conversion */
typedef enum { SRC_L, SRC_LA, SRC_RGB, SRC_RGBA, SRC_I16, SRC_P } src_kind;
static const int src_bytes[] = {1, 2, 3, 4, 2, 1};

static inline uint8_t luma(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

/* One row of w pixels of kind k into every step-th pixel of out, of 1 (gray) or 3 channels; pal:
 * 256 RGB entries */
static void convert_row(const uint8_t *in, src_kind k, const uint8_t *pal, int w, int gray,
                        uint8_t *out, int step)
{
    for (int x = 0; x < w; x++) {
        unsigned r, g, b;
        switch (k) {
        case SRC_L: r = g = b = in[x]; break;
        case SRC_LA: r = g = b = in[2 * x]; break;
        case SRC_RGB: r = in[3 * x], g = in[3 * x + 1], b = in[3 * x + 2]; break;
        case SRC_RGBA: r = in[4 * x], g = in[4 * x + 1], b = in[4 * x + 2]; break;
        case SRC_I16: {
            unsigned v = (unsigned)in[2 * x] << 8 | in[2 * x + 1]; /* big-endian, as libpng */
            r = g = b = v > 255 ? 255 : v;
            break;
        }
        default: { /* SRC_P */
            const uint8_t *e = pal + 3 * in[x];
            r = e[0], g = e[1], b = e[2];
        }
        }
        uint8_t *o = out + (size_t)x * step * (gray ? 1 : 3);
        if (gray) {
            /* a grey source is its own L: luma(v, v, v) == v, so one formula serves all */
            o[0] = luma(r, g, b);
        } else {
            o[0] = (uint8_t)r, o[1] = (uint8_t)g, o[2] = (uint8_t)b;
        }
    }
}

static bl_status check_size(const char *name, const char *what, unsigned long w, unsigned long h)
{
    if (w == 0 || h == 0)
        return bl_fail(BL_ERR_FORMAT, "%s: a %s of %lu x %lu pixels (width x height): empty",
                       name, what, w, h);
    if (w > BL_IMG_MAX_SIDE || h > BL_IMG_MAX_SIDE ||
        (unsigned long long)w * h > (unsigned long long)BL_IMG_MAX_PIXELS)
        return bl_fail(BL_ERR_FORMAT, "%s: a %s of %lu x %lu pixels (width x height): above "
                       "bnlab's limit (sides up to %d, 2^26 pixels in all)", name, what, w, h,
                       BL_IMG_MAX_SIDE);
    return BL_OK;
}

/* ---- JPEG ------------------------------------------------------------------------------------ */
/* On the heap, the error manager first (libjpeg hands it back as cinfo->err): nothing that
 * libjpeg changes between setjmp and longjmp lives in a local variable. */
struct jdec {
    struct jpeg_error_mgr err;
    struct jpeg_progress_mgr progress;
    struct jpeg_decompress_struct d;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
    int made, truncated, scans;
    const uint8_t *data;
    size_t len;
    const char *name;
    int gray, probe;
    int w, h;
    uint8_t *row, *px;
};

static void jpeg_fail(j_common_ptr ci)
{
    struct jdec *j = (struct jdec *)ci->err;
    (*ci->err->format_message)(ci, j->msg);
    longjmp(j->jump, 1);
}

/* Warnings (level -1) are ignored, as PIL ignores them, but for the end of the data: libjpeg
 * would go on with grey, PIL says "image file is truncated". Trace messages are ignored. */
static void jpeg_message(j_common_ptr ci, int level)
{
    struct jdec *j = (struct jdec *)ci->err;
    if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF) {
        j->truncated = 1;
        (*ci->err->format_message)(ci, j->msg);
        longjmp(j->jump, 1);
    }
}

static void jpeg_quiet(j_common_ptr ci) { (void)ci; }

/* A progressive JPEG can hold thousands of scans that each walk the whole image (a known way to
 * make libjpeg take minutes on a small file); real ones have about ten. libjpeg-turbo's advice:
 * stop after a few hundred. */
#define JPEG_MAX_SCANS 500
static void jpeg_progress(j_common_ptr ci)
{
    struct jdec *j = (struct jdec *)ci->err;
    if (j->d.input_scan_number > JPEG_MAX_SCANS) {
        j->scans = 1;
        snprintf(j->msg, sizeof j->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(j->jump, 1);
    }
}

/* The decode with every state in j; a libjpeg error comes back here as BL_ERR_FORMAT with
 * j->msg set, and the caller frees what there is. */
static bl_status jpeg_run(struct jdec *j)
{
    if (setjmp(j->jump)) return BL_ERR_FORMAT;
    jpeg_create_decompress(&j->d);
    j->made = 1;
    j->d.progress = &j->progress; /* after create, which clears all but err */
    jpeg_mem_src(&j->d, j->data, (unsigned long)j->len);
    jpeg_read_header(&j->d, TRUE);
    j->w = (int)j->d.image_width, j->h = (int)j->d.image_height;
    bl_status st = check_size(j->name, "JPEG", j->d.image_width, j->d.image_height);
    if (st || j->probe) return st;
    src_kind kind;
    switch (j->d.jpeg_color_space) {
    case JCS_GRAYSCALE: j->d.out_color_space = JCS_GRAYSCALE, kind = SRC_L; break;
    case JCS_YCbCr:
    case JCS_RGB: j->d.out_color_space = JCS_RGB, kind = SRC_RGB; break;
    case JCS_CMYK:
    case JCS_YCCK:
        return bl_fail(BL_ERR_FORMAT, "%s: a %s JPEG: bnlab does not reproduce PIL's conversion "
                       "of CMYK to RGB; convert the image to RGB first", j->name,
                       j->d.jpeg_color_space == JCS_CMYK ? "CMYK" : "YCCK");
    default:
        return bl_fail(BL_ERR_FORMAT, "%s: a JPEG of %d components in a colour space bnlab does "
                       "not know", j->name, j->d.num_components);
    }
    jpeg_start_decompress(&j->d);
    const int c = j->gray ? 1 : 3, w = j->w;
    if ((int)j->d.output_width != w || (int)j->d.output_height != j->h ||
        j->d.output_components != src_bytes[kind])
        return bl_fail(BL_ERR_FORMAT, "%s: libjpeg decodes this JPEG to %u x %u x %d, not %d x "
                       "%d x %d", j->name, j->d.output_width, j->d.output_height,
                       j->d.output_components, w, j->h, src_bytes[kind]);
    j->px = bl_malloc((size_t)j->h * w * c);
    /* a row buffer only where the output is not what libjpeg writes */
    const int direct = src_bytes[kind] == c;
    if (!j->px || (!direct && !(j->row = bl_malloc((size_t)w * src_bytes[kind]))))
        return bl_fail_ctx(BL_ERR_NOMEM, "%s", j->name);
    while (j->d.output_scanline < j->d.output_height) {
        uint8_t *dst = j->px + (size_t)j->d.output_scanline * w * c;
        JSAMPROW r = direct ? dst : j->row;
        if (jpeg_read_scanlines(&j->d, &r, 1) != 1)
            return bl_fail(BL_ERR_FORMAT, "%s: libjpeg returned no row", j->name);
        if (!direct) convert_row(j->row, kind, NULL, w, j->gray, dst, 1);
    }
    /* reads to the EOI marker: a file without one is truncated for PIL too */
    jpeg_finish_decompress(&j->d);
    return BL_OK;
}

static bl_status jpeg_decode(const uint8_t *data, size_t len, const char *name, int gray,
                             int probe, bl_image *out)
{
    struct jdec *j = bl_callocn(1, sizeof *j);
    if (!j) return bl_fail_ctx(BL_ERR_NOMEM, "%s", name);
    j->d.err = jpeg_std_error(&j->err);
    j->err.error_exit = jpeg_fail;
    j->err.emit_message = jpeg_message;
    j->err.output_message = jpeg_quiet;
    j->progress.progress_monitor = jpeg_progress;
    j->data = data, j->len = len, j->name = name, j->gray = gray, j->probe = probe;
    bl_status st = jpeg_run(j);
    if (st == BL_ERR_FORMAT && j->msg[0]) {
        if (j->scans)
            st = bl_fail(BL_ERR_FORMAT, "%s: a progressive JPEG of more than %d scans: bnlab "
                         "stops there (real ones have about ten; PIL would go on)", name,
                         JPEG_MAX_SCANS);
        /* JERR_OUT_OF_MEMORY: libjpeg's own allocation failed */
        else if (j->err.msg_code == JERR_OUT_OF_MEMORY)
            st = bl_fail(BL_ERR_NOMEM, "%s: libjpeg: %s", name, j->msg);
        else if (j->truncated)
            st = bl_fail(BL_ERR_FORMAT, "%s: truncated JPEG: the file ends before the image "
                         "does (libjpeg: %s); PIL refuses it too (image file is truncated)", name,
                         j->msg);
        else
            st = bl_fail(BL_ERR_FORMAT, "%s: corrupt or unsupported JPEG (libjpeg: %s)", name,
                         j->msg);
    }
    if (!st) {
        out->w = j->w, out->h = j->h, out->c = gray ? 1 : 3;
        out->px = j->px;
        j->px = NULL;
    }
    if (j->made) jpeg_destroy_decompress(&j->d);
    bl_free(j->row);
    bl_free(j->px);
    bl_free(j);
    return st;
}

/* ---- PNG ------------------------------------------------------------------------------------- */
/* libpng's progressive reader, as PIL's decoder is one: the data is pushed in, rows come out as
 * soon as they are complete, and the image is done at its last row. Like PIL, what follows it
 * (the end of the zlib stream and its checksum, the IDAT CRC, IEND) is not needed, and errors
 * there do not count; a file that ends before the last row is truncated. Adam7 passes are put in
 * place here (their rows come in reduced, as libpng reads them). */
struct pdec {
    jmp_buf jump;
    png_structp png;
    png_infop info;
    char msg[256];
    int nomem, failed;  /* failed: the reason is set (bl_fail) */
    const char *name;
    int gray, probe;
    int w, h, interlaced, kind;
    long rows_left;     /* rows of all passes still to come */
    uint8_t pal[256 * 3];
    uint8_t *px;
};

static void png_fail(png_structp p, png_const_charp m)
{
    struct pdec *d = png_get_error_ptr(p);
    snprintf(d->msg, sizeof d->msg, "%s", m);
    longjmp(d->jump, 1);
}

/* libpng's warnings (a bad ancillary checksum, an odd chunk) change nothing PIL would refuse */
static void png_quiet(png_structp p, png_const_charp m) { (void)p, (void)m; }

/* libpng allocates through bnlab's allocator, so injected faults reach inside it too */
static png_voidp png_alloc(png_structp p, png_alloc_size_t n)
{
    void *q = bl_malloc(n);
    if (!q) ((struct pdec *)png_get_mem_ptr(p))->nomem = 1;
    return q;
}

static void png_dealloc(png_structp p, png_voidp q) { (void)p, bl_free(q); }

/* Adam7's passes: first column and row, steps */
static const int a7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                             {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
static const int whole[4] = {0, 0, 1, 1}; /* no interlacing: one pass */

static void png_stop(struct pdec *d) /* the reason set */
{
    d->failed = 1;
    longjmp(d->jump, 1);
}

static void png_info_cb(png_structp p, png_infop info)
{
    struct pdec *d = png_get_progressive_ptr(p);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(p, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    d->w = (int)w, d->h = (int)h, d->interlaced = interlace == PNG_INTERLACE_ADAM7;
    if (check_size(d->name, "PNG", w, h)) png_stop(d);
    if (d->probe) longjmp(d->jump, 2);
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        if (depth < 8) png_set_expand_gray_1_2_4_to_8(p);
        d->kind = depth == 16 ? SRC_I16 : SRC_L;
        break;
    case PNG_COLOR_TYPE_PALETTE: {
        png_set_packing(p); /* 1, 2, 4 bits: one index per byte; expanded here */
        d->kind = SRC_P;
        for (int i = 0; i < 256; i++) memset(d->pal + 3 * i, i, 3);
        png_colorp pal;
        int np = 0;
        if (png_get_PLTE(p, info, &pal, &np))
            for (int i = 0; i < np && i < 256; i++)
                d->pal[3 * i] = pal[i].red, d->pal[3 * i + 1] = pal[i].green,
                d->pal[3 * i + 2] = pal[i].blue;
        break;
    }
    case PNG_COLOR_TYPE_GRAY_ALPHA: d->kind = SRC_LA; break;
    case PNG_COLOR_TYPE_RGB: d->kind = SRC_RGB; break;
    default: d->kind = SRC_RGBA; break; /* PNG_COLOR_TYPE_RGB_ALPHA: libpng checked IHDR */
    }
    if (depth == 16 && d->kind != SRC_I16) png_set_strip_16(p); /* the high byte, not rounded */
    /* from the image data on, PIL checks no CRC: neither does libpng */
    png_set_crc_action(p, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    png_read_update_info(p, info);
    const size_t rb = png_get_rowbytes(p, info), want = (size_t)w * src_bytes[d->kind];
    if (rb != want) {
        bl_fail(BL_ERR_FORMAT, "%s: libpng gives rows of %zu bytes, not %zu", d->name, rb, want);
        png_stop(d);
    }
    d->rows_left = 0;
    for (int k = 0; k < (d->interlaced ? 7 : 1); k++) {
        const int *q = d->interlaced ? a7[k] : whole;
        if (d->w > q[0] && d->h > q[1]) d->rows_left += (d->h - q[1] + q[3] - 1) / q[3];
    }
    /* a second header (libpng can call back twice on crafted data, fuzz_image): the first
     * buffer goes, the last header rules */
    bl_free(d->px);
    d->px = bl_malloc((size_t)w * h * (d->gray ? 1 : 3));
    if (!d->px) {
        bl_fail_ctx(BL_ERR_NOMEM, "%s", d->name);
        d->nomem = 1;
        png_stop(d);
    }
}

static void png_row_cb(png_structp p, png_bytep row, png_uint_32 y, int pass)
{
    struct pdec *d = png_get_progressive_ptr(p);
    if (!row) return;
    const int *q = d->interlaced ? a7[pass] : whole;
    const int oy = q[1] + (int)y * q[3], n = (d->w - q[0] + q[2] - 1) / q[2], c = d->gray ? 1 : 3;
    if (oy >= d->h || d->rows_left <= 0) png_error(p, "a row outside the image");
    convert_row(row, d->kind, d->pal, n, d->gray, d->px + ((size_t)oy * d->w + q[0]) * c, q[2]);
    /* the last row: done, whatever follows */
    if (--d->rows_left == 0) longjmp(d->jump, 2);
}

/* 0: the data ended before the image did; 1: an error (d->msg or d->failed); 2: done */
static int png_run(struct pdec *d, const uint8_t *data, size_t len)
{
    int r = setjmp(d->jump);
    if (r) return r;
    d->png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, d, png_fail, png_quiet, d,
                                      png_alloc, png_dealloc);
    if (!d->png || !(d->info = png_create_info_struct(d->png))) {
        bl_fail(BL_ERR_NOMEM, "%s: out of memory creating libpng's reader", d->name);
        d->failed = d->nomem = 1;
        return 1;
    }
    /* what libpng calls benign (too much image data, a bad palette index), PIL does not refuse */
    png_set_benign_errors(d->png, 1);
    /* PIL refuses a bad CRC in any chunk before the image data, ancillary ones too */
    png_set_crc_action(d->png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_set_progressive_read_fn(d->png, d, png_info_cb, png_row_cb, NULL);
    png_process_data(d->png, d->info, (png_bytep)data, len);
    return 0;
}

static bl_status png_decode(const uint8_t *data, size_t len, const char *name, int gray,
                            int probe, bl_image *out)
{
    struct pdec *d = bl_callocn(1, sizeof *d);
    if (!d) return bl_fail_ctx(BL_ERR_NOMEM, "%s", name);
    d->name = name, d->gray = gray, d->probe = probe;
    const int r = png_run(d, data, len);
    bl_status st = BL_OK;
    if (d->failed) st = d->nomem ? BL_ERR_NOMEM : BL_ERR_FORMAT;  /* the reason is set */
    else if (r == 1 && d->nomem)
        st = bl_fail(BL_ERR_NOMEM, "%s: out of memory in libpng (%s)", name, d->msg);
    else if (r == 1)
        st = bl_fail(BL_ERR_FORMAT, "%s: corrupt or unsupported PNG (libpng: %s)", name, d->msg);
    else if (r == 0)
        st = bl_fail(BL_ERR_FORMAT, "%s: truncated PNG: the file ends %s; PIL refuses it too "
                     "(image file is truncated)", name,
                     d->w ? "inside the image" : "in its headers");
    if (!st) {
        out->w = d->w, out->h = d->h, out->c = gray ? 1 : 3;
        out->px = d->px;
        d->px = NULL;
    }
    if (d->png) png_destroy_read_struct(&d->png, &d->info, NULL);
    bl_free(d->px);
    bl_free(d);
    return st;
}

/* ---- the format, the file -------------------------------------------------------------------- */
static bl_status sniff(const uint8_t *p, size_t n, const char *name, bl_img_format *fmt)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n >= 8 && !memcmp(p, png_sig, 8)) return *fmt = BL_IMG_PNG, BL_OK;
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return *fmt = BL_IMG_JPEG, BL_OK;
    if (n == 0) return bl_fail(BL_ERR_FORMAT, "%s: empty file (0 bytes)", name);
    const char *like = NULL;
    if (n >= 4 && !memcmp(p, "GIF8", 4)) like = "a GIF";
    else if (n >= 2 && !memcmp(p, "BM", 2)) like = "a BMP";
    else if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) like = "a WebP";
    else if (n >= 4 && (!memcmp(p, "II*\0", 4) || !memcmp(p, "MM\0*", 4))) like = "a TIFF";
    else if (n >= 2 && p[0] == 'P' && p[1] >= '1' && p[1] <= '7') like = "a PNM";
    if (like)
        return bl_fail(BL_ERR_FORMAT, "%s: %s image: bnlab decodes JPEG and PNG only (convert it)",
                       name, like);
    char hex[40] = "";
    for (size_t i = 0; i < n && i < 8; i++) snprintf(hex + 3 * i, 4, " %02x", p[i]);
    return bl_fail(BL_ERR_FORMAT, "%s: neither JPEG nor PNG (it starts with%s)", name, hex);
}

bl_status bl_img_decode_mem(const void *data, size_t len, const char *name, int gray,
                            bl_image *out)
{
    memset(out, 0, sizeof *out);
    if (!data && len) return bl_fail(BL_ERR_ARG, "bl_img_decode_mem: no data");
    if (!name) name = "(memory)";
    bl_img_format fmt;
    bl_status st = sniff(data, len, name, &fmt);
    if (st) return st;
    return fmt == BL_IMG_PNG ? png_decode(data, len, name, gray != 0, 0, out)
                             : jpeg_decode(data, len, name, gray != 0, 0, out);
}

/* Reads at most max bytes of the file (all of it: max 0); *size: the file's size */
static bl_status read_file(const char *path, size_t max, uint8_t **buf, size_t *len, size_t *size)
{
    *buf = NULL, *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return bl_fail(BL_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat s;
    if (fstat(fileno(f), &s) || !S_ISREG(s.st_mode)) {
        fclose(f);
        return bl_fail(BL_ERR_IO, "%s: not a regular file", path);
    }
    if ((unsigned long long)s.st_size > (1ull << 30)) {
        fclose(f);
        return bl_fail(BL_ERR_FORMAT, "%s: %lld bytes: more than an image within bnlab's limits "
                       "takes (1 GiB)", path, (long long)s.st_size);
    }
    *size = (size_t)s.st_size;
    size_t want = max && max < *size ? max : *size;
    *buf = bl_malloc(want);
    if (!*buf) {
        fclose(f);
        return bl_fail_ctx(BL_ERR_NOMEM, "%s", path);
    }
    *len = want ? fread(*buf, 1, want, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (bad || *len != want) {
        bl_free(*buf);
        *buf = NULL;
        return bl_fail(BL_ERR_IO, "%s: read error", path);
    }
    return BL_OK;
}

bl_status bl_img_decode(const char *path, int gray, bl_image *out)
{
    memset(out, 0, sizeof *out);
    uint8_t *buf;
    size_t len, size;
    bl_status st = read_file(path, 0, &buf, &len, &size);
    if (st) return st;
    st = bl_img_decode_mem(buf, len, path, gray, out);
    bl_free(buf);
    return st;
}

bl_status bl_img_probe(const char *path, bl_img_format *fmt, int *h, int *w)
{
    /* the headers are nearly always in the first 64 KiB; a JPEG whose EXIF or ICC profile is
     * longer is read whole */
    for (size_t max = 1 << 16;; max = 0) {
        uint8_t *buf;
        size_t len, size;
        bl_status st = read_file(path, max, &buf, &len, &size);
        if (st) return st;
        bl_img_format f;
        bl_image im;
        st = sniff(buf, len, path, &f);
        if (!st)
            st = f == BL_IMG_PNG ? png_decode(buf, len, path, 0, 1, &im)
                                 : jpeg_decode(buf, len, path, 0, 1, &im);
        bl_free(buf);
        if (st && max && len < size) continue;
        if (st) return st;
        *fmt = f, *h = im.h, *w = im.w;
        return BL_OK;
    }
}
