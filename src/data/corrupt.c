/* Fashion-MNIST-C: deterministic corruptions of grayscale images after ImageNet-C / CIFAR-10-C
 * (Hendrycks & Dietterich 2019) and MNIST-C (Mu & Gilmer 2019). Each output image is a function of
 * (image, corruption, severity, seed, sample index) alone: its random draws come from an RNG
 * seeded by those, so a corrupted split is the same bytes on every run and thread count.
 * Parameters per severity and their sources: docs/corruptions.md. Work is in x / 255 as doubles;
 * the result is clipped to [0, 1] and truncated to uint8 after * 255, as ImageNet-C's np.uint8. */
#include "bnlab/data.h"
#include "data/corrupt_ops.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef BL_HAVE_JPEG
#include <jpeglib.h>
#endif

static const char *names[BL_CORRUPT_COUNT] = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "glass_blur",
    "contrast",       "brightness", "jpeg_compression", "pixelate", "elastic_transform", "fog"};

const char *bl_corruption_name(bl_corruption c)
{
    return c >= 0 && c < BL_CORRUPT_COUNT ? names[c] : "unknown";
}

bl_status bl_corruption_parse(const char *name, bl_corruption *c)
{
    char n[64];
    snprintf(n, sizeof n, "%s", name ? name : "");
    for (char *p = n; *p; p++) *p = *p == '-' ? '_' : *p; /* gaussian-noise works too */
    for (int k = 0; k < BL_CORRUPT_COUNT; k++)
        if (!strcmp(n, names[k]) || (k == BL_CORRUPT_JPEG && !strcmp(n, "jpeg")) ||
            (k == BL_CORRUPT_ELASTIC && !strcmp(n, "elastic"))) {
            *c = (bl_corruption)k;
            return BL_OK;
        }
    char list[512] = "";
    for (int k = 0, o = 0; k < BL_CORRUPT_COUNT; k++)
        o += snprintf(list + o, sizeof list - o, "%s%s", k ? ", " : "", names[k]);
    return bl_fail(BL_ERR_ARG, "unknown corruption '%s': use one of %s", name ? name : "", list);
}

int bl_corruption_monotone(bl_corruption c)
{
    /* elastic: severity 1 is the largest affine part with no elastic field (see the doc);
     * glass blur: severities 4-5 add an iteration at a smaller sigma than 3 */
    return c != BL_CORRUPT_ELASTIC && c != BL_CORRUPT_GLASS_BLUR;
}

static double uniform(bl_rng *r, double lo, double hi) { return lo + (hi - lo) * bl_rng_uniform(r); }

/* Poisson(lam): Knuth's product method for small means; for large ones the normal approximation
 * rounded (the shot noise means here are up to 255 * 60, where it is within a fraction of a level
 * of the exact law). */
static double poisson(bl_rng *r, double lam)
{
    if (lam <= 0) return 0;
    if (lam < 30) {
        const double l = exp(-lam);
        double p = 1;
        int k = 0;
        do {
            k++;
            p *= bl_rng_uniform(r);
        } while (p > l);
        return k - 1;
    }
    const double v = floor(lam + sqrt(lam) * bl_rng_normal(r) + 0.5);
    return v < 0 ? 0 : v;
}

typedef struct {
    int h, w;
    double *x, *t1, *t2, *t3, *t4; /* the image and four scratch images of h * w */
    bl_rng *r;
} img;

/* ---- noise ------------------------------------------------------------------------------------ */
static void gaussian_noise(img *m, int s)
{
    static const double c[5] = {0.04, 0.06, 0.08, 0.09, 0.10};
    for (int i = 0; i < m->h * m->w; i++) m->x[i] += c[s] * bl_rng_normal(m->r);
}

static void shot_noise(img *m, int s)
{
    static const double c[5] = {500, 250, 100, 75, 50};
    for (int i = 0; i < m->h * m->w; i++) m->x[i] = poisson(m->r, m->x[i] * c[s]) / c[s];
}

