/* The trainer: the training loop in pieces (init, step, epoch end, summary), reporting through
 * callbacks and leaving the places processes plug into as hooks. Per step: the rank's share of the
 * global batch -> forward with the step's context -> loss -> backward -> [hook: gradients] -> SGD
 * -> [hook: BN moments] -> EMA commit. Per epoch: evaluation, PreciseBN, checkpoints, callback.
 * Nothing here prints. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/train.h"
#include "bnlab/images.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "train/json.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

void bl_train_defaults(bl_train_cfg *c)
{
    memset(c, 0, sizeof *c);
    bl_model_init(&c->model, "resnet20");
    c->model.width = 16;
    c->epochs = 30;
    c->batch = 128;
    c->lr = 0.1;
    c->sgd = (bl_sgd){.momentum = 0.9, .wd = 5e-4, .nesterov = 1, .wd_bn = 0};
    c->schedule = BL_SCHED_COSINE;
    c->seed = 1;
    c->threads = 2;
    c->eval_every = 1;
    c->checkpoint_every = 1;
    c->precise.final = -1;
    c->precise.samples = 0; /* 10^4, or the whole split if smaller */
    c->precise.batch = 200;
    c->recipe = bl_recipe_fmnist();
    snprintf(c->data_dir, sizeof c->data_dir, "%s", BL_FMNIST_DIR);
}

double bl_lr_at(const bl_train_cfg *c, long t, long T, long W)
{
    double base = c->lr * (c->lr_scaling ? c->batch / 128.0 : 1.0);
    if (t < W) return base * (double)(t + 1) / (double)W;
    double f = T > W ? (double)(t - W) / (double)(T - W) : 1.0;
    switch (c->schedule) {
    case BL_SCHED_COSINE: return base * 0.5 * (1.0 + cos(3.14159265358979323846 * f));
    case BL_SCHED_STEP: return base * (f >= 0.75 ? 0.01 : f >= 0.5 ? 0.1 : 1.0);
    case BL_SCHED_CONST: return base;
    }
    return base;
}

static const char *sched_name(bl_schedule s)
{
    return s == BL_SCHED_STEP ? "step" : s == BL_SCHED_CONST ? "const" : "cosine";
}

/* The run's resolved configuration as JSON (the checkpoint's "config"); world: the processes the
 * run is spread over (recorded: per-process BN depends on it). */
static bl_status config_json(const bl_train_cfg *c, int world, char **out)
{
    bl_json_init();
    cJSON *o = cJSON_CreateObject();
    const struct {
        const char *key;
        double v;
    } num[] = {{"width", c->model.width}, {"epochs", c->epochs}, {"batch", c->batch},
               {"norm_batch", c->plan.norm_batch}, {"lr", c->lr}, {"momentum", c->sgd.momentum},
               {"nesterov", c->sgd.nesterov}, {"wd", c->sgd.wd}, {"wd_bn", c->sgd.wd_bn},
               {"warmup_epochs", c->warmup_epochs}, {"seed", (double)c->seed},
               {"threads", c->threads}, {"eval_every", c->eval_every},
               {"eval_minibatch", c->eval_minibatch}, {"val", c->val},
               {"max_steps", (double)c->max_steps}, {"precise_bn_every", c->precise.every},
               {"final_precise_bn", c->precise.final},
               {"precise_samples", (double)c->precise.samples},
               {"precise_batch", c->precise.batch}, {"keep_every", c->keep_every},
               {"frozen_bn_epochs", c->frozen_bn_epochs},
               {"frozen_bn_reestimate", c->frozen_bn_reestimate}, {"sync_bn", c->plan.sync_bn},
               {"processes", world}, {"head_bn_images", c->plan.head_bn_images},
               {"bn_shuffle", c->plan.bn_shuffle}};
    int ok = o && cJSON_AddStringToObject(o, "model", c->model.name) &&
             cJSON_AddStringToObject(o, "schedule", sched_name(c->schedule)) &&
             cJSON_AddStringToObject(o, "lr_scaling", c->lr_scaling ? "linear" : "none") &&
             cJSON_AddStringToObject(o, "data_dir", c->data_dir) &&
             (!c->images[0] || cJSON_AddStringToObject(o, "images", c->images));
    for (size_t k = 0; ok && k < sizeof num / sizeof *num; k++)
        ok = cJSON_AddNumberToObject(o, num[k].key, num[k].v) != NULL;
    char *head = NULL;
    bl_status st = ok ? bl_model_opts_json(&c->model, &head) : BL_ERR_NOMEM;
    int oom = 0;
    cJSON *hj = head ? bl_json_parse(head, &oom) : NULL;
    if (head && !hj) ok = 0; /* out of memory: a configuration without its head is not one */
    free(head);
    if (!st && hj && !cJSON_AddItemToObject(o, "head", hj)) cJSON_Delete(hj), ok = 0;
    char *text = ok && !st ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return bl_fail(BL_ERR_NOMEM, "out of memory writing the run's configuration");
    bl_ckpt_info_set(out, text);
    return st;
}

