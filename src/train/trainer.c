/* The trainer: the training loop in pieces (init, step, epoch end, summary), reporting through
 * callbacks and leaving the places processes plug into as hooks. Per step: the rank's share of the
 * global batch -> forward with the step's context -> loss -> backward -> [hook: gradients] -> SGD
 * -> [hook: BN moments] -> EMA commit. Per epoch: evaluation, PreciseBN, checkpoints, callback.
 * Nothing here prints. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

void bl_train_defaults(bl_train_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "resnet20");
    c->width = 16;
    c->epochs = 30;
    c->batch = 128;
    c->lr = 0.1;
    c->momentum = 0.9;
    c->wd = 5e-4;
    c->nesterov = 1;
    c->wd_bn = 0;
    c->schedule = BL_SCHED_COSINE;
    c->seed = 1;
    c->threads = 2;
    c->eval_every = 1;
    c->checkpoint_every = 1;
    c->final_precise_bn = -1;
    c->precise_samples = 0; /* 10^4, or the whole split if smaller */
    c->precise_batch = 200;
    c->recipe = bl_recipe_fmnist();
    bl_head_defaults(&c->head);
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

/* world: the processes the run is spread over (recorded: per-process BN depends on it) */
static void config_json(const bl_train_cfg *c, int world, char *out, size_t len)
{
    snprintf(out, len,
             "{\"model\":\"%s\",\"width\":%d,\"epochs\":%d,\"batch\":%d,\"norm_batch\":%d,"
             "\"lr\":%g,\"momentum\":%g,\"nesterov\":%d,\"wd\":%g,\"wd_bn\":%d,\"schedule\":\"%s\","
             "\"warmup_epochs\":%g,\"lr_scaling\":\"%s\",\"seed\":%llu,\"threads\":%d,"
             "\"eval_every\":%d,\"eval_minibatch\":%d,\"val\":%d,\"max_steps\":%ld,"
             "\"precise_bn_every\":%d,\"final_precise_bn\":%d,\"precise_samples\":%ld,"
             "\"precise_batch\":%d,\"keep_every\":%d,\"frozen_bn_epochs\":%d,"
             "\"frozen_bn_reestimate\":%d,\"sync_bn\":%d,\"processes\":%d,\"head_bn_images\":%d,"
             "\"bn_shuffle\":%d,\"data_dir\":\"%s\"",
             c->model, c->width, c->epochs, c->batch, c->norm_batch, c->lr, c->momentum,
             c->nesterov, c->wd, c->wd_bn, sched_name(c->schedule), c->warmup_epochs,
             c->lr_scaling ? "linear" : "none", (unsigned long long)c->seed, c->threads,
             c->eval_every, c->eval_minibatch, c->val, c->max_steps, c->precise_bn_every,
             c->final_precise_bn, c->precise_samples, c->precise_batch, c->keep_every,
             c->frozen_bn_epochs, c->frozen_bn_reestimate, c->sync_bn, world, c->head_bn_images,
             c->bn_shuffle, c->data_dir);
    size_t o = strlen(out);
    int depth, kind = 0;
    if (!bl_model_parse(c->model, &depth, &kind) && kind != BL_MODEL_PLAIN && o + 2 < len) {
        char hj[256];
        bl_head_json(&c->head, hj, sizeof hj);
        snprintf(out + o, len - o, ",\"head\":%s", hj);
        o = strlen(out);
    }
    if (o + 2 < len) snprintf(out + o, len - o, "}");
}

