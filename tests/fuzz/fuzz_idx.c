/* libFuzzer target: loading an IDX data set (images + labels, raw or gzip). Input: a flags byte,
 * a 2-byte little-endian length L, then L bytes of the images file and the rest the labels file.
 * Flag bit 0 (1) gzips the images file before writing it, bit 1 (2) the labels file: the fuzzer
 * then explores the IDX format behind the gzip layer; unset, the bytes are written as they are
 * (and may themselves be a gzip stream, corrupt or not). */
#include "bnlab/bnlab.h"
#include "fuzz_util.h"

#include <string.h>
#include <zlib.h>

static int write_gz(const char *path, const uint8_t *data, size_t size)
{
    gzFile f = gzopen(path, "wb1");
    if (!f) return -1;
    int ok = size == 0 || gzwrite(f, data, (unsigned)size) == (int)size;
    return gzclose(f) == Z_OK && ok ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    const int flags = data[0];
    size_t li = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3, size -= 3;
    if (li > size) li = size;
    char ip[256], lp[256];
    fuzz_path(ip, sizeof ip, "images.idx");
    fuzz_path(lp, sizeof lp, "labels.idx");
    int bad = (flags & 1 ? write_gz(ip, data, li) : fuzz_write(ip, data, li)) ||
              (flags & 2 ? write_gz(lp, data + li, size - li) : fuzz_write(lp, data + li, size - li));
    if (!bad) {
        bl_dataset d;
        if (!bl_idx_load(ip, lp, &d)) {
            /* a loaded set is whole: every pixel and label readable */
            unsigned sum = 0;
            for (size_t i = 0; i < (size_t)d.n * d.h * d.w; i++) sum += d.pixels[i];
            for (int i = 0; i < d.n; i++) sum += d.labels[i];
            if (sum == 0xffffffffu) bl_error_clear();
            bl_dataset_free(&d);
        }
    }
    bl_error_clear();
    unlink(ip), unlink(lp);
    return 0;
}
