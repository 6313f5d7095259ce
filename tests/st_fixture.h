/* Reading safetensors fixtures (tools/gen_*_fixture.py) in the tests: a tensor as float, and the
 * worst difference against a reference relative to the reference's largest magnitude. Include
 * after check.h. */
#ifndef BNLAB_TEST_ST_FIXTURE_H
#define BNLAB_TEST_ST_FIXTURE_H

#include "bnlab/bnlab.h"

/* Reads DIR/file into st, DIR being argv[1] or tests/fixtures; on failure prints why (as `test`)
 * and returns non-zero. */
static inline int st_fixture_open(int argc, char **argv, const char *file, const char *test,
                                  bl_safetensors *st)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", argc > 1 ? argv[1] : "tests/fixtures", file);
    if (!bl_st_read(path, st)) return 0;
    fprintf(stderr, "%s: %s\n", test, bl_error());
    return 1;
}

/* The n floats of tensor `name` (a failed check when absent or of another size); free() after. */
static inline float *st_get(const bl_safetensors *st, const char *name, size_t n)
{
    float *v = malloc(n * sizeof(float) + 4);
    CHECK(v && bl_st_get_f32(st, name, v, n) == BL_OK, "fixture %s: %s", name, bl_error());
    return v;
}

/* max |a - b| / max |b| (max |a - b| when b is all zero). */
static inline double worst_rel(const float *a, const float *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs((double)b[i]));
    return m > 0 ? d / m : d;
}

#endif
