/* bnlab train: checkpoints (safetensors), SGD, schedules, the trainer (the training loop in pieces,
 * reporting through callbacks, with hook points for processes) and evaluation. Nothing here
 * prints: the command line does (src/cli). Errors about a configuration name the field as
 * cfg.<field> (e.g. "cfg.norm_batch"), which the command line turns into its flag. */
#ifndef BNLAB_TRAIN_H
#define BNLAB_TRAIN_H

#include <signal.h>

#include "bnlab/data.h"
#include "bnlab/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors ------------------------------------------------------------------------------
 * File: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [b, e]},
 * "__metadata__": {string: string}}, then the data. Offsets are relative to the data start, the
 * tensors contiguous (row-major) and non-overlapping. */
typedef enum { BL_F32, BL_F64, BL_I64, BL_U8 } bl_dtype;

typedef struct {
    char name[128];
    bl_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t begin, end; /* byte offsets in the data section */
} bl_st_entry;

typedef struct {
    int n;
    bl_st_entry *e;
    int n_meta;
    char (*meta_key)[64];
    char **meta_val;
    uint8_t *data;   /* the data section */
    size_t data_len;
} bl_safetensors;

/* Reads and validates a whole file: sizes, offsets, dtypes, JSON; BL_ERR_FORMAT names the file
 * and what is wrong (truncated, foreign, corrupt). */
bl_status bl_st_read(const char *path, bl_safetensors *st);
void bl_st_free(bl_safetensors *st);
const bl_st_entry *bl_st_find(const bl_safetensors *st, const char *name);
const char *bl_st_meta(const bl_safetensors *st, const char *key);
/* Copies an entry into float (F32 or F64 converted), checking the element count. */
bl_status bl_st_get_f32(const bl_safetensors *st, const char *name, float *out, size_t count);
size_t bl_st_numel(const bl_st_entry *e);

typedef struct {
    int n, cap;
    struct bl_st_item {
        char name[128];
        bl_dtype dtype;
        int ndim;
        int64_t shape[8];
        const void *data;
        size_t bytes;
        void *owned;
    } *items;
    int n_meta, cap_meta;
    char (*meta_key)[64];
    char **meta_val;
} bl_st_writer;

/* Adds a tensor (the data is copied, so the caller may reuse its buffer). */
bl_status bl_st_add(bl_st_writer *w, const char *name, bl_dtype dtype, int ndim,
                    const int64_t *shape, const void *data);
bl_status bl_st_set_meta(bl_st_writer *w, const char *key, const char *value);
/* Writes atomically: path.tmp, fsync, rename, fsync of the directory. */
bl_status bl_st_write(const bl_st_writer *w, const char *path);
void bl_st_writer_free(bl_st_writer *w);

/* ---- SGD, exactly PyTorch's torch.optim.SGD (dampening 0) ---------------------------------------
 *   g = grad + wd * p        (wd on conv/linear weights; on BN and biases only with wd_bn)
 *   buf = momentum * buf + g (buf starts at 0, which equals PyTorch's first-step copy)
 *   g = nesterov ? g + momentum * buf : buf
 *   p -= lr * g
 * The momentum buffers live in the net's optimizer block. */
typedef struct {
    double momentum, wd;
    int nesterov, wd_bn;
} bl_sgd;
void bl_sgd_step(bl_net *net, const bl_sgd *o, double lr);

/* ---- checkpoints ------------------------------------------------------------------------------
 * safetensors with the PyTorch state_dict names and layouts (conv weights OIHW, num_batches_tracked
 * I64 []), optimizer momentum as "optim.<name>.momentum_buffer", and metadata: format, arch, width,
 * classes, input, data_mean, data_std, epoch, step, estimator (of the BN population statistics),
 * seed, rng, config. Written atomically (temporary file, fsync, rename). */