struct bl_trainer {
    bl_train_cfg c;
    bl_train_callbacks cb;
    bl_train_hooks h;
    bl_dataset train, test, train_sub; /* train_sub: the images of the train-split curve */
    bl_net net;
    int have_net;
    bl_ckpt_info info;
    bl_groups groups;        /* the step's normalization groups: whole batch or ghost */
    bl_groups head_groups;   /* a crop head's: of head_bn_images images, or the share */
    bl_ctx ctx;              /* per BN layer: the backbone's groups, then a crop head's */
    int *perm, *counts;      /* the shuffle's global permutation, rows per process */
    bl_shuffle shuffle;
    bl_sgd sgd;
    bl_augment aug;
    bl_precise_cfg pcfg;
    int *order;
    float *x;
    uint8_t *y;
    char cpath[1100];
    int g;                   /* the normalization batch */
    int final_precise;       /* resolved from auto */
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

static bl_status load_data(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_dataset full;
    bl_status st = bl_fmnist_load(c->data_dir, "train", &full);
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
    if (c->val >= full.n) {
        bl_dataset_free(&full);
        return bl_fail(BL_ERR_ARG, "cfg.val %d leaves no training samples (the split has %d)",
                       c->val, full.n);
    }
    /* validation = the first `val` samples of a fixed permutation; it replaces the test set */
    int *order = bl_malloc(sizeof(int) * full.n);
    if (!order) {
        bl_dataset_free(&full);
        return bl_fail(BL_ERR_NOMEM, "out of memory for the validation split");
    }
    bl_epoch_order(full.n, 0x7a1u, 0, order);
    bl_dataset_free(&t->test);
    st = bl_dataset_subset(&full, order, c->val, &t->test);
    if (!st) st = bl_dataset_subset(&full, order + c->val, full.n - c->val, &t->train);
    free(order);
    bl_dataset_free(&full);
    return st;
}

/* The multi-level head's BN statistics merged over the levels: they need the whole batch in one
 * group (no ghost groups, no per-process shares, no SyncBN yet). */
static int merged_head(const bl_train_cfg *c)
{
    int depth, kind = 0;
    return !bl_model_parse(c->model, &depth, &kind) && kind == BL_MODEL_ML &&
           c->head.norm == BL_HEAD_BN && !c->head.sgd_level;
}

/* The crop head's choices against the model, the batch and the processes. */
static bl_status check_crops(const bl_train_cfg *c, int kind, int world, int share)
{
    if (kind != BL_MODEL_CROPS) {
        if (c->head_bn_images || c->bn_shuffle)
            return bl_fail(BL_ERR_ARG, "cfg.%s applies to the crop head (cfg.model %.*s-crops), "
                           "not %s", c->bn_shuffle ? "bn_shuffle" : "head_bn_images",
                           (int)strcspn(c->model, "-"), c->model, c->model);
        return BL_OK;
    }
    if (c->norm_batch && c->norm_batch < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d: the crop head's backbone normalizes the "
                       "whole batch; the head's groups are cfg.head_bn_images", c->norm_batch);
    if (c->head.norm != BL_HEAD_BN && (c->head_bn_images || c->bn_shuffle))
        return bl_fail(BL_ERR_ARG, "cfg.%s: the head's norm is %s, which has no batch statistics",
                       c->bn_shuffle ? "bn_shuffle" : "head_bn_images",
                       bl_head_norm_name(c->head.norm));
    if (c->sync_bn && (c->head_bn_images || c->bn_shuffle))
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn with cfg.%s: SyncBN normalizes the head over the "
                       "global batch; drop one of the two",
                       c->bn_shuffle ? "bn_shuffle" : "head_bn_images");
    /* the crops' count and sides: bl_crop_head checks them against the map */
    if (c->head.norm == BL_HEAD_BN && c->head.crops < 2 && c->eval_minibatch)
        return bl_fail(BL_ERR_ARG, "cfg.eval_minibatch with cfg.crops 1: one image's crops give "
                       "one value per channel; use 2 or more crops");
    if (c->bn_shuffle && world == 1 && (!c->head_bn_images || c->head_bn_images >= c->batch))
        return bl_fail(BL_ERR_ARG, "cfg.bn_shuffle with the whole batch in one group changes "
                       "nothing: emulate W processes with cfg.head_bn_images %d/W", c->batch);
    if (c->head_bn_images < 0 || c->head_bn_images > share)
        return bl_fail(BL_ERR_ARG, "cfg.head_bn_images %d: use 0 (the whole share) to %d, the "
                       "images %s", c->head_bn_images, share,
                       world > 1 ? "of a process's share" : "of the batch");
    const int pre = c->precise_bn_every > 0 || c->final_precise_bn == 1 || c->frozen_bn_epochs > 0;
    if (world > 1 && pre)
        return bl_fail(BL_ERR_ARG, "PreciseBN or FrozenBN of a crop head across processes is not "
                       "supported: run it after training in one process (bnlab precise)");
    return BL_OK;
}

