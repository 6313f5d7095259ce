/* SyncBN through the reducer hook: two "processes" (threads with a barrier-based reducer, a stand-in
 * for MPI) each holding part of a batch give the same outputs, input gradients, summed parameter
 * gradients and EMA statistics as one process holding the whole batch; an empty process neither
 * hangs nor changes the result. Both layouts, both kernels. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bn.h"
#include "check.h"

#include <pthread.h>

typedef struct {
    pthread_barrier_t bar;
    bl_moments *m[2];
    double *buf[2];
} shared;

typedef struct {
    shared *sh;
    int rank;
} rank_ctx;

static bl_status merge_moments(void *p, bl_moments *m)
{
    rank_ctx *c = p;
    c->sh->m[c->rank] = m;
    pthread_barrier_wait(&c->sh->bar);
    bl_moments t = {0};
    bl_moments_copy(&t, c->sh->m[0]); /* both ranks merge in the same order: identical results */
    bl_moments_merge(&t, c->sh->m[1]);
    pthread_barrier_wait(&c->sh->bar); /* everyone has read the inputs */
    bl_moments_copy(m, &t);
    bl_moments_free(&t);
    return BL_OK;
}

static bl_status sum(void *p, double *buf, size_t n)
{
    rank_ctx *c = p;
    c->sh->buf[c->rank] = buf;
    pthread_barrier_wait(&c->sh->bar);
    double *t = malloc(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) t[i] = c->sh->buf[0][i] + c->sh->buf[1][i];
    pthread_barrier_wait(&c->sh->bar);
    memcpy(buf, t, sizeof(double) * n);
    free(t);
    return BL_OK;
}

typedef struct {
    rank_ctx ctx;
    bl_reducer red;
    bl_shape s;
    bl_kernel kern;
    const float *x, *dy;
    float *y, *dx, dgamma[8], dbeta[8], mean[8], var[8];
    bl_status st;
} job;

static void *run_rank(void *p)
{
    job *j = p;
    bl_bn bn;
    bl_bn_config cfg = bl_bn_config_default(j->s.c);
    bl_bn_init(&bn, &cfg);
    bn.kernel = j->kern;
    for (int c = 0; c < j->s.c; c++) bn.gamma[c] = 1.0f + 0.25f * c, bn.beta[c] = 0.1f * c;
    bl_groups g;
    bl_groups_whole(&g, j->s.n);
    g.reducer = j->red.merge_moments ? &j->red : NULL;
    j->st = bl_bn_forward(&bn, BL_BN_BATCH, &g, j->s, j->x, j->y);
    if (!j->st) j->st = bl_bn_backward(&bn, &g, j->x, j->dy, j->dx);
    if (!j->st) j->st = bl_bn_commit(&bn, BL_EST_EMA);
    memcpy(j->dgamma, bn.dgamma, sizeof(float) * j->s.c);
    memcpy(j->dbeta, bn.dbeta, sizeof(float) * j->s.c);
    memcpy(j->mean, bn.pop_mean, sizeof(float) * j->s.c);
    memcpy(j->var, bn.pop_var, sizeof(float) * j->s.c);
    bl_groups_free(&g);
    bl_bn_free(&bn);
    return NULL;
}

static void cmpf(const char *what, const float *a, const float *b, size_t n)
{
    double *x = malloc(sizeof(double) * 2 * (n ? n : 1)), *y = x + n;
    for (size_t i = 0; i < n; i++) x[i] = a[i], y[i] = b[i];
    CHECK_CLOSE(what, x, y, n, 2e-5, 2e-4);
    free(x);
}

static void scenario(bl_layout layout, bl_kernel kern, int n0, int n1)
{
    const int C = 3, HW = 4;
    bl_shape whole_s = {n0 + n1, C, 2, 2, layout};
    size_t per = (size_t)C * HW, n = (size_t)(n0 + n1) * per;
    float *x = malloc(sizeof(float) * n * 6), *dy = x + n, *y = dy + n, *dx = y + n, *ys = dx + n,
          *dxs = ys + n;
    bl_rng r;
    bl_rng_seed(&r, 5);
    for (size_t i = 0; i < n; i++) x[i] = (float)(2 + bl_rng_normal(&r)), dy[i] = (float)bl_rng_normal(&r);

    /* one process, whole batch */
    job one = {.s = whole_s, .kern = kern, .x = x, .dy = dy, .y = y, .dx = dx};
    run_rank(&one);
    CHECK(one.st == BL_OK, "single process: %s", bl_error());

    /* two ranks */
    shared sh;
    pthread_barrier_init(&sh.bar, NULL, 2);
    job jobs[2];
    int counts[2] = {n0, n1}, offs[2] = {0, n0};
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        bl_shape s = whole_s;
        s.n = counts[k];
        jobs[k] = (job){.ctx = {&sh, k}, .s = s, .kern = kern, .x = x + offs[k] * per,
                        .dy = dy + offs[k] * per, .y = ys + offs[k] * per, .dx = dxs + offs[k] * per};
        jobs[k].red = (bl_reducer){&jobs[k].ctx, merge_moments, sum, NULL};
        pthread_create(&th[k], NULL, run_rank, &jobs[k]);
    }
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    pthread_barrier_destroy(&sh.bar);
    char what[128];
#define W(s) (snprintf(what, sizeof what, "syncbn %d+%d %s %s: %s", n0, n1, bl_layout_name(layout), \
                       kern ? "ref" : "fast", s), what)
    CHECK(jobs[0].st == BL_OK && jobs[1].st == BL_OK, "%s", W("ranks ran"));
    cmpf(W("y"), ys, y, n);
    cmpf(W("dx"), dxs, dx, n);
    float dg[3], db[3];
    for (int c = 0; c < C; c++)
        dg[c] = jobs[0].dgamma[c] + jobs[1].dgamma[c], db[c] = jobs[0].dbeta[c] + jobs[1].dbeta[c];
    cmpf(W("dgamma summed over ranks"), dg, one.dgamma, C);
    cmpf(W("dbeta summed over ranks"), db, one.dbeta, C);
    for (int k = 0; k < 2; k++) {
        cmpf(W("EMA mean"), jobs[k].mean, one.mean, C);
        cmpf(W("EMA var"), jobs[k].var, one.var, C);
    }
    free(x);
}

int main(void)
{
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 2; k++) {
            bl_layout layout = l ? BL_NHWC : BL_NCHW;
            scenario(layout, k ? BL_KERNEL_REF : BL_KERNEL_FAST, 7, 5);
            scenario(layout, k ? BL_KERNEL_REF : BL_KERNEL_FAST, 1, 1); /* one sample each */
            scenario(layout, k ? BL_KERNEL_REF : BL_KERNEL_FAST, 6, 0); /* an empty rank */
        }
    return check_done("test_syncbn");
}
