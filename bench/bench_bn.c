/* bench_bn: bnlab's BN kernels side by side with oneDNN's batch_normalization primitive (when
 * built with libdnnl) and PyTorch's BatchNorm2d (python3-torch, run as a child process), in one run,
 * same shapes, layouts and threads. Reports median ms, effective GB/s on the minimal-traffic
 * model (train forward 3 tensor-passes, forward+backward 8, eval 2) and the machine's copy
 * bandwidth measured in the same run. Never run by the tests; run on an idle machine.
 *
 * usage: bench_bn [--shape N,C,H,W] [--layout nchw|nhwc] [--threads T] [--reps R] [--json]
 *                 [--no-torch] [--no-onednn] */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef BL_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

typedef void (*bench_fn)(void *ctx);

static double median_ms(bench_fn fn, void *ctx, int reps)
{
    double t[256];
    if (reps > 256) reps = 256;
    for (int i = 0; i < 2; i++) fn(ctx); /* warm up: page faults, caches, JIT */
    for (int i = 0; i < reps; i++) {
        double t0 = bench_now();
        fn(ctx);
        t[i] = bench_now() - t0;
    }
    return 1e3 * bench_median(t, reps);
}

typedef struct {
    bl_bn bn;
    bl_shape s;
    float *x, *y, *dy, *dx;
    int failed;
} ours;

static void ours_train_fwd(void *p)
{
    ours *o = p;
    o->failed |= bl_bn_forward(&o->bn, BL_BN_BATCH, NULL, o->s, o->x, o->y) != BL_OK;
    o->failed |= bl_bn_commit(&o->bn, BL_EST_EMA) != BL_OK;
}
static void ours_train_fwd_bwd(void *p)
{
    ours *o = p;
    ours_train_fwd(p);
    o->failed |= bl_bn_backward(&o->bn, NULL, o->x, o->dy, o->dx) != BL_OK;
}
static void ours_eval_fwd(void *p)
{
    ours *o = p;
    o->failed |= bl_bn_forward(&o->bn, BL_BN_POPULATION, NULL, o->s, o->x, o->y) != BL_OK;
}

typedef struct {
    void *src, *dst;
    size_t bytes;
} copy_ctx;
/* memcpy split over the threads: the machine's copy bandwidth with the threads everyone gets */
static void do_copy(void *p)
{
    copy_ctx *c = p;
#pragma omp parallel
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
        size_t per = (c->bytes / nt + 63) & ~(size_t)63, off = per * t;
        if (off < c->bytes)
            memcpy((char *)c->dst + off, (const char *)c->src + off,
                   off + per > c->bytes ? c->bytes - off : per);
    }
}

#ifdef BL_HAVE_DNNL
typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    dnnl_primitive_t fwd, bwd, inf;
    dnnl_memory_t src, dst, mean, var, scale, shift, dsrc, ddst, dscale, dshift;
    int ok;
} dnn;

