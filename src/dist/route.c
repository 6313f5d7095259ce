/* Moving rows between processes by one global permutation: the crop head's shuffle of features
 * across processes and its inverse, whose gradients are each other. Items and slots are numbered
 * globally in rank order, process r owning counts[r] of each. Both sides order the rows they
 * exchange by slot, so no index travels with the data. */
#include "bnlab/dist.h"

#include <stdlib.h>
#include <string.h>

/* The process owning global index i (offsets off[0..W], off[W] = total). */
static int owner(const long *off, int W, long i)
{
    int lo = 0, hi = W - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (off[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

bl_status bl_pg_route(bl_pg *pg, const int *counts, const int *perm, int dir, int d,
                      const float *in, float *out)
{
    const int W = bl_pg_size(pg), R = bl_pg_rank(pg);
    if (dir != 1 && dir != -1) return bl_fail(BL_ERR_ARG, "route: direction %d: use 1 or -1", dir);
    if (d < 1) return bl_fail(BL_ERR_ARG, "route: rows of %d values", d);
    long *off = malloc(sizeof(long) * (W + 1));
    int *sc = calloc((size_t)W, sizeof(int)), *rc = calloc((size_t)W, sizeof(int));
    if (!off || !sc || !rc) {
        free(off), free(sc), free(rc);
        return bl_fail(BL_ERR_NOMEM, "route: out of memory");
    }
    off[0] = 0;
    for (int r = 0; r < W; r++) off[r + 1] = off[r] + (counts[r] > 0 ? counts[r] : 0);
    const long T = off[W], mine = off[R];
    bl_status st = BL_OK;
    for (long s = 0; s < T && !st; s++)
        if (perm[s] < 0 || perm[s] >= T) st = bl_fail(BL_ERR_ARG, "route: perm[%ld] = %d of %ld", s, perm[s], T);
    /* dir 1: slot s takes item perm[s] (from owner(perm[s]) to owner(s));
     * dir -1: item perm[s] takes slot s (from owner(s) to owner(perm[s])) */
    for (long s = 0; s < T && !st; s++) {
        const int from = owner(off, W, dir == 1 ? perm[s] : s), to = owner(off, W, dir == 1 ? s : perm[s]);
        if (from == R) sc[to]++;
        if (to == R) rc[from]++;
    }
    float *sbuf = NULL, *rbuf = NULL;
    long ns = 0, nr = 0;
    for (int q = 0; q < W; q++) ns += sc[q], nr += rc[q];
    if (!st && (!(sbuf = malloc(sizeof(float) * (size_t)(ns * d + 1))) ||
                !(rbuf = malloc(sizeof(float) * (size_t)(nr * d + 1)))))
        st = bl_fail(BL_ERR_NOMEM, "route: out of memory for %ld + %ld rows", ns, nr);
    if (!st) {
        /* send: for each destination in rank order, the rows in slot order */
        long *pos = calloc((size_t)W + 1, sizeof(long));
        if (!pos) st = bl_fail(BL_ERR_NOMEM, "route: out of memory");
        for (int q = 1; pos && q <= W; q++) pos[q] = pos[q - 1] + sc[q - 1];
        for (long s = 0; s < T && pos; s++) {
            const long src = dir == 1 ? perm[s] : s, dst = dir == 1 ? s : perm[s];
            if (owner(off, W, src) != R) continue;
            memcpy(sbuf + (size_t)pos[owner(off, W, dst)]++ * d, in + (size_t)(src - mine) * d,
                   sizeof(float) * d);
        }
        free(pos);
    }
    int *scd = malloc(sizeof(int) * W), *rcd = malloc(sizeof(int) * W);
    if (!st && (!scd || !rcd)) st = bl_fail(BL_ERR_NOMEM, "route: out of memory");
    for (int q = 0; !st && q < W; q++) scd[q] = sc[q] * d, rcd[q] = rc[q] * d;
    /* every process joins the exchange, an empty one too */
    if (!st) st = bl_pg_alltoallv(pg, sbuf, scd, rbuf, rcd);
    if (!st) {
        /* receive: from each source in rank order, the rows in slot order */
        long *pos = calloc((size_t)W + 1, sizeof(long));
        if (!pos) st = bl_fail(BL_ERR_NOMEM, "route: out of memory");
        for (int q = 1; pos && q <= W; q++) pos[q] = pos[q - 1] + rc[q - 1];
        for (long s = 0; s < T && pos; s++) {
            const long src = dir == 1 ? perm[s] : s, dst = dir == 1 ? s : perm[s];
            if (owner(off, W, dst) != R) continue;
            memcpy(out + (size_t)(dst - mine) * d, rbuf + (size_t)pos[owner(off, W, src)]++ * d,
                   sizeof(float) * d);
        }
        free(pos);
    }
    free(off), free(sc), free(rc), free(sbuf), free(rbuf), free(scd), free(rcd);
    return st;
}
