/* The trainer's step API: callbacks report what happened (progress, checkpoint, stop, resume,
 * epoch end) and every hook point is called where docs/architecture.md says, once per step; a
 * stop decided by the agreement hook stops at that step with a checkpoint; a process that is not
 * the writer writes nothing; a hook's error stops the run with its status; the stepped run equals
 * bl_train bit for bit. Trains resnet8 w=4 on 1000 Fashion-MNIST images (31 steps of 32). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int progress, checkpoints, stopped, resumed, epochs, grads, agree, agree_err;
    long stop_at, stopped_step, resumed_step;
    int fail_grads;
    int peer_fails_at; /* the step at which "another process" reports an error */
    char last_ckpt[1100];
} counts;

static void on_resumed(void *u, const char *p, int e, long s, uint64_t seed)
{
    counts *c = u;
    (void)p, (void)e, (void)seed;
    c->resumed++, c->resumed_step = s;
}
static void on_progress(void *u, int e, long d, long n, double ips)
{
    (void)e, (void)d, (void)n, (void)ips;
    ((counts *)u)->progress++;
}
static void on_checkpoint(void *u, const char *p)
{
    counts *c = u;
    c->checkpoints++;
    snprintf(c->last_ckpt, sizeof c->last_ckpt, "%s", p);
}
static bl_status on_epoch_end(void *u, const bl_epoch_metrics *m)
{
    counts *c = u;
    c->epochs++;
    CHECK(m->epoch == 1 && m->step == 31 && m->train_loss > 0 && m->test_err_population < 0,
          "epoch metrics: epoch %d step %ld", m->epoch, m->step);
    return BL_OK;
}
static void on_stopped(void *u, long step, int e, long d, long n, const char *ck)
{
    counts *c = u;
    (void)e, (void)d, (void)n, (void)ck;
    c->stopped++, c->stopped_step = step;
}
static bl_status h_grads(void *ctx, bl_net *net)
{
    counts *c = ctx;
    c->grads++;
    (void)net;
    return c->fail_grads && c->grads == c->fail_grads ? bl_fail(BL_ERR_IO, "peer lost") : BL_OK;
}
static bl_status h_agree(void *ctx, int *flags, int n)
{
    counts *c = ctx;
    c->agree++;
    CHECK(n == 1, "one flag");
    if (c->stop_at && c->grads >= c->stop_at) flags[0] = 1; /* another process asks to stop */
    return BL_OK;
}
/* once after setup, then after each step's backward: "rank 1" fails at step peer_fails_at */
static bl_status h_agree_error(void *ctx, bl_status st)
{
    counts *c = ctx;
    c->agree_err++;
    if (st) return st;
    if (c->peer_fails_at && c->agree_err == 1 + c->peer_fails_at)
        return bl_fail(BL_ERR_STATE, "rank 1: step %d: loss not finite", c->peer_fails_at);
    return BL_OK;
}

static void config(bl_train_cfg *c, const char *out)
{
    bl_train_defaults(c);
    bl_model_rename(&c->model, "resnet8");
    c->model.width = 4, c->batch = 32, c->epochs = 1, c->eval_every = 0, c->precise.final = 0;
    c->val = 59000; /* 1000 training images */
    snprintf(c->out, sizeof c->out, "%s", out);
}

/* A trainer reporting to k through every callback and hook above. */
static bl_status start(bl_trainer **t, const bl_train_cfg *c, counts *k, int not_writer)
{
    const bl_train_callbacks cb = {k, on_resumed, NULL, on_progress, NULL, on_checkpoint,
                                   on_epoch_end, on_stopped, NULL};
    const bl_train_hooks hooks = {k, 0, 1, not_writer, h_grads, NULL, h_agree, h_agree_error, NULL};
    return bl_trainer_init(t, c, &cb, &hooks);
}

static bl_status run(bl_trainer *t, bl_train_event *ev)
{
    bl_status st;
    while (!(st = bl_trainer_step(t, ev)) && *ev != BL_TRAIN_DONE && *ev != BL_TRAIN_STOPPED)
        if (*ev == BL_TRAIN_EPOCH_END && (st = bl_trainer_epoch_end(t))) break;
    return st;
}

