/* The profiler: per layer and pass, time, the rate of FMA slots against a peak measured in the
 * same run, and bytes per second. The peak is measured rather than quoted because this machine
 * is a VM whose speed drifts from run to run: a kernel's share of it is what says how far the
 * kernel is from the limit. */
#define _POSIX_C_SOURCE 200809L
#include "nn/net.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef BL_HAVE_OPENMP
#include <omp.h>
#endif

typedef struct {
    double sec[BL_PASSES];
    long calls[BL_PASSES], samples[BL_PASSES];
    int fused[BL_PASSES]; /* layers an infer call covered (conv + BN + add + ReLU) */
} layer_prof;

struct bl_profile {
    int n;
    layer_prof *l;
    double phase[BL_PHASES];
    long phase_calls[BL_PHASES];
};

static int prof_state = -1; /* -1: BL_PROFILE not read yet */
static void (*prof_sink)(const char *text);

void bl_profile_set_sink(void (*sink)(const char *text)) { prof_sink = sink; }

int bl_profile_enabled(void)
{
    if (prof_state < 0) {
        const char *e = getenv("BL_PROFILE");
        prof_state = e && *e && strcmp(e, "0") != 0;
    }
    return prof_state;
}

void bl_profile_set(int on) { prof_state = on != 0; }

double bl_profile_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static struct bl_profile *prof_of(bl_net *net)
{
    if (net->prof && net->prof->n == net->n_layers) return net->prof;
    struct bl_profile *p = net->prof;
    if (!p && !(p = calloc(1, sizeof *p))) return NULL;
    layer_prof *l = realloc(p->l, sizeof *l * (size_t)(net->n_layers ? net->n_layers : 1));
    if (!l) {
        if (!net->prof) free(p);
        return NULL;
    }
    memset(l + p->n, 0, sizeof *l * (size_t)(net->n_layers > p->n ? net->n_layers - p->n : 0));
    p->l = l, p->n = net->n_layers;
    net->prof = p;
    return p;
}

void bl_net_profile_layer(bl_net *net, int layer, int pass, int used, double sec)
{
    struct bl_profile *p = prof_of(net);
    if (!p || layer < 0 || layer >= p->n) return;
    layer_prof *l = &p->l[layer];
    l->sec[pass] += sec, l->calls[pass]++, l->samples[pass] += net->batch;
    if (used > l->fused[pass]) l->fused[pass] = used;
}

void bl_net_profile_phase(bl_net *net, bl_phase ph, double sec)
{
    struct bl_profile *p = prof_of(net);
    if (!p || ph < 0 || ph >= BL_PHASES) return;
    p->phase[ph] += sec, p->phase_calls[ph]++;
}

void bl_net_profile_free(bl_net *net)
{
    if (!net->prof) return;
    if (bl_profile_enabled() && prof_sink) {
        char *text = bl_net_profile_report(net);
        if (text) prof_sink(text);
        free(text);
    }
    free(net->prof->l);
    free(net->prof);
    net->prof = NULL;
}

