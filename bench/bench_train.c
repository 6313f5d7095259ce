/* bench_train: training-step and inference throughput (img/s) of a CIFAR ResNet on 28x28x1 inputs,
 * bnlab and (when python3-torch is installed) PyTorch with the same model, batch and threads, in
 * the same run, one after the other. Run on an idle machine.
 *
 * usage: bench_train [--model resnet20] [--width 16] [--batch 128] [--threads 2] [--steps 20]
 *                    [--rounds 5] [--only train|infer] [--direct] [--json] [--no-torch]
 * With PyTorch: --rounds R (default 5) alternates bnlab and a persistent PyTorch worker
 * (bench/torch_worker.py) in ABBA blocks for training, eager inference and the jit-optimized
 * inference anchor, after one warm-up round, and prints each round's ratios, their median and
 * minimum, the steal time and an FMA peak measured in each round; --rounds 0 runs each side once
 * (the same worker: 3 warm-up steps, then the median of --steps). --only runs one half of bnlab
 * alone (for perf record); --direct turns Winograd off (the direct 3x3 kernel). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    bl_net *net;
    float *x;
    uint8_t *y;
    int batch;
    bl_sgd sgd;
    int failed;
} bench_net;

/* the step as the trainer takes it: its pass (whole-batch groups) made every step */
static void train_step(bench_net *b)
{
    const bl_pass_spec spec = {.mode = BL_BN_BATCH, .n = b->batch, .seed = 1, .stream = 0};
    bl_pass p;
    double loss;
    int ok;
    b->failed |= bl_pass_make(&p, b->net, NULL, &spec) != BL_OK;
    bl_net_zero_grad(b->net);
    b->failed |= bl_net_forward(b->net, &p.ctx, b->x, b->batch) ||
                 bl_net_loss(b->net, b->y, 1, &loss, &ok) || bl_net_backward(b->net, &p.ctx);
    bl_pass_free(&p);
    bl_sgd_step(b->net, &b->sgd, 0.01);
    b->failed |= bl_net_bn_commit(b->net, BL_EST_EMA) != BL_OK;
}

static void infer_step(bench_net *b)
{
    const bl_pass_spec spec = {.mode = BL_BN_POPULATION, .n = b->batch,
                               .seed = BL_SEED_EVAL_CROPS, .stream = BL_STREAM_EVAL};
    bl_pass p;
    b->failed |= bl_pass_make(&p, b->net, NULL, &spec) != BL_OK;
    b->failed |= bl_net_infer_ctx(b->net, &p.ctx, b->x, b->batch) != BL_OK;
    bl_pass_free(&p);
}

/* img/s of k steps, the median step */
static double bn_rate(bench_net *b, int train, int k)
{
    double t[1000];
    for (int i = 0; i < k; i++) {
        const double t0 = bench_now();
        if (train) train_step(b);
        else infer_step(b);
        t[i] = bench_now() - t0;
    }
    return b->batch / bench_median(t, k);
}

/* the persistent PyTorch worker (bench/torch_worker.py) on two pipes */
typedef struct {
    FILE *to, *from;
    pid_t pid;
} worker;

static int worker_start(worker *w, int depth, int width, int batch, int threads)
{
    int in[2], out[2];
    signal(SIGPIPE, SIG_IGN); /* a worker that died is an error reply, not our death */
    if (pipe(in) || pipe(out)) return -1;
    char script[1024], a[4][16];
    snprintf(script, sizeof script, "%s/bench/torch_worker.py", BL_SOURCE_DIR);
    snprintf(a[0], 16, "%d", depth), snprintf(a[1], 16, "%d", width);
    snprintf(a[2], 16, "%d", batch), snprintf(a[3], 16, "%d", threads);
    w->pid = fork();
    if (w->pid < 0) return -1;
    if (w->pid == 0) {
        dup2(in[0], 0), dup2(out[1], 1);
        close(in[1]), close(out[0]);
        execl("/usr/bin/python3", "python3", script, a[0], a[1], a[2], a[3], (char *)NULL);
        _exit(127);
    }
    close(in[0]), close(out[1]);
    w->to = fdopen(in[1], "w"), w->from = fdopen(out[0], "r");
    return w->to && w->from ? 0 : -1;
}