typedef struct {
    int epoch;      /* epochs completed */
    long step;      /* SGD steps completed (may be inside epoch + 1) */
    uint64_t seed;
    bl_recipe recipe; /* the data recipe of the run (metadata "recipe"; Fashion-MNIST's when a
                       * checkpoint has none, and when saving one whose recipe is all zero) */
    /* the unfinished epoch's running sums, so a resumed epoch reports the whole epoch */
    double ep_loss;
    long ep_wrong, ep_seen;
    /* JSON texts, malloc'd (NULL: none): the run's resolved configuration, how PreciseBN produced
     * the statistics, the target domain they were adapted to (bnlab adapt) */
    char *config, *precise, *adapt;
    bl_model model;     /* what it is (metadata "arch", "width", and "head": the family's recorded
                         * options); read back only */
    bl_plan plan;       /* the normalization plan it was trained with (metadata "plan"; a file from
                         * before the plan existed: what its "config" implies, docs/extending.md) */
} bl_ckpt_info;

/* Frees an info's texts. The functions that fill an info (load, open, read_info) overwrite it:
 * free one they filled before it is filled again. */
void bl_ckpt_info_free(bl_ckpt_info *info);
/* Replaces one of an info's texts by text (owned from now on; NULL: none). */
void bl_ckpt_info_set(char **field, char *text);

/* A model's recorded options (those with a key) as one JSON object, the "head" metadata (malloc'd;
 * NULL with BL_OK when it has none), and back: keys absent keep their defaults. */
bl_status bl_model_opts_json(const bl_model *m, char **json);
bl_status bl_model_opts_from_json(bl_model *m, const char *json);

bl_status bl_checkpoint_save(const bl_net *net, const char *path, const bl_ckpt_info *info);
/* Loads into an existing net; the architecture must match (errors name the tensor). with_optim:
 * also the momentum buffers (an error if absent). info may be NULL. */
bl_status bl_checkpoint_load(bl_net *net, const char *path, int with_optim, bl_ckpt_info *info);
/* A checkpoint's metadata only (its info), without building anything. */
bl_status bl_checkpoint_read_info(const char *path, bl_ckpt_info *info);

/* The model to build for a safetensors file without bnlab's metadata: a PyTorch state_dict of the
 * ResNet twin (tools/bnlab_torch.py), as safetensors.torch.save_file(model.state_dict()) writes
 * it. Input 28 x 28 x recipe.channels, recipe.classes outputs; the recipe becomes the info's. */
typedef struct {
    char model[32];   /* "resnet20"; "" refuses such files */
    int width;
    bl_recipe recipe;
} bl_model_spec;
void bl_model_spec_defaults(bl_model_spec *m); /* no model, width 16, the Fashion-MNIST recipe */
/* Builds the net a checkpoint describes and loads it: from its metadata, or, for a file without
 * (foreign), from `foreign` (NULL: such a file is an error naming what to pass). A bnlab
 * checkpoint whose architecture contradicts a given foreign->model is an error too. */
bl_status bl_checkpoint_open(const char *path, int max_batch, const bl_model_spec *foreign,
                             bl_net *net, bl_ckpt_info *info);

/* ---- evaluation and training -------------------------------------------------------------------- */
typedef struct {
    double err;  /* % (of the mean logits with several outputs) */
    double loss; /* mean cross-entropy */
    int n;
    int outputs; /* a net with several outputs (a multi-level head's levels; 0 for one), each's error: */
    double err_level[BL_NET_MAX_OUTPUTS];
} bl_eval_result;

/* Population statistics (bn = BL_BN_POPULATION), or mini-batch statistics (BL_BN_BATCH) of ghost
 * groups of norm_batch consecutive samples of bl_eval_order(d, seed, by_class); the images
 * normalized by the recipe. */
bl_status bl_evaluate(bl_net *net, const bl_dataset *d, const bl_recipe *recipe, bl_bn_mode bn,
                      int norm_batch, uint64_t seed, int by_class, bl_eval_result *r);
/* One process's part of a computation spread over processes: it takes rank's share and the
 * reducer's sum adds the processes' results, in rank order. NULL, or world <= 1: all of it here. */
typedef struct {
    int rank, world;
    const bl_reducer *reducer;
} bl_shard;
/* bl_evaluate with the split sharded over processes (a contiguous share each, of whole
 * normalization groups under mini-batch statistics); every process gets the result one process
 * computes. Population statistics make no collective call but the one sum of the counts. */