/* ---- the peak ---------------------------------------------------------------------------------
 * Independent FMA chains (more than latency x throughput, so the units never wait) on every
 * thread for a fixed count; the best of three rounds. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define PEAK_ISA "AVX-512"
#define LANES 16
typedef __m512 vec;
#define VSET(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PEAK_ISA "AVX2+FMA"
#define LANES 8
typedef __m256 vec;
#define VSET(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
static inline float VSUM(__m256 v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#else
#define PEAK_ISA "scalar"
#define LANES 1
typedef float vec;
#define VSET(x) (x)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VSUM(v) (v)
#endif

#define CHAINS 12

static float fma_chains(long iters, float seed)
{
    vec a[CHAINS], m = VSET(0.999999f), c = VSET(1e-7f);
    for (int k = 0; k < CHAINS; k++) a[k] = VSET(seed + k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < CHAINS; k++) a[k] = VFMA(a[k], m, c);
    float s = 0;
    for (int k = 0; k < CHAINS; k++) s += VSUM(a[k]);
    return s;
}

double bl_fma_peak(int threads, const char **isa)
{
    const long iters = 400000;
    volatile float sink = 0;
    double best = 0;
    if (threads < 1) threads = 1;
    for (int round = 0; round < 3; round++) {
        const double t0 = bl_profile_now();
#pragma omp parallel num_threads(threads)
        {
            float s = fma_chains(iters, 1.0f + (float)round);
#pragma omp critical
            sink += s;
        }
        const double dt = bl_profile_now() - t0;
        const double gf = 2.0 * LANES * CHAINS * (double)iters * threads / dt / 1e9;
        if (gf > best) best = gf;
    }
    (void)sink;
    if (isa) *isa = PEAK_ISA;
    return best;
}

/* ---- the table -------------------------------------------------------------------------------- */
static void default_cost(const bl_layer *l, const bl_net *net, int pass, bl_cost *c)
{
    double in = 0, out = 0;
    for (int k = 0; k < l->n_in; k++) {
        const bl_tensor *t = &net->t[l->in[k]];
        if (!t->constant) in += (double)t->h * t->w * t->c;
    }
    for (int k = 0; k < l->n_out; k++) {
        const bl_tensor *t = &net->t[l->out + k];
        out += (double)t->h * t->w * t->c;
    }
    /* the backward reads the output's gradient (and often the input) and writes the input's */
    c->bytes = 4.0 * (pass == BL_PASS_BWD ? 2 * in + 2 * out : in + out);
}

static void cost_of(const bl_layer *l, const bl_net *net, int pass, bl_cost *c)
{
    memset(c, 0, sizeof *c);
    if (l->ops->cost) l->ops->cost(l, net, pass, c);
    else default_cost(l, net, pass, c);
}

static const char *pass_name[BL_PASSES] = {"fwd", "bwd", "infer"};
static const char *phase_name[BL_PHASES] = {"input copy", "loss", "zero grad", "sgd"};

/* a growing string (the library formats, the command prints) */
typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} text_buf;

static void ap(text_buf *b, const char *fmt, ...)
{
    for (int pass = 0; pass < 2 && !b->failed; pass++) {
        va_list va;
        va_start(va, fmt);
        const int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, va);
        va_end(va);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n) cap *= 2;
        char *t = realloc(b->s, cap);
        if (!t) {
            b->failed = 1;
            return;
        }
        b->s = t, b->cap = cap;
    }
}

typedef struct {
    const char *kind, *algo;
    int pass;
    double sec, slots, bytes;
} group_row;

