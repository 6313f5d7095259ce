/* bench_train: training-step and inference throughput (img/s) of a CIFAR ResNet on 28x28x1 inputs,
 * bnlab and (when python3-torch is installed) PyTorch with the same model, batch and threads, in
 * the same run, one after the other. Run on an idle machine.
 *
 * usage: bench_train [--model resnet20] [--width 16] [--batch 128] [--threads 2] [--steps 20]
 *                    [--only train|infer] [--direct] [--json] [--no-torch]
 * --only runs one half (for perf record); --direct turns Winograd off (the direct 3x3 kernel). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    const char *model = "resnet20";
    const char *only = NULL;
    int width = 16, batch = 128, threads = 2, steps = 20, json = 0, use_torch = 1;
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
        else {
            fprintf(stderr, "usage: bench_train [--model resnet20] [--width 16] [--batch 128] "
                            "[--threads 2] [--steps 20] [--only train|infer] [--direct] "
                            "[--json] [--no-torch]\n");
            return 2;
        }
    }
    bl_model m;
    if (bl_model_init(&m, model) || width < 1 || batch < 2 || threads < 1 || steps < 1 ||
        steps > 1000) {
        fprintf(stderr, "bench_train: bad arguments: %s\n", bl_error());
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
    bl_sgd sgd = {0.9, 5e-4, 1, 0};
    double *t = malloc(sizeof(double) * (steps + 3)), loss;
    int ok, failed = 0;
    const int do_train = !only || !strcmp(only, "train"), do_infer = !only || !strcmp(only, "infer");
    /* the step as the trainer takes it: its pass (whole-batch groups) made every step */
    for (int i = 0; i < (do_train ? steps + 3 : 1); i++) {
        double t0 = bench_now();
        const bl_pass_spec spec = {.mode = BL_BN_BATCH, .n = batch, .seed = 1, .stream = 0};
        bl_pass p;
        failed |= bl_pass_make(&p, &net, NULL, &spec) != BL_OK;
        bl_net_zero_grad(&net);
        failed |= bl_net_forward(&net, &p.ctx, x, batch) || bl_net_loss(&net, y, 1, &loss, &ok) ||
                  bl_net_backward(&net, &p.ctx);
        bl_pass_free(&p);
        bl_sgd_step(&net, &sgd, 0.01);
        failed |= bl_net_bn_commit(&net, BL_EST_EMA) != BL_OK;
        if (i >= 3) t[i - 3] = bench_now() - t0;
    }
    double train = do_train ? batch / bench_median(t, steps) : 0;
    for (int i = 0; i < (do_infer ? steps + 3 : 0); i++) {
        double t0 = bench_now();
        const bl_pass_spec spec = {.mode = BL_BN_POPULATION, .n = batch,
                                   .seed = BL_SEED_EVAL_CROPS, .stream = BL_STREAM_EVAL};
        bl_pass p;
        failed |= bl_pass_make(&p, &net, NULL, &spec) != BL_OK;
        failed |= bl_net_infer_ctx(&net, &p.ctx, x, batch) != BL_OK;
        bl_pass_free(&p);
        if (i >= 3) t[i - 3] = bench_now() - t0;
    }
    double infer = do_infer ? batch / bench_median(t, steps) : 0;
    if (failed) fprintf(stderr, "bench_train: a bnlab call failed: %s\n", bl_error());
    double tt = 0, ti = 0;
    if (use_torch && !only) {
        char cmd[1024], line[256], name[32];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/bench/torch_train.py %d %d %d %d %d 2>&1",
                 BL_SOURCE_DIR, depth, width, batch, threads, steps);
        FILE *p = popen(cmd, "r");
        double v;
        while (p && fgets(line, sizeof line, p))
            if (sscanf(line, "%31s %lf", name, &v) == 2) {
                if (!strcmp(name, "train")) tt = v;
                else if (!strcmp(name, "infer")) ti = v;
            }
        if (!p || pclose(p) != 0 || tt == 0) {
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
    free(t), free(y), bl_free(x);
    bl_net_free(&net);
    return failed;
}
