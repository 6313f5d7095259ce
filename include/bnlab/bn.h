/* bnlab bn: the BatchNorm core, usable alone with plain float buffers.
 *
 * Three ideas, each explicit:
 *   - moments:  per-channel (count, mean, M2) in double with an exact merge. Ghost groups, domains,
 *               SyncBN and PreciseBN are all "which moments to merge".
 *   - groups:   which samples of the memory batch normalize together (whole batch, ghost groups,
 *               per-domain groups, ghost groups within domains; a reducer hook spans processes).
 *   - the layer: forward/backward with batch statistics (per group) or population statistics, affine
 *               and population statistics shared or per domain, and estimators of the population
 *               statistics (EMA, cumulative average, PreciseBN) updated only by an explicit commit.
 * Conventions (eps placement, variance bias, momentum) are in docs/conventions.md. */
#ifndef BNLAB_BN_H
#define BNLAB_BN_H

#include "bnlab/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- moments ------------------------------------------------------------------------------ */
/* k entries of (count, mean, M2 = sum of squared deviations from the mean), in double. An entry
 * is a channel, or a (group, channel) pair stored as g*C + c. One allocation, [n | mean | m2], so a
 * reduction across processes touches one buffer. */
typedef struct {
    int k;
    double *n, *mean, *m2;
} bl_moments;

bl_status bl_moments_init(bl_moments *m, int k);  /* all entries empty (n = 0) */
void bl_moments_free(bl_moments *m);
void bl_moments_zero(bl_moments *m);
bl_status bl_moments_copy(bl_moments *dst, const bl_moments *src); /* resizes dst */
/* Merges the per-channel moments of x (all samples, all pixels) into m; m->k must equal s.c.
 * x: (N,C,H,W) or (N,H,W,C) by s.layout. N = 0 is allowed and changes nothing. */
bl_status bl_moments_add(bl_moments *m, bl_shape s, const float *x);
/* Exact parallel merge (Chan, Golub & LeVeque 1979) of one entry; empty sides allowed. */
void bl_moments_merge1(double *n, double *mean, double *m2, double nb, double meanb, double m2b);
bl_status bl_moments_merge(bl_moments *dst, const bl_moments *src); /* entry-wise */
/* Variance of entry i: biased M2/n, or unbiased M2/(n-1). NAN when undefined (n = 0, or n = 1
 * unbiased). */
double bl_moments_var(const bl_moments *m, int i, int unbiased);

/* ---- normalization groups ----------------------------------------------------------------- */
/* A reduction across processes (SyncBN). The groups of every process are the same groups: their
 * statistics are merged before normalizing and their gradient sums added in backward. Every
 * process must call forward/backward (an empty process with N = 0 included), so none hangs. */
typedef struct {
    void *ctx;
    bl_status (*merge_moments)(void *ctx, bl_moments *m); /* in place: m <- merge over processes */
    bl_status (*sum)(void *ctx, double *buf, size_t n);   /* in place: buf <- sum over processes */
    /* *out (bl_alloc'ed, the caller bl_frees) <- every process's n doubles, rank order */
    bl_status (*gather)(void *ctx, const double *in, size_t n, double **out, size_t *n_out);
} bl_reducer;

typedef struct {
    int n;              /* samples in the memory batch */
    int n_groups;
    int n_domains;      /* 1 when samples carry no domain */
    int ghost;          /* ghost group size, 0 when none (for messages) */
    int *sample_group;  /* (n) */
    int *sample_domain; /* (n) */
    int *group_domain;  /* (n_groups) domain shared by all samples of the group, -1 if mixed */
    const bl_reducer *reducer; /* NULL: the groups are local to this process */
} bl_groups;

/* The whole memory batch is one group. */
bl_status bl_groups_whole(bl_groups *g, int n);
/* Ghost groups of `size`, contiguous like torch.split: group j = samples [j*size, (j+1)*size),
 * the last one smaller when size does not divide n. */
bl_status bl_groups_ghost(bl_groups *g, int n, int size);
/* The general form. domain: (n) ids in [0, n_domains), or NULL (all 0, n_domains must be 1).
 * split_by_domain: samples of different domains never share a group. ghost > 0: groups of at most
 * `ghost` samples in memory order (within each domain when split). Examples:
 *   per-domain groups:          bl_groups_make(g, n, 0, dom, D, 1)
 *   ghost groups within domains: bl_groups_make(g, n, G, dom, D, 1)
 *   whole batch, per-domain affine or population statistics: bl_groups_make(g, n, 0, dom, D, 0) */
bl_status bl_groups_make(bl_groups *g, int n, int ghost, const int *domain, int n_domains,
                         int split_by_domain);