char *bl_net_profile_report(const bl_net *net)
{
    const struct bl_profile *p = net->prof;
    if (!p) return NULL;
    text_buf tb = {0}, *f = &tb;
    int threads = bl_threads_get();
    const char *isa = "";
    const double peak = bl_fma_peak(threads, &isa);
    ap(f, "\nbnlab profile: %s (width %d), %d threads; FMA peak %.1f GFLOP/s measured now "
               "(%s, %d chains per thread)\n",
            net->arch[0] ? net->arch : "net", net->width, threads, peak, isa, CHAINS);
    ap(f, "  slots: multiply-adds and transform adds, 2 FLOP each; bytes: each tensor read "
               "or written once (an estimate)\n");
    ap(f, "%-24s %-7s %-5s %-22s %6s %9s %8s %6s %7s\n", "layer", "kind", "pass",
            "algorithm", "calls", "ms/call", "GFLOP/s", "%peak", "GB/s");
    group_row *g = calloc((size_t)p->n * BL_PASSES + 1, sizeof *g);
    int ng = 0;
    double total[BL_PASSES] = {0};
    long calls[BL_PASSES] = {0};
    for (int i = 0; i < p->n && i < net->n_layers; i++) {
        const bl_layer *l = &net->layers[i];
        for (int ps = 0; ps < BL_PASSES; ps++) {
            const layer_prof *lp = &p->l[i];
            if (!lp->calls[ps]) continue;
            bl_cost c;
            cost_of(l, net, ps, &c);
            const double s = lp->sec[ps], n = (double)lp->samples[ps];
            const double gf = s > 0 ? 2.0 * c.slots * n / s / 1e9 : 0;
            const double gb = s > 0 ? c.bytes * n / s / 1e9 : 0;
            char algo[40];
            snprintf(algo, sizeof algo, "%s%s", c.algo ? c.algo : "-",
                     lp->fused[ps] > 1 ? (lp->fused[ps] == 2   ? " +bn"
                                          : lp->fused[ps] == 3 ? " +bn+1"
                                                               : " +bn+add+relu")
                                       : "");
            ap(f, "%-24.24s %-7.7s %-5s %-22.22s %6ld %9.3f %8.1f %5.1f%% %7.1f\n", l->name,
                    l->ops->kind_name, pass_name[ps], algo, lp->calls[ps],
                    1e3 * s / lp->calls[ps], gf, peak > 0 ? 100 * gf / peak : 0, gb);
            total[ps] += s, calls[ps] = lp->calls[ps] > calls[ps] ? lp->calls[ps] : calls[ps];
            if (!g) continue;
            int k = 0;
            const char *a = c.algo ? c.algo : "-";
            while (k < ng && !(g[k].pass == ps && !strcmp(g[k].kind, l->ops->kind_name) &&
                               !strcmp(g[k].algo, a)))
                k++;
            if (k == ng) g[ng++] = (group_row){l->ops->kind_name, a, ps, 0, 0, 0};
            g[k].sec += s, g[k].slots += c.slots * n, g[k].bytes += c.bytes * n;
        }
    }
    double all = 0;
    for (int ps = 0; ps < BL_PASSES; ps++) all += total[ps];
    for (int ph = 0; ph < BL_PHASES; ph++) all += p->phase[ph];
    ap(f, "\nby kind, algorithm and pass (ms per call of the pass; share of all timed):\n");
    ap(f, "%-7s %-22s %-5s %9s %7s %8s %6s %7s\n", "kind", "algorithm", "pass", "ms/call",
            "share", "GFLOP/s", "%peak", "GB/s");
    for (int k = 0; g && k < ng; k++) {
        const double s = g[k].sec, gf = s > 0 ? 2 * g[k].slots / s / 1e9 : 0;
        ap(f, "%-7s %-22.22s %-5s %9.3f %6.1f%% %8.1f %5.1f%% %7.1f\n", g[k].kind, g[k].algo,
                pass_name[g[k].pass], calls[g[k].pass] ? 1e3 * s / calls[g[k].pass] : 0,
                all > 0 ? 100 * s / all : 0, gf, peak > 0 ? 100 * gf / peak : 0,
                s > 0 ? g[k].bytes / s / 1e9 : 0);
    }
    for (int ph = 0; ph < BL_PHASES; ph++)
        if (p->phase_calls[ph])
            ap(f, "%-7s %-22s %-5s %9.3f %6.1f%%\n", "phase", phase_name[ph], "-",
                    1e3 * p->phase[ph] / p->phase_calls[ph], all > 0 ? 100 * p->phase[ph] / all : 0);
    for (int ps = 0; ps < BL_PASSES; ps++)
        if (calls[ps]) {
            double slots = 0;
            for (int k = 0; g && k < ng; k++)
                if (g[k].pass == ps) slots += g[k].slots;
            const double gf = total[ps] > 0 ? 2 * slots / total[ps] / 1e9 : 0;
            ap(f, "pass %-5s %9.3f ms per call over %ld calls: %.1f GFLOP/s of slots, %.1f%% "
                       "of the peak\n",
                    pass_name[ps], 1e3 * total[ps] / calls[ps], calls[ps], gf,
                    peak > 0 ? 100 * gf / peak : 0);
        }
    free(g);
    if (tb.failed) {
        free(tb.s);
        return NULL;
    }
    return tb.s;
}
