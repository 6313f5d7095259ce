/* NumPy's .npy format (numpy.lib.format): the magic "\x93NUMPY", a version, a header length (2
 * bytes in 1.0, 4 in 2.0 and 3.0) and a Python dict literal {'descr': '<f4', 'fortran_order':
 * False, 'shape': (64, 3, 32, 32), }, then the data in C order. Only the three keys are read. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void bl_npy_free(bl_npy *a)
{
    free(a->f);
    free(a->u8);
    free(a->i64);
    memset(a, 0, sizeof *a);
}

/* the value after 'key': in the header dict, or NULL */
static const char *dict_value(const char *h, const char *key)
{
    char k[32];
    snprintf(k, sizeof k, "'%s'", key);
    const char *p = strstr(h, k);
    if (!p) return NULL;
    p += strlen(k);
    while (*p == ' ' || *p == ':') p++;
    return p;
}

static bl_status parse_header(const char *path, const char *h, bl_npy *a, int *esize, int *f64)
{
    const char *d = dict_value(h, "descr"), *fo = dict_value(h, "fortran_order"),
               *sh = dict_value(h, "shape");
    if (!d || !fo || !sh)
        return bl_fail(BL_ERR_FORMAT, "%s: the .npy header lacks descr, fortran_order or shape",
                       path);
    *f64 = 0;
    if (!strncmp(d, "'<f4'", 5)) a->type = BL_NPY_F32, *esize = 4;
    else if (!strncmp(d, "'<f8'", 5)) a->type = BL_NPY_F32, *esize = 8, *f64 = 1;
    else if (!strncmp(d, "'|u1'", 5) || !strncmp(d, "'<u1'", 5)) a->type = BL_NPY_U8, *esize = 1;
    else if (!strncmp(d, "'<i8'", 5)) a->type = BL_NPY_I64, *esize = 8;
    else {
        char what[16] = {0};
        sscanf(d, "'%15[^']", what);
        return bl_fail(BL_ERR_FORMAT, "%s: dtype '%s': bnlab reads float32, float64, uint8 and "
                       "int64 .npy arrays (little-endian)", path, what);
    }
    if (strncmp(fo, "False", 5))
        return bl_fail(BL_ERR_FORMAT, "%s: a Fortran-order array: save it C-contiguous "
                       "(np.ascontiguousarray)", path);
    if (*sh != '(') return bl_fail(BL_ERR_FORMAT, "%s: malformed shape in the header", path);
    sh++;
    a->ndim = 0;
    a->count = 1;
    while (*sh && *sh != ')') {
        while (*sh == ' ' || *sh == ',') sh++;
        if (*sh == ')') break;
        char *end;
        errno = 0;
        long long v = strtoll(sh, &end, 10);
        if (end == sh || errno || v < 0 || v > (1LL << 40) || a->ndim == 8)
            return bl_fail(BL_ERR_FORMAT, "%s: malformed shape in the header (at most 8 "
                           "dimensions)", path);
        if (v && a->count > ((size_t)1 << 40) / (size_t)v)
            return bl_fail(BL_ERR_FORMAT, "%s: the shape holds too many values", path);
        a->shape[a->ndim++] = v;
        a->count *= (size_t)v;
        sh = end;
    }
    if (*sh != ')') return bl_fail(BL_ERR_FORMAT, "%s: malformed shape in the header", path);
    return BL_OK;
}