static void impulse_noise(img *m, int s)
{
    /* salt and pepper: a fraction c of the pixels, each set to 0 or 1 with probability 1/2 */
    static const double c[5] = {0.01, 0.02, 0.03, 0.05, 0.07};
    for (int i = 0; i < m->h * m->w; i++) {
        const double u = bl_rng_uniform(m->r), v = bl_rng_uniform(m->r);
        if (u < c[s]) m->x[i] = v < 0.5 ? 0 : 1;
    }
}

/* ---- blur ------------------------------------------------------------------------------------- */
static void defocus_blur(img *m, int s)
{
    /* a disk of the radius, anti-aliased by a 3x3 gaussian of the second value, applied with
     * reflected borders */
    static const double c[5][2] = {{0.3, 0.4}, {0.4, 0.5}, {0.5, 0.6}, {1, 0.2}, {1.5, 0.1}};
    enum { R = 8, N = 2 * R + 1 };
    double disk[N * N], k[N * N], g[3];
    double sum = 0;
    for (int y = -R; y <= R; y++)
        for (int x = -R; x <= R; x++)
            sum += disk[(y + R) * N + x + R] = x * x + y * y <= c[s][0] * c[s][0];
    for (int i = 0; i < N * N; i++) disk[i] /= sum;
    double gs = 0;
    for (int i = -1; i <= 1; i++) gs += g[i + 1] = exp(-0.5 * i * i / (c[s][1] * c[s][1]));
    for (int i = 0; i < 3; i++) g[i] /= gs;
    double tmp[N * N];
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double a = 0;
            for (int b = -1; b <= 1; b++) a += g[b + 1] * disk[y * N + bl_reflect101(x + b, N)];
            tmp[y * N + x] = a;
        }
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double a = 0;
            for (int b = -1; b <= 1; b++) a += g[b + 1] * tmp[bl_reflect101(y + b, N) * N + x];
            k[y * N + x] = a;
        }
    bl_conv2d(m->x, m->h, m->w, k, N, N, 0, m->t1);
    memcpy(m->x, m->t1, sizeof(double) * m->h * m->w);
}

static void motion_blur(img *m, int s)
{
    /* ImageMagick's motion blur (what ImageNet-C calls through Wand): a one-sided half-gaussian of
     * 2 * ceil(radius) + 1 taps starting at the pixel itself, laid along an angle drawn uniformly
     * in [-45, 45] degrees, tap offsets rounded half down, edge pixels replicated */
    static const double c[5][2] = {{6, 1}, {6, 1.5}, {6, 2}, {8, 2}, {9, 2.5}};
    const double angle = uniform(m->r, -45, 45) * 3.14159265358979323846 / 180;
    const int n = 2 * (int)ceil(c[s][0]) + 1;
    double wt[64], sum = 0;
    int ox[64], oy[64];
    for (int i = 0; i < n; i++) {
        sum += wt[i] = exp(-0.5 * i * i / (c[s][1] * c[s][1]));
        ox[i] = (int)ceil(i * cos(angle) - 0.5);
        oy[i] = (int)ceil(i * sin(angle) - 0.5);
    }
    for (int y = 0; y < m->h; y++)
        for (int x = 0; x < m->w; x++) {
            double a = 0;
            for (int i = 0; i < n; i++)
                a += wt[i] * m->x[bl_clampi(y + oy[i], m->h) * m->w + bl_clampi(x + ox[i], m->w)];
            m->t1[y * m->w + x] = a / sum;
        }
    memcpy(m->x, m->t1, sizeof(double) * m->h * m->w);
}

