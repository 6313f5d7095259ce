/* Image folders against PIL and torchvision (tools/gen_image_fixtures.py, tests/fixtures/images):
 * every committed image decoded, resized and cropped by every recipe and compared with what
 * Compose([Resize, CenterCrop]) gives on Image.open().convert() (accepted within 1 of 255, the
 * worst difference and the number of differing values printed per image: the aim is 0); files
 * truncated at every length decode exactly where PIL decodes them; broken files are refused with
 * their name and reason; folder scanning as ImageFolder lists (labels, order, skipped files,
 * hidden files, nested and linked folders) and its errors; batches in parallel, deterministic,
 * reporting the first failing image; failed allocations everywhere.
 * usage: test_images FIXTURES_DIR (tests/fixtures) */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char fx[4096];   /* tests/fixtures/images */
static char tmp[4096];  /* a scratch folder of this run */

static int contains(const char *s, const char *part) { return strstr(s, part) != NULL; }

static int read_all(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = *buf ? fread(*buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return *buf && *len == (size_t)n ? 0 : -1;
}

static int write_all(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = len ? fwrite(data, 1, len, f) : 0;
    return fclose(f) || w != len ? -1 : 0;
}

static void copy_file(const char *from, const char *to)
{
    uint8_t *b;
    size_t n;
    int ok = !read_all(from, &b, &n) && !write_all(to, b, n);
    CHECK(ok, "copy %s -> %s", from, to);
    free(b);
}

static void mkdirs(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    mkdir(p, 0755);
}

/* a file under tmp: "rel" with the bytes of the fixture image `from` (or text) */
static void put(const char *rel, const char *from, const char *text)
{
    char p[8300], dir[8300];
    snprintf(p, sizeof p, "%s/%s", tmp, rel);
    snprintf(dir, sizeof dir, "%s", p);
    *strrchr(dir, '/') = 0;
    mkdirs(dir);
    if (from) {
        char src[8300];
        snprintf(src, sizeof src, "%s/%s", fx, from);
        copy_file(src, p);
    } else {
        CHECK(!write_all(p, text, strlen(text)), "write %s", p);
    }
}

static void rm_rf(const char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", path);
}

/* "r32c32", "g_c28", "r20", "full" */
static int parse_recipe(const char *s, bl_img_recipe *r)
{
    memset(r, 0, sizeof *r);
    if (!strncmp(s, "g_", 2)) r->gray = 1, s += 2;
    if (!strcmp(s, "full")) return 0;
    if (*s == 'r') r->resize = (int)strtol(s + 1, (char **)&s, 10);
    if (*s == 'c') r->crop = (int)strtol(s + 1, (char **)&s, 10);
    return *s ? -1 : 0;
}

/* ---- against PIL --------------------------------------------------------------------------- */
static void test_references(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/reference.safetensors", fx);
    bl_safetensors st;
    if (bl_st_read(path, &st)) {
        CHECK(0, "%s", bl_error());
        return;
    }
    printf("per image: recipe worst|differing values (of 255; the acceptance is worst <= 1)\n");
    int refs = 0, differing_refs = 0, worst_all = 0;
    char line[2048] = "", cur[160] = "";
    for (int i = 0; i < st.n; i++) {
        const bl_st_entry *e = &st.e[i];
        char file[160], *colon;
        snprintf(file, sizeof file, "%s", e->name);
        if (!(colon = strrchr(file, ':'))) continue;
        *colon = 0;
        const char *rname = colon + 1;
        bl_img_recipe r;
        CHECK(!parse_recipe(rname, &r), "recipe name %s", rname);
        if (strcmp(cur, file)) {
            if (cur[0]) printf("%s\n", line);
            snprintf(cur, sizeof cur, "%s", file);
            char key[200];
            snprintf(key, sizeof key, "mode:%s", file);
            const char *mode = bl_st_meta(&st, key);
            snprintf(line, sizeof line, "  %-25s %-4s", file, mode ? mode : "?");
        }
        char ipath[4400];
        snprintf(ipath, sizeof ipath, "%s/%s", fx, file);
        bl_image im, out;
        bl_status s = bl_img_decode(ipath, r.gray, &im);
        CHECK(!s, "decode %s: %s", file, bl_error());
        if (s) continue;
        s = bl_img_apply(&im, &r, &out);
        CHECK(!s, "%s %s: %s", file, rname, bl_error());
        bl_image_free(&im);
        if (s) continue;
        const int ok_shape = e->dtype == BL_U8 && e->ndim == 3 && e->shape[0] == out.h &&
                             e->shape[1] == out.w && e->shape[2] == out.c;
        CHECK(ok_shape, "%s %s: %d x %d x %d, PIL %lld x %lld x %lld", file, rname, out.h, out.w,
              out.c, (long long)e->shape[0], (long long)e->shape[1], (long long)e->shape[2]);
        if (ok_shape) {
            const uint8_t *ref = st.data + e->begin;
            size_t n = (size_t)out.h * out.w * out.c, ndiff = 0;
            int worst = 0;
            for (size_t k = 0; k < n; k++) {
                int d = abs((int)out.px[k] - (int)ref[k]);
                if (d) ndiff++;
                if (d > worst) worst = d;
            }
            CHECK(worst <= 1, "%s %s: %zu of %zu values differ from PIL's, by up to %d", file,
                  rname, ndiff, n, worst);
            size_t o = strlen(line);
            snprintf(line + o, sizeof line - o, " %s %d|%zu", rname, worst, ndiff);
            refs++;
            differing_refs += ndiff > 0;
            if (worst > worst_all) worst_all = worst;
        }
        bl_image_free(&out);
    }
    if (cur[0]) printf("%s\n", line);
    printf("references: %d compared, %d with any difference, worst %d\n", refs, differing_refs,
           worst_all);
    CHECK(refs > 200, "only %d references", refs);
    /* every prefix of a file: decoded where PIL decodes it (a PNG once its last row is in, a
     * JPEG only whole), to the same pixels, and refused as truncated before */
    for (int i = 0; i < st.n_meta; i++) {
        if (strncmp(st.meta_key[i], "prefix:", 7)) continue;
        const char *file = st.meta_key[i] + 7;
        const long first = atol(st.meta_val[i]);
        char ipath[4400];
        snprintf(ipath, sizeof ipath, "%s/%s", fx, file);
        uint8_t *b;
        size_t len;
        if (read_all(ipath, &b, &len)) {
            CHECK(0, "read %s", ipath);
            continue;
        }
        bl_image whole;
        CHECK(!bl_img_decode_mem(b, len, file, 0, &whole), "%s: %s", file, bl_error());
        int wrong = 0, unnamed = 0;
        for (size_t n = 0; n <= len && whole.px; n++) {
            bl_image im;
            bl_status s = bl_img_decode_mem(b, n, file, 0, &im);
            if ((long)n >= first) {
                wrong += s || memcmp(im.px, whole.px, (size_t)whole.h * whole.w * 3);
            } else {
                wrong += !s;
                unnamed += s && !(contains(bl_error(), file) &&
                                  (contains(bl_error(), "truncated") || n < 8));
            }
            bl_image_free(&im);
        }
        printf("  %s: prefixes of %ld to %zu bytes decode (PIL's), shorter ones refused\n", file,
               first, len);
        CHECK(!wrong, "%s: %d prefixes decoded where PIL does not or the reverse", file, wrong);
        CHECK(!unnamed, "%s: %d truncation errors not named so", file, unnamed);
        bl_image_free(&whole);
        free(b);
    }
    bl_st_free(&st);
}

/* ---- broken files --------------------------------------------------------------------------- */
static void test_bad(void)
{
    static const struct {
        const char *file, *part;
    } bad[] = {
        {"empty.png", "empty file (0 bytes)"},
        {"trunc_scan.jpg", "truncated JPEG"},
        {"trunc_prog.jpg", "truncated JPEG"},
        {"trunc_header.jpg", "truncated JPEG"},
        {"no_eoi.jpg", "truncated JPEG"},
        {"trunc.png", "truncated PNG"},
        {"bad_crc.png", "libpng: IHDR: CRC error"},
        {"bad_text_crc.png", "libpng: tEXt: CRC error"},
        {"huge.png", "100000 x 100000 pixels (width x height): above bnlab's limit"},
        {"huge.jpg", "40000 x 40000 pixels (width x height): above bnlab's limit"},
        {"not_image.png", "neither JPEG nor PNG (it starts with 68 65 6c 6c"},
        {"gif_named.jpg", "a GIF image: bnlab decodes JPEG and PNG only"},
        {"cmyk.jpg", "a CMYK JPEG: bnlab does not reproduce PIL's conversion"},
        {"many_scans.jpg", "a progressive JPEG of more than 500 scans"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/bad/%s", fx, bad[i].file);
        for (int gray = 0; gray < 2; gray++) {
            bl_image im;
            bl_status s = bl_img_decode(p, gray, &im);
            CHECK(s == BL_ERR_FORMAT && !im.px, "%s: status %d", bad[i].file, s);
            CHECK(contains(bl_error(), p) && contains(bl_error(), bad[i].part),
                  "%s: the error '%s' lacks '%s' or the path", bad[i].file, bl_error(),
                  bad[i].part);
        }
        if (i == 0) printf("errors, e.g.: %s\n", bl_error());
        if (!strcmp(bad[i].file, "trunc_scan.jpg") || !strcmp(bad[i].file, "huge.png"))
            printf("              %s\n", bl_error());
    }
    /* the header alone: sizes, and the same limits */
    bl_img_format fmt;
    int h, w;
    char p[4200];
    snprintf(p, sizeof p, "%s/jpeg_rgb420_300x200.jpg", fx);
    CHECK(!bl_img_probe(p, &fmt, &h, &w) && fmt == BL_IMG_JPEG && h == 200 && w == 300,
          "probe %s: %s", p, bl_error());
    snprintf(p, sizeof p, "%s/png_adam7_37x23.png", fx);
    CHECK(!bl_img_probe(p, &fmt, &h, &w) && fmt == BL_IMG_PNG && h == 23 && w == 37,
          "probe %s: %s", p, bl_error());
    snprintf(p, sizeof p, "%s/bad/huge.png", fx);
    CHECK(bl_img_probe(p, &fmt, &h, &w) == BL_ERR_FORMAT && contains(bl_error(), "100000"),
          "probe huge.png: %s", bl_error());
    snprintf(p, sizeof p, "%s/bad/trunc_header.jpg", fx);
    CHECK(bl_img_probe(p, &fmt, &h, &w) == BL_ERR_FORMAT && contains(bl_error(), "truncated"),
          "probe trunc_header.jpg: %s", bl_error());
    /* not files */
    bl_image im;
    CHECK(bl_img_decode("/nonexistent/x.png", 0, &im) == BL_ERR_IO &&
          contains(bl_error(), "/nonexistent/x.png: cannot open"), "%s", bl_error());
    CHECK(bl_img_decode(fx, 0, &im) == BL_ERR_IO && contains(bl_error(), "not a regular file"),
          "%s", bl_error());
    /* a header claiming 100000 x 100000 from memory too, and a JPEG cut at every length */
    snprintf(p, sizeof p, "%s/bad/huge.png", fx);
    uint8_t *b;
    size_t len;
    if (!read_all(p, &b, &len)) {
        CHECK(bl_img_decode_mem(b, len, "mem.png", 1, &im) == BL_ERR_FORMAT &&
              contains(bl_error(), "mem.png: a PNG of 100000 x 100000"), "%s", bl_error());
        free(b);
    }
}

/* ---- resizing and cropping without PIL: the rules themselves -------------------------------- */
static void test_rules(void)
{
    int oh, ow;
    bl_img_resize_size(375, 500, 256, &oh, &ow);
    CHECK(oh == 256 && ow == 341, "Resize(256) of 500x375: %dx%d", ow, oh);
    bl_img_resize_size(500, 375, 256, &oh, &ow);
    CHECK(oh == 341 && ow == 256, "Resize(256) of 375x500: %dx%d", ow, oh);
    bl_img_resize_size(90, 90, 7, &oh, &ow);
    CHECK(oh == 7 && ow == 7, "Resize(7) of 90x90: %dx%d", ow, oh);
    bl_img_resize_size(1, 32768, 32768, &oh, &ow);
    CHECK(oh == 32768 && ow == 1073741824, "Resize(32768) of 32768x1: %dx%d", ow, oh);
    char s[96];
    bl_img_recipe r = {256, 224, 0};
    bl_img_recipe_str(&r, s, sizeof s);
    CHECK(!strcmp(s, "Resize(256) + CenterCrop(224), RGB"), "%s", s);
    r = (bl_img_recipe){0, 28, 1};
    bl_img_recipe_str(&r, s, sizeof s);
    CHECK(!strcmp(s, "CenterCrop(28), L"), "%s", s);
    r = (bl_img_recipe){0, 0, 0};
    bl_img_recipe_str(&r, s, sizeof s);
    CHECK(!strcmp(s, "original size, RGB"), "%s", s);
    r = (bl_img_recipe){-1, 0, 0};
    CHECK(bl_img_recipe_check(&r) == BL_ERR_ARG && contains(bl_error(), "recipe.resize"), "%s",
          bl_error());
    r = (bl_img_recipe){0, 40000, 0};
    CHECK(bl_img_recipe_check(&r) == BL_ERR_ARG && contains(bl_error(), "recipe.crop"), "%s",
          bl_error());
    r = (bl_img_recipe){0, 0, 2};
    CHECK(bl_img_recipe_check(&r) == BL_ERR_ARG && contains(bl_error(), "recipe.gray"), "%s",
          bl_error());
    /* a 1x1 image everywhere; a resize to the same size is a copy; a crop pads with zeros */
    uint8_t px1[3] = {200, 100, 50};
    bl_image one = {1, 1, 3, px1}, o;
    CHECK(!bl_img_resize(&one, 5, 4, &o) && o.h == 5 && o.w == 4, "%s", bl_error());
    int same = 1;
    for (int k = 0; o.px && k < 20; k++) same &= !memcmp(o.px + 3 * k, px1, 3);
    CHECK(same, "1x1 resized is not constant");
    bl_image_free(&o);
    uint8_t g[12];
    for (int k = 0; k < 12; k++) g[k] = (uint8_t)(k * 20);
    bl_image gi = {3, 4, 1, g};
    CHECK(!bl_img_resize(&gi, 3, 4, &o) && !memcmp(o.px, g, 12), "same size is not a copy");
    bl_image_free(&o);
    /* 3 rows, 4 columns into 6 x 5: rows 1 above 2 below, columns 0 left 1 right... torchvision:
     * pad (6 - 3) // 2 = 1 above, (5 - 4) // 2 = 0 left */
    CHECK(!bl_img_center_crop(&gi, 6, 5, &o) && o.h == 6 && o.w == 5, "%s", bl_error());
    int pads = 1;
    for (int y = 0; o.px && y < 6; y++)
        for (int x = 0; x < 5; x++) {
            int inside = y >= 1 && y < 4 && x < 4;
            pads &= o.px[y * 5 + x] == (inside ? g[(y - 1) * 4 + x] : 0);
        }
    CHECK(pads, "center_crop padding is not torchvision's");
    bl_image_free(&o);
    /* a 4-wide image cropped to 1: offset round(1.5) = 2 (half to even), not 1 */
    CHECK(!bl_img_center_crop(&gi, 3, 1, &o) && o.px[0] == g[2], "round half to even");
    bl_image_free(&o);
    CHECK(bl_img_resize(&gi, 0, 4, &o) == BL_ERR_ARG, "a 0-row resize accepted");
    bl_image bad = {0, 4, 1, g};
    r = (bl_img_recipe){2, 0, 0};
    CHECK(bl_img_apply(&bad, &r, &o) == BL_ERR_ARG, "an empty image accepted");
    /* Resize alone of a long image over the limit is refused, with a crop it is fine */
    static uint8_t longimg[4096 * 3];
    bl_image li = {1, 4096, 3, longimg};
    r = (bl_img_recipe){16384, 0, 0};
    CHECK(bl_img_apply(&li, &r, &o) == BL_ERR_ARG && contains(bl_error(), "limits"), "%s",
          bl_error());
    r.crop = 8;
    CHECK(!bl_img_apply(&li, &r, &o) && o.h == 8 && o.w == 8, "%s", bl_error());
    bl_image_free(&o);
}

/* ---- folders -------------------------------------------------------------------------------- */
static void test_fixture_folder(void)
{
    char root[4200], list[4200];
    snprintf(root, sizeof root, "%s/folder", fx);
    snprintf(list, sizeof list, "%s/folder.txt", fx);
    bl_imgfolder f;
    if (bl_imgfolder_scan(root, &f)) {
        CHECK(0, "%s", bl_error());
        return;
    }
    CHECK(f.classes == 2 && !strcmp(f.class_names[0], "a_class") &&
          !strcmp(f.class_names[1], "b_class"), "classes");
    CHECK(f.skipped == 3 && !strcmp(f.skipped_what, "2 .txt, 1 .webp"), "skipped %d: %s",
          f.skipped, f.skipped_what);
    FILE *fp = fopen(list, "r");
    CHECK(fp != NULL, "open %s", list);
    char line[4096];
    int k = 0, same = 1;
    while (fp && fgets(line, sizeof line, fp)) {
        if (line[0] == '#') continue;
        int label;
        char rel[4000], want[8200];
        if (sscanf(line, "%d %3999s", &label, rel) != 2) continue;
        snprintf(want, sizeof want, "%s/%s", root, rel);
        if (k >= f.n || strcmp(f.paths[k], want) || f.labels[k] != label) {
            same = 0;
            fprintf(stderr, "sample %d: torchvision %d %s, bnlab %d %s\n", k, label, want,
                    k < f.n ? f.labels[k] : -1, k < f.n ? f.paths[k] : "(none)");
        }
        k++;
    }
    if (fp) fclose(fp);
    CHECK(same && k == f.n, "ImageFolder's %d samples, bnlab's %d, in the same order: %d", k,
          f.n, same);
    printf("folder: %d images in %d classes as torchvision lists them; skipped %s\n", f.n,
           f.classes, f.skipped_what);

    /* a batch: the size from the recipe, each image as decoded alone, the same with 1 thread */
    bl_img_recipe r = {24, 20, 0};
    int h, w, c;
    CHECK(!bl_imgfolder_out_size(&f, &r, &h, &w, &c) && h == 20 && w == 20 && c == 3, "size");
    int idx[64];
    for (int i = 0; i < f.n; i++) idx[i] = f.n - 1 - i;
    const size_t per = 20 * 20 * 3;
    uint8_t *a = malloc(per * f.n), *b = malloc(per * f.n);
    CHECK(!bl_imgfolder_fetch(&f, &r, idx, f.n, a, 20, 20), "%s", bl_error());
    int alone = 1;
    for (int i = 0; i < f.n; i++) {
        bl_image im, o;
        if (bl_img_decode(f.paths[idx[i]], 0, &im)) {
            alone = 0;
            continue;
        }
        alone &= !bl_img_apply(&im, &r, &o) && !memcmp(o.px, a + per * i, per);
        bl_image_free(&im);
        bl_image_free(&o);
    }
    CHECK(alone, "a batch's images differ from the images decoded alone");
    const int threads = bl_threads_get();
    bl_threads_set(1);
    CHECK(!bl_imgfolder_fetch(&f, &r, idx, f.n, b, 20, 20) && !memcmp(a, b, per * f.n),
          "1 thread and %d threads differ", threads);
    bl_threads_set(threads);
    /* grey: one channel */
    r.gray = 1;
    CHECK(!bl_imgfolder_fetch(&f, &r, idx, f.n, b, 20, 20), "%s", bl_error());
    /* bad arguments */
    idx[0] = f.n;
    CHECK(bl_imgfolder_fetch(&f, &r, idx, 1, b, 20, 20) == BL_ERR_ARG &&
          contains(bl_error(), "outside the folder"), "%s", bl_error());
    idx[0] = 0;
    CHECK(bl_imgfolder_fetch(&f, &r, idx, 1, b, 21, 20) == BL_ERR_ARG, "a wrong size accepted");
    CHECK(!bl_imgfolder_fetch(&f, &r, idx, 0, NULL, 20, 20), "an empty batch refused");
    free(a);
    free(b);
    bl_imgfolder_free(&f);
}

static bl_status scan_tmp(const char *sub, bl_imgfolder *f)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", tmp, sub);
    return bl_imgfolder_scan(p, f);
}

static void test_folders(void)
{
    bl_imgfolder f;
    /* missing, a file, empty, no images */
    CHECK(bl_imgfolder_scan("/nonexistent/images", &f) == BL_ERR_IO &&
          contains(bl_error(), "/nonexistent/images: no such folder"), "%s", bl_error());
    put("file/x.png", "png_rgb_1x1.png", NULL);
    CHECK(scan_tmp("file/x.png", &f) == BL_ERR_ARG && contains(bl_error(), "not a folder"), "%s",
          bl_error());
    char p[4200];
    snprintf(p, sizeof p, "%s/empty", tmp);
    mkdirs(p);
    CHECK(scan_tmp("empty", &f) == BL_ERR_FORMAT && contains(bl_error(), "empty (no images"),
          "%s", bl_error());
    put("noimg/a.txt", NULL, "a");
    put("noimg/b.TXT", NULL, "b");
    put("noimg/c.md", NULL, "c");
    put("noimg/README", NULL, "d");
    put("noimg/.hidden.png", "png_rgb_1x1.png", NULL);
    CHECK(scan_tmp("noimg", &f) == BL_ERR_FORMAT &&
          contains(bl_error(), "no images (.jpg, .jpeg, .png); 4 other files skipped (2 .txt, 1 "
                               ".md, 1 without extension)"), "%s", bl_error());
    /* class folders without images, named (torchvision raises too) */
    put("noclass/a/x.png", "png_rgb_1x1.png", NULL);
    put("noclass/b/readme.txt", NULL, "b");
    snprintf(p, sizeof p, "%s/noclass/c", tmp);
    mkdirs(p);
    CHECK(scan_tmp("noclass", &f) == BL_ERR_FORMAT &&
          contains(bl_error(), "2 class folders without images (.jpg, .jpeg, .png): 'b', 'c'"),
          "%s", bl_error());
    /* flat: sorted by bytes ('B' < 'a'), no labels, case-insensitive extensions */
    put("flat/a.png", "png_rgb_1x1.png", NULL);
    put("flat/B.JPEG", "jpeg_gray_64x48.jpg", NULL);
    put("flat/a.png.txt", NULL, "x");
    put("flat/c.Jpg", "jpeg_rgb444_64x48.jpg", NULL);
    put("flat/.DS_Store", NULL, "x");
    if (!scan_tmp("flat/", &f)) {
        CHECK(f.n == 3 && !f.labels && f.classes == 0 && f.skipped == 1, "flat: %d images", f.n);
        CHECK(f.n == 3 && contains(f.paths[0], "/flat/B.JPEG") &&
              contains(f.paths[1], "/flat/a.png") && contains(f.paths[2], "/flat/c.Jpg") &&
              !contains(f.paths[0], "//"), "flat order: %s %s", f.paths[0], f.paths[1]);
        /* neither resize nor crop: the first image's size, the others must have it */
        bl_img_recipe r = {0, 0, 0};
        int h, w, c;
        CHECK(!bl_imgfolder_out_size(&f, &r, &h, &w, &c) && h == 48 && w == 64 && c == 3, "size");
        uint8_t *out = malloc((size_t)3 * h * w * c);
        int idx[3] = {0, 2, 1};
        CHECK(!bl_imgfolder_fetch(&f, &r, idx, 2, out, h, w), "%s", bl_error());
        CHECK(bl_imgfolder_fetch(&f, &r, idx, 3, out, h, w) == BL_ERR_ARG &&
              contains(bl_error(), "/flat/a.png: a 1 x 1 image") &&
              contains(bl_error(), "add a CenterCrop"), "%s", bl_error());
        free(out);
        bl_imgfolder_free(&f);
    } else {
        CHECK(0, "%s", bl_error());
    }
    /* nested folders in sorted(os.walk) order, a linked folder followed, files beside the
     * classes skipped */
    put("tree/cls/z.png", "png_rgb_1x1.png", NULL);
    put("tree/cls/x/b.png", "png_rgb_1x1.png", NULL);
    put("tree/cls/x/y/a.png", "png_rgb_1x1.png", NULL);
    put("tree/cls/x-y/c.png", "png_rgb_1x1.png", NULL);
    put("tree/notes.txt", NULL, "x");
    put("tree/top.png", "png_rgb_1x1.png", NULL);
    put("elsewhere/linked.png", "png_rgb_1x1.png", NULL);
    char to[4200];
    snprintf(p, sizeof p, "%s/elsewhere", tmp);
    snprintf(to, sizeof to, "%s/tree/cls/link", tmp);
    CHECK(!symlink(p, to), "symlink: %s", strerror(errno));
    if (!scan_tmp("tree", &f)) {
        static const char *order[] = {"/cls/z.png", "/cls/link/linked.png", "/cls/x/b.png",
                                      "/cls/x-y/c.png", "/cls/x/y/a.png"};
        int ok = f.n == 5;
        for (int i = 0; ok && i < 5; i++) ok = contains(f.paths[i], order[i]) && !f.labels[i];
        CHECK(ok, "walk order (%d images): %s ...", f.n, f.n ? f.paths[0] : "");
        CHECK(f.skipped == 2 && !strcmp(f.skipped_what, "2 at the top level"), "%d: %s",
              f.skipped, f.skipped_what);
        bl_imgfolder_free(&f);
    } else {
        CHECK(0, "%s", bl_error());
    }
    /* a link back up: a loop, not endless */
    snprintf(p, sizeof p, "%s/tree/cls", tmp);
    snprintf(to, sizeof to, "%s/tree/cls/x/up", tmp);
    CHECK(!symlink(p, to), "symlink: %s", strerror(errno));
    CHECK(scan_tmp("tree", &f) == BL_ERR_ARG && contains(bl_error(), "a loop"), "%s",
          bl_error());

    /* a batch's error is its first failing image in batch order */
    put("batch/0.png", "png_rgb_37x23.png", NULL);
    put("batch/1.jpg", "jpeg_rgb422_37x23.jpg", NULL);
    put("batch/2.jpg", "bad/trunc_scan.jpg", NULL);
    put("batch/3.png", "png_p4_37x23.png", NULL);
    put("batch/4.png", "bad/empty.png", NULL);
    put("batch/5.png", "bad/huge.png", NULL);
    if (!scan_tmp("batch", &f)) {
        bl_img_recipe r = {16, 16, 0};
        uint8_t *out = malloc(6 * 16 * 16 * 3);
        int fwd[6] = {0, 1, 2, 3, 4, 5}, back[6] = {5, 4, 3, 2, 1, 0}, good[3] = {3, 0, 1};
        for (int rep = 0; rep < 3; rep++) {
            CHECK(bl_imgfolder_fetch(&f, &r, fwd, 6, out, 16, 16) == BL_ERR_FORMAT &&
                  contains(bl_error(), "/batch/2.jpg: truncated JPEG"), "%s", bl_error());
            CHECK(bl_imgfolder_fetch(&f, &r, back, 6, out, 16, 16) == BL_ERR_FORMAT &&
                  contains(bl_error(), "/batch/5.png: a PNG of 100000 x 100000"), "%s",
                  bl_error());
        }
        CHECK(!bl_imgfolder_fetch(&f, &r, good, 3, out, 16, 16), "%s", bl_error());
        /* Resize alone: the first image's size; another shape is refused, named */
        r = (bl_img_recipe){20, 0, 0};
        int h, w, c, mixed[2] = {0, 3};
        CHECK(!bl_imgfolder_out_size(&f, &r, &h, &w, &c) && h == 20 && w == 32, "%dx%d", w, h);
        CHECK(!bl_imgfolder_fetch(&f, &r, mixed, 2, out, h, w), "%s", bl_error());
        free(out);
        bl_imgfolder_free(&f);
    } else {
        CHECK(0, "%s", bl_error());
    }
    put("shapes/a.png", "png_rgb_37x23.png", NULL);
    put("shapes/b.png", "png_l_15x90.png", NULL);
    if (!scan_tmp("shapes", &f)) {
        bl_img_recipe r = {20, 0, 1};
        int h, w, c, idx[2] = {0, 1};
        CHECK(!bl_imgfolder_out_size(&f, &r, &h, &w, &c) && h == 20 && w == 32 && c == 1, "size");
        uint8_t *out = malloc(2 * 20 * 32);
        CHECK(bl_imgfolder_fetch(&f, &r, idx, 2, out, h, w) == BL_ERR_ARG &&
              contains(bl_error(), "/shapes/b.png: a 15 x 90 image (width x height) comes out at "
                                   "20 x 120") && contains(bl_error(), "add a CenterCrop"),
              "%s", bl_error());
        free(out);
        bl_imgfolder_free(&f);
    } else {
        CHECK(0, "%s", bl_error());
    }
}

/* ---- failed allocations: each one in turn, in decoding (libpng allocates through bnlab too),
 * resizing, scanning and fetching; always BL_ERR_NOMEM or success, nothing leaked (ASan) ------ */
static bl_status alloc_run(int what)
{
    char p[4200];
    static const char *files[] = {"png_adam7_37x23.png", "png_p4_37x23.png",
                                  "jpeg_prog444_15x90.jpg", "png_gray16_64x48.png"};
    if (what < 4) {
        snprintf(p, sizeof p, "%s/%s", fx, files[what]);
        bl_image im, o;
        bl_img_recipe r = {23, 20, what & 1};
        bl_status st = bl_img_decode(p, r.gray, &im);
        if (st) return st;
        st = bl_img_apply(&im, &r, &o);
        bl_image_free(&im);
        bl_image_free(&o);
        return st;
    }
    snprintf(p, sizeof p, "%s/folder", fx);
    bl_imgfolder f;
    bl_status st = bl_imgfolder_scan(p, &f);
    if (st || what == 4) {
        bl_imgfolder_free(&f);
        return st;
    }
    bl_img_recipe r = {20, 0, 0};
    int h, w, c, idx[2] = {0, 1};
    if (!(st = bl_imgfolder_out_size(&f, &r, &h, &w, &c))) {
        r.crop = 12;
        uint8_t out[2 * 12 * 12 * 3];
        st = bl_imgfolder_fetch(&f, &r, idx, 2, out, 12, 12);
    }
    bl_imgfolder_free(&f);
    return st;
}

static void test_alloc_faults(void)
{
    for (int what = 0; what < 6; what++) {
        bl_fault_set(BL_FAULT_ALLOC, -1);
        CHECK(!alloc_run(what), "run %d without faults: %s", what, bl_error());
        const long calls = bl_fault_calls(BL_FAULT_ALLOC);
        int bad = 0;
        for (long k = 0; k < calls; k++) {
            bl_fault_set(BL_FAULT_ALLOC, k);
            bl_status st = alloc_run(what);
            if (st != BL_ERR_NOMEM && bl_fault_calls(BL_FAULT_ALLOC) > k) {
                bad++;
                fprintf(stderr, "run %d, allocation %ld failed: status %d: %s\n", what, k, st,
                        bl_error());
            }
        }
        bl_fault_set(BL_FAULT_ALLOC, -1);
        CHECK(!bad, "run %d: %d of %ld failed allocations not reported as out of memory", what,
              bad, calls);
        printf("allocation faults: run %d: each of its %ld allocations failed in turn\n", what,
               calls);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) return fprintf(stderr, "usage: test_images FIXTURES_DIR\n"), 2;
    snprintf(fx, sizeof fx, "%s/images", argv[1]);
    const char *t = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/bnlab-test-images-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp)) return fprintf(stderr, "mkdtemp %s: %s\n", tmp, strerror(errno)), 2;
    test_references();
    test_bad();
    test_rules();
    test_fixture_folder();
    test_folders();
    test_alloc_faults();
    rm_rf(tmp);
    return check_done("test_images");
}
