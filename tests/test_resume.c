/* No lost work: a run stopped at step k and resumed gives bit for bit the weights, BN statistics and
 * optimizer state of the uninterrupted run (1 and 2 threads); kill -9 during checkpoint writes
 * always leaves a loadable checkpoint. Uses Fashion-MNIST (installed by scripts/install-deps.sh). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static bl_status run_cfg(const char *out, long max_steps, const char *resume, int threads,
                         int epochs, int frozen, int reestimate)
{
    bl_train_cfg c;
    bl_train_defaults(&c);
    c.frozen_bn_epochs = frozen, c.frozen_bn_reestimate = reestimate;
    /* a barely trained net frozen at lr 0.05 with the momentum of its batch-mode steps diverges
     * (docs/precise.md); this checks the mechanics, at a rate where it trains */
    if (frozen) c.lr = 0.01;
    bl_model_rename(&c.model, "resnet8");
    c.model.width = 4, c.batch = 32, c.plan.norm_batch = 8, c.epochs = epochs, c.eval_every = 0;
    c.threads = threads, c.max_steps = max_steps;
    c.val = 58000; /* train on 2000 images: 62 steps per epoch, so a run crosses epochs quickly */
    snprintf(c.out, sizeof c.out, "%s", out);
    if (resume) snprintf(c.resume, sizeof c.resume, "%s", resume);
    return bl_train(&c, NULL, NULL, NULL);
}

static bl_status run(const char *out, long max_steps, const char *resume, int threads)
{
    return run_cfg(out, max_steps, resume, threads, 2, 0, 0);
}

/* One tensor of a checkpoint. */
static void tensor(const char *path, const char *name, float *out, size_t n)
{
    bl_safetensors x;
    CHECK(bl_st_read(path, &x) == BL_OK && bl_st_get_f32(&x, name, out, n) == BL_OK, "%s: %s",
          path, bl_error());
    bl_st_free(&x);
}

/* Every tensor of two checkpoints identical, byte for byte. */
static int same_file_tensors(const char *a, const char *b)
{
    bl_safetensors x, y;
    if (bl_st_read(a, &x)) return fprintf(stderr, "%s\n", bl_error()), 0;
    if (bl_st_read(b, &y)) return bl_st_free(&x), fprintf(stderr, "%s\n", bl_error()), 0;
    int ok = x.n == y.n && x.n > 50;
    for (int i = 0; ok && i < x.n; i++) {
        const bl_st_entry *e = &x.e[i], *f = bl_st_find(&y, e->name);
        ok = f && e->end - e->begin == f->end - f->begin &&
             !memcmp(x.data + e->begin, y.data + f->begin, e->end - e->begin);
        if (!ok) fprintf(stderr, "tensor %s differs\n", e->name);
    }
    ok = ok && !strcmp(bl_st_meta(&x, "step"), bl_st_meta(&y, "step"));
    bl_st_free(&x);
    bl_st_free(&y);
    return ok;
}