bl_status bl_evaluate_shard(bl_net *net, const bl_dataset *d, const bl_recipe *recipe,
                            bl_bn_mode bn, int norm_batch, uint64_t seed, int by_class,
                            const bl_shard *sh, bl_eval_result *r);
/* The order mini-batch evaluation groups samples in: a shuffle seeded by seed; by_class: then
 * stably sorted by label, so groups hold one class (but where a class ends). */
bl_status bl_eval_order(const bl_dataset *d, uint64_t seed, int by_class, int *order);

/* ---- PreciseBN (precise.c) ----------------------------------------------------------------------
 * Re-estimates every BN layer's population statistics with the model fixed: `samples` images of
 * the split drawn without replacement (bl_precise_samples), in batches of `batch` (a last partial
 * batch is used), each BN layer normalizing by its batch's statistics, pooled with weight = values
 * per channel in double; augmentation as in training when `augment`. sequential: the exact
 * layer-by-layer mode (layers before k already use their new statistics; independent of batch).
 * Only the BN statistics change (pop_source becomes precise); on an error nothing changes. */
#define BL_PRECISE_MAX_LAYERS 256
typedef struct {
    long samples;   /* default 10^4 */
    int batch;      /* default 200 */
    int augment;    /* default 1 */
    uint64_t seed;  /* sample choice and augmentation; default 1 */
    int sequential; /* default 0 */
    int in_order;   /* 1: the first `samples` images in the data's order (no permutation), so
                     * batches are the data's consecutive runs; default 0 */
    bl_recipe recipe; /* normalization and augmentation; default Fashion-MNIST's */
    /* prior N > 0: each layer's new statistics mixed with the ones the net held, as Schneider et
     * al. (NeurIPS 2020) do with a source prior: (N stored + samples new) / (N + samples), means
     * and variances alike (linearly, no between-means term). Under sequential, layer k is
     * estimated with the layers before it on their mixed statistics. 0: none (default). */
    double prior;
    /* Across processes: each batch of `batch` is split into shares (bl_batch_share over rank of
     * world), each process normalizing its share; the pooled moments of the processes are merged
     * (reducer->merge_moments, rank order) before they become statistics. sync: the share's
     * groups carry the reducer instead (SyncBN: the whole batch normalizes together). reducer
     * NULL: this process alone. */
    const bl_reducer *reducer;
    int rank, world;
    /* how each batch (or share) normalizes: ghost groups of plan.norm_batch (one process with
     * norm_batch = ceil(batch / W) does what W processes without SyncBN do), a crop head's groups
     * of plan.head_bn_images images; plan.sync_bn: the share's groups carry the reducer instead
     * (SyncBN: the whole batch normalizes together) */
    bl_plan plan;
    void (*progress)(void *ctx, long done, long total); /* optional, samples processed */
    void *progress_ctx;
} bl_precise_cfg;

typedef struct {
    int layers;
    long samples;
    double forwards;  /* cost in full-forward units */
    /* per BN layer: the largest standard error of the channel means in units of the channel's
     * std, from per-sample channel means; and the largest over the layers */
    double max_se[BL_PRECISE_MAX_LAYERS], worst_se;
} bl_precise_report;

void bl_precise_defaults(bl_precise_cfg *c);
/* The run as JSON (the "precise" metadata of a checkpoint): malloc'd, NULL with a reason when out
 * of memory. */
char *bl_precise_record(const bl_precise_cfg *c, const bl_precise_report *r, const bl_net *net);

/* A copy of every BN layer's population statistics, their estimator and EMA count, to evaluate
 * with other statistics and come back exactly. */
typedef struct {
    int layers;
    float *stats;
    bl_estimator *src;
    int64_t *tracked;
} bl_pop_snapshot;
bl_status bl_pop_save(bl_net *net, bl_pop_snapshot *p);
void bl_pop_restore(bl_net *net, const bl_pop_snapshot *p);
void bl_pop_free(bl_pop_snapshot *p);
/* BN layer k's population statistics <- w x the snapshot's + (1 - w) x its own, means and
 * variances alike (Schneider et al.'s source prior: w = N / (N + n)). */