int main(void)
{
    bl_dataset probe;
    if (bl_fmnist_load(NULL, "test", &probe)) {
        fprintf(stderr, "test_trainer: needs Fashion-MNIST (scripts/install-deps.sh): %s\n",
                bl_error());
        return 1;
    }
    bl_dataset_free(&probe);
    char dir[] = "/tmp/bnlab_trainer_XXXXXX", a[300], b[300], ref[300], ckpt[400];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(a, sizeof a, "%s/a", dir), snprintf(b, sizeof b, "%s/b", dir);
    snprintf(ref, sizeof ref, "%s/ref", dir);

    /* stop at step 10, agreed through the hook */
    counts k = {0};
    k.stop_at = 10;
    bl_train_cfg c;
    config(&c, a);
    bl_trainer *t;
    bl_train_event ev;
    CHECK(start(&t, &c, &k, 0) == BL_OK, "init: %s", bl_error());
    CHECK(run(t, &ev) == BL_OK && ev == BL_TRAIN_STOPPED, "stopped: %s", bl_error());
    bl_trainer_free(t);
    /* the stop flag at each step's start and at the stop; errors after setup, after each
     * backward and at the stop's checkpoint */
    CHECK(k.grads == 10 && k.progress == 10 && k.agree == 11 && k.agree_err == 12,
          "hooks once per step: grads %d progress %d agree %d agree_error %d", k.grads,
          k.progress, k.agree, k.agree_err);
    CHECK(k.stopped == 1 && k.stopped_step == 10 && k.checkpoints == 1 && k.epochs == 0,
          "stop at step %ld, %d checkpoints", k.stopped_step, k.checkpoints);
    snprintf(ckpt, sizeof ckpt, "%s/last.safetensors", a);
    CHECK(!strcmp(k.last_ckpt, ckpt) && access(ckpt, F_OK) == 0, "checkpoint %s", k.last_ckpt);

    /* resume to the end of the epoch */
    counts r = {0};
    snprintf(c.resume, sizeof c.resume, "%s", ckpt);
    CHECK(start(&t, &c, &r, 0) == BL_OK, "resume: %s", bl_error());
    CHECK(run(t, &ev) == BL_OK && ev == BL_TRAIN_DONE, "done: %s", bl_error());
    bl_trainer_free(t);
    CHECK(r.resumed == 1 && r.resumed_step == 10 && r.grads == 21 && r.epochs == 1 &&
              r.checkpoints == 1, "resumed at %ld, %d steps, %d epochs", r.resumed_step, r.grads,
          r.epochs);
    bl_net resumed;
    CHECK(bl_checkpoint_open(ckpt, 32, NULL, &resumed, NULL) == BL_OK, "%s", bl_error());

    /* the same run in one go through bl_train: the same weights, bit for bit */
    config(&c, ref);
    CHECK(bl_train(&c, NULL, NULL, NULL) == BL_OK, "bl_train: %s", bl_error());
    snprintf(ckpt, sizeof ckpt, "%s/last.safetensors", ref);
    bl_net whole;
    CHECK(bl_checkpoint_open(ckpt, 32, NULL, &whole, NULL) == BL_OK, "%s", bl_error());
    CHECK(!memcmp(bl_net_block(&whole, BL_BLOCK_PARAMS, NULL),
                  bl_net_block(&resumed, BL_BLOCK_PARAMS, NULL),
                  bl_net_floats(&whole, BL_BLOCK_PARAMS) * sizeof(float)) &&
              !memcmp(bl_net_block(&whole, BL_BLOCK_BUFFERS, NULL),
                      bl_net_block(&resumed, BL_BLOCK_BUFFERS, NULL),
                      bl_net_floats(&whole, BL_BLOCK_BUFFERS) * sizeof(float)),
          "stepped and stopped/resumed vs bl_train: the weights differ");
    bl_net_free(&whole);
    bl_net_free(&resumed);

    /* not the writer: no checkpoint at a stop */
    counts w = {0};
    w.stop_at = 3;
    config(&c, b);
    CHECK(mkdir(b, 0755) == 0, "mkdir %s", b); /* so only the writer rule keeps the file away */
    CHECK(start(&t, &c, &w, 1) == BL_OK, "init: %s", bl_error());
    CHECK(run(t, &ev) == BL_OK && ev == BL_TRAIN_STOPPED && w.stopped_step == 3, "stop");
    bl_trainer_free(t);
    snprintf(ckpt, sizeof ckpt, "%s/last.safetensors", b);
    CHECK(w.checkpoints == 0 && access(ckpt, F_OK) != 0, "a process that is not the writer wrote");

    /* a hook's error stops the run with its status and message */
    counts e = {0};
    e.fail_grads = 4;
    config(&c, "");
    CHECK(start(&t, &c, &e, 0) == BL_OK, "init: %s", bl_error());
    CHECK(run(t, &ev) == BL_ERR_IO && strstr(bl_error(), "peer lost") && e.grads == 4,
          "a failing gradient hook: %s (calls %d)", bl_error(), e.grads);
    bl_trainer_free(t);

    /* an error on another process, learned through the agreement after backward: this process
     * stops too, before its gradient hook (the first collective) */
    counts p = {0};
    p.peer_fails_at = 5;
    config(&c, "");
    CHECK(start(&t, &c, &p, 0) == BL_OK, "init: %s", bl_error());
    CHECK(run(t, &ev) == BL_ERR_STATE && strstr(bl_error(), "rank 1: step 5") && p.grads == 4,
          "a peer's error: %s (gradient hook calls %d)", bl_error(), p.grads);
    bl_trainer_free(t);

    /* a bad configuration names the field */
    config(&c, "");
    c.plan.norm_batch = 64;
    CHECK(bl_trainer_init(&t, &c, NULL, NULL) == BL_ERR_ARG && t == NULL &&
              strstr(bl_error(), "cfg.norm_batch"), "bad norm batch: %s", bl_error());
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    return check_done("test_trainer");
}