static void glass_blur(img *m, int s)
{
    /* blur (then 8 bits, as ImageNet-C's uint8), then swap each pixel with a random neighbour at
     * offsets in [-max_delta, max_delta - 1] (numpy's randint), scanning from the bottom right, a
     * number of passes, then blur again. On a grayscale array the swap is a true swap (as in
     * MNIST-C; CIFAR-10-C's RGB arrays copy instead, docs/corruptions.md). */
    static const double c[5][3] = {{0.05, 1, 1}, {0.25, 1, 1}, {0.4, 1, 1}, {0.25, 1, 2}, {0.4, 1, 2}};
    const int d = (int)c[s][1], it = (int)c[s][2];
    bl_gauss_blur(m->x, m->h, m->w, c[s][0], 1, m->t1);
    for (int i = 0; i < m->h * m->w; i++)
        m->x[i] = floor(fmin(fmax(m->x[i], 0), 1) * 255) / 255;
    for (int k = 0; k < it; k++)
        for (int y = m->h - d; y > d; y--)
            for (int x = m->w - d; x > d; x--) {
                const int ox = (int)bl_rng_below(m->r, 2 * d) - d;
                const int oy = (int)bl_rng_below(m->r, 2 * d) - d;
                const int yy = y + oy, xx = x + ox;
                if (yy < 0 || yy >= m->h || xx < 0 || xx >= m->w) continue;
                const double t = m->x[y * m->w + x];
                m->x[y * m->w + x] = m->x[yy * m->w + xx];
                m->x[yy * m->w + xx] = t;
            }
    bl_gauss_blur(m->x, m->h, m->w, c[s][0], 1, m->t1);
}

/* ---- digital ---------------------------------------------------------------------------------- */
static void contrast(img *m, int s)
{
    static const double c[5] = {0.75, 0.5, 0.4, 0.3, 0.15};
    const int n = m->h * m->w;
    double mean = 0;
    for (int i = 0; i < n; i++) mean += m->x[i];
    mean /= n;
    for (int i = 0; i < n; i++) m->x[i] = (m->x[i] - mean) * c[s] + mean;
}

static void brightness(img *m, int s)
{
    /* ImageNet-C adds c to V of HSV; for a gray pixel V is the pixel */
    static const double c[5] = {0.05, 0.1, 0.15, 0.2, 0.3};
    for (int i = 0; i < m->h * m->w; i++) m->x[i] = fmin(m->x[i] + c[s], 1);
}

static void pixelate(img *m, int s)
{
    /* down to c * size and back up, both with PIL's BOX filter (ImageNet-C's Image.BOX) */
    static const double c[5] = {0.95, 0.9, 0.85, 0.75, 0.65};
    const int oh = (int)(m->h * c[s]), ow = (int)(m->w * c[s]);
    bl_resize_box(m->x, m->h, m->w, m->t1, oh, ow);
    bl_resize_box(m->t1, oh, ow, m->x, m->h, m->w);
}

#ifdef BL_HAVE_JPEG
/* On the heap: what libjpeg changes between setjmp and a longjmp must not be a local variable */
struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    struct jpeg_compress_struct ci;
    struct jpeg_decompress_struct di;
    unsigned char *buf;
    unsigned long len;
    int made_c, made_d;
};

static void jpeg_fail(j_common_ptr cinfo)
{
    longjmp(((struct jerr *)cinfo->err)->jump, 1);
}

/* Encodes the 8-bit image with libjpeg at the quality and decodes it back; 0 on success, -2
 * when its state could not be allocated (the reason set), -1 when libjpeg failed. */