void bl_pop_mix(bl_net *net, const bl_pop_snapshot *src, int k, double w);
/* The first `samples` indices of a seeded permutation of 0..n-1: the images bl_precise uses. */
bl_status bl_precise_samples(int n, long samples, uint64_t seed, int *idx);
bl_status bl_precise(bl_net *net, const bl_dataset *d, const bl_precise_cfg *c,
                     bl_precise_report *r);
/* Whether the data's images (h, w, channels) are what the net takes; an error naming both, as
 * `who` ("precise"), when not. */
bl_status bl_data_fits(const bl_net *net, const bl_dataset *d, const char *who);

/* ---- inspect (inspect.c): stored BN statistics against fresh PreciseBN ones and the spread of
 * mini-batch statistics, per layer; the net is left as it was. docs/inspect.md. */
#define BL_INSPECT_KL_MAX 0.05     /* flag: a channel's KL(precise || stored) above this */
#define BL_INSPECT_OUTSIDE_MAX 0.5 /* flag: more than this fraction of channels outside 5-95% */
typedef struct {
    long samples;      /* PreciseBN images, default 10^4 */
    int precise_batch; /* default 200 */
    int batch;         /* mini-batch size for the spread, default 128 */
    int batches;       /* how many mini-batches, default 100 */
    uint64_t seed;
    bl_recipe recipe;  /* default Fashion-MNIST's */
    int norm_batch;    /* the PreciseBN reference's ghost groups (bl_precise_cfg.plan); 0: none */
    /* Across processes: the mini-batches of the spread dealt out (batch b to process b mod world)
     * and their means summed into every process; the PreciseBN reference sharded as bl_precise
     * shards it (each process normalizes its share of a batch, the moments merged exactly).
     * Every process gets the whole report. reducer NULL: this process alone. */
    const bl_reducer *reducer;
    int rank, world;
} bl_inspect_cfg;

typedef struct {
    char name[64];
    int channels;
    /* |stored mean - precise mean| / precise std: mean and largest over channels */
    double shift_mean, shift_max;
    double logvar_max;     /* largest |log(stored var / precise var)| (variances + eps) */
    double kl_mean, kl_max; /* KL(N(precise) || N(stored)) per channel: mean, largest */
    double outside;        /* fraction of channels whose stored mean is outside the 5-95% range of
                            * the mini-batch means */
    int flagged;
} bl_inspect_row;

typedef struct {
    int layers, flagged;
    double worst_se; /* of the PreciseBN reference */
    bl_inspect_row row[BL_PRECISE_MAX_LAYERS];
} bl_inspect_report;

void bl_inspect_defaults(bl_inspect_cfg *c);
bl_status bl_inspect(bl_net *net, const bl_dataset *d, const bl_inspect_cfg *c,
                     bl_inspect_report *r);

/* ---- BN folding (fold_net.c) ----------------------------------------------------------------------
 * Every BN that reads the output of a convolution nothing else reads, folded into it (nn.h's
 * formula, the net's statistics); written to path as a safetensors state_dict in PyTorch's names
 * and layouts (conv weights OIHW): the folded convolutions gain "<conv>.bias", the folded BNs'
 * parameters are gone, everything else is as in a checkpoint. record: the "bnlab_fold" metadata
 * (NULL: none). */
bl_status bl_fold_net(const bl_net *net, const char *path, const char *record, bl_fold_report *r);

/* ---- adaptation to a target domain (adapt.c) ------------------------------------------------------
 * The population statistics re-estimated on N target images by PreciseBN (pooled, or sequential),
 * the weights untouched; errors with the source and the target statistics on the same held-out
 * target images. The target split is cut once: its first half is the adaptation pool, the second
 * half the evaluation set. */