void bl_groups_free(bl_groups *g);
/* Samples in group j (a count; groups need not be contiguous). */
int bl_groups_size(const bl_groups *g, int j);

/* ---- the layer ---------------------------------------------------------------------------- */
#define BL_BN_CUMULATIVE (-1.0)
#define BL_BN_STREAM_BYTES ((size_t)16 << 20) /* momentum value: cumulative average, PyTorch's momentum=None */

typedef enum { BL_BN_BATCH = 0, BL_BN_POPULATION = 1 } bl_bn_mode;
typedef enum { BL_KERNEL_FAST = 0, BL_KERNEL_REF = 1 } bl_kernel;
/* Which estimator produced the stored population statistics (recorded in checkpoints). */
typedef enum {
    BL_EST_INIT = 0,   /* never estimated: mean 0, var 1 */
    BL_EST_EMA,        /* exponential moving average */
    BL_EST_CUMULATIVE, /* cumulative average (momentum = BL_BN_CUMULATIVE) */
    BL_EST_PRECISE,    /* PreciseBN pooled estimator */
    BL_EST_LOADED      /* set from outside (a checkpoint, an adaptation pass) */
} bl_estimator;
const char *bl_estimator_name(bl_estimator e);

typedef struct {
    int channels;
    double eps;         /* inside the square root: 1/sqrt(var + eps); default 1e-5 */
    double momentum;    /* EMA weight of the new value (PyTorch); default 0.1; BL_BN_CUMULATIVE */
    int affine_domains; /* 1: shared gamma/beta; D: one row per domain */
    int stats_domains;  /* 1: shared population statistics; D: one row per domain */
    const char *name;   /* used in error messages, e.g. "layer1.0.bn1" */
} bl_bn_config;
bl_bn_config bl_bn_config_default(int channels);

typedef struct {
    bl_bn_config cfg;
    char name[64];
    bl_kernel kernel;             /* fast (default) or the plain reference */
    size_t stream_bytes;          /* fast kernels write outputs of at least this many bytes with
                                   * streaming stores (default BL_BN_STREAM_BYTES: larger than
                                   * the caches, so the output would be evicted anyway) */
    /* Parameters and gradients, (affine_domains, C); gamma = 1, beta = 0 at init. Gradients
     * accumulate (+=) over backward calls: zero them per step (bl_bn_zero_grad). */
    float *gamma, *beta, *dgamma, *dbeta;
    /* Population statistics, (stats_domains, C): PyTorch's running_mean / running_var (the
     * variance stored by EMA is unbiased, by PreciseBN biased: see docs/conventions.md). */
    float *pop_mean, *pop_var;
    int64_t *num_batches_tracked; /* (stats_domains) commits applied by EMA */
    bl_estimator pop_source;
    bl_moments pooled;            /* PreciseBN accumulator, (stats_domains * C) */
    /* Forward cache: batch statistics of the last batch-mode forward, after any reduction, and
     * whether they still await a commit. */
    bl_moments batch;             /* (n_groups * C) */
    int *batch_group_domain;      /* (n_groups) */
    int batch_groups, batch_cap;
    int pending;
    bl_bn_mode last_mode;
    bl_shape last_shape;
    bl_groups whole;              /* the whole-batch descriptor used for g = NULL */
    bl_scratch ws;
    void *owned;                  /* the block holding the parameters and statistics */
} bl_bn;

bl_status bl_bn_init(bl_bn *bn, const bl_bn_config *cfg);
void bl_bn_free(bl_bn *bn);
/* Points the layer at outside memory (e.g. a network's parameter block); NULL keeps a pointer.
 * Sizes: gamma..dbeta (affine_domains*C), mean/var (stats_domains*C). Contents are not copied. */
void bl_bn_bind(bl_bn *bn, float *gamma, float *beta, float *dgamma, float *dbeta, float *mean,
                float *var);
void bl_bn_zero_grad(bl_bn *bn);

/* Population mode as a per-channel affine map, y = (x - mu) * scale + shift, with the values the
 * population-mode forward uses (so a caller fusing it into another pass gets the same floats).
 * Only for one row of statistics and affine parameters (stats_domains = affine_domains = 1);
 * fails on unusable population statistics like the forward does. */
bl_status bl_bn_pop_affine(const bl_bn *bn, float *mu, float *scale, float *shift);