struct bl_trainer {
    bl_train_cfg c;
    bl_train_callbacks cb;
    bl_train_hooks h;
    bl_dataset train, test, train_sub; /* train_sub: the images of the train-split curve */
    bl_net net;
    int have_net;
    bl_ckpt_info info;
    bl_train_check chk;      /* the family's view of the run (evaluation's groups, ...) */
    int *perm, *counts;      /* a shuffle's global permutation, rows per process */
    bl_shuffle shuffle;
    bl_augment aug;
    bl_precise_cfg pcfg;
    int *order;
    float *x;
    uint8_t *y;
    char cpath[1100];
    int final_precise;       /* resolved from auto */
    int use_precise;         /* PreciseBN or FrozenBN during the run */
    int shuffle_rows;        /* rows per sample a shuffle permutes (0: no shuffle) */
    long psamples, spe, T, W;
    int share_off, share_n;  /* this rank's share of each global batch */
    bl_shard shard;          /* evaluation spread over the processes */
    /* the epoch in progress */
    int ep, in_epoch, frozen;
    long s;                  /* next step of the epoch */
    double t0, loss_sum, lr;
    long wrong, seen, fresh;
    int done, stopped;
    /* for the summary */
    double t_run, best;
    int best_epoch, final_epoch;
    bl_eval_result final, final_mb, final_pre;
    const char *final_src;
};

static bl_status split_val(const bl_train_cfg *c, bl_dataset *fullp, bl_trainer *t);

static bl_status load_data(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_dataset full;
    bl_status st;
    if (c->images[0]) {
        /* decoded batch by batch as training asks; every image at its own size (one size) */
        const bl_img_recipe ir = {0, 0, c->recipe.channels == 1};
        char dir[1100];
        int classes;
        snprintf(dir, sizeof dir, "%s/train", c->images);
        st = bl_dataset_from_folder(dir, &ir, &full, &classes, NULL, 0);
        snprintf(dir, sizeof dir, "%s/test", c->images);
        if (!st && (st = bl_dataset_from_folder(dir, &ir, &t->test, &classes, NULL, 0)))
            bl_dataset_free(&full);
        if (!st && (!full.labels || !t->test.labels)) {
            bl_dataset_free(&full), bl_dataset_free(&t->test);
            st = bl_fail(BL_ERR_ARG, "cfg.images %s: train/ and test/ need class folders (the "
                         "labels)", c->images);
        }
        if (st) return st;
        if (c->val <= 0) {
            t->train = full;
            return BL_OK;
        }
        return split_val(c, &full, t);
    }
    st = bl_fmnist_load(c->data_dir, "train", &full);
    if (!st) {
        st = bl_fmnist_load(c->data_dir, "test", &t->test);
        if (st) bl_dataset_free(&full);
    }
    if (st) {
        bl_error_append(" (Fashion-MNIST comes from Debian's dataset-fashion-mnist package; or "
                        "point cfg.data_dir at the IDX files)");
        return st;
    }
    if (c->val <= 0) {
        t->train = full;
        return BL_OK;
    }
    return split_val(c, &full, t);
}

/* validation = the first `val` samples of a fixed permutation of the training split; it
 * replaces the test set (full is freed) */
static bl_status split_val(const bl_train_cfg *c, bl_dataset *fullp, bl_trainer *t)
{
    bl_dataset full = *fullp;
    bl_status st;
    if (c->val >= full.n) {
        const int n = full.n;
        bl_dataset_free(&full);
        return bl_fail(BL_ERR_ARG, "cfg.val %d leaves no training samples (the split has %d)",
                       c->val, n);
    }
    /* validation = the first `val` samples of a fixed permutation; it replaces the test set */
    int *order = bl_malloc(sizeof(int) * full.n);
    if (!order) {
        bl_dataset_free(&full);
        return bl_fail(BL_ERR_NOMEM, "out of memory for the validation split");
    }
    bl_epoch_order(full.n, BL_SEED_VAL, 0, order);
    bl_dataset_free(&t->test);
    st = bl_dataset_subset(&full, order, c->val, &t->test);
    if (!st) st = bl_dataset_subset(&full, order + c->val, full.n - c->val, &t->train);
    free(order);
    bl_dataset_free(&full);
    return st;
}

/* One plan field against the resumed checkpoint's: adopted at its default (0), else equal. */
static bl_status adopt_int(int *have, int ck, const char *name, const char *path)
{
    if (!*have) *have = ck;
    else if (*have != ck)
        return bl_fail(BL_ERR_ARG, "cfg.%s %d: %s was trained with %d; resume with the same (or "
                       "leave it out)", name, *have, path, ck);
    return BL_OK;
}