static bl_status check_cfg(const bl_train_cfg *c)
{
    if (c->batch < 2) return bl_fail(BL_ERR_ARG, "cfg.batch %d: must be >= 2", c->batch);
    if (c->epochs < 1) return bl_fail(BL_ERR_ARG, "cfg.epochs %d: must be >= 1", c->epochs);
    int g = c->norm_batch ? c->norm_batch : c->batch;
    if (g < 1 || g > c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d must be in [1, cfg.batch %d]", g, c->batch);
    if (c->frozen_bn_epochs < 0 || c->frozen_bn_epochs > c->epochs)
        return bl_fail(BL_ERR_ARG, "cfg.frozen_bn_epochs %d: use 0..%d (cfg.epochs)",
                       c->frozen_bn_epochs, c->epochs);
    if (c->checkpoint_every < 1)
        return bl_fail(BL_ERR_ARG, "cfg.checkpoint_every %d: must be >= 1", c->checkpoint_every);
    if (merged_head(c) && g < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.norm_batch %d: the head's statistics merged over the "
                       "levels need the whole batch: use per-level statistics (cfg.head_sgd level) with "
                       "ghost groups",
                       g);
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

/* The crop head's groups, its shuffle, and the normalization batch of its mini-batch evaluation:
 * one image's crops (the paper's test batch). */
static bl_status setup_crops(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    const int W = t->h.world, hg = c->head_bn_images ? c->head_bn_images : t->share_n;
    bl_status st = hg < t->share_n ? bl_groups_ghost(&t->head_groups, t->share_n, hg)
                                   : bl_groups_whole(&t->head_groups, t->share_n);
    if (st) return st;
    if (c->sync_bn) t->head_groups.reducer = t->h.reducer;
    bl_ctx_set_head(&t->ctx, &t->net, (bl_bn_use){BL_BN_BATCH, &t->head_groups});
    t->g = 1;
    if (!c->bn_shuffle) return BL_OK;
    if (W > 1 && !t->h.route)
        return bl_fail(BL_ERR_ARG, "hooks: the shuffle across %d processes needs a route", W);
    t->perm = bl_malloc(sizeof(int) * (size_t)c->batch * t->net.crops);
    t->counts = bl_malloc(sizeof(int) * (size_t)W);
    if (!t->perm || !t->counts) return bl_fail(BL_ERR_NOMEM, "out of memory for the shuffle");
    for (int r = 0; r < W; r++) {
        int off, n;
        bl_batch_share(c->batch, r, W, &off, &n);
        t->counts[r] = n * t->net.crops;
    }
    t->shuffle = (bl_shuffle){t->perm, t, W > 1 ? route_rows : NULL};
    return BL_OK;
}

static bl_status setup(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    int depth, kind;
    bl_status st = bl_model_parse(c->model, &depth, &kind);
    if (st) return bl_fail_ctx(st, "cfg.model");
    if ((st = check_cfg(c))) return st;
    bl_head_resolve(&t->c.head, kind);
    t->g = c->norm_batch ? c->norm_batch : c->batch;
    if (t->h.world < 1) t->h.world = 1;
    if (t->h.rank < 0 || t->h.rank >= t->h.world)
        return bl_fail(BL_ERR_ARG, "hooks: rank %d of %d", t->h.rank, t->h.world);
    if (t->h.world > 1 && !t->h.reducer)
        return bl_fail(BL_ERR_ARG, "hooks: %d processes need a reducer", t->h.world);
    if (c->sync_bn && merged_head(c))
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn: the head's statistics merged over the levels are "
                       "not synchronized across processes yet: use per-level statistics "
                       "(cfg.head_sgd level) with SyncBN");
    if (c->sync_bn && t->g < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.sync_bn with cfg.norm_batch %d: SyncBN normalizes over the "
                       "whole global batch of %d; drop one of the two", t->g, c->batch);
    if ((st = check_crops(c, kind, t->h.world > 1 ? t->h.world : 1,
                          (c->batch + t->h.world - 1) / t->h.world)))
        return st;
    if (t->h.world > 1 && !c->sync_bn && kind != BL_MODEL_CROPS) {
        /* per-process BN normalizes each share: ghost groups of ceil(B/W) at most, which is
         * also the normalization batch of mini-batch evaluation */
        const int share = (c->batch + t->h.world - 1) / t->h.world;
        if (t->g > share) t->g = share;
        if (merged_head(c))
            return bl_fail(BL_ERR_ARG, "the head's statistics merged over the levels need the "
                           "whole batch in one group, and %d processes each normalize a share: "
                           "use per-level statistics (cfg.head_sgd level)", t->h.world);
    }
    if (t->h.world > 1) {
        int off, last;
        bl_batch_share(c->batch, t->h.world - 1, t->h.world, &off, &last);
        if (last < 1)
            return bl_fail(BL_ERR_ARG, "cfg.batch %d over %d processes leaves the last one no "
                           "sample (shares of ceil(%d/%d) = %d): use a batch of at least %d, or "
                           "fewer processes", c->batch, t->h.world, c->batch, t->h.world,
                           (c->batch + t->h.world - 1) / t->h.world,
                           ((c->batch + t->h.world - 1) / t->h.world) * (t->h.world - 1) + 1);
    }
    if (c->out[0] && !t->h.not_writer && mkdir(c->out, 0755) && errno != EEXIST)
        return bl_fail(BL_ERR_IO, "cannot create cfg.out %s: %s", c->out, strerror(errno));
    bl_threads_set(c->threads);
    if ((st = load_data(t))) return st;
    if (t->train.n < c->batch)
        return bl_fail(BL_ERR_ARG, "cfg.batch %d exceeds the %d training samples", c->batch,
                       t->train.n);
    /* auto: on, but with FrozenBN, and for a crop head (its EMA statistics are the paper's
     * population statistics; docs/crop-head.md) */
    t->final_precise = c->final_precise_bn < 0 ? c->frozen_bn_epochs == 0 && kind != BL_MODEL_CROPS
                                               : c->final_precise_bn;
    const int use_precise = c->precise_bn_every > 0 || t->final_precise || c->frozen_bn_epochs > 0;
    t->psamples = c->precise_samples ? c->precise_samples
                                     : (t->train.n < 10000 ? t->train.n : 10000);
    if (use_precise && (t->psamples < 1 || t->psamples > t->train.n || c->precise_batch < 1))
        return bl_fail(BL_ERR_ARG, "PreciseBN with %ld samples in batches of %d: use "
                       "cfg.precise_samples in 1..%d and cfg.precise_batch >= 1", t->psamples,
                       c->precise_batch, t->train.n);
    if (kind != BL_MODEL_PLAIN && c->resume[0]) {
        /* a head unlike the checkpoint's would load wrongly or not at all */
        bl_ckpt_info ck;
        if ((st = bl_checkpoint_read_info(c->resume, &ck))) return st;
        const bl_head_cfg *a = &t->c.head, *b = &ck.head;
        if (a->norm != b->norm || a->sgd_level != b->sgd_level ||
            a->affine_level != b->affine_level || a->width != b->width ||
            (kind == BL_MODEL_CROPS && (a->crops != b->crops || a->crop_min != b->crop_min ||
                                        a->crop_max != b->crop_max)))
            return bl_fail(BL_ERR_ARG, "%s: its head was trained with norm %s, sgd %s, affine %s, "
                           "width %d, %d crops of sides %g..%g; the run asks for another: resume "
                           "with the same head", c->resume, bl_head_norm_name(b->norm),
                           b->sgd_level ? "level" : "shared", b->affine_level ? "level" : "shared",
                           b->width, b->crops, b->crop_min, b->crop_max);
    }
    bl_batch_share(c->batch, t->h.rank, t->h.world, &t->share_off, &t->share_n);
    /* room for PreciseBN's batches too (the activations are sized by the largest batch) */
    const int max_batch = use_precise && c->precise_batch > c->batch ? c->precise_batch : c->batch;
    if ((st = bl_model_build(&t->net, c->model, c->width, c->recipe.classes, &t->c.head,
                             t->train.h, t->train.w, c->recipe.channels, max_batch)))
        return st;
    t->have_net = 1;
    bl_net_init_params(&t->net, c->seed);
    t->info.seed = c->seed;
    t->info.recipe = c->recipe;
    config_json(c, t->h.world, t->info.config, sizeof t->info.config);
    if (c->resume[0]) {
        if ((st = bl_checkpoint_load(&t->net, c->resume, 1, &t->info))) return st;
        config_json(c, t->h.world, t->info.config, sizeof t->info.config);
        /* training goes on with EMA statistics, unless it resumes inside a FrozenBN phase */
        if (!(c->frozen_bn_epochs > 0 && t->info.epoch >= c->epochs - c->frozen_bn_epochs))
            t->info.precise[0] = 0;
        /* the data order, augmentation and recipe follow the checkpoint */
        t->c.recipe = t->info.recipe;
        if ((st = check_cfg(&t->c))) return bl_fail_ctx(st, "%s", c->resume);
        if (t->cb.resumed)
            t->cb.resumed(t->cb.user, c->resume, t->info.epoch, t->info.step, t->info.seed);
    }
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
        bl_epoch_order(t->train.n, seed, -4, t->order);
        if ((st = bl_dataset_subset(&t->train, t->order, t->train.n < 10000 ? t->train.n : 10000,
                                    &t->train_sub)))
            return st;
    }
    /* real groups for every step, whole batch included, so a reducer can ride on them; a rank
     * normalizes its share: per-rank BN is ghost BN of ceil(B/W) */
    if ((st = t->g < t->share_n ? bl_groups_ghost(&t->groups, t->share_n, t->g)
                                : bl_groups_whole(&t->groups, t->share_n)))
        return st;
    /* a crop head's backbone normalizes the global batch (only the head's groups vary) */
    if (c->sync_bn || t->net.crops) t->groups.reducer = t->h.reducer; /* NULL in one process */
    if ((st = bl_ctx_init(&t->ctx, &t->net, BL_BN_BATCH, &t->groups))) return st;
    if (t->net.crops && (st = setup_crops(t))) return st;
    t->shard = (bl_shard){t->h.rank, t->h.world, t->h.reducer};
    t->sgd = (bl_sgd){c->momentum, c->wd, c->nesterov, c->wd_bn};
    t->aug = (bl_augment){seed, 0};
    bl_precise_defaults(&t->pcfg);
    t->pcfg.samples = t->psamples, t->pcfg.batch = c->precise_batch, t->pcfg.seed = seed;
    t->pcfg.recipe = t->c.recipe;
    t->pcfg.reducer = t->h.reducer;
    t->pcfg.rank = t->h.rank, t->pcfg.world = t->h.world, t->pcfg.sync = c->sync_bn;
    /* PreciseBN of the head: the groups training normalized (shuffled ones mix the whole batch's
     * crops: then the whole PreciseBN batch) */
    if (t->net.crops) t->pcfg.head_norm_batch = c->bn_shuffle ? 0 : c->head_bn_images;
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
    bl_groups_free(&t->groups);
    bl_groups_free(&t->head_groups);
    bl_ctx_free(&t->ctx);
    free(t->perm), free(t->counts);
    free(t->order), bl_free(t->x), free(t->y);
    if (t->have_net) bl_net_free(&t->net);
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
        bl_precise_record(t->info.precise, sizeof t->info.precise, &t->pcfg, &rep, &t->net);
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

/* One SGD step on this rank's share of global batch t->s. */
static bl_status sgd_step(bl_trainer *t)
{
    const bl_train_cfg *c = &t->c;
    bl_net *net = &t->net;
    t->lr = bl_lr_at(c, t->info.step, t->T, t->W);
    const int *ids = t->order + t->s * c->batch + t->share_off;
    bl_dataset_batch(&t->train, &t->c.recipe, ids, t->share_n, &t->aug, t->x, t->y);
    bl_ctx ctx = t->ctx;
    for (int k = 0; k < ctx.n_bn; k++) ctx.bn[k].mode = t->frozen ? BL_BN_POPULATION : BL_BN_BATCH;
    const bl_crop_src crops = {t->info.seed, t->ep, ids, NULL};
    ctx.crops = &crops;
    bl_status st = BL_OK;
    if (t->perm && !t->frozen) { /* one permutation of the global batch's crops per step */
        st = bl_shuffle_perm(t->info.seed, t->info.step, c->batch * t->net.crops, t->perm);
        ctx.shuffle = &t->shuffle;
    }
    bl_net_zero_grad(net);
    double ls;
    int ok;
    if (!st) st = bl_net_forward(net, &ctx, t->x, t->share_n);
    /* the loss of the global batch: the processes' gradients add up to one process's */
    if (!st) st = bl_net_loss_over(net, t->y, c->batch, &ls, &ok);
    if (st) step_failed(t, st);
    /* SyncBN's backward (a crop head's backbone's too) and the shuffle's sum or move across
     * processes: a process whose loss failed alone (its logits went non-finite) must not leave
     * the others waiting there */
    if (t->h.agree_error && (c->sync_bn || t->net.crops) && !t->frozen &&
        (st = t->h.agree_error(t->h.ctx, st)))
        return st;
    if (!st && (st = bl_net_backward(net, &ctx))) step_failed(t, st);
    /* every process learns of a failure before the first collective of the step (the gradient
     * sum), so none waits there for one that has stopped */
    if (t->h.agree_error) st = t->h.agree_error(t->h.ctx, st);
    if (st) return st;
    if (t->h.grads && (st = t->h.grads(t->h.ctx, net))) return st;
    bl_sgd_step(net, &t->sgd, t->lr);
    if (!t->frozen) {
        /* per-process BN: every process's groups feed every process's EMA (the ghost rule), so
         * all store the same statistics; SyncBN merged them in the forward already */
        for (int k = 0; k < bl_net_bn_count(net) && t->h.world > 1; k++)
            if (!ctx.bn[k].groups->reducer &&
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
            ((st = bl_evaluate_shard(net, &t->test, rc, BL_BN_BATCH, t->g, t->info.seed, 0,
                                     &t->shard, &mb)) ||
             (st = bl_evaluate_shard(net, &t->train_sub, rc, BL_BN_BATCH, t->g, t->info.seed, 0,
                                     &t->shard, &tmb))))
            return st;
    }
    const int keep_precise = last && t->final_precise;
    if ((c->precise_bn_every > 0 && ((t->ep + 1) % c->precise_bn_every == 0 || last)) ||
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
        if (keep_precise)
            bl_precise_record(t->info.precise, sizeof t->info.precise, &t->pcfg, &rep, net);
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
        m.levels = net->n_outputs > 1 ? net->n_outputs : 0;
        for (int k = 0; k < m.levels; k++) {
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
    s->norm_batch = t->g;
    if (t->net.crops)
        s->head_group = t->c.sync_bn || !t->c.head_bn_images ? (t->c.sync_bn ? t->c.batch : t->share_n)
                                                             : t->c.head_bn_images;
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
