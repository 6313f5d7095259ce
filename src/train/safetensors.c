/* safetensors reading and atomic writing, with cJSON for the header. A checkpoint is the only
 * state a long run keeps, so the reader trusts nothing: every size and offset is checked against
 * the file before use. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train/json.h"

static _Thread_local int json_oom;
static void *json_malloc(size_t n)
{
    void *p = bl_malloc(n);
    if (!p) json_oom = 1;
    return p;
}
static void json_hooks(void)
{
    cJSON_Hooks h = {json_malloc, bl_free};
    cJSON_InitHooks(&h);
}

void bl_json_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, json_hooks);
}

cJSON *bl_json_parse(const char *text, int *oom)
{
    bl_json_init();
    json_oom = 0;
    cJSON *j = cJSON_Parse(text);
    *oom = json_oom;
    return j;
}

static const char *dtype_name[] = {"F32", "F64", "I64", "U8"};
static const size_t dtype_size[] = {4, 8, 8, 1};

size_t bl_st_numel(const bl_st_entry *e)
{
    size_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
    return n;
}

/* The entry's bytes, or SIZE_MAX when its shape's product overflows (a forged shape whose product
 * wraps around could otherwise match a small span). */
static size_t entry_bytes(const bl_st_entry *e)
{
    size_t n = dtype_size[e->dtype];
    for (int d = 0; d < e->ndim; d++)
        if (__builtin_mul_overflow(n, (size_t)e->shape[d], &n)) return SIZE_MAX;
    return n;
}

void bl_st_free(bl_safetensors *st)
{
    free(st->e);
    for (int i = 0; i < st->n_meta; i++) free(st->meta_val[i]);
    free(st->meta_val);
    free(st->meta_key);
    free(st->data);
    memset(st, 0, sizeof *st);
}

static int cmp_entry(const void *a, const void *b)
{
    const bl_st_entry *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static bl_status parse_header(const char *path, const char *hdr, bl_safetensors *st)
{
    int oom;
    cJSON *root = bl_json_parse(hdr, &oom);
    if (oom) return cJSON_Delete(root), bl_fail(BL_ERR_NOMEM, "%s: out of memory parsing the header", path);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return bl_fail(BL_ERR_FORMAT, "%s: the header is not a JSON object: not a safetensors "
                       "file, or corrupt", path);
    }
    int count = cJSON_GetArraySize(root);
    st->e = bl_callocn((size_t)count + 1, sizeof *st->e);
    st->meta_key = bl_callocn((size_t)count + 64, sizeof *st->meta_key);
    st->meta_val = bl_callocn((size_t)count + 64, sizeof *st->meta_val);
    bl_status rc = st->e && st->meta_key && st->meta_val ? BL_OK : bl_fail_ctx(BL_ERR_NOMEM, "%s", path);
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            for (cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m) || st->n_meta >= count + 63) {
                    rc = bl_fail(BL_ERR_FORMAT, "%s: metadata '%s' is not a string", path,
                                 m->string);
                    break;
                }
                snprintf(st->meta_key[st->n_meta], 64, "%s", m->string);
                if (!(st->meta_val[st->n_meta++] = bl_strdup(m->valuestring))) {
                    rc = bl_fail_ctx(BL_ERR_NOMEM, "%s", path);
                    break;
                }
            }
            continue;
        }
        bl_st_entry *e = &st->e[st->n];
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (strlen(it->string) >= sizeof e->name || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
            !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || cJSON_GetArraySize(sh) > 8) {
            rc = bl_fail(BL_ERR_FORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets", path,
                         it->string);
            break;
        }
        snprintf(e->name, sizeof e->name, "%s", it->string);
        int k = -1;
        for (int d = 0; d < 4; d++)
            if (!strcmp(dt->valuestring, dtype_name[d])) k = d;
        if (k < 0) {
            rc = bl_fail(BL_ERR_FORMAT, "%s: tensor '%s' has dtype %s; bnlab reads F32, F64, I64 "
                         "and U8", path, e->name, dt->valuestring);
            break;
        }
        e->dtype = (bl_dtype)k;
        e->ndim = cJSON_GetArraySize(sh);
        /* range first, then convert: a double outside int64's range converts undefined */
        for (int d = 0; d < e->ndim && !rc; d++) {
            double v = cJSON_GetArrayItem(sh, d)->valuedouble;
            if (!(v >= 0 && v < 1e12))
                rc = bl_fail(BL_ERR_FORMAT, "%s: bad shape of '%s' (entry %d: %g)", path, e->name,
                             d, v);
            else e->shape[d] = (int64_t)v;
        }
        if (rc) break;
        double b = cJSON_GetArrayItem(of, 0)->valuedouble, en = cJSON_GetArrayItem(of, 1)->valuedouble;
        if (!(b >= 0 && en >= b && en <= (double)st->data_len)) {
            rc = bl_fail(BL_ERR_FORMAT, "%s: tensor '%s' lies outside the file (offsets %.0f..%.0f, "
                         "%zu data bytes): truncated or corrupt", path, e->name, b, en, st->data_len);
            break;
        }
        e->begin = (size_t)b;
        e->end = (size_t)en;
        const size_t need = entry_bytes(e);
        if (need != e->end - e->begin) {
            if (need == SIZE_MAX)
                rc = bl_fail(BL_ERR_FORMAT, "%s: tensor '%s': its shape's size overflows: corrupt "
                             "or forged", path, e->name);
            else
                rc = bl_fail(BL_ERR_FORMAT, "%s: tensor '%s' has %zu bytes for its shape but "
                             "offsets span %zu", path, e->name, need, e->end - e->begin);
        }
        st->n++;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    /* non-overlapping */
    bl_st_entry *sorted = bl_malloc(sizeof *sorted * ((size_t)st->n + 1));
    if (!sorted) return bl_fail_ctx(BL_ERR_NOMEM, "%s", path);
    memcpy(sorted, st->e, sizeof *sorted * st->n);
    qsort(sorted, st->n, sizeof *sorted, cmp_entry);
    for (int i = 1; i < st->n && !rc; i++)
        if (sorted[i].begin < sorted[i - 1].end)
            rc = bl_fail(BL_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap: corrupt file", path,
                         sorted[i - 1].name, sorted[i].name);
    free(sorted);
    return rc;
}