#define DN(call)                                                                                   \
    do {                                                                                           \
        if ((call) != dnnl_success) {                                                              \
            fprintf(stderr, "bench_bn: oneDNN call failed: %s\n", #call);                          \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

static int dnn_setup(dnn *d, bl_shape s, ours *o)
{
    memset(d, 0, sizeof *d);
    dnnl_dims_t dims = {s.n, s.c, s.h, s.w}, cd = {s.c};
    dnnl_memory_desc_t md, cmd;
    DN(dnnl_engine_create(&d->eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&d->st, d->eng, dnnl_stream_default_flags));
    DN(dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32,
                                    s.layout == BL_NHWC ? dnnl_nhwc : dnnl_nchw));
    DN(dnnl_memory_desc_init_by_tag(&cmd, 1, cd, dnnl_f32, dnnl_a));
    unsigned flags = dnnl_use_scale | dnnl_use_shift;
    dnnl_batch_normalization_desc_t fd, bd, id;
    dnnl_primitive_desc_t fpd, bpd, ipd;
    DN(dnnl_batch_normalization_forward_desc_init(&fd, dnnl_forward_training, &md, 1e-5f, flags));
    DN(dnnl_primitive_desc_create(&fpd, &fd, NULL, d->eng, NULL));
    DN(dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &md, &md, 1e-5f, flags));
    DN(dnnl_primitive_desc_create(&bpd, &bd, NULL, d->eng, fpd));
    DN(dnnl_batch_normalization_forward_desc_init(&id, dnnl_forward_inference, &md, 1e-5f,
                                                  flags | dnnl_use_global_stats));
    DN(dnnl_primitive_desc_create(&ipd, &id, NULL, d->eng, NULL));
    DN(dnnl_primitive_create(&d->fwd, fpd));
    DN(dnnl_primitive_create(&d->bwd, bpd));
    DN(dnnl_primitive_create(&d->inf, ipd));
    DN(dnnl_memory_create(&d->src, &md, d->eng, o->x));
    DN(dnnl_memory_create(&d->dst, &md, d->eng, o->y));
    DN(dnnl_memory_create(&d->ddst, &md, d->eng, o->dy));
    DN(dnnl_memory_create(&d->dsrc, &md, d->eng, o->dx));
    DN(dnnl_memory_create(&d->mean, &cmd, d->eng, DNNL_MEMORY_ALLOCATE));
    DN(dnnl_memory_create(&d->var, &cmd, d->eng, DNNL_MEMORY_ALLOCATE));
    DN(dnnl_memory_create(&d->scale, &cmd, d->eng, o->bn.gamma));
    DN(dnnl_memory_create(&d->shift, &cmd, d->eng, o->bn.beta));
    DN(dnnl_memory_create(&d->dscale, &cmd, d->eng, DNNL_MEMORY_ALLOCATE));
    DN(dnnl_memory_create(&d->dshift, &cmd, d->eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_destroy(fpd);
    dnnl_primitive_desc_destroy(bpd);
    dnnl_primitive_desc_destroy(ipd);
    d->ok = 1;
    return 1;
}

static void dnn_fwd(void *p)
{
    dnn *d = p;
    dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, d->src},     {DNNL_ARG_DST, d->dst},
                           {DNNL_ARG_MEAN, d->mean},   {DNNL_ARG_VARIANCE, d->var},
                           {DNNL_ARG_SCALE, d->scale}, {DNNL_ARG_SHIFT, d->shift}};
    d->ok &= dnnl_primitive_execute(d->fwd, d->st, 6, a) == dnnl_success;
    dnnl_stream_wait(d->st);
}
static void dnn_fwd_bwd(void *p)
{
    dnn *d = p;
    dnn_fwd(p);
    dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, d->src},           {DNNL_ARG_MEAN, d->mean},
                           {DNNL_ARG_VARIANCE, d->var},      {DNNL_ARG_DIFF_DST, d->ddst},
                           {DNNL_ARG_SCALE, d->scale},       {DNNL_ARG_SHIFT, d->shift},
                           {DNNL_ARG_DIFF_SRC, d->dsrc},     {DNNL_ARG_DIFF_SCALE, d->dscale},
                           {DNNL_ARG_DIFF_SHIFT, d->dshift}};
    d->ok &= dnnl_primitive_execute(d->bwd, d->st, 9, a) == dnnl_success;
    dnnl_stream_wait(d->st);
}
static void dnn_inf(void *p)
{
    dnn *d = p;
    dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, d->src},     {DNNL_ARG_DST, d->dst},
                           {DNNL_ARG_MEAN, d->mean},   {DNNL_ARG_VARIANCE, d->var},
                           {DNNL_ARG_SCALE, d->scale}, {DNNL_ARG_SHIFT, d->shift}};
    d->ok &= dnnl_primitive_execute(d->inf, d->st, 6, a) == dnnl_success;
    dnnl_stream_wait(d->st);
}
static void dnn_free(dnn *d)
{
    dnnl_memory_t m[] = {d->src, d->dst, d->mean, d->var, d->scale, d->shift, d->dsrc, d->ddst,
                         d->dscale, d->dshift};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    if (d->fwd) dnnl_primitive_destroy(d->fwd);
    if (d->bwd) dnnl_primitive_destroy(d->bwd);
    if (d->inf) dnnl_primitive_destroy(d->inf);
    if (d->st) dnnl_stream_destroy(d->st);
    if (d->eng) dnnl_engine_destroy(d->eng);
}
#endif

