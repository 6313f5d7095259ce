#define _POSIX_C_SOURCE 200809L
/* bnlab train: a ResNet on Fashion-MNIST with every batch choice explicit. */
#include "cli/cli.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* SIGINT/SIGTERM: finish the current step, write a checkpoint, exit cleanly. A second signal
 * kills as usual (the handler is reset), and the checkpoint write itself is atomic anyway. */
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    stop_flag = 1;
    signal(sig, SIG_DFL);
}

/* What the command shows and writes while the trainer runs: the per-epoch table, a progress bar
 * on a terminal, and metrics.jsonl (one line per epoch, appended after the epoch's checkpoint is
 * written, in one write, so a resume never repeats a line). */
typedef struct {
    const bl_train_cfg *c;
    int tty;
    int resumed_epoch; /* -1: a fresh run */
    char mpath[1100];
    cli_dist *d;
    bl_trainer *t;
} train_view;

static void on_resumed(void *u, const char *path, int epoch, long step, uint64_t seed)
{
    train_view *v = u;
    v->resumed_epoch = epoch;
    printf("resumed from %s at epoch %d, step %ld\n", path, epoch, step);
    if (seed != v->c->seed)
        printf("note: the data order and augmentation follow the checkpoint's seed %llu, not "
               "--seed %llu\n", (unsigned long long)seed, (unsigned long long)v->c->seed);
}

static void header(void)
{
    printf("%-6s %-9s %-10s %-9s %-9s %-9s %-9s %-9s %-8s\n", "epoch", "lr", "train_loss",
           "train_err", "test_pop", "test_mb", "test_pre", "img/s", "seconds");
}

static void on_progress(void *u, int epoch, long done, long steps, double ips)
{
    train_view *v = u;
    cli_dist_step(v->d, bl_trainer_net(v->t), (long)(epoch - 1) * steps + done);
    if (!v->tty || (done % 10 && done != steps)) return;
    const long batch = v->c->batch;
    int bar = (int)(30 * done / steps);
    printf("\r  epoch %d [%.*s%*s] %ld/%ld  %.0f img/s  ETA %.0f s  ", epoch, bar,
           "==============================", 30 - bar, "", done, steps, ips,
           (steps - done) * batch / ips);
    fflush(stdout);
}

static void clear_bar(const train_view *v)
{
    if (v->tty) printf("\r%*s\r", 78, "");
}

static void on_frozen(void *u, int epoch, long samples)
{
    (void)u;
    printf("epoch %d: BN statistics frozen (PreciseBN, %ld images); gamma and beta keep "
           "training\n", epoch, samples);
}

