/* Aligned allocation and grow-only scratch buffers. */
#include "bnlab/core.h"

#include <stdlib.h>
#include <string.h>

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#endif

static void *nomem(size_t bytes)
{
    bl_fail(BL_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return NULL;
}

void *bl_alloc(size_t bytes)
{
    size_t n = (bytes + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of the alignment */
    if (n == 0) n = 64;
    if (n < bytes || bl_fault_hit(BL_FAULT_ALLOC)) return nomem(bytes);
    void *p = aligned_alloc(64, n);
    return p ? p : nomem(bytes);
}

void *bl_malloc(size_t bytes)
{
    if (bl_fault_hit(BL_FAULT_ALLOC)) return nomem(bytes);
    void *p = malloc(bytes ? bytes : 1);
    return p ? p : nomem(bytes);
}

void *bl_callocn(size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size) return nomem((size_t)-1);
    if (bl_fault_hit(BL_FAULT_ALLOC)) return nomem(n * size);
    void *p = calloc(n ? n : 1, size ? size : 1);
    return p ? p : nomem(n * size);
}

void *bl_realloc(void *q, size_t bytes)
{
    if (bl_fault_hit(BL_FAULT_ALLOC)) return nomem(bytes);
    void *p = realloc(q, bytes ? bytes : 1);
    return p ? p : nomem(bytes);
}

char *bl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = bl_malloc(n);
    if (p) memcpy(p, s, n);
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