static int jpeg_roundtrip(uint8_t *px, int h, int w, int quality)
{
    struct jerr *je = bl_callocn(1, sizeof *je);
    if (!je) return -2;
    struct jpeg_compress_struct *ci = &je->ci;
    struct jpeg_decompress_struct *di = &je->di;
    ci->err = jpeg_std_error(&je->pub);
    di->err = ci->err;
    je->pub.error_exit = jpeg_fail;
    if (setjmp(je->jump)) {
        if (je->made_c) jpeg_destroy_compress(ci);
        if (je->made_d) jpeg_destroy_decompress(di);
        free(je->buf);
        free(je);
        return -1;
    }
    jpeg_create_compress(ci);
    je->made_c = 1;
    jpeg_mem_dest(ci, &je->buf, &je->len);
    ci->image_width = (JDIMENSION)w, ci->image_height = (JDIMENSION)h;
    ci->input_components = 1, ci->in_color_space = JCS_GRAYSCALE;
    jpeg_set_defaults(ci);
    jpeg_set_quality(ci, quality, TRUE);
    jpeg_start_compress(ci, TRUE);
    for (int y = 0; y < h; y++) {
        JSAMPROW row = px + (size_t)y * w;
        jpeg_write_scanlines(ci, &row, 1);
    }
    jpeg_finish_compress(ci);
    jpeg_destroy_compress(ci);
    je->made_c = 0;
    jpeg_create_decompress(di);
    je->made_d = 1;
    jpeg_mem_src(di, je->buf, je->len);
    jpeg_read_header(di, TRUE);
    di->out_color_space = JCS_GRAYSCALE;
    jpeg_start_decompress(di);
    if ((int)di->output_width != w || (int)di->output_height != h || di->output_components != 1)
        longjmp(je->jump, 1);
    for (int y = 0; y < h; y++) {
        JSAMPROW row = px + (size_t)y * w;
        jpeg_read_scanlines(di, &row, 1);
    }
    jpeg_finish_decompress(di);
    jpeg_destroy_decompress(di);
    free(je->buf);
    free(je);
    return 0;
}
#endif

/* ---- geometric and weather ---------------------------------------------------------------------- */
static void elastic(img *m, int s)
{
    /* an affine jitter of three points (amplitude alpha_affine), then a smooth random displacement
     * field: uniform(-1, 1) per pixel, gaussian-blurred with sigma, times alpha; bilinear
     * sampling, reflected borders. (alpha, sigma, alpha_affine) in units of the 32-pixel CIFAR
     * image, scaled to this size. */
    static const double c[5][3] = {{0, 0, 0.08}, {0.05, 0.2, 0.07}, {0.08, 0.06, 0.06},
                                   {0.1, 0.04, 0.05}, {0.1, 0.03, 0.03}};
    const int h = m->h, w = m->w, n = h * w;
    const double size = h < w ? h : w;
    const double alpha = c[s][0] * size, sigma = c[s][1] * size, aff = c[s][2] * size;
    /* three points around the centre, moved; the affine map taking the moved points back */
    const double cy = h / 2, cx = w / 2, sq = (int)size / 3; /* N // 2 and N // 3 */
    const double p[3][2] = {{cx + sq, cy + sq}, {cx + sq, cy - sq}, {cx - sq, cy - sq}};
    double q[3][2];
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 2; d++) q[k][d] = p[k][d] + uniform(m->r, -aff, aff);
    /* solve the 2x3 matrix A with A [q;1] = p: the inverse map used to sample */
    const double det = q[0][0] * (q[1][1] - q[2][1]) - q[0][1] * (q[1][0] - q[2][0]) +
                       (q[1][0] * q[2][1] - q[2][0] * q[1][1]);
    double A[2][3] = {{1, 0, 0}, {0, 1, 0}};
    if (fabs(det) > 1e-9)
        for (int d = 0; d < 2; d++) {
            const double b0 = p[0][d], b1 = p[1][d], b2 = p[2][d];
            A[d][0] = (b0 * (q[1][1] - q[2][1]) - q[0][1] * (b1 - b2) + (b1 * q[2][1] - b2 * q[1][1])) / det;
            A[d][1] = (q[0][0] * (b1 - b2) - b0 * (q[1][0] - q[2][0]) + (q[1][0] * b2 - q[2][0] * b1)) / det;
            A[d][2] = (q[0][0] * (q[1][1] * b2 - q[2][1] * b1) - q[0][1] * (q[1][0] * b2 - q[2][0] * b1) +
                       b0 * (q[1][0] * q[2][1] - q[2][0] * q[1][1])) / det;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const double sx = A[0][0] * x + A[0][1] * y + A[0][2];
            const double sy = A[1][0] * x + A[1][1] * y + A[1][2];
            m->t1[y * w + x] = bl_bilinear(m->x, h, w, sy, sx, 0);
        }
    memcpy(m->x, m->t1, sizeof(double) * n);
    if (alpha <= 0) return;
    double *dx = m->t1, *dy = m->t2;
    for (int i = 0; i < n; i++) dx[i] = uniform(m->r, -1, 1), dy[i] = uniform(m->r, -1, 1);
    bl_gauss_blur3(dx, h, w, sigma, m->t3);
    bl_gauss_blur3(dy, h, w, sigma, m->t3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            m->t4[y * w + x] = bl_bilinear(m->x, h, w, y + alpha * dy[y * w + x],
                                           x + alpha * dx[y * w + x], 0);
    memcpy(m->x, m->t4, sizeof(double) * n);
}

