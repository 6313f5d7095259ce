/* Timing helpers shared by the benchmarks. */
#ifndef BNLAB_BENCH_COMMON_H
#define BNLAB_BENCH_COMMON_H

#include <stdlib.h>
#include <time.h>

static inline double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static inline int bench_cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts t and returns its median. */
static inline double bench_median(double *t, int n)
{
    qsort(t, n, sizeof *t, bench_cmpd);
    return t[n / 2];
}

#endif