int main(void)
{
    char dir[] = "/tmp/bnlab_resume_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char a[300], b[300], ca[320], cb[320];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(ca, sizeof ca, "%s/last.safetensors", a);
    snprintf(cb, sizeof cb, "%s/last.safetensors", b);
    for (int threads = 1; threads <= 2; threads++) {
        /* 62 steps per epoch: stop inside epoch 1, and resume across the epoch boundary */
        long stops[2][2] = {{13, 40}, {60, 70}};
        for (int k = 0; k < 2; k++) {
            CHECK(run(a, stops[k][1], NULL, threads) == BL_OK, "uninterrupted: %s", bl_error());
            CHECK(run(b, stops[k][0], NULL, threads) == BL_OK, "first part: %s", bl_error());
            CHECK(run(b, stops[k][1], cb, threads) == BL_OK, "resumed part: %s", bl_error());
            CHECK(same_file_tensors(ca, cb), "stop at %ld + resume to %ld, %d thread(s): not "
                  "identical to the uninterrupted run", stops[k][0], stops[k][1], threads);
        }
    }

    /* the plan on resume, through bl_train: left at its default (norm_batch 0) the checkpoint's
     * (8) is adopted, and the run is the uninterrupted one bit for bit; another given one is
     * refused, naming both */
    {
        CHECK(run(a, 40, NULL, 2) == BL_OK, "uninterrupted: %s", bl_error());
        CHECK(run(b, 13, NULL, 2) == BL_OK, "first part: %s", bl_error());
        bl_train_cfg c;
        bl_train_defaults(&c);
        bl_model_rename(&c.model, "resnet8");
        c.model.width = 4, c.batch = 32, c.epochs = 2, c.eval_every = 0, c.threads = 2;
        c.max_steps = 40, c.val = 58000;
        snprintf(c.out, sizeof c.out, "%s", b);
        snprintf(c.resume, sizeof c.resume, "%s", cb);
        c.plan.norm_batch = 16;
        CHECK(bl_train(&c, NULL, NULL, NULL) == BL_ERR_ARG && strstr(bl_error(), "cfg.norm_batch 16") &&
                  strstr(bl_error(), "trained with 8"), "another plan resumed: %s", bl_error());
        c.plan.norm_batch = 0;
        CHECK(bl_train(&c, NULL, NULL, NULL) == BL_OK, "resumed with the plan adopted: %s", bl_error());
        CHECK(same_file_tensors(ca, cb), "a resume adopting the checkpoint's plan differs from the "
              "uninterrupted run");
    }

    /* FrozenBN for the last epoch (steps 63..124): a stop inside the phase, and one before it (a
     * branch from a regular run's checkpoint), resume exactly; inside the phase the statistics
     * stay those of its PreciseBN while gamma keeps training */
    long fz[2] = {66, 58};
    CHECK(run_cfg(a, 72, NULL, 2, 2, 1, 0) == BL_OK, "frozen, uninterrupted: %s", bl_error());
    for (int k = 0; k < 2; k++) {
        CHECK(run_cfg(b, fz[k], NULL, 2, 2, 1, 0) == BL_OK, "frozen, first part: %s", bl_error());
        float m_stop[4], g_stop[4], m_end[4], g_end[4]; /* at the stop and at the end */
        if (k == 0) {
            tensor(cb, "bn1.running_mean", m_stop, 4);
            tensor(cb, "bn1.weight", g_stop, 4);
        }
        CHECK(run_cfg(b, 72, cb, 2, 2, 1, 0) == BL_OK, "frozen, resumed: %s", bl_error());
        CHECK(same_file_tensors(ca, cb), "frozen: stop at %ld + resume to 72: not identical to "
              "the uninterrupted run", fz[k]);
        if (k == 0) {
            tensor(cb, "bn1.running_mean", m_end, 4);
            tensor(cb, "bn1.weight", g_end, 4);
            CHECK(!memcmp(m_stop, m_end, sizeof m_stop), "frozen phase: running_mean changed (%g -> %g)",
                  m_stop[0], m_end[0]);
            CHECK(memcmp(g_stop, g_end, sizeof g_stop), "frozen phase: gamma did not train");
        }
    }

    /* --frozen-bn-reestimate, two frozen epochs of three (steps 63..186): a stop inside epoch 2
     * keeps the statistics of the phase's start; by the end of epoch 3 they were re-estimated from
     * the weights trained meanwhile - and without re-estimation they were not */
    for (int re = 0; re < 2; re++) {
        float m_in[4], m_end[4];
        CHECK(run_cfg(b, 100, NULL, 2, 3, 2, re) == BL_OK, "frozen x2, first part: %s", bl_error());
        tensor(cb, "bn1.running_mean", m_in, 4);
        CHECK(run_cfg(b, 186, cb, 2, 3, 2, re) == BL_OK, "frozen x2, resumed: %s", bl_error());
        tensor(cb, "bn1.running_mean", m_end, 4);
        const int changed = memcmp(m_in, m_end, sizeof m_in) != 0;
        CHECK(changed == re && isfinite(m_end[0]), "frozen x2, reestimate %d: statistics %s in epoch 3 "
              "(%g -> %g)", re, changed ? "changed" : "unchanged", m_in[0], m_end[0]);
    }

    /* kill -9 while checkpoints are being written: the file on disk always loads */
    bl_net net;
    CHECK(bl_resnet(&net, 8, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    bl_net_init_params(&net, 1);
    char path[320];
    snprintf(path, sizeof path, "%s/k.safetensors", dir);
    bl_ckpt_info info = {.epoch = 1};
    CHECK(bl_checkpoint_save(&net, path, &info) == BL_OK, "%s", bl_error());
    struct timespec ts = {0, 0};
    for (int k = 0; k < 20; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0;; i++) {
                info.step = i;
                bl_checkpoint_save(&net, path, &info);
            }
        }
        ts.tv_nsec = 1000000L * (1 + (k * 7) % 23); /* 1..23 ms into the writes */
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        bl_net back;
        CHECK(bl_resnet(&back, 8, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
        CHECK(bl_checkpoint_load(&back, path, 1, NULL) == BL_OK &&
                  !memcmp(bl_net_block(&back, BL_BLOCK_PARAMS, NULL),
                          bl_net_block(&net, BL_BLOCK_PARAMS, NULL),
                          bl_net_floats(&net, BL_BLOCK_PARAMS) * sizeof(float)),
              "after kill -9 #%d the checkpoint does not load: %s", k, bl_error());
        bl_net_free(&back);
    }
    bl_net_free(&net);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    return check_done("test_resume");
}