static double worker_rate(worker *w, const char *what, int k)
{
    char line[256];
    double v = 0;
    fprintf(w->to, "%s %d\n", what, k);
    fflush(w->to);
    if (!fgets(line, sizeof line, w->from) || sscanf(line, "ok %lf", &v) != 1) return 0;
    return v;
}

static void worker_stop(worker *w)
{
    if (w->to) fprintf(w->to, "quit\n"), fclose(w->to);
    if (w->from) fclose(w->from);
    if (w->pid > 0) waitpid(w->pid, NULL, 0);
}

/* steal and total jiffies of all CPUs (/proc/stat), for the share the hypervisor took */
static void cpu_jiffies(double *steal, double *total)
{
    *steal = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    double v[10] = {0};
    if (f && fscanf(f, "cpu %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4],
                    &v[5], &v[6], &v[7]) == 8) {
        for (int k = 0; k < 8; k++) *total += v[k];
        *steal = v[7];
    }
    if (f) fclose(f);
}

static double median_of(double *v, int n)
{
    double t[64];
    memcpy(t, v, sizeof(double) * n);
    return bench_median(t, n);
}

static double min_of(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static double max_of(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* ABBA rounds: bnlab, PyTorch, PyTorch, bnlab for each comparison, the round's ratio the mean of
 * bnlab's two rates over the mean of PyTorch's (a drift within the round cancels to first order);
 * round 0 warms both up and is not counted. */
static int abba(bench_net *b, int depth, int width, int threads, int steps, int rounds, int json)
{
    worker w = {0};
    if (worker_start(&w, depth, width, b->batch, threads)) {
        fprintf(stderr, "bench_train: cannot start the PyTorch worker\n");
        return 1;
    }
    static const char *name[3] = {"training", "inference (eager)", "inference (jit-optimized)"};
    static const char *cmd[3] = {"train", "infer", "jit"};
    double ratio[3][64], bn[3][64], pt[3][64], steal[64], peak[64];
    if (rounds > 63) rounds = 63;
    const char *isa = "";
    if (!json)
        printf("bench_train: resnet%d w=%d, batch %d, 28x28x1, %d threads; ABBA rounds of %d "
               "steps each (round 0 warms up)\n%5s %-26s %10s %10s %7s %7s %8s\n",
               depth, width, b->batch, threads, steps, "round", "", "bnlab", "PyTorch", "ratio",
               "steal%", "peak GF");
    int failed = 0;
    for (int r = 0; r <= rounds; r++) {
        double s0, t0, s1, t1;
        cpu_jiffies(&s0, &t0);
        const double pk = bl_fma_peak(threads, &isa);
        for (int c = 0; c < 3; c++) {
            const int tr = c == 0;
            const double a1 = bn_rate(b, tr, steps), b1 = worker_rate(&w, cmd[c], steps);
            const double b2 = worker_rate(&w, cmd[c], steps), a2 = bn_rate(b, tr, steps);
            if (b1 <= 0 || b2 <= 0) {
                fprintf(stderr, "bench_train: the PyTorch worker failed (%s)\n", cmd[c]);
                worker_stop(&w);
                return 1;
            }
            if (r == 0) continue;
            bn[c][r - 1] = (a1 + a2) / 2, pt[c][r - 1] = (b1 + b2) / 2;
            ratio[c][r - 1] = bn[c][r - 1] / pt[c][r - 1];
        }
        cpu_jiffies(&s1, &t1);
        if (r == 0) continue;
        steal[r - 1] = t1 > t0 ? 100 * (s1 - s0) / (t1 - t0) : 0, peak[r - 1] = pk;
        if (!json)
            for (int c = 0; c < 3; c++)
                printf("%5d %-26s %10.0f %10.0f %6.2fx %7.1f %8.1f\n", r, name[c], bn[c][r - 1],
                       pt[c][r - 1], ratio[c][r - 1], steal[r - 1], pk);
    }
    worker_stop(&w);
    failed |= b->failed;
    if (json) {
        printf("{\"depth\":%d,\"width\":%d,\"batch\":%d,\"threads\":%d,\"rounds\":%d,\"isa\":\"%s\"",
               depth, width, b->batch, threads, rounds, isa);
        for (int c = 0; c < 3; c++)
            printf(",\"%s_ratio_median\":%.3f,\"%s_ratio_min\":%.3f", cmd[c],
                   median_of(ratio[c], rounds), cmd[c], min_of(ratio[c], rounds));
        printf(",\"steal_pct_max\":%.2f,\"peak_gflops_median\":%.1f}\n",
               max_of(steal, rounds), median_of(peak, rounds));
    } else {
        printf("summary over %d rounds (FMA peak %s, median %.1f GFLOP/s):\n", rounds, isa,
               median_of(peak, rounds));
        for (int c = 0; c < 3; c++)
            printf("  %-26s ratio median %.2fx, minimum %.2fx (bnlab median %.0f, PyTorch %.0f "
                   "img/s)\n",
                   name[c], median_of(ratio[c], rounds), min_of(ratio[c], rounds),
                   median_of(bn[c], rounds), median_of(pt[c], rounds));
        printf("  steal time per round: median %.1f%%, max %.1f%%\n", median_of(steal, rounds),
               max_of(steal, rounds));
    }
    return failed;
}

static void profile_to_stderr(const char *text) { fputs(text, stderr); }

int main(int argc, char **argv)
{
    bl_profile_set_sink(profile_to_stderr); /* BL_PROFILE=1: the table at the end */
    const char *model = "resnet20";
    const char *only = NULL;
    int width = 16, batch = 128, threads = 2, steps = 20, json = 0, use_torch = 1, rounds = 5;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json")) json = 1;
        else if (!strcmp(o, "--no-torch")) use_torch = 0;
        else if (!strcmp(o, "--direct")) bl_conv_set_winograd(0);
        else if (!strcmp(o, "--model") && v) model = v, i++;
        else if (!strcmp(o, "--only") && v && (!strcmp(v, "train") || !strcmp(v, "infer")))
            only = v, i++;
        else if (!strcmp(o, "--width") && v) width = atoi(v), i++;
        else if (!strcmp(o, "--batch") && v) batch = atoi(v), i++;
        else if (!strcmp(o, "--threads") && v) threads = atoi(v), i++;
        else if (!strcmp(o, "--steps") && v) steps = atoi(v), i++;
        else if (!strcmp(o, "--rounds") && v) rounds = atoi(v), i++;
        else {
            fprintf(stderr, "usage: bench_train [--model resnet20] [--width 16] [--batch 128] "
                            "[--threads 2] [--steps 20] [--rounds 5] [--only train|infer] "
                            "[--direct] [--json] [--no-torch]\n");
            return 2;
        }
    }
    bl_model m;
    if (width < 1 || batch < 2 || threads < 1 || steps < 1 || steps > 1000 || rounds < 0 ||
        rounds > 63) {
        fprintf(stderr, "bench_train: bad arguments: --width >= 1, --batch >= 2, --threads >= 1, "
                        "--steps 1..1000, --rounds 0..63\n");
        return 2;
    }
    if (bl_model_init(&m, model)) {
        fprintf(stderr, "bench_train: %s\n", bl_error());
        return 2;
    }
    bl_threads_set(threads);
    /* any model: the peer exists for the plain ResNet */
    const int depth = ((const bl_resnet_opts *)bl_model_opts_c(&m))->depth;
    if (m.family != &bl_family_resnet) use_torch = 0;
    m.width = width;
    bl_net net;
    if (bl_model_build(&net, &m, 10, 28, 28, 1, batch)) {
        fprintf(stderr, "bench_train: %s\n", bl_error());
        return 1;
    }
    bl_net_init_params(&net, 1);
    float *x = bl_alloc((size_t)batch * 784 * sizeof(float));
    uint8_t *y = malloc(batch);
    bl_rng r;
    bl_rng_seed(&r, 3);
    for (int i = 0; i < batch * 784; i++) x[i] = (float)bl_rng_normal(&r);
    for (int i = 0; i < batch; i++) y[i] = (uint8_t)bl_rng_below(&r, 10);
    bench_net b = {&net, x, y, batch, {0.9, 5e-4, 1, 0}, 0};
    double *t = malloc(sizeof(double) * (steps + 3));
    const int do_train = !only || !strcmp(only, "train"), do_infer = !only || !strcmp(only, "infer");
    if (rounds > 0 && use_torch && !only) {
        const int failed = abba(&b, depth, width, threads, steps, rounds, json);
        free(t), free(y), bl_free(x);
        bl_net_free(&net);
        return failed;
    }
    /* warm-up steps excluded */
    for (int i = 0; i < (do_train ? steps + 3 : 1); i++) {
        double t0 = bench_now();
        train_step(&b);
        if (i >= 3) t[i - 3] = bench_now() - t0;
    }
    double train = do_train ? batch / bench_median(t, steps) : 0;
    for (int i = 0; i < (do_infer ? steps + 3 : 0); i++) {
        double t0 = bench_now();
        infer_step(&b);
        if (i >= 3) t[i - 3] = bench_now() - t0;
    }
    double infer = do_infer ? batch / bench_median(t, steps) : 0;
    if (b.failed) fprintf(stderr, "bench_train: a bnlab call failed: %s\n", bl_error());
    double tt = 0, ti = 0;
    if (use_torch && !only) {
        /* one pass each, through the same worker as the rounds: 3 warm-up steps, then the
         * median of --steps */
        worker w = {0};
        if (!worker_start(&w, depth, width, batch, threads) && worker_rate(&w, "train", 3) > 0)
            tt = worker_rate(&w, "train", steps);
        if (tt > 0 && worker_rate(&w, "infer", 3) > 0) ti = worker_rate(&w, "infer", steps);
        worker_stop(&w);
        if (tt == 0 || ti == 0) {
            fprintf(stderr, "bench_train: the PyTorch run failed (python3-torch installed? "
                            "scripts/install-deps.sh bench)\n");
            tt = ti = 0;
        }
    }
    if (json) {
        printf("{\"model\":\"%s\",\"width\":%d,\"batch\":%d,\"threads\":%d,\"train_img_per_s\":%.1f,"
               "\"infer_img_per_s\":%.1f", model, width, batch, threads, train, infer);
        if (tt > 0) printf(",\"torch_train_img_per_s\":%.1f,\"torch_infer_img_per_s\":%.1f", tt, ti);
        printf("}\n");
    } else {
        printf("bench_train: %s w=%d, batch %d, 28x28x1, %d threads, median of %d steps\n", model,
               width, batch, threads, steps);
        printf("  %-10s %12s %14s %8s\n", "", "bnlab img/s", "PyTorch img/s", "ratio");
        printf("  %-10s %12.0f %14.0f %7.2fx\n", "training", train, tt, tt > 0 ? train / tt : 0);
        printf("  %-10s %12.0f %14.0f %7.2fx\n", "inference", infer, ti, ti > 0 ? infer / ti : 0);
    }
    const int failed = b.failed;
    free(t), free(y), bl_free(x);
    bl_net_free(&net);
    return failed;
}
