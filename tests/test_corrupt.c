/* Fashion-MNIST-C: every corruption is deterministic (the same bytes twice, and with 1 or 2
 * threads), changes the images, and - except the ones docs/corruptions.md exempts - damages them
 * more at each higher severity (mean absolute difference from the clean images, over 200 test
 * images); names parse, bad arguments are refused; the IDX writer round-trips through the reader
 * and the PNG writer writes a valid file. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <unistd.h>
#include <zlib.h>

#define N 200

static double mad(const bl_dataset *a, const bl_dataset *b)
{
    double s = 0;
    const size_t n = (size_t)a->n * a->h * a->w;
    for (size_t i = 0; i < n; i++) s += abs((int)a->pixels[i] - (int)b->pixels[i]);
    return s / n;
}

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

int main(void)
{
    bl_dataset full, d;
    if (bl_fmnist_load(NULL, "test", &full)) {
        CHECK(0, "Fashion-MNIST (scripts/install-deps.sh): %s", bl_error());
        return check_done("test_corrupt");
    }
    int idx[N];
    for (int i = 0; i < N; i++) idx[i] = i;
    CHECK(bl_dataset_subset(&full, idx, N, &d) == BL_OK, "subset: %s", bl_error());
    bl_dataset_free(&full);

    /* names */
    bl_corruption c;
    CHECK(bl_corruption_parse("gaussian-noise", &c) == BL_OK && c == BL_CORRUPT_GAUSSIAN_NOISE &&
              bl_corruption_parse("jpeg", &c) == BL_OK && c == BL_CORRUPT_JPEG,
          "names with '-' and the short ones");
    CHECK(bl_corruption_parse("snow", &c) == BL_ERR_ARG && strstr(bl_error(), "fog") &&
              strstr(bl_error(), "gaussian_noise"), "an unknown name lists the known: %s",
          bl_error());
    uint8_t img[784];
    CHECK(bl_corrupt_image(BL_CORRUPT_FOG, 6, 1, 0, 28, 28, d.pixels, img) == BL_ERR_ARG &&
              strstr(bl_error(), "severity"), "severity 6: %s", bl_error());
    CHECK(bl_corrupt_image(BL_CORRUPT_FOG, 0, 1, 0, 28, 28, d.pixels, img) == BL_ERR_ARG,
          "severity 0");

    for (int k = 0; k < BL_CORRUPT_COUNT; k++) {
        const char *name = bl_corruption_name((bl_corruption)k);
        double prev = 0;
        for (int s = 1; s <= 5; s++) {
            bl_dataset a, b;
            bl_threads_set(2);
            if (bl_corrupt_dataset(&d, (bl_corruption)k, s, 7, &a)) {
                CHECK(0, "%s %d: %s", name, s, bl_error());
                continue;
            }
            bl_threads_set(1);
            CHECK(bl_corrupt_dataset(&d, (bl_corruption)k, s, 7, &b) == BL_OK, "%s", bl_error());
            CHECK(!memcmp(a.pixels, b.pixels, (size_t)N * 784) &&
                      !memcmp(a.labels, d.labels, N), "%s %d: not the same bytes twice", name, s);
            bl_dataset_free(&b);
            CHECK(bl_corrupt_dataset(&d, (bl_corruption)k, s, 8, &b) == BL_OK, "%s", bl_error());
            const double m = mad(&a, &d);
            /* another seed, other draws (contrast, brightness, pixelate, defocus, jpeg have none) */
            const int random = k != BL_CORRUPT_CONTRAST && k != BL_CORRUPT_BRIGHTNESS &&
                               k != BL_CORRUPT_PIXELATE && k != BL_CORRUPT_DEFOCUS_BLUR &&
                               k != BL_CORRUPT_JPEG;
            CHECK(!random == !memcmp(a.pixels, b.pixels, (size_t)N * 784),
                  "%s %d: the seed %s", name, s, random ? "changes nothing" : "changes the result");
            CHECK(m > 0, "%s %d leaves the images as they were", name, s);
            int lo = 255, hi = 0;
            for (size_t i = 0; i < (size_t)N * 784; i++)
                lo = a.pixels[i] < lo ? a.pixels[i] : lo, hi = a.pixels[i] > hi ? a.pixels[i] : hi;
            CHECK(hi > lo, "%s %d: a constant image set", name, s);
            if (bl_corruption_monotone((bl_corruption)k))
                CHECK(m > prev, "%s: severity %d (%.3f) does not damage more than %d (%.3f)", name,
                      s, m, s - 1, prev);
            printf("%-18s severity %d: mean |corrupted - clean| %.2f levels\n", name, s, m);
            prev = m;
            bl_dataset_free(&a);
            bl_dataset_free(&b);
        }
    }
    bl_threads_set(2);

    /* IDX round trip, and a PNG whose chunks and pixels check out */
    char dir[] = "/tmp/bnlab_corrupt_XXXXXX", ip[300], lp[300], pp[300];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(ip, sizeof ip, "%s/i.gz", dir), snprintf(lp, sizeof lp, "%s/l.gz", dir);
    snprintf(pp, sizeof pp, "%s/p.png", dir);
    CHECK(bl_idx_save(&d, ip, lp) == BL_OK, "idx save: %s", bl_error());
    bl_dataset back;
    CHECK(bl_idx_load(ip, lp, &back) == BL_OK && back.n == N && back.h == 28 && back.w == 28 &&
              !memcmp(back.pixels, d.pixels, (size_t)N * 784) && !memcmp(back.labels, d.labels, N),
          "idx round trip: %s", bl_error());
    bl_dataset_free(&back);
    CHECK(bl_png_save_gray(pp, 28, 28, d.pixels) == BL_OK, "png: %s", bl_error());
    FILE *f = fopen(pp, "rb");
    uint8_t buf[8192];
    size_t len = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    CHECK(len > 57 && !memcmp(buf, "\x89PNG\r\n\x1a\n", 8) && !memcmp(buf + 12, "IHDR", 4) &&
              rd32(buf + 16) == 28 && rd32(buf + 20) == 28 && buf[24] == 8 && buf[25] == 0,
          "png signature and IHDR");
    int crc_ok = 1, got_pixels = 0;
    for (size_t at = 8; at + 12 <= len;) {
        const uint32_t n = rd32(buf + at);
        if (at + 12 + n > len) break;
        crc_ok &= crc32(crc32(0, Z_NULL, 0), buf + at + 4, n + 4) == rd32(buf + at + 8 + n);
        if (!memcmp(buf + at + 4, "IDAT", 4)) {
            uint8_t raw[29 * 28];
            uLongf rl = sizeof raw;
            if (uncompress(raw, &rl, buf + at + 8, n) == Z_OK && rl == sizeof raw) {
                got_pixels = 1;
                for (int y = 0; y < 28; y++)
                    got_pixels &= raw[y * 29] == 0 && !memcmp(raw + y * 29 + 1, d.pixels + y * 28, 28);
            }
        }
        at += 12 + n;
    }
    CHECK(crc_ok && got_pixels, "png: chunk CRCs %d, pixels %d", crc_ok, got_pixels);
    remove(ip), remove(lp), remove(pp), rmdir(dir);
    bl_dataset_free(&d);
    return check_done("test_corrupt");
}
