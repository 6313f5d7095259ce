/* bnlab corrupt: a corrupted Fashion-MNIST split (Fashion-MNIST-C) as IDX files that --data-dir of
 * every command reads, and a preview: clean images in the top row, severities 1-5 below. */
#define _POSIX_C_SOURCE 200809L
#include "cli/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PREVIEW_N 10 /* images per row */
#define GAP 2

/* The first image of each class (or the first images), clean and at every severity. */
static bl_status preview(const bl_dataset *d, bl_corruption c, uint64_t seed, const char *path)
{
    int pick[PREVIEW_N], np = 0;
    for (int k = 0; k < PREVIEW_N && np < PREVIEW_N; k++)
        for (int i = 0; i < d->n; i++)
            if (d->labels[i] == k) {
                pick[np++] = i;
                break;
            }
    for (int i = 0; np < PREVIEW_N && i < d->n; i++) pick[np++] = i;
    const int h = d->h, w = d->w, W = np * (w + GAP) + GAP, H = 6 * (h + GAP) + GAP;
    uint8_t *canvas = bl_malloc((size_t)W * H), *img = bl_malloc((size_t)h * w);
    if (!canvas || !img) {
        free(canvas), free(img);
        return bl_fail(BL_ERR_NOMEM, "preview: out of memory");
    }
    memset(canvas, 255, (size_t)W * H);
    bl_status st = BL_OK;
    for (int row = 0; row < 6 && !st; row++)
        for (int j = 0; j < np && !st; j++) {
            const uint8_t *src = d->pixels + (size_t)pick[j] * h * w;
            if (row == 0) memcpy(img, src, (size_t)h * w);
            else st = bl_corrupt_image(c, row, seed, pick[j], h, w, src, img);
            for (int y = 0; y < h; y++)
                memcpy(canvas + (size_t)(GAP + row * (h + GAP) + y) * W + GAP + j * (w + GAP),
                       img + (size_t)y * w, (size_t)w);
        }
    if (!st) st = bl_png_save_gray(path, W, H, canvas);
    free(canvas), free(img);
    return st;
}

int cmd_corrupt(int argc, char **argv)
{
#ifdef BL_HAVE_ZLIB
    char name[64] = "", out[1024] = "", data_dir[1024];
    int severity = 0, split = 0, threads = 2, show = 1, format = 0;
    uint64_t seed = 1;
    snprintf(data_dir, sizeof data_dir, "%s", BL_FMNIST_DIR);
    const cli_opt opts[] = {
        {"--corruption", OPT_STR, name, sizeof name, 0, 0, NULL,
         "gaussian_noise|shot_noise|impulse_noise|defocus_blur|motion_blur|glass_blur|contrast|"
         "brightness|jpeg_compression|pixelate|elastic_transform|fog, or clean: the split as it "
         "is (required)"},
        {"--severity", OPT_INT, &severity, 0, 1, 5, NULL, "1 (mild) to 5 (strong) (required)"},
        {"--split", OPT_CHOICE, &split, 0, 0, 0, "test|train", "which Fashion-MNIST split"},
        {"--seed", OPT_U64, &seed, 0, 0, 9e15, NULL, "seed of the random draws"},
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL, "output directory (required)"},
        {"--format", OPT_CHOICE, &format, 0, 0, 0, "idx|png",
         "IDX files for --data-dir, or an image folder for --images (DIR/<class>/<index>.png, "
         "torchvision's ImageFolder layout)"},
        {"--preview", OPT_ONOFF, &show, 0, 0, 0, NULL, "also write DIR/preview.png"},
        {"--threads", OPT_INT, &threads, 0, 1, 256, NULL, "threads"},
        {"--data-dir", OPT_STR, data_dir, sizeof data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("corrupt", "--corruption NAME --severity S -o DIR [options]", argc, argv,
                       opts, n, pos, 0, &np);
    if (rc) return rc == 1 ? 0 : 2;
    bl_corruption c = BL_CORRUPT_COUNT;
    const int clean = !strcmp(name, "clean");
    if (clean && severity) {
        fprintf(stderr, "bnlab corrupt: --corruption clean takes no --severity\n");
        return 2;
    }
    if (!name[0] || (!severity && !clean) || !out[0]) {
        fprintf(stderr, "bnlab corrupt: %s; usage: bnlab corrupt --corruption NAME --severity S "
                        "-o DIR\n", !name[0] ? "which corruption? (--corruption)"
                        : !severity ? "how strong? (--severity 1..5)" : "where to? (-o DIR)");
        return 2;
    }
    if (!clean && bl_corruption_parse(name, &c)) {
        fprintf(stderr, "bnlab corrupt: %s\n", bl_error());
        return 2;
    }
    /* the directory and its parents, like mkdir -p */
    char part[1024];
    for (size_t i = 1, len = strlen(out); i <= len; i++)
        if (out[i] == '/' || out[i] == 0) {
            snprintf(part, sizeof part, "%.*s", (int)i, out);
            if (mkdir(part, 0755) && errno != EEXIST) {
                fprintf(stderr, "bnlab corrupt: cannot create %s: %s\n", part, strerror(errno));
                return 1;
            }
        }
    bl_threads_set(threads);
    const char *sp = split ? "train" : "test", *pre = split ? "train" : "t10k";
    bl_dataset d, cd;
    if (cli_load_fmnist("corrupt", data_dir, sp, &d)) return 1;
    char ip[1100], lp[1100], pp[1100];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", out, pre);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", out, pre);
    snprintf(pp, sizeof pp, "%s/preview.png", out);
    char fp[1100];
    snprintf(fp, sizeof fp, "%s/%s", out, sp);
    bl_status st = clean ? BL_OK : bl_corrupt_dataset(&d, c, severity, seed, &cd);
    if (!st) {
        const bl_dataset *src = clean ? &d : &cd;
        st = format ? bl_dataset_save_folder(src, fp) : bl_idx_save(src, ip, lp);
        if (!clean) bl_dataset_free(&cd);
    }
    if (!st && show && !clean) st = preview(&d, c, seed, pp);
    const int written = d.n;
    bl_dataset_free(&d);
    if (st) {
        fprintf(stderr, "bnlab corrupt: %s\n", bl_error());
        return 1;
    }
    if (clean) printf("clean: ");
    else printf("%s severity %d (seed %llu): ", bl_corruption_name(c), severity,
                (unsigned long long)seed);
    if (format)
        printf("%s split written to %s (%d images in class folders)%s%s\n", sp, fp, written,
               show && !clean ? ", " : "", show && !clean ? pp : "");
    else
        printf("%s split written to %s, %s%s%s\n", sp, ip, lp, show && !clean ? ", " : "",
               show && !clean ? pp : "");
    if (format) printf("use it with --images %s\n", fp);
    else printf("use it with --data-dir %s\n", out);
    return 0;
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab corrupt: built without zlib: install zlib1g-dev and rebuild\n");
    return 1;
#endif
}
