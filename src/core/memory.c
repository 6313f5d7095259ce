/* Aligned allocation and grow-only scratch buffers. */
#include "bnlab/core.h"

#include <stdlib.h>
#include <string.h>

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#endif

void *bl_alloc(size_t bytes)
{
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of the alignment */
    if (n == 0) n = 64;
    p = aligned_alloc(64, n);
    if (!p) bl_fail(BL_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *bl_calloc(size_t bytes)
{
    void *p = bl_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void bl_free(void *p) { free(p); }

void *bl_scratch_get(bl_scratch *s, size_t bytes)
{
    if (bytes > s->cap) {
        void *p = bl_alloc(bytes + bytes / 2);
        if (!p) return NULL;
        bl_free(s->p);
        s->p = p;
        s->cap = bytes + bytes / 2;
    }
    return s->p;
}

void bl_scratch_free(bl_scratch *s)
{
    bl_free(s->p);
    s->p = NULL;
    s->cap = 0;
}

int bl_threads_get(void)
{
#ifdef BL_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void bl_threads_set(int n)
{
#ifdef BL_HAVE_OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}