/* The plasma fractal (diamond-square) of ImageNet-C's fog, on a torus of size 32, normalized to
 * [0, 1]; wibble starts at 100 and is divided by `decay` every level. */
static void plasma(bl_rng *r, double decay, double *map /* 32 x 32 */)
{
    enum { M = 32 };
    double wibble = 100;
    memset(map, 0, sizeof(double) * M * M);
    for (int step = M; step >= 2; step /= 2, wibble /= decay) {
        const int hs = step / 2;
        /* squares: the centre of each square from its four corners */
        for (int y = 0; y < M; y += step)
            for (int x = 0; x < M; x += step) {
                const double sum = map[y * M + x] + map[((y + step) % M) * M + x] +
                                   map[y * M + (x + step) % M] +
                                   map[((y + step) % M) * M + (x + step) % M];
                map[(y + hs) * M + x + hs] = sum / 4 + wibble * uniform(r, -wibble, wibble);
            }
        /* diamonds: the edge midpoints from the two corners and two centres around them */
        for (int y = 0; y < M; y += step)
            for (int x = 0; x < M; x += step) {
                const double top = map[y * M + x] + map[y * M + (x + step) % M] +
                                   map[(y + hs) * M + x + hs] +
                                   map[((y - hs + M) % M) * M + x + hs];
                const double left = map[y * M + x] + map[((y + step) % M) * M + x] +
                                    map[(y + hs) * M + x + hs] +
                                    map[(y + hs) * M + (x - hs + M) % M];
                map[y * M + x + hs] = top / 4 + wibble * uniform(r, -wibble, wibble);
                map[(y + hs) * M + x] = left / 4 + wibble * uniform(r, -wibble, wibble);
            }
    }
    double lo = map[0], hi = map[0];
    for (int i = 0; i < M * M; i++) lo = fmin(lo, map[i]), hi = fmax(hi, map[i]);
    for (int i = 0; i < M * M; i++) map[i] = hi > lo ? (map[i] - lo) / (hi - lo) : 0;
}

static void fog(img *m, int s)
{
    static const double c[5][2] = {{0.2, 3}, {0.5, 3}, {0.75, 2.5}, {1, 2}, {1.5, 1.75}};
    double map[32 * 32], mx = 0;
    plasma(m->r, c[s][1], map);
    const int n = m->h * m->w;
    for (int i = 0; i < n; i++) mx = fmax(mx, m->x[i]);
    for (int y = 0; y < m->h; y++)
        for (int x = 0; x < m->w; x++)
            m->x[y * m->w + x] = (m->x[y * m->w + x] + c[s][0] * map[(y % 32) * 32 + x % 32]) * mx /
                                 (mx + c[s][0]);
}

