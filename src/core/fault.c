/* Fault injection: counters the allocation and file wrappers consult, so tests can fail each call
 * in turn. Atomic: allocations happen inside OpenMP regions too. */
#include "bnlab/core.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fault_at[BL_FAULT_N] = {-1, -1, -1, -1};
static atomic_long fault_calls[BL_FAULT_N];

void bl_fault_set(bl_fault f, long nth)
{
    if ((unsigned)f >= BL_FAULT_N) return;
    atomic_store(&fault_calls[f], 0);
    atomic_store(&fault_at[f], nth);
}

long bl_fault_calls(bl_fault f) { return (unsigned)f < BL_FAULT_N ? atomic_load(&fault_calls[f]) : 0; }

int bl_fault_hit(bl_fault f)
{
    const long k = atomic_fetch_add(&fault_calls[f], 1);
    return k == atomic_load(&fault_at[f]);
}

const char *bl_fault_name(bl_fault f)
{
    static const char *names[BL_FAULT_N] = {"alloc", "write", "fsync", "rename"};
    return (unsigned)f < BL_FAULT_N ? names[f] : "?";
}

bl_status bl_fault_parse(const char *spec, bl_fault *op)
{
    for (int f = 0; f < BL_FAULT_N; f++) {
        const char *name = bl_fault_name((bl_fault)f);
        size_t l = strlen(name);
        if (strncmp(spec, name, l) || (spec[l] != ':' && spec[l] != 0)) continue;
        long n = -1; /* "write": counted, never failed */
        if (spec[l] == ':') {
            char *end;
            n = strtol(spec + l + 1, &end, 10);
            if (end == spec + l + 1 || *end || n < 0) break;
        }
        bl_fault_set((bl_fault)f, n);
        if (op) *op = (bl_fault)f;
        return BL_OK;
    }
    return bl_fail(BL_ERR_ARG, "fault '%s': use alloc:N, write:N, fsync:N or rename:N (the Nth "
                   "call from the start fails, 0-based)", spec);
}
