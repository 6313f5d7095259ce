/* IDX reader and writer (LeCun's MNIST format), gzip through zlib (the reader also reads plain
 * files). Header: magic 0x00000803 (images: n, rows, cols) or 0x00000801 (labels: n), big-endian. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static bl_status read_all(gzFile f, const char *path, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        unsigned chunk = (unsigned)(len - got > (1u << 30) ? (1u << 30) : len - got);
        int r = gzread(f, (char *)buf + got, chunk);
        if (r <= 0)
            return bl_fail(BL_ERR_FORMAT, "%s: truncated or corrupt (read %zu of %zu bytes): "
                           "reinstall the dataset (apt-get install --reinstall "
                           "dataset-fashion-mnist)", path, got, len);
        got += (size_t)r;
    }
    return BL_OK;
}

/* The payload of len bytes, read in growing pieces: memory follows what the file (or the gzip
 * stream) really holds, so a short file whose header claims gigabytes fails as truncated after
 * reading what it has, instead of first asking for all of it. */
static bl_status read_payload(gzFile f, const char *path, size_t len, uint8_t **data)
{
    size_t cap = len < ((size_t)1 << 20) ? len : ((size_t)1 << 20), got = 0;
    uint8_t *buf = bl_malloc(cap);
    if (!buf) return bl_fail(BL_ERR_NOMEM, "%s: out of memory reading the data", path);
    bl_status st = BL_OK;
    while (!st && got < len) {
        if (got == cap) {
            const size_t nc = cap > len / 2 ? len : cap * 2;
            uint8_t *nb = bl_realloc(buf, nc);
            if (!nb) {
                st = bl_fail(BL_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, len);
                break;
            }
            buf = nb, cap = nc;
        }
        const unsigned chunk = (unsigned)(cap - got > (1u << 30) ? (1u << 30) : cap - got);
        const int r = gzread(f, buf + got, chunk);
        if (r <= 0)
            st = bl_fail(BL_ERR_FORMAT, "%s: truncated or corrupt (read %zu of %zu bytes): "
                         "reinstall the dataset (apt-get install --reinstall "
                         "dataset-fashion-mnist)", path, got, len);
        else got += (size_t)r;
    }
    /* the data set's arrays are aligned (bl_alloc): one copy once all of it is here */
    if (!st && !(*data = bl_alloc(len)))
        st = bl_fail(BL_ERR_NOMEM, "%s: out of memory for %zu bytes", path, len);
    if (!st) memcpy(*data, buf, len);
    free(buf);
    return st;
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Reads one IDX file with `dims` dimensions after the magic; returns the payload. */
static bl_status idx_read(const char *path, uint32_t magic, int dims, uint32_t *shape,
                          uint8_t **data)
{
    *data = NULL;
    gzFile f = gzopen(path, "rb");
    if (!f) return bl_fail(BL_ERR_IO, "%s: cannot open: check the path", path);
    uint8_t hdr[16];
    bl_status st = read_all(f, path, hdr, 4);
    if (!st && be32(hdr) != magic)
        st = bl_fail(BL_ERR_FORMAT, "%s: not an IDX file of the expected kind (magic 0x%08x, "
                     "expected 0x%08x)", path, be32(hdr), magic);
    if (!st) st = read_all(f, path, hdr + 4, 4 * (size_t)dims);
    size_t len = 1;
    for (int d = 0; !st && d < dims; d++) {
        shape[d] = be32(hdr + 4 + 4 * d);
        if (shape[d] == 0 || shape[d] > (1u << 24))
            st = bl_fail(BL_ERR_FORMAT, "%s: implausible dimension %u", path, shape[d]);
        len *= shape[d];
        if (!st && len > ((size_t)1 << 34)) /* 16 GiB: no IDX dataset is this large */
            st = bl_fail(BL_ERR_FORMAT, "%s: implausible size (dimensions multiply past 16 GiB)",
                         path);
    }
    if (!st) st = read_payload(f, path, len, data);
    if (!st) {
        uint8_t extra;
        if (gzread(f, &extra, 1) != 0)
            st = bl_fail(BL_ERR_FORMAT, "%s: trailing bytes after the data: corrupt file", path);
    }
    gzclose(f);
    if (st) {
        bl_free(*data);
        *data = NULL;
    }
    return st;
}

bl_status bl_idx_load(const char *images_path, const char *labels_path, bl_dataset *out)
{
    memset(out, 0, sizeof *out);
    uint32_t is[3], ls[1];
    bl_status st = idx_read(images_path, 0x00000803, 3, is, &out->pixels);
    if (st) return st;
    if ((st = idx_read(labels_path, 0x00000801, 1, ls, &out->labels))) goto fail;
    if (ls[0] != is[0]) {
        st = bl_fail(BL_ERR_FORMAT, "%s has %u images but %s has %u labels", images_path, is[0],
                     labels_path, ls[0]);
        goto fail;
    }
    for (uint32_t i = 0; i < ls[0]; i++)
        if (out->labels[i] > 9) {
            st = bl_fail(BL_ERR_FORMAT, "%s: label %u of sample %u is outside 0..9", labels_path,
                         out->labels[i], i);
            goto fail;
        }
    out->n = (int)is[0];
    out->h = (int)is[1];
    out->w = (int)is[2];
    return BL_OK;
fail:
    bl_dataset_free(out);
    return st;
}

bl_status bl_fmnist_load(const char *dir, const char *split, bl_dataset *out)
{
    const char *pre;
    if (!strcmp(split, "train")) pre = "train";
    else if (!strcmp(split, "test")) pre = "t10k";
    else return bl_fail(BL_ERR_ARG, "unknown split '%s': use train or test", split);
    if (!dir) dir = BL_FMNIST_DIR;
    char ip[1024], lp[1024];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, pre);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, pre);
    return bl_idx_load(ip, lp, out);
}

