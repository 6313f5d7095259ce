/* Internal interface of the BN kernels. Two implementations of the same four operations:
 *   ref  - plain loops straight from the formulas, written once for float and double
 *          (bn_ref_impl.h), the yardstick for everything else; the double instance is what the
 *          finite-difference tests differentiate.
 *   fast - float, OpenMP over samples, vectorizable inner loops, double accumulation, every pass
 *          at the minimal memory traffic (bn_fast.c).
 * The layer (layer.c) picks one through bl_bn_kernels; groups, domains, reductions and checks are
 * shared (bn_common.c), so the two differ only in how they loop. */
#ifndef BNLAB_BN_KERNELS_H
#define BNLAB_BN_KERNELS_H

#include "bnlab/bn.h"

#include <math.h>

typedef struct {
    bl_shape s;
    const bl_groups *g; /* never NULL here: the layer passes a whole-batch descriptor for NULL */
    int affine_rows;    /* 1: shared gamma/beta, else row = sample's domain */
    int stats_rows;     /* 1: shared population statistics, else row = sample's domain */
    double eps;
    const char *name;   /* layer name for messages */
    bl_scratch *ws;     /* temporaries (fast kernels) */
    size_t stream_bytes; /* fast kernels: outputs of at least this size use streaming stores */
} bl_bn_kargs;

static inline size_t bl_idx(bl_shape s, int i, int c, size_t p)
{
    size_t hw = bl_shape_hw(s);
    return s.layout == BL_NCHW ? ((size_t)i * s.c + c) * hw + p : ((size_t)i * hw + p) * s.c + c;
}
static inline int bl_affine_row(const bl_bn_kargs *a, int i)
{
    return a->affine_rows > 1 ? a->g->sample_domain[i] : 0;
}
static inline int bl_stats_row(const bl_bn_kargs *a, int i)
{
    return a->stats_rows > 1 ? a->g->sample_domain[i] : 0;
}

/* shared pieces (bn_common.c) */
bl_status bl_shape_check(bl_shape s, const char *what);
/* After the group moments are complete (and reduced): refuse single-value and non-finite groups. */
bl_status bl_bn_check_groups(const bl_bn_kargs *a, const bl_moments *gm);
bl_status bl_bn_reduce_moments(const bl_groups *g, bl_moments *gm);
bl_status bl_bn_reduce_sum(const bl_groups *g, double *buf, size_t n);
static inline double bl_rstd(double var, double eps) { return 1.0 / sqrt(var + eps); }

/* gm: (n_groups * C) out in forward (after reduction), in for backward. dgamma/dbeta accumulate. */
#define BL_BN_KERNEL_DECLS(T, P)                                                                   \
    bl_status P##fwd_batch(const bl_bn_kargs *a, const T *x, const T *gamma, const T *beta, T *y,  \
                           bl_moments *gm);                                                        \
    bl_status P##bwd_batch(const bl_bn_kargs *a, const T *x, const T *dy, const T *gamma,          \
                           const bl_moments *gm, T *dx, T *dgamma, T *dbeta);                      \
    bl_status P##fwd_pop(const bl_bn_kargs *a, const T *x, const T *gamma, const T *beta,          \
                         const T *mean, const T *var, T *y);                                       \
    bl_status P##bwd_pop(const bl_bn_kargs *a, const T *x, const T *dy, const T *gamma,            \
                         const T *mean, const T *var, T *dx, T *dgamma, T *dbeta);

BL_BN_KERNEL_DECLS(float, bl_bn_ref_f32_)
BL_BN_KERNEL_DECLS(double, bl_bn_ref_f64_)
BL_BN_KERNEL_DECLS(float, bl_bn_fast_)

typedef struct {
    bl_status (*fwd_batch)(const bl_bn_kargs *, const float *, const float *, const float *,
                           float *, bl_moments *);
    bl_status (*bwd_batch)(const bl_bn_kargs *, const float *, const float *, const float *,
                           const bl_moments *, float *, float *, float *);
    bl_status (*fwd_pop)(const bl_bn_kargs *, const float *, const float *, const float *,
                         const float *, const float *, float *);
    bl_status (*bwd_pop)(const bl_bn_kargs *, const float *, const float *, const float *,
                         const float *, const float *, float *, float *, float *);
} bl_bn_kernels;
extern const bl_bn_kernels bl_bn_kernels_ref, bl_bn_kernels_fast;

/* The layer's pieces the parts (parts.c) share (layer.c). */
/* Checks the groups against the batch and the layer; NULL means the whole batch. */
bl_status bl_bn_resolve_groups(bl_bn *bn, const bl_groups *g, int n, const bl_groups **out);
bl_bn_kargs bl_bn_kargs_of(bl_bn *bn, bl_shape s, const bl_groups *g);
const bl_bn_kernels *bl_bn_kernels_of(const bl_bn *bn);
/* Room for G groups' pending batch statistics (bn->batch and batch_group_domain). */
bl_status bl_bn_batch_room(bl_bn *bn, int G);
/* Refuses non-finite population statistics or var + eps <= 0, naming the layer and channel. */
bl_status bl_bn_check_population(const bl_bn *bn);

/* Per-sample, per-channel mean and M2 (count H*W each) of x: the fast first pass, also behind
 * bl_moments_add. mean, m2: (N, C). */
void bl_fast_sample_moments(bl_shape s, const float *x, double *mean, double *m2);

#endif