/* PyTorch in a child process, after our runs, never concurrently. */
static int torch_times(bl_shape s, int threads, int reps, double ms[3])
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/bench/torch_bn.py %d,%d,%d,%d %s %d %d 2>&1",
             BL_SOURCE_DIR, s.n, s.c, s.h, s.w, bl_layout_name(s.layout), threads, reps);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[512], name[64];
    double v;
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "%63s %lf", name, &v) != 2) continue;
        if (!strcmp(name, "train_fwd")) ms[0] = v, got |= 1;
        else if (!strcmp(name, "train_fwd_bwd")) ms[1] = v, got |= 2;
        else if (!strcmp(name, "eval_fwd")) ms[2] = v, got |= 4;
    }
    int rc = pclose(p);
    return rc == 0 && got == 7;
}

static void usage(void)
{
    printf("usage: bench_bn [options]\n"
           "  --shape N,C,H,W     one shape (default: 128,64,28,28  128,128,14,14  256,64,32,32)\n"
           "  --layout L          nchw or nhwc (default: both)\n"
           "  --threads T         threads for everyone (default 2)\n"
           "  --reps R            timed repetitions, median reported (default 11)\n"
           "  --json              one JSON object per line and case\n"
           "  --no-torch          skip PyTorch\n"
           "  --no-onednn         skip oneDNN\n");
}

int main(int argc, char **argv)
{
    bl_shape shapes[8] = {{128, 64, 28, 28, 0}, {128, 128, 14, 14, 0}, {256, 64, 32, 32, 0}};
    int nshapes = 3, threads = 2, reps = 11, json = 0, use_torch = 1, use_dnn = 1;
    int layouts[2] = {BL_NCHW, BL_NHWC}, nlayouts = 2;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) return usage(), 0;
        else if (!strcmp(o, "--json")) json = 1;
        else if (!strcmp(o, "--no-torch")) use_torch = 0;
        else if (!strcmp(o, "--no-onednn")) use_dnn = 0;
        else if (!strcmp(o, "--shape") && i + 1 < argc) {
            bl_shape s = {0, 0, 0, 0, 0};
            if (sscanf(v, "%d,%d,%d,%d", &s.n, &s.c, &s.h, &s.w) != 4 || s.n < 2 || s.c < 1 ||
                s.h < 1 || s.w < 1) {
                fprintf(stderr, "bench_bn: --shape wants N,C,H,W with N >= 2, got '%s'\n", v);
                return 2;
            }
            shapes[0] = s, nshapes = 1, i++;
        } else if (!strcmp(o, "--layout") && i + 1 < argc) {
            bl_layout l;
            if (bl_layout_parse(v, &l)) return fprintf(stderr, "bench_bn: %s\n", bl_error()), 2;
            layouts[0] = l, nlayouts = 1, i++;
        } else if (!strcmp(o, "--threads") && i + 1 < argc) {
            threads = atoi(v), i++;
            if (threads < 1) return fprintf(stderr, "bench_bn: --threads must be >= 1\n"), 2;
        } else if (!strcmp(o, "--reps") && i + 1 < argc) {
            reps = atoi(v), i++;
            if (reps < 1) return fprintf(stderr, "bench_bn: --reps must be >= 1\n"), 2;
        } else {
            fprintf(stderr, "bench_bn: unknown option '%s'\n", o);
            usage();
            return 2;
        }
    }
    bl_threads_set(threads);
#ifndef BL_HAVE_DNNL
    use_dnn = 0;