bl_status bl_st_read(const char *path, bl_safetensors *st)
{
    memset(st, 0, sizeof *st);
    FILE *f = fopen(path, "rb");
    if (!f) return bl_fail(BL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return bl_fail(BL_ERR_IO, "%s is a directory, not a checkpoint: give the file (e.g. "
                       "%s/last.safetensors)", path, path);
    }
    uint8_t len8[8];
    bl_status rc = BL_OK;
    char *hdr = NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size < 8 || fread(len8, 1, 8, f) != 8) {
        rc = bl_fail(BL_ERR_FORMAT, "%s: %ld bytes, too short for a safetensors file", path, size);
        goto out;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
    if (hl < 2 || hl > (uint64_t)size - 8 || hl > (100u << 20)) {
        rc = bl_fail(BL_ERR_FORMAT, "%s: header length %llu does not fit the file (%ld bytes): "
                     "truncated, or not a safetensors file", path, (unsigned long long)hl, size);
        goto out;
    }
    hdr = bl_malloc(hl + 1);
    st->data_len = (size_t)size - 8 - hl;
    st->data = bl_malloc(st->data_len + 1);
    if (!hdr || !st->data) {
        rc = bl_fail_ctx(BL_ERR_NOMEM, "%s", path);
        goto out;
    }
    if (fread(hdr, 1, hl, f) != hl || fread(st->data, 1, st->data_len, f) != st->data_len) {
        rc = bl_fail(BL_ERR_IO, "%s: read failed", path);
        goto out;
    }
    hdr[hl] = 0;
    rc = parse_header(path, hdr, st);
out:
    free(hdr);
    fclose(f);
    if (rc) bl_st_free(st);
    return rc;
}

const bl_st_entry *bl_st_find(const bl_safetensors *st, const char *name)
{
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->e[i].name, name)) return &st->e[i];
    return NULL;
}

const char *bl_st_meta(const bl_safetensors *st, const char *key)
{
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta_key[i], key)) return st->meta_val[i];
    return NULL;
}

bl_status bl_st_get_f32(const bl_safetensors *st, const char *name, float *out, size_t count)
{
    const bl_st_entry *e = bl_st_find(st, name);
    if (!e) return bl_fail(BL_ERR_FORMAT, "checkpoint has no tensor '%s'", name);
    if (bl_st_numel(e) != count)
        return bl_fail(BL_ERR_FORMAT, "tensor '%s' has %zu values, the model needs %zu: the "
                       "checkpoint is for another architecture", name, bl_st_numel(e), count);
    const uint8_t *p = st->data + e->begin;
    for (size_t i = 0; i < count; i++) {
        if (e->dtype == BL_F32) {
            float v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = v;
        } else if (e->dtype == BL_F64) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        } else {
            return bl_fail(BL_ERR_FORMAT, "tensor '%s' is %s, expected F32 or F64", name,
                           dtype_name[e->dtype]);
        }
    }
    return BL_OK;
}