bl_status bl_corrupt_image(bl_corruption c, int severity, uint64_t seed, long index, int h, int w,
                           const uint8_t *in, uint8_t *out)
{
    if (c < 0 || c >= BL_CORRUPT_COUNT)
        return bl_fail(BL_ERR_ARG, "corruption %d: use 0..%d", (int)c, BL_CORRUPT_COUNT - 1);
    if (severity < 1 || severity > 5)
        return bl_fail(BL_ERR_ARG, "severity %d: use 1..5", severity);
    if (h < 8 || w < 8 || h > 256 || w > 256)
        return bl_fail(BL_ERR_ARG, "corrupt: images of %dx%d: sizes 8..256", h, w);
    const int n = h * w, s = severity - 1;
#ifdef BL_HAVE_JPEG
    if (c == BL_CORRUPT_JPEG) {
        static const int q[5] = {80, 65, 58, 50, 40};
        memcpy(out, in, (size_t)n);
        const int r = jpeg_roundtrip(out, h, w, q[s]);
        if (r == -2) return bl_fail_ctx(BL_ERR_NOMEM, "jpeg_compression: image %ld", index);
        if (r) return bl_fail(BL_ERR_STATE, "jpeg_compression: libjpeg failed on image %ld", index);
        return BL_OK;
    }
#else
    if (c == BL_CORRUPT_JPEG)
        return bl_fail(BL_ERR_STATE, "jpeg_compression: built without libjpeg: install "
                       "libjpeg-dev and rebuild");
#endif
    double *buf = bl_malloc(sizeof(double) * n * 5);
    if (!buf) return bl_fail(BL_ERR_NOMEM, "corrupt: out of memory");
    bl_rng r;
    bl_rng_seed(&r, bl_rng_mix(bl_rng_mix(bl_rng_mix(seed, BL_SALT_CORRUPT + (uint64_t)c), (uint64_t)severity),
                        (uint64_t)index));
    img m = {h, w, buf, buf + n, buf + 2 * n, buf + 3 * n, buf + 4 * n, &r};
    for (int i = 0; i < n; i++) m.x[i] = in[i] / 255.0;
    static void (*const fn[BL_CORRUPT_COUNT])(img *, int) = {
        gaussian_noise, shot_noise, impulse_noise, defocus_blur, motion_blur, glass_blur,
        contrast,       brightness, NULL,          pixelate,     elastic,     fog};
    fn[c](&m, s);
    for (int i = 0; i < n; i++) {
        const double v = m.x[i] < 0 ? 0 : m.x[i] > 1 ? 1 : m.x[i];
        out[i] = (uint8_t)(v * 255); /* truncation, as np.uint8 */
    }
    free(buf);
    return BL_OK;
}

bl_status bl_corrupt_dataset(const bl_dataset *src, bl_corruption c, int severity, uint64_t seed,
                             bl_dataset *out)
{
    memset(out, 0, sizeof *out);
    const size_t px = (size_t)src->h * src->w;
    out->pixels = bl_alloc(px * src->n + 1);
    out->labels = bl_alloc((size_t)src->n + 1);
    if (!out->pixels || !out->labels) {
        bl_dataset_free(out);
        return bl_fail(BL_ERR_NOMEM, "corrupt: out of memory for %d images", src->n);
    }
    out->n = src->n, out->h = src->h, out->w = src->w;
    memcpy(out->labels, src->labels, (size_t)src->n);
    /* the reason of a failure is per thread: the first failing image's status and reason are
     * copied out of the worker that had it */
    int bad = -1;
    bl_status why_st = BL_OK;
    char why[512] = "";
#pragma omp parallel for schedule(dynamic, 64)
    for (int i = 0; i < src->n; i++) {
        int seen;
#pragma omp atomic read
        seen = bad;
        if (seen >= 0) continue;
        const bl_status st = bl_corrupt_image(c, severity, seed, i, src->h, src->w,
                                              src->pixels + px * i, out->pixels + px * i);
        if (st) {
#pragma omp critical
            if (bad < 0 || i < bad) {
                bad = i, why_st = st;
                snprintf(why, sizeof why, "%s", bl_error());
            }
        }
    }
    if (bad < 0) return BL_OK;
    bl_dataset_free(out);
    return bl_fail(why_st, "corrupt: image %d: %s", bad, why);
}