#endif

    /* copy bandwidth on the largest tensor, with the same threads */
    size_t maxn = 0;
    for (int k = 0; k < nshapes; k++)
        if (bl_shape_numel(shapes[k]) > maxn) maxn = bl_shape_numel(shapes[k]);
    copy_ctx cc = {bl_alloc(maxn * 4), bl_alloc(maxn * 4), maxn * 4};
    memset(cc.src, 1, cc.bytes);
    memset(cc.dst, 0, cc.bytes);
    double copy_ms = median_ms(do_copy, &cc, reps);
    double copy_gbps = 2.0 * cc.bytes / (copy_ms * 1e6);
    bl_free(cc.src);
    bl_free(cc.dst);
    if (!json)
        printf("bench_bn: %d threads, %d reps (median); copy bandwidth (memcpy %.0f MB over the threads, "
               "read + write): %.1f GB/s\n\n%-6s %-16s %-14s %9s %8s %10s %8s %10s %8s\n",
               threads, reps, maxn * 4 / 1e6, copy_gbps, "layout", "shape", "pass", "ms", "GB/s",
               "oneDNN ms", "x oneDNN", "torch ms", "x torch");

    static const char *pass_name[3] = {"train_fwd", "train_fwd_bwd", "eval_fwd"};
    static const double traffic[3] = {3, 8, 2};
    int failed = 0;
    for (int k = 0; k < nshapes; k++)
        for (int li = 0; li < nlayouts; li++) {
            bl_shape s = shapes[k];
            s.layout = layouts[li];
            size_t n = bl_shape_numel(s);
            ours o = {.s = s};
            bl_bn_config cfg = bl_bn_config_default(s.c);
            bl_bn_init(&o.bn, &cfg);
            o.x = bl_alloc(n * 4), o.y = bl_alloc(n * 4), o.dy = bl_alloc(n * 4), o.dx = bl_alloc(n * 4);
            bl_rng r;
            bl_rng_seed(&r, 1);
            for (size_t i = 0; i < n; i++)
                o.x[i] = (float)bl_rng_normal(&r), o.dy[i] = (float)bl_rng_normal(&r);
            memset(o.y, 0, n * 4);
            memset(o.dx, 0, n * 4);
            double ms[3], dms[3] = {0}, tms[3] = {0};
            bench_fn fns[3] = {ours_train_fwd, ours_train_fwd_bwd, ours_eval_fwd};
            for (int p = 0; p < 3; p++) ms[p] = median_ms(fns[p], &o, reps);
            int have_dnn = 0, have_torch = 0;
#ifdef BL_HAVE_DNNL
            if (use_dnn) {
                dnn d;
                if (dnn_setup(&d, s, &o)) {
                    dms[0] = median_ms(dnn_fwd, &d, reps);
                    dms[1] = median_ms(dnn_fwd_bwd, &d, reps);
                    dms[2] = median_ms(dnn_inf, &d, reps);
                    have_dnn = d.ok;
                }
                dnn_free(&d);
            }
#endif
            if (use_torch) {
                have_torch = torch_times(s, threads, reps, tms);
                if (!have_torch && !json)
                    fprintf(stderr, "bench_bn: PyTorch run failed (is python3-torch installed? "
                                    "scripts/install-deps.sh bench)\n");
            }
            failed |= o.failed;
            for (int p = 0; p < 3; p++) {
                double gbps = traffic[p] * n * 4 / (ms[p] * 1e6);
                char shape[48];
                snprintf(shape, sizeof shape, "%d,%d,%d,%d", s.n, s.c, s.h, s.w);
                if (json) {
                    printf("{\"layout\":\"%s\",\"shape\":[%d,%d,%d,%d],\"pass\":\"%s\",\"ms\":%.4f,"
                           "\"gbps\":%.2f,\"copy_gbps\":%.2f,\"threads\":%d",
                           bl_layout_name(s.layout), s.n, s.c, s.h, s.w, pass_name[p], ms[p], gbps,
                           copy_gbps, threads);
                    if (have_dnn) printf(",\"onednn_ms\":%.4f", dms[p]);
                    if (have_torch) printf(",\"torch_ms\":%.4f", tms[p]);
                    printf("}\n");
                } else {
                    char d1[16] = "-", d2[16] = "-", t1[16] = "-", t2[16] = "-";
                    if (have_dnn) snprintf(d1, 16, "%.2f", dms[p]), snprintf(d2, 16, "%.2fx", dms[p] / ms[p]);
                    if (have_torch) snprintf(t1, 16, "%.2f", tms[p]), snprintf(t2, 16, "%.2fx", tms[p] / ms[p]);
                    printf("%-6s %-16s %-14s %9.2f %8.1f %10s %8s %10s %8s\n",
                           bl_layout_name(s.layout), shape, pass_name[p], ms[p], gbps, d1, d2, t1, t2);
                }
                fflush(stdout);
            }
            bl_bn_free(&o.bn);
            bl_free(o.x), bl_free(o.y), bl_free(o.dy), bl_free(o.dx);
        }
    if (!json)
        printf("\nx oneDNN / x torch: their ms / our ms (above 1: bnlab is faster). GB/s: "
               "tensor-passes x bytes / time (train fwd 3, fwd+bwd 8, eval 2).\n");
    if (failed) fprintf(stderr, "bench_bn: a bnlab call failed: %s\n", bl_error());
    return failed;
}