void bl_dataset_free(bl_dataset *d)
{
    bl_free(d->pixels);
    bl_free(d->labels);
    bl_free(d->values);
    free(d->map);
    if (d->owns_source && d->source && --d->source->refs == 0 && d->source->release)
        d->source->release(d->source);
    memset(d, 0, sizeof *d);
}

/* len bytes of in through the gzip stream into f, in chunks deflate takes; finish ends it. */
static bl_status deflate_into(z_stream *z, bl_afile *f, uint8_t *out, const uint8_t *in, size_t len,
                              int finish, const char *path)
{
    bl_status st = BL_OK;
    do {
        const size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        z->next_in = (uint8_t *)in, z->avail_in = (uInt)chunk;
        in += chunk, len -= chunk;
        const int flush = finish && !len ? Z_FINISH : Z_NO_FLUSH;
        int zr;
        do { /* until deflate has taken the chunk (and, finishing, written the end) */
            z->next_out = out, z->avail_out = 1 << 16;
            zr = deflate(z, flush);
            st = zr == Z_STREAM_ERROR ? bl_fail(BL_ERR_NOMEM, "%s: gzip error", path)
                                      : bl_afile_write(f, out, (1 << 16) - z->avail_out);
        } while (!st && (z->avail_out == 0 || (flush == Z_FINISH && zr != Z_STREAM_END)));
    } while (!st && len);
    return st;
}

/* One gzip IDX file into f's temporary, finished (on disk, not yet in place). */
static bl_status idx_write(bl_afile *f, const char *path, uint32_t magic, int dims,
                           const uint32_t *shape, const uint8_t *data, size_t len)
{
    uint8_t hdr[16];
    uint32_t words[4] = {magic, 0, 0, 0};
    for (int d = 0; d < dims; d++) words[1 + d] = shape[d];
    for (int k = 0; k <= dims; k++)
        for (int b = 0; b < 4; b++) hdr[4 * k + b] = (uint8_t)(words[k] >> (24 - 8 * b));
    z_stream z;
    memset(&z, 0, sizeof z);
    /* windowBits 15 + 16: a gzip stream, what gzopen reads */
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return bl_fail(BL_ERR_NOMEM, "cannot start a gzip stream for %s", path);
    uint8_t *out = bl_malloc(1 << 16);
    bl_status st = out ? bl_afile_open(f, path) : BL_ERR_NOMEM;
    if (!st) st = deflate_into(&z, f, out, hdr, 4 * (size_t)(dims + 1), 0, path);
    if (!st) st = deflate_into(&z, f, out, data, len, 1, path);
    deflateEnd(&z);
    bl_free(out);
    return st ? st : bl_afile_finish(f);
}

bl_status bl_idx_save(const bl_dataset *d, const char *images_path, const char *labels_path)
{
    if (d->n < 1 || d->h < 1 || d->w < 1 || !d->pixels || !d->labels)
        return bl_fail(BL_ERR_ARG, "idx: nothing to write (%d images of %dx%d)", d->n, d->h, d->w);
    const uint32_t is[3] = {(uint32_t)d->n, (uint32_t)d->h, (uint32_t)d->w}, ls[1] = {(uint32_t)d->n};
    /* both written and on disk before either replaces its old file: a failed write (a full
     * disk) leaves the old pair as it was */
    bl_afile fi = {.fd = -1, .done = 1}, fl = {.fd = -1, .done = 1};
    bl_status st = idx_write(&fi, images_path, 0x00000803, 3, is, d->pixels,
                             (size_t)d->n * d->h * d->w);
    if (!st) st = idx_write(&fl, labels_path, 0x00000801, 1, ls, d->labels, (size_t)d->n);
    if (!st) st = bl_afile_publish(&fi);
    if (!st) st = bl_afile_publish(&fl);
    bl_afile_abort(&fi), bl_afile_abort(&fl);
    return st;
}
