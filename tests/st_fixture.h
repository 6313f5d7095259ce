/* Reading safetensors fixtures (tools/gen_*_fixture.py) in the tests: a tensor as float, and the
 * worst difference against a reference relative to the reference's largest magnitude. Include
 * after check.h. */
#ifndef BNLAB_TEST_ST_FIXTURE_H
#define BNLAB_TEST_ST_FIXTURE_H

#include "bnlab/bnlab.h"

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