static bl_status on_epoch_end(void *u, const bl_epoch_metrics *m)
{
    train_view *v = u;
    clear_bar(v);
    char ps[16] = "-", ms[16] = "-", rs[16] = "-";
    if (m->test_err_precise >= 0) snprintf(rs, sizeof rs, "%.2f", m->test_err_precise);
    if (m->test_err_population >= 0) snprintf(ps, sizeof ps, "%.2f", m->test_err_population);
    if (m->test_err_minibatch >= 0) snprintf(ms, sizeof ms, "%.2f", m->test_err_minibatch);
    printf("%-6d %-9.5f %-10.4f %-9.2f %-9s %-9s %-9s %-9.0f %-8.1f\n", m->epoch, m->lr,
           m->train_loss, m->train_err, ps, ms, rs, m->img_per_s, m->seconds);
    fflush(stdout);
    if (!v->mpath[0]) return BL_OK;
    char line[1024];
    int o = snprintf(line, sizeof line, "{\"epoch\":%d,\"step\":%ld,\"lr\":%.6g,"
                     "\"train_loss\":%.6f,\"train_err\":%.4f", m->epoch, m->step, m->lr,
                     m->train_loss, m->train_err);
    const double vals[4] = {m->test_err_population, m->test_err_minibatch, m->train_err_minibatch,
                            m->test_err_precise};
    const char *keys[4] = {"test_err_population", "test_err_minibatch", "train_err_minibatch",
                           "test_err_precise"};
    for (int k = 0; k < 4 && o > 0 && (size_t)o < sizeof line; k++)
        if (vals[k] >= 0) o += snprintf(line + o, sizeof line - o, ",\"%s\":%.4f", keys[k], vals[k]);
    /* a multi-level head: each level's error beside the error of the mean logits */
    const double *lv[2] = {m->test_err_population_level, m->test_err_precise_level};
    const char *lk[2] = {"test_err_population_level", "test_err_precise_level"};
    for (int j = 0; j < 2 && m->outputs && vals[j ? 3 : 0] >= 0 && o > 0 && (size_t)o < sizeof line; j++) {
        o += snprintf(line + o, sizeof line - o, ",\"%s\":[", lk[j]);
        for (int k = 0; k < m->outputs && o > 0 && (size_t)o < sizeof line; k++)
            o += snprintf(line + o, sizeof line - o, "%s%.4f", k ? "," : "", lv[j][k]);
        if (o > 0 && (size_t)o < sizeof line) o += snprintf(line + o, sizeof line - o, "]");
    }
    if (o > 0 && (size_t)o < sizeof line)
        o += snprintf(line + o, sizeof line - o, ",\"img_per_s\":%.1f,\"seconds\":%.2f}\n",
                      m->img_per_s, m->seconds);
    if (o <= 0 || (size_t)o >= sizeof line)
        return bl_fail(BL_ERR_STATE, "the metrics line of epoch %d does not fit", m->epoch);
    return bl_append_line(v->mpath, line);
}

static void on_stopped(void *u, long step, int epoch, long done, long steps, const char *ckpt)
{
    clear_bar(u);
    printf("stopped at step %ld (epoch %d, %ld of %ld steps)%s%s\n", step, epoch, done, steps,
           ckpt[0] ? "; resume with --resume " : "", ckpt);
}

static void on_diverged(void *u, long step, int epoch, const char *layer)
{
    (void)step, (void)epoch, (void)layer;
    clear_bar(u);
}

static void print_summary(const bl_train_cfg *c, const bl_train_summary *s, const char *mpath)
{
    printf("\nsummary\n");
    printf("  %-24s %s w=%d\n", "model", c->model.name, c->model.width);
    printf("  %-24s %d / %ld\n", "epochs / steps", s->epochs, s->steps);
    if (s->head_bn_images)
        printf("  %-24s %d / %d image%s%s\n", "batch / head BN images", c->batch, s->head_bn_images,
               s->head_bn_images > 1 ? "s" : "", c->plan.bn_shuffle ? "' crops, shuffled" : "' crops");
    else
        printf("  %-24s %d / %d\n", "batch / norm batch", c->batch, s->norm_batch);
    const char *err = s->validation ? "validation error" : "test error";
    if (s->test_err >= 0)
        printf("  %-24s %.2f%% (population statistics, %s)\n", err, s->test_err, s->estimator);
    if (s->test_err_precise >= 0)
        printf("  %-24s %.2f%% (PreciseBN statistics, %ld images%s)\n",
               s->test_err >= 0 ? "" : err, s->test_err_precise, s->precise_samples,
               s->final_precise ? "; the checkpoint keeps these" : "");
    if (s->test_err_minibatch >= 0)
        printf("  %-24s %.2f%% (mini-batch statistics, groups of %d)\n", "",
               s->test_err_minibatch, s->norm_batch);
    if (s->best_epoch > 0)
        printf("  %-24s %.2f%% at epoch %d (%s)\n", "best during the run", s->best_err,
               s->best_epoch, s->validation ? "validation" : "test");
    printf("  %-24s %.0f s\n", "wall time", s->seconds);
    if (s->checkpoint[0]) printf("  %-24s %s, %s\n", "written", mpath, s->checkpoint);
}

