/* Determinism as docs/processes.md states it, for one process:
 *   - the same seed and thread count give the same bits (parameters, momentum, BN buffers), for
 *     1 and for 2 threads, for each model kind (plain, multi-level head, crop head shuffled);
 *   - another thread count changes a step by rounding only (within 1e-7 relative after one step
 *     at lr 0.001); training may amplify it: after 20 steps each model within its measured bound;
 *   - evaluation (population statistics) gives the same logits bit for bit whatever the threads;
 *   - another seed changes them for real (the comparison can fail).
 * Processes: tests/cli_mpi.sh (the same run under mpirun twice, bit for bit). */
#include "bnlab/bnlab.h"
#include "check.h"

typedef struct {
    float *v;
    size_t n;
} state;

/* steps of 32 on 1000 Fashion-MNIST images (no epoch end: no evaluation, no checkpoint) */
static state train(const char *model, int threads, uint64_t seed, double lr, int steps)
{
    bl_train_cfg c;
    bl_train_defaults(&c);
    bl_model_rename(&c.model, model);
    c.model.width = 4, c.batch = 32, c.val = 59000, c.max_steps = steps, c.lr = lr, c.seed = seed;
    c.threads = threads, c.eval_every = 0, c.precise.final = 0;
    if (strstr(model, "-ml")) bl_model_option(&c.model, "head_width", 8);
    if (strstr(model, "-crops")) {
        bl_model_option(&c.model, "head_width", 16), bl_model_option(&c.model, "crops", 4);
        c.plan.head_bn_images = 4, c.plan.bn_shuffle = 1;
    }
    state s = {0};
    bl_trainer *t;
    bl_status st = bl_trainer_init(&t, &c, NULL, NULL);
    CHECK(!st, "%s: init: %s", model, bl_error());
    if (st) return s;
    bl_train_event ev = BL_TRAIN_STEPPED;
    while (!st && ev == BL_TRAIN_STEPPED) st = bl_trainer_step(t, &ev);
    CHECK(!st && ev == BL_TRAIN_STOPPED, "%s: %d steps: %s", model, steps, bl_error());
    const bl_net *net = bl_trainer_net(t);
    const size_t np = bl_net_floats(net, BL_BLOCK_PARAMS),
                 nb = bl_net_floats(net, BL_BLOCK_BUFFERS);
    s.n = 2 * np + nb;
    s.v = malloc(s.n * sizeof(float));
    memcpy(s.v, bl_net_block(net, BL_BLOCK_PARAMS, NULL), np * sizeof(float));
    memcpy(s.v + np, bl_net_block(net, BL_BLOCK_OPTIM, NULL), np * sizeof(float));
    memcpy(s.v + 2 * np, bl_net_block(net, BL_BLOCK_BUFFERS, NULL), nb * sizeof(float));
    bl_trainer_free(t);
    return s;
}

/* ||a - b|| / ||a|| */
static double rel(state a, state b)
{
    double d = 0, n = 0;
    for (size_t i = 0; i < a.n; i++) {
        const double x = a.v[i], y = b.v[i];
        d += (x - y) * (x - y), n += x * x;
    }
    return sqrt(d / (n > 0 ? n : 1));
}

static int same(state a, state b) { return a.n == b.n && a.n && !memcmp(a.v, b.v, a.n * sizeof(float)); }

/* logits of the first 256 test images with population statistics */
static float *logits(bl_net *net, const bl_dataset *d, int threads)
{
    bl_threads_set(threads);
    const int n = 256, k = bl_net_classes(net);
    float *x = malloc(sizeof(float) * n * 784), *out = malloc(sizeof(float) * n * k);
    bl_recipe r = bl_recipe_fmnist();
    int idx[256];
    uint8_t y[256];
    for (int i = 0; i < n; i++) idx[i] = i;
    bl_dataset_batch(d, &r, idx, n, NULL, x, y);
    CHECK(!bl_net_infer(net, x, n), "inference: %s", bl_error());
    memcpy(out, bl_net_tensor_at(net, bl_net_tensor_count(net) - 1)->data, sizeof(float) * n * k);
    free(x);
    return out;
}

