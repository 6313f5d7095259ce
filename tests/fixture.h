/* Reads the fixture files written by tools/gen_bn_fixtures.py: records "NAME COUNT" followed by
 * COUNT numbers; lines starting with '#' are comments. */
#ifndef BNLAB_TEST_FIXTURE_H
#define BNLAB_TEST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n;
    char name[64][32];
    int count[64];
    double *val[64];
} fixture;

static inline int fixture_load(fixture *f, const char *path)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "r");
    if (!fp) return fprintf(stderr, "cannot open fixture %s\n", path), -1;
    char line[256];
    int c;
    while ((c = fgetc(fp)) != EOF) {
        if (c == '#' || c == '\n') {
            if (c == '#' && !fgets(line, sizeof line, fp)) break;
            continue;
        }
        ungetc(c, fp);
        if (f->n == 64) break;
        int k = f->n;
        if (fscanf(fp, "%31s %d", f->name[k], &f->count[k]) != 2 || f->count[k] < 0) goto bad;
        f->val[k] = malloc(sizeof(double) * (f->count[k] + 1));
        for (int i = 0; i < f->count[k]; i++)
            if (fscanf(fp, "%lf", &f->val[k][i]) != 1) goto bad;
        f->n++;
    }
    fclose(fp);
    return 0;
bad:
    fprintf(stderr, "fixture %s: malformed record %d\n", path, f->n);
    fclose(fp);
    return -1;
}

/* The record's values, or NULL when absent (no message). */
static inline double *fixture_opt(const fixture *f, const char *name)
{
    for (int k = 0; k < f->n; k++)
        if (!strcmp(f->name[k], name)) return f->val[k];
    return NULL;
}

/* The record's values, or NULL (with a message) when absent or of the wrong length. */
static inline double *fixture_get(const fixture *f, const char *name, int count)
{
    for (int k = 0; k < f->n; k++)
        if (!strcmp(f->name[k], name)) {
            if (count >= 0 && f->count[k] != count) {
                fprintf(stderr, "fixture record %s has %d values, expected %d\n", name,
                        f->count[k], count);
                return NULL;
            }
            return f->val[k];
        }
    fprintf(stderr, "fixture record %s missing\n", name);
    return NULL;
}

static inline void fixture_free(fixture *f)
{
    for (int k = 0; k < f->n; k++) free(f->val[k]);
    memset(f, 0, sizeof *f);
}

/* NCHW <-> NHWC permutations of float/double buffers. */
static inline void to_layout_f(const double *nchw, float *out, int n, int c, int hw, int nhwc)
{
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c; ch++)
            for (int p = 0; p < hw; p++) {
                size_t src = ((size_t)i * c + ch) * hw + p;
                size_t dst = nhwc ? ((size_t)i * hw + p) * c + ch : src;
                out[dst] = (float)nchw[src];
            }
}
static inline void from_layout_f(const float *in, double *nchw, int n, int c, int hw, int nhwc)
{
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c; ch++)
            for (int p = 0; p < hw; p++) {
                size_t dst = ((size_t)i * c + ch) * hw + p;
                size_t src = nhwc ? ((size_t)i * hw + p) * c + ch : dst;
                nchw[dst] = in[src];
            }
}

#endif