#define BL_ADAPT_MAX_DRAWS 64
typedef struct {
    long samples;     /* N drawn from the pool without replacement, no augmentation; default 1000 */
    int batch;        /* PreciseBN batch, default 200 */
    int sequential;   /* the exact layer-by-layer mode */
    int draws;        /* independent draws of N (mean and spread reported), default 1 */
    uint64_t seed;    /* draw k uses seed + k; default 1 */
    bl_recipe recipe; /* the model's normalization */
    /* prior N > 0: the target statistics mixed with the source's, (N source + n target) / (N +
     * n) (bl_precise_cfg.prior); n is cfg.samples, or in the online mode the images seen so far */
    double prior;
    /* online: no pool; the held-out images streamed in batches of cfg.batch, in their order,
     * batch t predicted with the statistics pooled over batches 1..t (each batch normalized by
     * its own statistics, as PreciseBN's batches), mixed by the prior; samples and draws unused */
    int online;
    /* permute: the target cut into halves (and streamed) in a permutation seeded by cfg.seed
     * instead of its own order - for data in class order, as an image folder is, whose halves
     * would otherwise hold different classes and whose stream would come one class at a time;
     * 0 (default): the data's order (the Fashion-MNIST test split's is already random) */
    int permute;
    /* online: after each batch, the images seen and the error so far (%) */
    void (*stream)(void *ctx, long seen, double err);
    void *stream_ctx;
} bl_adapt_cfg;

typedef struct {
    int draws, n_pool, n_eval;
    bl_eval_result source;            /* with the source (stored) statistics */
    double err_source, err_target, err_target_sd; /* %, target: mean over the draws */
    double err_draw[BL_ADAPT_MAX_DRAWS];
    double err_online; /* %, the stream's error (online) */
    bl_precise_report precise;        /* of the first draw */
    bl_precise_cfg precise_cfg;       /* the first draw's PreciseBN (for bl_precise_record) */
} bl_adapt_report;

void bl_adapt_defaults(bl_adapt_cfg *c);
/* keep: the net leaves with the first draw's target statistics (to be saved); otherwise with its
 * own. On an error the net keeps its own. */
bl_status bl_adapt(bl_net *net, const bl_dataset *target, const bl_adapt_cfg *c, int keep,
                   bl_adapt_report *r);

typedef enum { BL_SCHED_COSINE, BL_SCHED_STEP, BL_SCHED_CONST } bl_schedule;

/* A run's configuration. Field names are the command line's flags with '_' for '-'. */
typedef struct {
    bl_model model;       /* --model, --width and its family's options (bl_model_init) */
    bl_plan plan;         /* --norm-batch (0: the SGD batch), --head-bn-images, --sync-bn,
                           * --bn-shuffle */
    bl_sgd sgd;           /* --momentum, --wd, --nesterov, --wd-bn */
    int epochs, batch;
    double lr;
    bl_schedule schedule;
    double warmup_epochs;
    int lr_scaling;       /* 1: lr x batch / 128 (linear), 0: none */
    uint64_t seed;
    int threads, eval_every, eval_minibatch, val;
    long max_steps;       /* 0: no limit */
    int checkpoint_every; /* epochs between checkpoints (the last one and stops always write) */
    int keep_every;       /* also keep epoch<N>.safetensors every K epochs (0: none), to branch or
                           * inspect from the middle of a run */
    /* PreciseBN during training (--precise-bn-every, --final-precise-bn, --precise-samples,
     * --precise-batch): every `every` epochs (0: never) also the test error with fresh precise
     * statistics (the EMA ones are restored after); `final`: the end of training replaces the EMA
     * statistics by precise ones (in the checkpoint too), -1: auto, on unless frozen_bn_epochs
     * (whose frozen statistics are then the model's) or the family's EMA statistics are its
     * population statistics; `samples` N: 0 (default) 10^4, or the training split if smaller;
     * `batch` B, default 200 */
    struct {
        int every, final;
        long samples;
        int batch;
    } precise;
    /* "population batch in training" (FrozenBN): the last frozen_bn_epochs epochs normalize with
     * fixed population statistics, PreciseBN at the start of the phase (each epoch with
     * frozen_bn_reestimate); gamma and beta keep training, no EMA */
    int frozen_bn_epochs, frozen_bn_reestimate;
    bl_recipe recipe;     /* default: Fashion-MNIST's; a resumed run keeps its checkpoint's */
    char out[1024], data_dir[1024], resume[1024];
    /* instead of data_dir's IDX files: an image folder holding train/ and test/ class folders
     * (bnlab corrupt --format png writes them), images taken at their size, grey or RGB by
     * recipe.channels; "" (default): Fashion-MNIST */
    char images[1024];
    /* The plan under processes (hooks.reducer): sync_bn, every BN layer normalizes over the global
     * batch; 0: each process normalizes its share (per-process BN, ghost groups of
     * ceil(batch / W)). The crop head (resnetN-crops, docs/crop-head.md; its backbone always
     * normalizes the whole global batch): its BN layers normalize the crops of groups of
     * head_bn_images images of a process's share (0: the whole share; one process emulates W
     * processes with groups of batch / W), or of the global batch under sync_bn; bn_shuffle: the
     * head's rows permuted across the processes (one process: across the groups) before its first
     * BN, and back after it. */
    /* set (e.g. by a SIGINT/SIGTERM handler) to stop after the current step with a checkpoint */
    const volatile sig_atomic_t *stop;
} bl_train_cfg;