bl_status bl_train_resolve(bl_train_cfg *c)
{
    bl_status st;
    if (!c->model.family && (st = bl_model_init(&c->model, c->model.name)))
        return bl_fail_ctx(st, "cfg.model");
    if (c->resume[0]) {
        /* the checkpoint's head and plan, wherever the run leaves them at their defaults */
        bl_ckpt_info ck;
        if ((st = bl_checkpoint_read_info(c->resume, &ck))) return st;
        bl_ckpt_info_free(&ck); /* its model and plan are enough */
        if (ck.model.family == c->model.family) {
            /* compared as the run resolves them (a head width of 0 is the head's default) */
            const bl_family *f = c->model.family;
            bl_model want = c->model;
            bl_model_resolve(&want), bl_model_resolve(&ck.model);
            for (int k = 0; k < f->n_opts; k++) {
                const bl_family_opt *o = &f->opts[k];
                const double has = bl_model_get(&ck.model, o);
                if (!o->key) continue;
                if (bl_model_is_default(&c->model, o)) {
                    bl_model_set(&c->model, o, has);
                } else if (bl_model_get(&want, o) != has) {
                    char a[64], b[64];
                    bl_model_format(&want, o, a, sizeof a);
                    bl_model_format(&ck.model, o, b, sizeof b);
                    return bl_fail(BL_ERR_ARG, "cfg.%s %s: %s was trained with %s; resume with "
                                   "the same head (or leave it out)", o->name, a, c->resume, b);
                }
            }
        }
        bl_plan *p = &c->plan;
        if ((st = adopt_int(&p->norm_batch, ck.plan.norm_batch, "norm_batch", c->resume)) ||
            (st = adopt_int(&p->head_bn_images, ck.plan.head_bn_images, "head_bn_images",
                            c->resume)) ||
            (st = adopt_int(&p->sync_bn, ck.plan.sync_bn, "sync_bn", c->resume)) ||
            (st = adopt_int(&p->bn_shuffle, ck.plan.bn_shuffle, "bn_shuffle", c->resume)))
            return st;
    }
    return bl_model_resolve(&c->model);
}

