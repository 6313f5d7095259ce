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

typedef enum { COUNT, PACK, UNPACK } walk_mode;

/* Walks the slots in order, each moving one row from process `from` to process `to`. COUNT:
 * sent[to]++ for this process's rows leaving, got[from]++ for those arriving. PACK: this process's
 * leaving rows into buf at sent[to]++ (the positions of each destination's block). UNPACK:
 * buf's row at got[from]++ to each arriving row's place. Both sides go in slot order, so the rows
 * of a pair of processes line up without indices. */
static void walk(walk_mode m, const long *off, int W, int R, const int *perm, int dir, int d,
                 long *sent, long *got, const float *in, float *buf, float *out)
{
    const long T = off[W], mine = off[R];
    for (long s = 0; s < T; s++) {
        /* dir 1: slot s takes item perm[s]; dir -1: item perm[s] takes slot s */
        const long src = dir == 1 ? perm[s] : s, dst = dir == 1 ? s : perm[s];
        const int from = owner(off, W, src), to = owner(off, W, dst);
        if (from == R && m != UNPACK) {
            if (m == PACK)
                memcpy(buf + (size_t)sent[to] * d, in + (size_t)(src - mine) * d, sizeof(float) * d);
            sent[to]++;
        }
        if (to == R && m != PACK) {
            if (m == UNPACK)
                memcpy(out + (size_t)(dst - mine) * d, buf + (size_t)got[from] * d, sizeof(float) * d);
            got[from]++;
        }
    }
}

bl_status bl_pg_route(bl_pg *pg, const int *counts, const int *perm, int dir, int d,
                      const float *in, float *out)
{
    const int W = bl_pg_size(pg), R = bl_pg_rank(pg);
    if (dir != 1 && dir != -1) return bl_fail(BL_ERR_ARG, "route: direction %d: use 1 or -1", dir);
    if (d < 1) return bl_fail(BL_ERR_ARG, "route: rows of %d values", d);
    long *off = bl_malloc(sizeof(long) * (W + 1)), *sent = bl_callocn((size_t)W, sizeof(long));
    long *got = bl_callocn((size_t)W, sizeof(long));
    int *sc = bl_malloc(sizeof(int) * W), *rc = bl_malloc(sizeof(int) * W);
    float *sbuf = NULL, *rbuf = NULL;
    bl_status st = off && sent && got && sc && rc ? BL_OK : bl_fail(BL_ERR_NOMEM, "route: out of memory");
    if (!st) {
        off[0] = 0;
        for (int r = 0; r < W; r++) off[r + 1] = off[r] + (counts[r] > 0 ? counts[r] : 0);
        for (long s = 0; s < off[W] && !st; s++)
            if (perm[s] < 0 || perm[s] >= off[W])
                st = bl_fail(BL_ERR_ARG, "route: perm[%ld] = %d of %ld", s, perm[s], off[W]);
    }
    long ns = 0, nr = 0;
    if (!st) {
        walk(COUNT, off, W, R, perm, dir, d, sent, got, NULL, NULL, NULL);
        /* the alltoallv's counts in floats; sent/got become each block's first row */
        for (int q = 0; q < W; q++) {
            sc[q] = (int)(sent[q] * d), rc[q] = (int)(got[q] * d);
            const long a = sent[q], b = got[q];
            sent[q] = ns, got[q] = nr, ns += a, nr += b;
        }
        if (!(sbuf = bl_malloc(sizeof(float) * (size_t)(ns * d + 1))) ||
            !(rbuf = bl_malloc(sizeof(float) * (size_t)(nr * d + 1))))
            st = bl_fail(BL_ERR_NOMEM, "route: out of memory for %ld + %ld rows", ns, nr);
    }
    if (!st) walk(PACK, off, W, R, perm, dir, d, sent, got, in, sbuf, NULL);
    /* every process joins the exchange, an empty one too */
    if (!st) st = bl_pg_alltoallv(pg, sbuf, sc, rbuf, rc);
    if (!st) walk(UNPACK, off, W, R, perm, dir, d, sent, got, NULL, rbuf, out);
    free(off), free(sent), free(got), free(sc), free(rc), free(sbuf), free(rbuf);
    return st;
}