void bl_train_defaults(bl_train_cfg *c);
/* The one resolve step of a configuration, shared by bl_train and the command (which prints the
 * result): the model's dependent defaults, and on cfg.resume the checkpoint's model options and
 * plan wherever the configuration leaves one at its default (one set to another value than the
 * checkpoint's is an error). Idempotent. */
bl_status bl_train_resolve(bl_train_cfg *c);
/* Learning rate at step t of T (warmup W steps, then the schedule). */
double bl_lr_at(const bl_train_cfg *c, long t, long T, long W);

/* ---- the trainer ---------------------------------------------------------------------------------
 * The loop in pieces (docs/architecture.md has the sequence):
 *     bl_trainer_init(&t, cfg, callbacks, hooks);
 *     while (!(st = bl_trainer_step(t, &ev)) && ev != BL_TRAIN_DONE && ev != BL_TRAIN_STOPPED)
 *         if (ev == BL_TRAIN_EPOCH_END) st = bl_trainer_epoch_end(t);
 *     bl_trainer_summary(t, &sum);  bl_trainer_free(t);
 * bl_train runs exactly that. */
typedef struct bl_trainer bl_trainer;

typedef enum {
    BL_TRAIN_STEPPED,   /* one SGD step done */
    BL_TRAIN_EPOCH_END, /* the epoch has no step left: call bl_trainer_epoch_end */
    BL_TRAIN_STOPPED,   /* cfg.stop or cfg.max_steps: a checkpoint of this exact step is written */
    BL_TRAIN_DONE       /* every epoch done */
} bl_train_event;

/* One epoch's figures; error rates in %, -1 where not measured. */
typedef struct {
    int epoch;          /* epochs completed (1-based) */
    long step;
    double lr, train_loss, train_err;
    double test_err_population; /* with the stored statistics (estimator below) */
    double test_err_minibatch, train_err_minibatch, test_err_precise;
    const char *estimator;      /* of the statistics test_err_population used */
    double img_per_s, seconds;
    /* a multi-level head: the population and PreciseBN errors of each level (when measured) */
    int outputs;
    double test_err_population_level[BL_NET_MAX_OUTPUTS];
    double test_err_precise_level[BL_NET_MAX_OUTPUTS];
} bl_epoch_metrics;

typedef struct {
    int epochs;
    long steps;
    int norm_batch;       /* of training and of mini-batch evaluation (a crop head: its
                           * evaluation's, one image) */
    int head_bn_images;   /* a head's BN: the images it normalized together in training (0: no
                           * such head; the global batch under SyncBN) */
    double test_err;      /* population statistics at the end, -1 if not measured */
    const char *estimator;
    double test_err_precise, test_err_minibatch; /* the last measured, -1 if never */
    long precise_samples;
    int final_precise;    /* the checkpoint keeps PreciseBN statistics */
    double best_err;      /* the best test_err_population of the run and its epoch (0: none) */
    int best_epoch;
    int validation;       /* the errors are on a validation split carved from training */
    double seconds;
    char checkpoint[1100]; /* last.safetensors, "" without cfg.out */
} bl_train_summary;