/* The generic checks of a configuration (the family checks its own). */
static bl_status check_cfg(const bl_train_cfg *c)
{
    if (c->batch < 2) return bl_fail(BL_ERR_ARG, "cfg.batch %d: must be >= 2", c->batch);
    if (c->epochs < 1) return bl_fail(BL_ERR_ARG, "cfg.epochs %d: must be >= 1", c->epochs);
    int g = c->plan.norm_batch ? c->plan.norm_batch : c->batch;
    if (g < 1 || g > c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d must be in [1, cfg.batch %d]", g, c->batch);
    if (c->plan.head_bn_images < 0)
        return bl_fail(BL_ERR_ARG, "cfg.head_bn_images %d: must be >= 0", c->plan.head_bn_images);
    if (c->frozen_bn_epochs < 0 || c->frozen_bn_epochs > c->epochs)
        return bl_fail(BL_ERR_ARG, "cfg.frozen_bn_epochs %d: use 0..%d (cfg.epochs)",
                       c->frozen_bn_epochs, c->epochs);
    if (c->checkpoint_every < 1)
        return bl_fail(BL_ERR_ARG, "cfg.checkpoint_every %d: must be >= 1", c->checkpoint_every);
    bl_status st = bl_recipe_check(&c->recipe);
    if (st) return bl_fail_ctx(st, "cfg");
    if (c->recipe.channels != 1)
        return bl_fail(BL_ERR_ARG, "cfg.recipe.channels %d: the Fashion-MNIST loader gives one "
                       "channel", c->recipe.channels);
    return BL_OK;
}

/* Through the hooks: the rows of this process move by the step's permutation. */
static bl_status route_rows(void *ctx, const int *perm, int dir, int d, const float *in,
                            float *out)
{
    bl_trainer *t = ctx;
    return t->h.route(t->h.ctx, t->counts, perm, dir, d, in, out);
}

/* Step 1: the configuration against the processes and the model's family. */
static bl_status setup_check(bl_trainer *t)
{
    bl_train_cfg *c = &t->c;
    bl_status st;
    if ((st = bl_train_resolve(c))) return st;
    if ((st = check_cfg(c))) return st;
    if (t->h.world < 1) t->h.world = 1;
    const int W = t->h.world, share = (c->batch + W - 1) / W;
    if (t->h.rank < 0 || t->h.rank >= W)
        return bl_fail(BL_ERR_ARG, "hooks: rank %d of %d", t->h.rank, W);
    if (W > 1 && !t->h.reducer)
        return bl_fail(BL_ERR_ARG, "hooks: %d processes need a reducer", W);
    const int uses_precise = c->precise.every > 0 || c->precise.final == 1 ||
                             c->frozen_bn_epochs > 0;
    t->chk = (bl_train_check){.batch = c->batch, .world = W, .share = share,
                              .eval_minibatch = c->eval_minibatch, .uses_precise = uses_precise,
                              .eval_norm_batch = c->plan.norm_batch ? c->plan.norm_batch : c->batch,
                              .final_precise = 1};
    const bl_family *f = c->model.family;
    if (f->check_train && (st = f->check_train(&c->model, &c->plan, &t->chk))) return st;
    if (c->plan.sync_bn && c->plan.norm_batch && c->plan.norm_batch < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn with cfg.norm_batch %d: SyncBN normalizes over the "
                       "whole global batch of %d; drop one of the two", c->plan.norm_batch,
                       c->batch);
    /* a head's groups and shuffle mean something to families whose plan uses them */
    const unsigned asked = (c->plan.head_bn_images ? BL_PLAN_HEAD_BN_IMAGES : 0u) |
                           (c->plan.bn_shuffle ? BL_PLAN_BN_SHUFFLE : 0u);
    if (asked & ~f->plan_uses) {
        char list[256];
        bl_family_list(list, sizeof list, NULL, asked & ~f->plan_uses);
        return bl_fail(BL_ERR_ARG, "cfg.%s applies to models whose head normalizes its own groups "
                       "(%s), not %s", asked & ~f->plan_uses & BL_PLAN_BN_SHUFFLE ? "bn_shuffle"
                                                                                 : "head_bn_images",
                       list[0] ? list : "none registered", c->model.name);
    }
    /* per-process BN normalizes each share: ghost groups of ceil(B/W) at most, which is also the
     * normalization batch of mini-batch evaluation */
    if (W > 1 && !c->plan.sync_bn && t->chk.eval_norm_batch > share) t->chk.eval_norm_batch = share;
    if (W > 1) {
        int off, last;
        bl_batch_share(c->batch, W - 1, W, &off, &last);
        if (last < 1)
            return bl_fail(BL_ERR_ARG, "cfg.batch %d over %d processes leaves the last one no "
                           "sample (shares of ceil(%d/%d) = %d): use a batch of at least %d, or "
                           "fewer processes", c->batch, W, c->batch, W, share, share * (W - 1) + 1);
    }
    return BL_OK;
}

/* Step 2: the data, and PreciseBN's use of it. */
static bl_status setup_data(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_status st;
    if (c->out[0] && !t->h.not_writer && mkdir(c->out, 0755) && errno != EEXIST)
        return bl_fail(BL_ERR_IO, "cannot create cfg.out %s: %s", c->out, strerror(errno));
    bl_threads_set(c->threads);
    if ((st = load_data(t))) return st;
    if (t->train.n < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.batch %d exceeds the %d training samples", c->batch,
                       t->train.n);
    /* auto: on, but with FrozenBN, and where the family's EMA statistics are its population
     * statistics (a crop head's; docs/crop-head.md) */
    t->final_precise = c->precise.final < 0 ? c->frozen_bn_epochs == 0 && t->chk.final_precise
                                               : c->precise.final;
    t->use_precise = c->precise.every > 0 || t->final_precise || c->frozen_bn_epochs > 0;
    t->psamples = c->precise.samples ? c->precise.samples
                                     : (t->train.n < 10000 ? t->train.n : 10000);
    if (t->use_precise && (t->psamples < 1 || t->psamples > t->train.n || c->precise.batch < 1))
        return bl_fail(BL_ERR_ARG, "PreciseBN with %ld samples in batches of %d: use "
                       "cfg.precise_samples in 1..%d and cfg.precise_batch >= 1", t->psamples,
                       c->precise.batch, t->train.n);
    return BL_OK;
}

/* Step 3: the model, from its seed or from the checkpoint it resumes. */
static bl_status setup_model(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_status st;
    bl_batch_share(c->batch, t->h.rank, t->h.world, &t->share_off, &t->share_n);
    /* room for PreciseBN's batches too (the activations are sized by the largest batch) */
    const int max_batch = t->use_precise && c->precise.batch > c->batch ? c->precise.batch : c->batch;
    if ((st = bl_model_build(&t->net, &c->model, c->recipe.classes, t->train.h, t->train.w,
                             c->recipe.channels, max_batch)))
        return st;
    t->have_net = 1;
    bl_net_init_params(&t->net, c->seed);
    t->info.seed = c->seed;
    t->info.recipe = c->recipe;
    if (c->resume[0]) {
        if ((st = bl_checkpoint_load(&t->net, c->resume, 1, &t->info))) return st;
        /* training goes on with EMA statistics, unless it resumes inside a FrozenBN phase */
        if (!(c->frozen_bn_epochs > 0 && t->info.epoch >= c->epochs - c->frozen_bn_epochs))
            bl_ckpt_info_set(&t->info.precise, NULL);
        /* the data order, augmentation and recipe follow the checkpoint */
        t->c.recipe = t->info.recipe;
        if ((st = check_cfg(&t->c))) return bl_fail_ctx(st, "%s", c->resume);
        if (t->cb.resumed)
            t->cb.resumed(t->cb.user, c->resume, t->info.epoch, t->info.step, t->info.seed);
    }
    t->info.plan = c->plan;
    return config_json(c, t->h.world, &t->info.config);
}

/* Step 4: the plan's runtime pieces (a shuffle's permutation and routes), the batches, and
 * PreciseBN's configuration. */
static bl_status setup_plan(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_status st;
    const uint64_t seed = t->info.seed; /* the run's seed: a resume continues the same streams */
    t->spe = t->train.n / c->batch;
    t->T = t->spe * c->epochs;
    t->W = (long)(c->warmup_epochs * t->spe);
    /* a checkpoint may come from inside an epoch (a stop): resume at that step exactly */
    long s0 = t->info.step - (long)t->info.epoch * t->spe;
    if (s0 < 0 || s0 >= t->spe || t->info.ep_seen != s0 * c->batch)
        return bl_fail(BL_ERR_FORMAT, "%s: step %ld does not fit epoch %d of %ld steps with batch "
                       "%d (was it written with another cfg.batch or data split?)", c->resume,
                       t->info.step, t->info.epoch, t->spe, c->batch);
    t->order = bl_malloc(sizeof(int) * t->train.n);
    t->x = bl_alloc((size_t)c->batch * t->train.h * t->train.w * sizeof(float));
    t->y = bl_malloc((size_t)c->batch);
    if (!t->order || !t->x || !t->y) return bl_fail(BL_ERR_NOMEM, "out of memory for the batches");
    if (c->eval_minibatch) {
        /* the train-split curve of the three (train and test error with mini-batch statistics,
         * test error with PreciseBN): 10^4 fixed training images, no augmentation */
        bl_epoch_order(t->train.n, seed, BL_STREAM_TRAIN_CURVE, t->order);
        if ((st = bl_dataset_subset(&t->train, t->order, t->train.n < 10000 ? t->train.n : 10000,
                                    &t->train_sub)))
            return st;
    }
    if (c->plan.bn_shuffle) {
        /* one permutation of the global batch's rows per step, moved through the hooks */
        const int rows = t->shuffle_rows = bl_net_shuffle_rows(&t->net), W = t->h.world;
        if (!rows)
            return bl_fail(BL_ERR_ARG, "cfg.bn_shuffle: a %s has no rows to shuffle (a crop head "
                           "has: resnetN-crops)", c->model.name);
        if (W > 1 && !t->h.route)
            return bl_fail(BL_ERR_ARG, "hooks: the shuffle across %d processes needs a route", W);
        t->perm = bl_malloc(sizeof(int) * (size_t)c->batch * rows);
        t->counts = bl_malloc(sizeof(int) * (size_t)W);
        if (!t->perm || !t->counts) return bl_fail(BL_ERR_NOMEM, "out of memory for the shuffle");
        for (int r = 0; r < W; r++) {
            int off, n;
            bl_batch_share(c->batch, r, W, &off, &n);
            t->counts[r] = n * rows;
        }
        t->shuffle = (bl_shuffle){t->perm, t, W > 1 ? route_rows : NULL};
    }
    t->shard = (bl_shard){t->h.rank, t->h.world, t->h.reducer};
    t->aug = (bl_augment){seed, 0};
    bl_precise_defaults(&t->pcfg);
    t->pcfg.samples = t->psamples, t->pcfg.batch = c->precise.batch, t->pcfg.seed = seed;
    t->pcfg.recipe = t->c.recipe;
    t->pcfg.reducer = t->h.reducer;
    t->pcfg.rank = t->h.rank, t->pcfg.world = t->h.world;
    /* PreciseBN normalizes the groups training normalized; a shuffled head's groups mix the whole
     * batch's crops: then the whole PreciseBN batch */
    t->pcfg.plan = (bl_plan){.sync_bn = c->plan.sync_bn,
                             .head_bn_images = c->plan.bn_shuffle ? 0 : c->plan.head_bn_images};
    if (c->out[0]) snprintf(t->cpath, sizeof t->cpath, "%s/last.safetensors", c->out);
    t->ep = t->info.epoch;
    t->done = t->ep >= c->epochs;
    t->t_run = now();
    t->final = t->final_mb = t->final_pre = (bl_eval_result){.err = -1};
    t->final_src = "ema";
    t->final_epoch = -1;
    t->best = 101;
    return BL_OK;
}

static bl_status setup(bl_trainer *t)
{
    bl_status st;
    if ((st = setup_check(t)) || (st = setup_data(t)) || (st = setup_model(t)) ||
        (st = setup_plan(t)))
        return st;
    return BL_OK;
}

bl_status bl_trainer_init(bl_trainer **out, const bl_train_cfg *c, const bl_train_callbacks *cb,
                          const bl_train_hooks *h)
{
    *out = NULL;
    bl_trainer *t = bl_callocn(1, sizeof *t);
    if (!t) return bl_fail(BL_ERR_NOMEM, "out of memory for the trainer");
    t->c = *c;
    if (cb) t->cb = *cb;
    if (h) t->h = *h;
    bl_status st = setup(t);
    /* a process that failed (an unwritable cfg.out on the writer) takes the others down with its
     * reason, instead of leaving them waiting in the first collective */
    if (t->h.agree_error) st = t->h.agree_error(t->h.ctx, st);
    if (st) {
        bl_trainer_free(t);
        return st;
    }
    *out = t;
    return BL_OK;
}

void bl_trainer_free(bl_trainer *t)
{
    if (!t) return;
    free(t->perm), free(t->counts);
    free(t->order), bl_free(t->x), free(t->y);
    if (t->have_net) bl_net_free(&t->net);
    bl_ckpt_info_free(&t->info);
    bl_dataset_free(&t->train_sub);
    bl_dataset_free(&t->train);
    bl_dataset_free(&t->test);
    free(t);
}

bl_net *bl_trainer_net(bl_trainer *t) { return &t->net; }

static int writes(const bl_trainer *t) { return t->c.out[0] && !t->h.not_writer; }

static bl_status save(bl_trainer *t, const char *path)
{
    bl_status st = bl_checkpoint_save(&t->net, path, &t->info);
    if (!st && t->cb.checkpoint) t->cb.checkpoint(t->cb.user, path);
    return st;
}

/* FrozenBN: population statistics from PreciseBN when the phase starts (or every epoch with
 * re-estimation); a run resumed inside the phase keeps its checkpoint's. */
static bl_status begin_epoch(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    t->t0 = now();
    t->loss_sum = t->info.ep_loss, t->wrong = t->info.ep_wrong, t->seen = t->info.ep_seen;
    t->fresh = 0, t->lr = 0;
    t->s = t->seen / c->batch;
    bl_epoch_order(t->train.n, t->info.seed, t->ep, t->order);
    t->aug.epoch = t->ep;
    t->frozen = c->frozen_bn_epochs > 0 && t->ep >= c->epochs - c->frozen_bn_epochs;
    t->in_epoch = 1;
    if (t->cb.epoch_start) t->cb.epoch_start(t->cb.user, t->ep + 1, t->spe, t->s);
    if (t->frozen && t->seen == 0 &&
        (t->ep == c->epochs - c->frozen_bn_epochs || c->frozen_bn_reestimate)) {
        bl_precise_report rep;
        bl_status st = bl_precise(&t->net, &t->train, &t->pcfg, &rep);
        if (st) return st;
        char *rec = bl_precise_record(&t->pcfg, &rep, &t->net);
        if (!rec) return BL_ERR_NOMEM;
        bl_ckpt_info_set(&t->info.precise, rec);
        if (t->cb.frozen) t->cb.frozen(t->cb.user, t->ep + 1, t->pcfg.samples);
    }
    return BL_OK;
}

/* The reason of a failed forward, loss or backward, with the step and the first non-finite
 * layer. */
static bl_status step_failed(bl_trainer *t, bl_status st)
{
    const char *where = bl_net_first_nonfinite(&t->net);
    bl_fail_ctx(st, "step %ld (epoch %d)", t->info.step + 1, t->ep + 1);
    if (where) bl_error_append("; first non-finite output: layer %s", where);
    bl_error_append(": the run stops; the last good checkpoint is kept (try a lower cfg.lr, "
                    "or cfg.resume it)");
    if (t->cb.diverged) t->cb.diverged(t->cb.user, t->info.step + 1, t->ep + 1, where);
    return st;
}

static bl_status sgd_pass(bl_trainer *t, const bl_pass *pass);

/* Whether the backward makes collective calls (SyncBN's groups, a shuffle across processes): a
 * process whose loss failed alone must then not leave the others waiting there. */
static int collective_backward(const bl_ctx *ctx)
{
    for (int k = 0; k < ctx->n_bn; k++)
        if (ctx->bn[k].groups && ctx->bn[k].groups->reducer) return 1;
    return ctx->shuffle && ctx->shuffle->route;
}

/* One SGD step on this rank's share of global batch t->s. */
static bl_status sgd_step(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_net *net = &t->net;
    t->lr = bl_lr_at(c, t->info.step, t->T, t->W);
    const int *ids = t->order + t->s * c->batch + t->share_off;
    /* training data is in memory (never a source that can fail) */
    bl_status st = bl_dataset_batch(&t->train, &t->c.recipe, ids, t->share_n, &t->aug, t->x, t->y);
    /* one permutation of the global batch's rows per step */
    if (!st && t->perm && !t->frozen)
        st = bl_shuffle_perm(t->info.seed, t->info.step, c->batch * t->shuffle_rows, t->perm);
    /* FrozenBN: population statistics; else the plan's batch statistics */
    const bl_pass_spec spec = {.mode = t->frozen ? BL_BN_POPULATION : BL_BN_BATCH,
                               .n = t->share_n, .ids = ids, .seed = t->info.seed,
                               .stream = t->ep, .reducer = t->h.reducer, .shuffle = &t->shuffle};
    bl_pass pass;
    if (!st) st = bl_pass_make(&pass, net, &c->plan, &spec);
    if (st) /* the others learn of it where they agree on the step's errors */
        return t->h.agree_error ? t->h.agree_error(t->h.ctx, st) : st;
    st = sgd_pass(t, &pass);
    bl_pass_free(&pass);
    return st;
}

/* The step's forward, loss, backward, gradient sum, SGD and EMA commit with the pass's
 * context. */
static bl_status sgd_pass(bl_trainer *t, const bl_pass *pass)
{
    const bl_train_cfg *c = &t->c;
    bl_net *net = &t->net;
    const bl_ctx *ctx = &pass->ctx;
    bl_status st;
    bl_net_zero_grad(net);
    double ls;
    int ok;
    st = bl_net_forward(net, ctx, t->x, t->share_n);
    /* the loss of the global batch: the processes' gradients add up to one process's */
    if (!st) st = bl_net_loss_over(net, t->y, c->batch, &ls, &ok);
    if (st) step_failed(t, st);
    /* SyncBN's backward (a crop head's backbone's too) and the shuffle's sum or move across
     * processes: a process whose loss failed alone (its logits went non-finite) must not leave
     * the others waiting there */
    if (t->h.agree_error && collective_backward(ctx) && !t->frozen &&
        (st = t->h.agree_error(t->h.ctx, st)))
        return st;
    if (!st && (st = bl_net_backward(net, ctx))) step_failed(t, st);
    /* every process learns of a failure before the first collective of the step (the gradient
     * sum), so none waits there for one that has stopped */
    if (t->h.agree_error) st = t->h.agree_error(t->h.ctx, st);
    if (st) return st;
    if (t->h.grads && (st = t->h.grads(t->h.ctx, net))) return st;
    bl_sgd_step(net, &c->sgd, t->lr);
    if (!t->frozen) {
        /* per-process BN: every process's groups feed every process's EMA (the ghost rule), so
         * all store the same statistics; SyncBN merged them in the forward already */
        for (int k = 0; k < bl_net_bn_count(net) && t->h.world > 1; k++)
            if (!ctx->bn[k].groups->reducer &&
                (st = bl_bn_gather_pending(bl_net_bn_at(net, k), t->h.reducer)))
                return st;
        if ((st = bl_net_bn_commit(net, BL_EST_EMA))) return st;
    }
    double counts[2] = {ls, t->share_n - ok};
    if (t->h.world > 1 && (st = t->h.reducer->sum(t->h.reducer->ctx, counts, 2))) return st;
    t->loss_sum += counts[0];
    t->wrong += (long)counts[1];
    t->seen += c->batch;
    t->fresh += c->batch;
    t->info.step++;
    t->s++;
    if (t->cb.progress)
        t->cb.progress(t->cb.user, t->ep + 1, t->s, t->spe, t->fresh / (now() - t->t0));
    return BL_OK;
}

bl_status bl_trainer_step(bl_trainer *t, bl_train_event *ev)
{
    const bl_train_cfg *c = &t->c;
    bl_status st;
    if (t->done || t->stopped) {
        *ev = t->done ? BL_TRAIN_DONE : BL_TRAIN_STOPPED;
        return BL_OK;
    }
    if (!t->in_epoch && (st = begin_epoch(t))) return st;
    if (t->s >= t->spe) {
        *ev = BL_TRAIN_EPOCH_END;
        return BL_OK;
    }
    /* stop and error are decided by every process together, at the same step */
    int flags[1] = {(c->max_steps && t->info.step >= c->max_steps) || (c->stop && *c->stop)};
    if (t->h.agree && (st = t->h.agree(t->h.ctx, flags, 1))) return st;
    if (flags[0]) {
        /* a stop inside an epoch: save exactly where we are, no evaluation */
        t->info.ep_loss = t->loss_sum, t->info.ep_wrong = t->wrong, t->info.ep_seen = t->seen;
        t->stopped = 1;
        st = writes(t) ? save(t, t->cpath) : BL_OK;
        if (t->h.agree_error) st = t->h.agree_error(t->h.ctx, st);
        if (st) return st;
        if (t->cb.stopped)
            t->cb.stopped(t->cb.user, t->info.step, t->ep + 1, t->seen / c->batch, t->spe,
                          c->out[0] ? t->cpath : "");
        *ev = BL_TRAIN_STOPPED;
        return BL_OK;
    }
    if ((st = sgd_step(t))) return st;
    *ev = BL_TRAIN_STEPPED;
    return BL_OK;
}

static bl_status epoch_end(bl_trainer *t);

bl_status bl_trainer_epoch_end(bl_trainer *t)
{
    bl_status st = epoch_end(t);
    /* a failed checkpoint or metrics line on the writer ends every process with its reason */
    return t->h.agree_error ? t->h.agree_error(t->h.ctx, st) : st;
}

static bl_status epoch_end(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_net *net = &t->net;
    if (!t->in_epoch || t->s < t->spe)
        return bl_fail(BL_ERR_STATE, "trainer: epoch end before the epoch's last step");
    const bl_recipe *rc = &t->c.recipe;
    t->in_epoch = 0;
    t->info.ep_loss = 0, t->info.ep_wrong = 0, t->info.ep_seen = 0;
    double secs = now() - t->t0, ips = t->fresh / secs;
    bl_eval_result pop = {.err = -1}, mb = {.err = -1}, pre = {.err = -1}, tmb = {.err = -1};
    const int last = t->ep + 1 == c->epochs;
    bl_status st;
    if (c->eval_every > 0 && ((t->ep + 1) % c->eval_every == 0 || last)) {
        if ((st = bl_evaluate_shard(net, &t->test, rc, BL_BN_POPULATION, 0, 0, 0, &t->shard, &pop)))
            return st;
        t->final_src = bl_estimator_name(bl_net_bn_at(net, 0)->pop_source);
        if (c->eval_minibatch &&
            ((st = bl_evaluate_shard(net, &t->test, rc, BL_BN_BATCH, t->chk.eval_norm_batch, t->info.seed, 0,
                                     &t->shard, &mb)) ||
             (st = bl_evaluate_shard(net, &t->train_sub, rc, BL_BN_BATCH, t->chk.eval_norm_batch, t->info.seed, 0,
                                     &t->shard, &tmb))))
            return st;
    }
    const int keep_precise = last && t->final_precise;
    if ((c->precise.every > 0 && ((t->ep + 1) % c->precise.every == 0 || last)) ||
        keep_precise) {
        /* fresh PreciseBN statistics for this evaluation; training goes on with the EMA ones
         * (restored exactly), except at the end with final_precise */
        bl_pop_snapshot ema;
        bl_precise_report rep;
        if ((st = bl_pop_save(net, &ema))) return st;
        st = bl_precise(net, &t->train, &t->pcfg, &rep);
        if (!st) st = bl_evaluate_shard(net, &t->test, rc, BL_BN_POPULATION, 0, 0, 0, &t->shard, &pre);
        if (st || !keep_precise) bl_pop_restore(net, &ema);
        bl_pop_free(&ema);
        if (st) return st;
        if (keep_precise) {
            char *rec = bl_precise_record(&t->pcfg, &rep, net);
            if (!rec) return BL_ERR_NOMEM;
            bl_ckpt_info_set(&t->info.precise, rec);
        }
    }
    t->info.epoch = t->ep + 1;
    if (pre.err >= 0) t->final_pre = pre;
    if (pop.err >= 0) t->final = pop;
    if (mb.err >= 0) t->final_mb = mb;
    if (pop.err >= 0 && pop.err < t->best) t->best = pop.err, t->best_epoch = t->info.epoch;
    t->final_epoch = pop.err >= 0 ? t->info.epoch : t->final_epoch;
    if (writes(t)) {
        if ((t->info.epoch % c->checkpoint_every == 0 || last) && (st = save(t, t->cpath)))
            return st;
        if (c->keep_every > 0 && t->info.epoch % c->keep_every == 0) {
            char kpath[1100];
            snprintf(kpath, sizeof kpath, "%s/epoch%d.safetensors", c->out, t->info.epoch);
            if ((st = save(t, kpath))) return st;
        }
    }
    t->ep++;
    t->done = t->ep >= c->epochs;
    if (t->cb.epoch_end) {
        bl_epoch_metrics m = {.epoch = t->info.epoch, .step = t->info.step, .lr = t->lr,
                              .train_loss = t->loss_sum / t->seen,
                              .train_err = 100.0 * t->wrong / t->seen,
                              .test_err_population = pop.err, .test_err_minibatch = mb.err,
                              .train_err_minibatch = tmb.err, .test_err_precise = pre.err,
                              .estimator = t->final_src, .img_per_s = ips, .seconds = secs};
        m.outputs = bl_net_output_count(net) > 1 ? bl_net_output_count(net) : 0;
        for (int k = 0; k < m.outputs; k++) {
            m.test_err_population_level[k] = pop.err >= 0 ? pop.err_level[k] : -1;
            m.test_err_precise_level[k] = pre.err >= 0 ? pre.err_level[k] : -1;
        }
        if ((st = t->cb.epoch_end(t->cb.user, &m))) return st;
    }
    return BL_OK;
}

bl_status bl_trainer_summary(bl_trainer *t, bl_train_summary *s)
{
    memset(s, 0, sizeof *s);
    bl_eval_result pop = t->final;
    if (t->done && t->final_epoch != t->info.epoch && t->final_pre.err < 0) {
        t->final_src = bl_estimator_name(bl_net_bn_at(&t->net, 0)->pop_source);
        bl_status st = bl_evaluate_shard(&t->net, &t->test, &t->c.recipe, BL_BN_POPULATION, 0, 0,
                                         0, &t->shard, &pop);
        if (st) return st;
    }
    s->epochs = t->info.epoch;
    s->steps = t->info.step;
    s->norm_batch = t->chk.eval_norm_batch;
    s->head_bn_images = t->chk.head_bn_images;
    s->test_err = pop.err;
    s->estimator = t->final_src;
    s->test_err_precise = t->final_pre.err;
    s->test_err_minibatch = t->final_mb.err;
    s->precise_samples = t->psamples;
    s->final_precise = t->final_precise;
    s->best_err = t->best_epoch > 0 ? t->best : -1;
    s->best_epoch = t->best_epoch;
    s->validation = t->c.val > 0;
    s->seconds = now() - t->t_run;
    snprintf(s->checkpoint, sizeof s->checkpoint, "%s", t->cpath);
    return BL_OK;
}

bl_status bl_train(const bl_train_cfg *c, const bl_train_callbacks *cb, const bl_train_hooks *h,
                   bl_train_summary *summary)
{
    if (summary) memset(summary, 0, sizeof *summary);
    bl_trainer *t;
    bl_status st = bl_trainer_init(&t, c, cb, h);
    if (st) return st;
    bl_train_event ev;
    while (!(st = bl_trainer_step(t, &ev)) && ev != BL_TRAIN_DONE && ev != BL_TRAIN_STOPPED)
        if (ev == BL_TRAIN_EPOCH_END && (st = bl_trainer_epoch_end(t))) break;
    if (!st && summary && ev == BL_TRAIN_DONE) st = bl_trainer_summary(t, summary);
    bl_trainer_free(t);
    return st;
}