/* A fresh run starts metrics.jsonl anew; a resumed one keeps the lines of the epochs its
 * checkpoint holds and drops any later ones (written after that checkpoint, by a run that went
 * on), so every epoch has one line. */
static bl_status start_metrics(const char *path, int resumed_epoch)
{
    bl_afile o;
    bl_status st;
    if (resumed_epoch < 0) /* an empty file, through the same atomic path as every other */
        return (st = bl_afile_open(&o, path)) ? st : bl_afile_commit(&o);
    FILE *f = fopen(path, "r");
    if (!f) return BL_OK; /* nothing yet */
    if ((st = bl_afile_open(&o, path))) {
        fclose(f);
        return st;
    }
    char line[4096];
    int dropped = 0, last = 0;
    while (!st && fgets(line, sizeof line, f)) {
        int ep, has = sscanf(line, "{\"epoch\":%d", &ep) == 1;
        if (has && ep > resumed_epoch) {
            dropped++;
            continue;
        }
        st = bl_afile_write(&o, line, strlen(line));
        if (has) last = ep;
    }
    fclose(f);
    /* the line comes after its checkpoint: a run killed between the two has none */
    if (!st && last < resumed_epoch)
        printf("note: %s has no line for epoch %d (the run ended between that epoch's checkpoint "
               "and its line)\n", path, resumed_epoch);
    if (st || !dropped) return bl_afile_abort(&o), st;
    if ((st = bl_afile_commit(&o))) return st;
    printf("note: %d line%s of %s after epoch %d dropped (the checkpoint is from epoch %d)\n",
           dropped, dropped > 1 ? "s" : "", path, resumed_epoch, resumed_epoch);
    return BL_OK;
}
#endif

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* The --model of a command line (before the options are parsed: its family's options join the
 * table), or NULL. */
static const char *model_arg(int argc, char **argv)
{
    const char *m = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--model")) m = argv[i + 1];
    return m;
}