/* ---- writing ----------------------------------------------------------------------------------- */
bl_status bl_st_add(bl_st_writer *w, const char *name, bl_dtype dtype, int ndim,
                    const int64_t *shape, const void *data)
{
    if (ndim < 0 || ndim > 8 || strlen(name) >= 128)
        return bl_fail(BL_ERR_ARG, "safetensors: bad tensor '%s'", name);
    if (w->n == w->cap) {
        int nc = w->cap ? 2 * w->cap : 64;
        void *p = bl_realloc(w->items, sizeof *w->items * nc);
        if (!p) return BL_ERR_NOMEM; /* the reason is the allocation's */
        w->items = p;
        w->cap = nc;
    }
    struct bl_st_item *it = &w->items[w->n];
    memset(it, 0, sizeof *it);
    snprintf(it->name, sizeof it->name, "%s", name);
    it->dtype = dtype;
    it->ndim = ndim;
    size_t n = 1;
    for (int d = 0; d < ndim; d++) it->shape[d] = shape[d], n *= (size_t)shape[d];
    it->bytes = n * dtype_size[dtype];
    it->owned = bl_malloc(it->bytes ? it->bytes : 1);
    if (!it->owned) return BL_ERR_NOMEM;
    memcpy(it->owned, data, it->bytes);
    it->data = it->owned;
    w->n++;
    return BL_OK;
}

bl_status bl_st_set_meta(bl_st_writer *w, const char *key, const char *value)
{
    char *dup = bl_strdup(value);
    if (!dup) return BL_ERR_NOMEM; /* the reason is the allocation's */
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta_key[i], key)) {
            free(w->meta_val[i]);
            w->meta_val[i] = dup;
            return BL_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int nc = w->cap_meta ? 2 * w->cap_meta : 32;
        void *k = bl_realloc(w->meta_key, sizeof *w->meta_key * nc);
        if (!k) return free(dup), BL_ERR_NOMEM;
        w->meta_key = k;
        void *v = bl_realloc(w->meta_val, sizeof *w->meta_val * nc);
        if (!v) return free(dup), BL_ERR_NOMEM;
        w->meta_val = v;
        w->cap_meta = nc;
    }
    snprintf(w->meta_key[w->n_meta], 64, "%s", key);
    w->meta_val[w->n_meta++] = dup;
    return BL_OK;
}

void bl_st_writer_free(bl_st_writer *w)
{
    for (int i = 0; i < w->n; i++) free(w->items[i].owned);
    free(w->items);
    for (int i = 0; i < w->n_meta; i++) free(w->meta_val[i]);
    free(w->meta_val);
    free(w->meta_key);
    memset(w, 0, sizeof *w);
}

bl_status bl_st_write(const bl_st_writer *w, const char *path)
{
    /* every piece of the header checked: a node cJSON could not allocate would otherwise drop
     * silently out of a header that still prints */
    bl_json_init();
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && w->n_meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        ok = m != NULL;
        for (int i = 0; ok && i < w->n_meta; i++)
            ok = cJSON_AddStringToObject(m, w->meta_key[i], w->meta_val[i]) != NULL;
    }
    size_t off = 0;
    for (int i = 0; ok && i < w->n; i++) {
        const struct bl_st_item *it = &w->items[i];
        cJSON *t = cJSON_AddObjectToObject(root, it->name), *sh = NULL, *of = NULL;
        ok = t && cJSON_AddStringToObject(t, "dtype", dtype_name[it->dtype]) &&
             (sh = cJSON_AddArrayToObject(t, "shape")) &&
             (of = cJSON_AddArrayToObject(t, "data_offsets"));
        for (int d = 0; ok && d < it->ndim; d++)
            ok = cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)it->shape[d]));
        ok = ok && cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off)) &&
             cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + it->bytes)));
        off += it->bytes;
    }
    char *hdr = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!hdr) return bl_fail(BL_ERR_NOMEM, "%s: out of memory building the header", path);
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7; /* data starts 8-byte aligned */
    bl_afile f;
    bl_status st = bl_afile_open(&f, path);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    if (!st) st = bl_afile_write(&f, len8, 8);
    if (!st) st = bl_afile_write(&f, hdr, hl);
    if (!st) st = bl_afile_write(&f, "        ", padded - hl);
    for (int i = 0; i < w->n && !st; i++) st = bl_afile_write(&f, w->items[i].data, w->items[i].bytes);
    free(hdr);
    return st ? (bl_afile_abort(&f), st) : bl_afile_commit(&f);
}