int main(int argc, char **argv)
{
    const char *fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    bl_dataset probe;
    if (bl_fmnist_load(NULL, "test", &probe)) {
        fprintf(stderr, "test_determinism: needs Fashion-MNIST (scripts/install-deps.sh): %s\n",
                bl_error());
        return 1;
    }
    const char *models[3] = {"resnet8", "resnet8-ml", "resnet8-crops"};
    /* 1 vs 2 threads after 20 steps: what training makes of each step's rounding. Measured:
     * 2.5e-8, 8.9e-4, 1.2e-7; the multi-level head's runs jump at step 4 (2.7e-8 after step 3,
     * 3.9e-5 after step 5), a discontinuity as docs/processes.md describes, not a drift */
    const double bound20[3] = {1e-6, 1e-2, 1e-6};
    for (int m = 0; m < 3; m++) {
        state a2 = train(models[m], 2, 1, 0.001, 20), b2 = train(models[m], 2, 1, 0.001, 20);
        state a1 = train(models[m], 1, 1, 0.001, 20), b1 = train(models[m], 1, 1, 0.001, 20);
        CHECK(same(a2, b2), "%s, 2 threads: two runs differ (%.3g)", models[m], rel(a2, b2));
        CHECK(same(a1, b1), "%s, 1 thread: two runs differ (%.3g)", models[m], rel(a1, b1));
        /* one step: the thread count changes only the order of sums */
        state s1 = train(models[m], 1, 1, 0.001, 1), s2 = train(models[m], 2, 1, 0.001, 1);
        const double r1 = rel(s1, s2), r20 = rel(a1, a2);
        CHECK(s1.n == s2.n && r1 <= 1e-7, "%s: one step, 1 vs 2 threads %.3g > 1e-7", models[m], r1);
        CHECK(a1.n == a2.n && r20 <= bound20[m], "%s: 20 steps, 1 vs 2 threads %.3g > %g", models[m],
              r20, bound20[m]);
        printf("%s: same seed and threads: bit-identical (1 and 2 threads); 1 vs 2 threads: "
               "%.3g after one step, %.3g after 20\n", models[m], r1, r20);
        if (m == 0) {
            state other = train(models[m], 2, 2, 0.001, 20);
            const double ro = rel(a2, other);
            CHECK(ro > 1e-3, "%s: seed 2 vs seed 1 only %.3g apart", models[m], ro);
            printf("%s: seed 1 vs seed 2: %.3g\n", models[m], ro);
            free(other.v);
        }
        free(a2.v), free(b2.v), free(a1.v), free(b1.v), free(s1.v), free(s2.v);
    }

    /* evaluation: a trained checkpoint's logits with 1 and 2 threads */
    bl_net net;
    bl_ckpt_info info;
    char path[1024];
    snprintf(path, sizeof path, "%s/resnet8_w4.safetensors", fixtures);
    bl_model_spec spec;
    bl_model_spec_defaults(&spec);
    snprintf(spec.model, sizeof spec.model, "resnet8"), spec.width = 4;
    CHECK(!bl_checkpoint_open(path, 256, &spec, &net, &info), "open: %s", bl_error());
    float *l1 = logits(&net, &probe, 1), *l2 = logits(&net, &probe, 2);
    int diff = 0;
    for (int i = 0; i < 256 * bl_net_classes(&net); i++)
        diff += memcmp(&l1[i], &l2[i], sizeof(float)) != 0;
    CHECK(diff == 0, "evaluation: %d of %d logits differ between 1 and 2 threads", diff,
          256 * bl_net_classes(&net));
    printf("evaluation, 1 vs 2 threads: %d of %d logits differ\n", diff,
           256 * bl_net_classes(&net));
    free(l1), free(l2);
    bl_net_free(&net);
    bl_ckpt_info_free(&info);
    bl_dataset_free(&probe);
    return check_done("test_determinism");
}