static int train_main(cli_dist *d, int argc, char **argv)
{
    bl_train_cfg c;
    bl_train_defaults(&c);
    int sched = (int)c.schedule, scaling = 0, final_precise = 0; /* auto|on|off */
    char model[32];
    snprintf(model, sizeof model, "%s", model_arg(argc, argv) ? model_arg(argc, argv) : "resnet20");
    if (bl_model_init(&c.model, model)) {
        fprintf(stderr, "bnlab train: --model: %s\n", bl_error());
        return 2;
    }
    cli_famopts fam;
    cli_famopts_model(&fam, &c.model);
    const cli_opt base[] = {
        {"--model", OPT_STR, model, sizeof model, 0, 0, NULL,
         "resnet8|14|20|32|56 (6n+2); resnetN-ml: with the multi-level head (docs/multi-level.md); "
         "resnetN-crops: with the crop head (docs/crop-head.md)"},
        {"--width", OPT_INT, &c.model.width, 0, 1, 1024, NULL, "channels of the first stage"},
        {"--head-bn-images", OPT_INT, &c.plan.head_bn_images, 0, 0, 65536, NULL,
         "resnetN-crops, bn: the head normalizes the crops of groups of N images (0: of the whole "
         "batch, or of each process's share under mpirun); one process emulates W processes with "
         "N = batch/W"},
        {"--bn-shuffle", OPT_ONOFF, &c.plan.bn_shuffle, 0, 0, 0, NULL,
         "resnetN-crops, bn: the head's crops permuted across the processes (or the groups of "
         "--head-bn-images) before its first BN, and back after the head"},
        {"--epochs", OPT_INT, &c.epochs, 0, 1, 100000, NULL, "epochs"},
        {"--batch", OPT_INT, &c.batch, 0, 2, 65536, NULL, "SGD batch"},
        {"--norm-batch", OPT_INT, &c.plan.norm_batch, 0, 0, 65536, NULL,
         "normalization batch: ghost groups of G inside the SGD batch (0 = the SGD batch; under "
         "mpirun -np W: each process's share, ceil(batch/W))"},
        {"--sync-bn", OPT_ONOFF, &c.plan.sync_bn, 0, 0, 0, NULL,
         "under mpirun: SyncBN, every BN layer normalizes over the global batch (off: each "
         "process over its share)"},
        {"--lr", OPT_DOUBLE, &c.lr, 0, 0, 100, NULL, "base learning rate"},
        {"--lr-scaling", OPT_CHOICE, &scaling, 0, 0, 0, "none|linear", "linear: lr x batch/128"},
        {"--momentum", OPT_DOUBLE, &c.sgd.momentum, 0, 0, 1, NULL, "SGD momentum"},
        {"--nesterov", OPT_ONOFF, &c.sgd.nesterov, 0, 0, 0, NULL, "Nesterov momentum"},
        {"--wd", OPT_DOUBLE, &c.sgd.wd, 0, 0, 1, NULL, "weight decay (coupled, as PyTorch's SGD)"},
        {"--wd-bn", OPT_ONOFF, &c.sgd.wd_bn, 0, 0, 0, NULL, "weight decay also on BN and biases"},
        {"--schedule", OPT_CHOICE, &sched, 0, 0, 0, "cosine|step|const",
         "per-step schedule (step: x0.1 at 50% and 75%)"},
        {"--warmup-epochs", OPT_DOUBLE, &c.warmup_epochs, 0, 0, 1000, NULL, "linear warmup"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of weights, order, augmentation"},
        {"--threads", OPT_INT, &c.threads, 0, 1, 256, NULL, "threads (OpenMP and BLAS), per process"},
        {"--eval-every", OPT_INT, &c.eval_every, 0, 0, 100000, NULL,
         "evaluate every k epochs (0: only at the end)"},
        {"--eval-minibatch", OPT_ONOFF, &c.eval_minibatch, 0, 0, 0, NULL,
         "also evaluate with mini-batch statistics at the normalization batch: test error, and "
         "train error on 10^4 training images"},
        {"--val", OPT_INT, &c.val, 0, 0, 59999, NULL,
         "carve a validation split of N training images (it replaces the test set)"},
        {"--max-steps", OPT_LONG, &c.max_steps, 0, 0, 9e15, NULL,
         "stop after N steps in all (0: none), with a checkpoint to --resume from"},
        {"--precise-bn-every", OPT_INT, &c.precise.every, 0, 0, 100000, NULL,
         "also evaluate with fresh PreciseBN statistics every K epochs (0: never)"},
        {"--final-precise-bn", OPT_CHOICE, &final_precise, 0, 0, 0, "auto|on|off",
         "at the end, replace the EMA statistics by PreciseBN ones (checkpoint included); "
         "auto: on, off with --frozen-bn-epochs"},
        {"--frozen-bn-epochs", OPT_INT, &c.frozen_bn_epochs, 0, 0, 100000, NULL,
         "FrozenBN: the last K epochs normalize with fixed PreciseBN population statistics "
         "(gamma, beta keep training); with --resume, branch from a regular run"},
        {"--frozen-bn-reestimate", OPT_ONOFF, &c.frozen_bn_reestimate, 0, 0, 0, NULL,
         "FrozenBN: re-estimate the statistics at every epoch of the phase"},
        {"--precise-samples", OPT_LONG, &c.precise.samples, 0, 0, 60000, NULL,
         "PreciseBN: training images (0: 10^4, or all if fewer)"},
        {"--precise-batch", OPT_INT, &c.precise.batch, 0, 1, 65536, NULL,
         "PreciseBN: images per batch"},
        {"--keep-every", OPT_INT, &c.keep_every, 0, 0, 100000, NULL,
         "also keep DIR/epoch<N>.safetensors every K epochs (0: none)"},
        {"--checkpoint-every", OPT_INT, &c.checkpoint_every, 0, 1, 100000, NULL,
         "write last.safetensors every K epochs (also at the end and on a stop)"},
        {"--out", OPT_STR, c.out, sizeof c.out, 0, 0, NULL,
         "directory for metrics.jsonl and last.safetensors"},
        {"--resume", OPT_STR, c.resume, sizeof c.resume, 0, 0, NULL,
         "continue from a checkpoint (at its step); --out's metrics.jsonl keeps the lines up to "
         "the checkpoint's epoch"},
        {"--data-dir", OPT_STR, c.data_dir, sizeof c.data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
        {"--images", OPT_STR, c.images, sizeof c.images, 0, 0, NULL,
         "instead: an image folder with train/ and test/ class folders (bnlab corrupt --format "
         "png writes them), images at their own size"},
    };
    cli_opt opts[96];
    const int n_base = sizeof base / sizeof *base;
    const int n = cli_table(opts, 96, base, n_base, &fam);
    const char *pos[1];
    int np;
    int rc = cli_parse("train", "[options]", argc, argv, opts, n, pos, 0, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if ((rc = cli_famopts_refuse("train", &fam, &c.model))) return rc;
    c.schedule = (bl_schedule)sched;
    /* the one resolve step the library shares: a resumed run takes its checkpoint's head and
     * plan where the command line leaves them at their defaults */
    if (bl_train_resolve(&c)) {
        cli_error("train", opts, n);
        return 2;
    }
    c.lr_scaling = scaling;
    c.precise.final = final_precise == 0 ? -1 : final_precise == 1;
    cli_print_config(stdout, "train", opts, n_base + fam.n_own); /* the model's options only */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    c.stop = &stop_flag;
    train_view view = {&c, isatty(1) && d->rank == 0, -1, "", d, NULL};
    bl_train_hooks hooks;
    cli_dist_hooks(d, &hooks);
    const bl_train_callbacks cb = {&view,       on_resumed, NULL, on_progress, on_frozen,
                                   NULL,        on_epoch_end, on_stopped,   on_diverged};
    bl_trainer *t;
    bl_train_summary sum;
    bl_train_event ev = BL_TRAIN_STEPPED;
    bl_status st = bl_trainer_init(&t, &c, &cb, &hooks);
    if (st) return cli_dist_failed(d, "train", opts, n, 1);
    view.t = t;
    if (d->world > 1)
        printf("%d processes (mpirun), global batch %d: shares of %d, %s\n", d->world, c.batch,
               (c.batch + d->world - 1) / d->world,
               c.plan.sync_bn ? "SyncBN over the global batch" : "BN per process");
    if (c.out[0] && d->rank == 0) {
        snprintf(view.mpath, sizeof view.mpath, "%s/metrics.jsonl", c.out);
        st = start_metrics(view.mpath, view.resumed_epoch);
    }
    header();
    while (!st && !(st = bl_trainer_step(t, &ev)) && ev != BL_TRAIN_DONE && ev != BL_TRAIN_STOPPED)
        if (ev == BL_TRAIN_EPOCH_END) {
            clear_bar(&view); /* evaluation and checkpoints take a while: no stale bar */
            st = bl_trainer_epoch_end(t);
        }
    if (!st && ev == BL_TRAIN_DONE && !(st = bl_trainer_summary(t, &sum)))
        print_summary(&c, &sum, view.mpath);
    bl_trainer_free(t);
    /* training is over: a SIGTERM from mpirun (ending the job after some process failed) must
     * end this process now, not set a flag nobody reads */
    signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL);
    if (st) {
        fflush(stdout);
        clear_bar(&view);
        return cli_dist_failed(d, "train", opts, n, 1);
    }
    return 0;
}
#endif

int cmd_train(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    cli_dist d;
    if (cli_dist_init(&d, "train")) return 1;
    int rc = train_main(&d, argc, argv);
    cli_dist_free(&d);
    return rc;
#else
    fprintf(stderr, "bnlab train: built without zlib or cJSON: install zlib1g-dev and libcjson-dev "
                    "(scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