bl_status bl_npy_read(const char *path, bl_npy *a)
{
    memset(a, 0, sizeof *a);
    FILE *f = fopen(path, "rb");
    if (!f) return bl_fail(BL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) || S_ISDIR(sb.st_mode)) {
        fclose(f);
        return bl_fail(BL_ERR_IO, "%s is a directory or cannot be examined, not a .npy file", path);
    }
    unsigned char pre[12];
    bl_status rc = BL_OK;
    char *h = NULL;
    size_t hl = 0, pre_len = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6)) {
        rc = bl_fail(BL_ERR_FORMAT, "%s: not a .npy file (no \\x93NUMPY magic)", path);
        goto out;
    }
    if (pre[6] == 1) hl = pre[8] | (size_t)pre[9] << 8, pre_len = 10;
    else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            rc = bl_fail(BL_ERR_FORMAT, "%s: truncated .npy header", path);
            goto out;
        }
        hl = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    } else {
        rc = bl_fail(BL_ERR_FORMAT, "%s: .npy version %d.%d", path, pre[6], pre[7]);
        goto out;
    }
    (void)pre_len;
    if (hl > (1u << 20) || !(h = bl_malloc(hl + 1)) || fread(h, 1, hl, f) != hl) {
        rc = h || hl > (1u << 20) ? bl_fail(BL_ERR_FORMAT, "%s: truncated or oversized .npy "
                                            "header", path)
                                  : bl_fail(BL_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    h[hl] = 0;
    int esize = 1, f64 = 0;
    if ((rc = parse_header(path, h, a, &esize, &f64))) goto out;
    /* the data must be in the file before anything of its claimed size is allocated */
    const long here = ftell(f);
    if (here < 0 || (uint64_t)a->count * (uint64_t)esize > (uint64_t)(sb.st_size - here)) {
        rc = bl_fail(BL_ERR_FORMAT, "%s: the header promises %zu values of %d bytes; the file "
                     "holds %lld bytes after it (truncated)", path, a->count, esize,
                     (long long)(sb.st_size - (here < 0 ? 0 : here)));
        goto out;
    }
    const size_t n = a->count ? a->count : 1;
    void *raw = bl_malloc(n * (size_t)esize);
    if (!raw) {
        rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory for %zu values", path, a->count);
        goto out;
    }
    if (fread(raw, (size_t)esize, a->count, f) != a->count) {
        free(raw);
        rc = bl_fail(BL_ERR_FORMAT, "%s: the header promises %zu values; the file holds fewer "
                     "(truncated)", path, a->count);
        goto out;
    }
    if (a->type == BL_NPY_U8) a->u8 = raw;
    else if (a->type == BL_NPY_I64) a->i64 = raw;
    else if (!f64) a->f = raw;
    else {
        if (!(a->f = bl_malloc(n * sizeof(float)))) {
            free(raw);
            rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
        for (size_t k = 0; k < a->count; k++) {
            double v;
            memcpy(&v, (char *)raw + 8 * k, 8);
            a->f[k] = (float)v;
        }
        free(raw);
    }
out:
    free(h);
    fclose(f);
    if (rc) bl_npy_free(a);
    return rc;
}

bl_status bl_npy_write_f32(const char *path, const float *v, int ndim, const long long *shape)
{
    char hdr[256];
    size_t count = 1;
    int o = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    if (ndim < 1 || ndim > 8) return bl_fail(BL_ERR_ARG, "%s: %d dimensions (1..8)", path, ndim);
    for (int k = 0; k < ndim; k++) {
        o += snprintf(hdr + o, sizeof hdr - (size_t)o, "%lld%s", shape[k],
                      ndim == 1 ? "," : k + 1 < ndim ? ", " : "");
        count *= (size_t)shape[k];
    }
    if (o > 200) return bl_fail(BL_ERR_ARG, "%s: the shape does not fit a .npy header", path);
    o += snprintf(hdr + o, sizeof hdr - (size_t)o, "), }");
    /* padded with spaces and a newline so the data starts on a 64-byte boundary */
    size_t total = 10 + (size_t)o + 1;
    size_t pad = (64 - total % 64) % 64;
    char pre[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    const size_t hl = (size_t)o + pad + 1;
    pre[8] = (char)(hl & 0xff), pre[9] = (char)(hl >> 8);
    bl_afile af;
    bl_status rc = bl_afile_open(&af, path);
    if (rc) return rc;
    char spaces[64];
    memset(spaces, ' ', sizeof spaces);
    rc = bl_afile_write(&af, pre, 10);
    if (!rc) rc = bl_afile_write(&af, hdr, (size_t)o);
    if (!rc) rc = bl_afile_write(&af, spaces, pad);
    if (!rc) rc = bl_afile_write(&af, "\n", 1);
    if (!rc) rc = bl_afile_write(&af, v, count * sizeof(float));
    if (!rc) rc = bl_afile_commit(&af);
    else bl_afile_abort(&af);
    return rc;
}

bl_status bl_dataset_from_npy(const bl_npy *im, const bl_npy *lab, const char *what,
                              bl_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (im->ndim != 4 || im->type == BL_NPY_I64)
        return bl_fail(BL_ERR_FORMAT, "%s: images must be (N, C, H, W) uint8 or float32; this "
                       "array has %d dimensions%s", what, im->ndim,
                       im->type == BL_NPY_I64 ? " of int64" : "");
    const long long N = im->shape[0], C = im->shape[1], H = im->shape[2], W = im->shape[3];
    if (N < 1 || N > (1LL << 31) - 1 || C < 1 || C > BL_RECIPE_MAX_CHANNELS || H < 1 ||
        H > 4096 || W < 1 || W > 4096)
        return bl_fail(BL_ERR_FORMAT, "%s: images (%lld, %lld, %lld, %lld): need N >= 1, C in "
                       "1..%d, H and W in 1..4096 (NCHW)", what, N, C, H, W,
                       BL_RECIPE_MAX_CHANNELS);
    if (lab && (lab->ndim != 1 || lab->shape[0] != N || lab->type == BL_NPY_F32))
        return bl_fail(BL_ERR_FORMAT, "%s: labels must be (%lld) uint8 or int64", what, N);
    const size_t S = (size_t)C * H * W, es = im->type == BL_NPY_F32 ? sizeof(float) : 1;
    void *data = bl_alloc((size_t)N * S * es + 1);
    out->labels = lab ? bl_alloc((size_t)N + 1) : NULL;
    if (im->type == BL_NPY_F32) out->values = data;
    else out->pixels = data;
    if (!data || (lab && !out->labels)) {
        bl_dataset_free(out);
        return bl_fail(BL_ERR_NOMEM, "%s: out of memory", what);
    }
    for (long long i = 0; i < N; i++) /* NCHW -> NHWC */
        for (long long c = 0; c < C; c++)
            for (long long y = 0; y < H; y++)
                for (long long x = 0; x < W; x++) {
                    const size_t src = (((size_t)i * C + c) * H + y) * W + x;
                    const size_t dst = (((size_t)i * H + y) * W + x) * C + c;
                    if (out->values) out->values[dst] = im->f[src];
                    else out->pixels[dst] = im->u8[src];
                }
    for (long long i = 0; lab && i < N; i++) {
        const long long v = lab->type == BL_NPY_U8 ? lab->u8[i] : lab->i64[i];
        if (v < 0 || v > 255) {
            bl_dataset_free(out);
            return bl_fail(BL_ERR_FORMAT, "%s: label %lld of image %lld outside 0..255", what, v,
                           i);
        }
        out->labels[i] = (uint8_t)v;
    }
    out->n = (int)N, out->h = (int)H, out->w = (int)W, out->c = (int)C;
    return BL_OK;
}