/* What the trainer reports; every member optional. The user pointer is passed back. */
typedef struct {
    void *user;
    /* a run resumed from a checkpoint (at its epoch and step, with its seed) */
    void (*resumed)(void *user, const char *path, int epoch, long step, uint64_t seed);
    /* an epoch starts (steps in it, and how many of them were done before a resume) */
    void (*epoch_start)(void *user, int epoch, long steps, long done);
    /* after each step: done of steps in the epoch, images per second over the epoch so far */
    void (*progress)(void *user, int epoch, long done, long steps, double img_per_s);
    /* FrozenBN's statistics were (re-)estimated with PreciseBN on `samples` images */
    void (*frozen)(void *user, int epoch, long samples);
    /* a checkpoint was written (atomically) */
    void (*checkpoint)(void *user, const char *path);
    /* an epoch ended; its checkpoints are already written. Non-OK stops the run with that
     * status (e.g. metrics could not be written). */
    bl_status (*epoch_end)(void *user, const bl_epoch_metrics *m);
    /* stopped inside an epoch at step (done of steps); checkpoint "" without cfg.out */
    void (*stopped)(void *user, long step, int epoch, long done, long steps, const char *checkpoint);
    /* the run diverged: the step, and the first layer whose output went non-finite (or NULL);
     * bl_trainer_step then returns the error */
    void (*diverged)(void *user, long step, int epoch, const char *layer);
} bl_train_callbacks;

/* The hook points processes fill in (docs/processes.md); NULL members: one process. */
typedef struct {
    void *ctx;
    int rank, world;      /* the sampler: rank takes its share of each global batch (world 0 = 1) */
    int not_writer;       /* 0: this process writes checkpoints (rank 0 under MPI) */
    /* after backward, before the optimizer step: the gradients summed across processes */
    bl_status (*grads)(void *ctx, bl_net *net);
    /* the processes' reductions (rank order, same bits everywhere): SyncBN's groups (cfg.sync_bn),
     * per-process BN's statistics gathered for the EMA, PreciseBN, the sharded evaluation, the
     * step's loss and error counts */
    const bl_reducer *reducer;
    /* flags[0..n) OR-ed across processes in place, so all act alike at one step (the stop flag
     * at each step's start) */
    bl_status (*agree)(void *ctx, int *flags, int n);
    /* every process's status: all OK -> OK, else on every process the lowest failing rank's
     * status and reason (after setup, after each step's backward, at each epoch's end) */
    bl_status (*agree_error)(void *ctx, bl_status st);
    /* the crop head's shuffle across processes (cfg.bn_shuffle): rows of d floats moved by one
     * global permutation, process r holding counts[r] (bl_pg_route's contract) */
    bl_status (*route)(void *ctx, const int *counts, const int *perm, int dir, int d,
                       const float *in, float *out);
} bl_train_hooks;

bl_status bl_trainer_init(bl_trainer **t, const bl_train_cfg *c, const bl_train_callbacks *cb,
                          const bl_train_hooks *h);
bl_status bl_trainer_step(bl_trainer *t, bl_train_event *ev);
/* Evaluation (population, mini-batch, PreciseBN as configured), checkpoints, then the epoch_end
 * callback. */
bl_status bl_trainer_epoch_end(bl_trainer *t);
/* The figures of the run so far; at the end of a run that was not evaluated at its last epoch it
 * evaluates once. */
bl_status bl_trainer_summary(bl_trainer *t, bl_train_summary *s);
bl_net *bl_trainer_net(bl_trainer *t);
void bl_trainer_free(bl_trainer *t);
/* The whole run: data, model, SGD, evaluation, checkpoints (last.safetensors in cfg.out) through
 * the trainer. cb, h, summary may be NULL. metrics.jsonl is the command line's (from epoch_end):
 * one object per epoch with train_loss, train_err, test_err_population (the stored, EMA
 * statistics), test_err_precise, test_err_minibatch and train_err_minibatch (10^4 fixed training
 * images, no augmentation): the paper's three curves are train_err_minibatch,
 * test_err_minibatch, test_err_precise. */
bl_status bl_train(const bl_train_cfg *c, const bl_train_callbacks *cb, const bl_train_hooks *h,
                   bl_train_summary *summary);

#ifdef __cplusplus
}
#endif
#endif