/* y = gamma * (x - mu) / sqrt(var + eps) + beta, per channel.
 * BL_BN_BATCH: mu, var (biased) of the sample's group; the statistics are kept for backward and
 *   for one commit. A group with one value per channel (N*H*W = 1) or non-finite statistics is
 *   an error naming the layer and group.
 * BL_BN_POPULATION: mu, var from pop_mean/pop_var (row = sample's domain when per domain).
 * g: the groups (NULL: the whole batch, no domains). x, y: (N,C,H,W) or (N,H,W,C); y may be x
 * when no backward follows (backward needs x). */
bl_status bl_bn_forward(bl_bn *bn, bl_bn_mode mode, const bl_groups *g, bl_shape s,
                        const float *x, float *y);
/* Backward of the last forward (same mode, groups, shape and x). Batch mode differentiates
 * through mu and var per group; population mode treats them as constants:
 * dx = gamma * dy / sqrt(var + eps). dgamma += sum(dy * xhat), dbeta += sum(dy). */
bl_status bl_bn_backward(bl_bn *bn, const bl_groups *g, const float *x, const float *dy, float *dx);

/* Applies the pending batch statistics to an estimator, once:
 * BL_EST_EMA: EMA (or the cumulative average when momentum = BL_BN_CUMULATIVE) of the groups' mean
 *   and unbiased variance; with several groups, once from the mean over groups of their means and
 *   of their unbiased variances (Keras' virtual-batch rule), per stats domain.
 * BL_EST_PRECISE: pools the groups' moments into the PreciseBN accumulator.
 * Non-finite statistics are refused and change nothing. */
bl_status bl_bn_commit(bl_bn *bn, bl_estimator est);
/* Per-process BN across processes: replaces the pending batch statistics by the concatenation of
 * every process's groups in rank order (r->gather), so one commit updates the EMA from all of
 * them by the ghost rule and every process stores the same statistics. A process with nothing
 * pending (no batch forward) contributes no group. Collective: every process calls it. */
bl_status bl_bn_gather_pending(bl_bn *bn, const bl_reducer *r);
void bl_bn_precise_reset(bl_bn *bn);
/* Writes the pooled mean and biased variance into pop_mean/pop_var (domains that saw no sample keep
 * theirs); an error when no sample was pooled at all. */
bl_status bl_bn_precise_apply(bl_bn *bn);

/* ---- parts: several tensors one BN layer normalizes (the levels of a feature pyramid) -----------
 * The parts share N and C; their H and W may differ. part[k] is part k's core: its gamma/beta
 * (bound to a shared row or its own) and its own population statistics; pool keeps the statistics
 * of all parts' pixels pooled (its affine is unused). Nothing is copied into one tensor.
 * Batch mode, merged = 0: each part with its own batch statistics (bl_bn_forward, groups allowed);
 *   merged = 1: each part with the statistics of all parts' pixels pooled - BN over the parts'
 *   concatenation (one group: the whole batch). Either way every part's own moments and the
 *   pooled moments are pending afterwards, so committing part[k] and pool keeps both kinds of
 *   population statistics (the EMA of pool is fed the pooled moments, not an average over parts).
 * Population mode, merged = 0: each part with its own statistics; 1: with pool's.
 * The backward follows the last forward; dgamma/dbeta accumulate into each part's binding (a
 * shared binding receives the sum over parts). */
typedef struct {
    int n;
    bl_bn **part; /* (n) */
    bl_bn *pool;
    int merged;   /* the last forward's */
    bl_bn_mode mode;
    bl_shape s[8];
    double *mu, *rstd; /* (C) the merged batch statistics of the last forward */
    float *fmu, *fvar; /* (C) the same for the kernels */
} bl_bn_parts;
#define BL_BN_PARTS_MAX 8

bl_status bl_bn_parts_init(bl_bn_parts *p, int n, bl_bn **part, bl_bn *pool);
void bl_bn_parts_free(bl_bn_parts *p);
bl_status bl_bn_parts_forward(bl_bn_parts *p, bl_bn_mode mode, int merged, const bl_groups *g,
                              const bl_shape *s, const float *const *x, float *const *y);
bl_status bl_bn_parts_backward(bl_bn_parts *p, const bl_groups *g, const float *const *x,
                               const float *const *dy, float *const *dx);

/* ---- estimators on their own (what commit calls) ----------------------------------------- */
/* gm: (n_groups * C) group moments; group_domain: (n_groups), used when rows > 1. */
bl_status bl_ema_update(float *mean, float *var, int64_t *nbt, int rows, int c, double momentum,
                        const bl_moments *gm, const int *group_domain, int n_groups);
bl_status bl_pooled_update(bl_moments *pooled, int rows, int c, const bl_moments *gm,
                           const int *group_domain, int n_groups);

#ifdef __cplusplus
}
#endif
#endif
