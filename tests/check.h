/* A tiny test harness: every check counts, a failing check prints where and why, and
 * check_done() prints "N passed, N failed" and returns the exit status (non-zero on failure). */
#ifndef BNLAB_TEST_CHECK_H
#define BNLAB_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* |a - b| <= atol + rtol * |b| elementwise (b is the reference); one check for the array, the
 * worst element reported. */
static inline int check_close_(const char *file, int line, const char *what, const double *a,
                               const double *b, size_t n, double atol, double rtol)
{
    size_t worst = 0;
    double worst_ratio = 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double err = fabs(a[i] - b[i]), lim = atol + rtol * fabs(b[i]);
        if (!(err <= lim)) ok = 0;
        double r = err / lim;
        if (!(r <= worst_ratio)) worst_ratio = r, worst = i;
    }
    if (ok) {
        check_passed++;
    } else {
        check_failed++;
        fprintf(stderr, "FAIL %s:%d: %s: element %zu of %zu: got %.9g, want %.9g (|diff| %.3g, "
                "limit %.3g)\n", file, line, what, worst, n, a[worst], b[worst],
                fabs(a[worst] - b[worst]), atol + rtol * fabs(b[worst]));
    }
    return ok;
}
#define CHECK_CLOSE(what, a, b, n, atol, rtol) check_close_(__FILE__, __LINE__, what, a, b, n, atol, rtol)

static inline int check_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
