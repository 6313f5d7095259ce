/* bnlab nn: layers with forward/backward through one small ops table, networks built from them,
 * and the model family (the CIFAR ResNet of He et al. 2016, section 4.2).
 *
 * Activations are NHWC. A network owns one block per role: parameters, their gradients, optimizer
 * state, buffers (BN population statistics) and activations (+ their gradients), so zeroing the
 * gradients is one memset and a checkpoint or an all-reduce touches one buffer. Parameters carry
 * PyTorch state_dict names and shapes (conv weights OIHW in checkpoints; OHWI inside, which is
 * what im2col wants). */
#ifndef BNLAB_NN_H
#define BNLAB_NN_H

#include "bnlab/bn.h"
#include "bnlab/family.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- GEMM ------------------------------------------------------------------------------------
 * C = alpha * op(A) op(B) + beta * C, row-major, op = transpose when trans*. CBLAS (OpenBLAS) when
 * built with it, else the plain reference loop; bl_gemm_ref is always the plain loop. */
void bl_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
             const float *b, int ldb, float beta, float *c, int ldc);
void bl_gemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* ---- tensors and parameters ------------------------------------------------------------------ */
typedef struct {
    int h, w, c;        /* per-sample shape; the batch is the net's */
    float *data, *grad; /* (batch, h, w, c); a constant: (h, w, c), grad NULL */
    int users;          /* layers reading it (set at finalize) */
    int constant;       /* fixed values shared by every sample (bl_net_const) */
} bl_tensor;
/* Elements of one sample of tensor t. */
static inline size_t bl_tsize(const bl_tensor *t) { return (size_t)t->h * t->w * t->c; }

typedef enum {
    BL_P_WEIGHT,  /* conv / linear weight: trained, weight decay */
    BL_P_BIAS,    /* linear bias: trained, decay unless --wd-bn off excludes it */
    BL_P_BN,      /* BN gamma / beta: trained, decay unless excluded */
    BL_P_BUFFER,  /* BN running_mean / running_var: float, not trained */
    BL_P_COUNT    /* BN num_batches_tracked: int64, shape [] */
} bl_param_kind;

typedef struct bl_param {
    char name[96];
    bl_param_kind kind;
    int ndim, shape[4];  /* PyTorch shape (conv OIHW) */
    int ohwi;            /* stored OHWI inside (conv weights) */
    size_t count, offset;/* floats, and offset in the params block (or buffers block) */
    float *data;         /* bound at finalize (NULL for BL_P_COUNT) */
    int64_t *i64;        /* BL_P_COUNT only */
    int optional;        /* 0, or a group: a checkpoint may lack the group's parameters, all of them
                          * (statistics never estimated: a multi-level layer's per-level ones) */
    int owner;           /* the layer that declared it (its index), which initializes it */
} bl_param;

typedef struct bl_net bl_net;
typedef struct bl_layer bl_layer;

/* ---- RoIAlign (roi_align.c): crops of a feature map, the crop head's sampling ----------------------
 * torchvision.ops.roi_align(aligned=True, sampling_ratio=1) semantics: box corners in map pixels
 * (the map spans [0, W] x [0, H]), out x out bins, each the bilinear sample at the bin's centre;
 * samples beyond a pixel outside the map are 0. x: (n, h, w, c) NHWC; box k crops image
 * box_image[k]; y: (K, out, out, c). The backward adds into dx (zero it first); boxes get no
 * gradient. */
typedef struct {
    float x0, y0, x1, y1;
} bl_box;
bl_status bl_roi_align_forward(const float *x, int n, int h, int w, int c, const bl_box *boxes,
                               const int *box_image, int K, int out, float *y);
bl_status bl_roi_align_backward(const float *dy, int n, int h, int w, int c, const bl_box *boxes,
                                const int *box_image, int K, int out, float *dx);
/* K square boxes per image inside an h x w map (crops.c): side uniform in [lo, hi] map pixels,
 * placed uniformly inside; a function of (seed, stream, sample_ids[i]) alone (training: stream =
 * epoch; evaluation: one fixed stream). Image i's boxes are i*K .. i*K + K - 1 (box_image = i).
 * Refused: K < 1, sides that do not fit the map. */
bl_status bl_crop_boxes(int n, const int *sample_ids, int K, int h, int w, double lo, double hi,
                        uint64_t seed, int stream, bl_box *boxes, int *box_image);
/* The shuffle of step `step`: a permutation of total items from the seed alone, the same on every
 * process; slot s of the shuffled order takes item perm[s] (items and slots numbered globally in
 * rank order). */
bl_status bl_shuffle_perm(uint64_t seed, long step, int total, int *perm);

/* ---- the crop head (crop_head.c; docs/crop-head.md) ---------------------------------------------
 * Its tensors hold K rows per image: per-sample shape (K, 1, C), so a BN layer over them normalizes
 * the rows (crops) of its groups' images, and groups of images are groups of crops. */
#define BL_CROP_OUT 4 /* RoIAlign output side */
/* The shuffle of a head's rows across processes (--bn-shuffle): slot s takes row perm[s], rows and
 * slots numbered globally in rank order. route moves this process's rows (dir 1: shuffle; -1:
 * back) and is collective; NULL: one process holding every row. */
typedef struct {
    const int *perm;
    void *ctx;
    bl_status (*route)(void *ctx, const int *perm, int dir, int d, const float *in, float *out);
} bl_shuffle;

/* ---- the forward context ------------------------------------------------------------------------
 * How every BN layer normalizes in one forward and its backward: per BN layer (network order, see
 * bl_net_bn_at) a mode and the groups, NULL meaning the whole batch. It belongs to the call, not to
 * the net, so evaluation, PreciseBN, inspect and training never save and restore anything; layers
 * may differ (the sequential PreciseBN mode, FrozenBN, heads normalizing other groups). A reducer
 * (SyncBN) rides on the groups descriptor. The backward takes the forward's context. */
typedef struct {
    bl_bn_mode mode;
    const bl_groups *groups; /* NULL: the whole batch (no reducer) */
} bl_bn_use;

/* The per-sample randomness of a pass (a crop head's boxes): sample i's draws are a function of
 * (seed, stream, ids[i]) alone (ids NULL: 0..n-1; streams: core.h's table). `fixed`: a layer's
 * draws given instead (a crop head: its n * K boxes, image i's at i*K ..). A context without one
 * draws as evaluation does (BL_SEED_EVAL_CROPS, BL_STREAM_EVAL, ids 0..n-1). */
typedef struct {
    uint64_t seed;
    int stream;
    const int *ids;
    const void *fixed;
} bl_draw;

typedef struct {
    int n_bn;       /* entries in bn: the net's BN layer count; 0 when bn is NULL */
    bl_bn_use *bn;  /* (n_bn) per layer, or NULL: `all` applies to every BN layer */
    bl_bn_use all;
    const bl_draw *draw;       /* the pass's per-sample randomness (NULL: see bl_draw) */
    const bl_shuffle *shuffle; /* a head's shuffle across processes (NULL: none) */
} bl_ctx;

/* Every BN layer alike, nothing allocated (training, evaluation). */
static inline bl_ctx bl_ctx_all(bl_bn_mode mode, const bl_groups *groups)
{
    bl_ctx c = {0, (bl_bn_use *)0, {mode, groups}, (const bl_draw *)0, (const bl_shuffle *)0};
    return c;
}
/* A per-layer context for net, every entry (mode, groups) to start with; bl_ctx_free after. */
bl_status bl_ctx_init(bl_ctx *c, const bl_net *net, bl_bn_mode mode, const bl_groups *groups);
void bl_ctx_free(bl_ctx *c);
/* How BN layer i normalizes under c. */
static inline const bl_bn_use *bl_ctx_use(const bl_ctx *c, int i)
{
    return c->bn ? &c->bn[i] : &c->all;
}

/* ---- the normalization plan and the passes ---------------------------------------------------------
 * Which samples normalize together, resolved once for a run and recorded in its checkpoints
 * (metadata "plan"): the fields are named after the flags, and so are the keys. */
typedef struct bl_plan {
    int norm_batch;     /* ghost groups of this many samples (0: the whole batch, or each
                         * process's share) */
    int head_bn_images; /* a head's BN layers (the crop head's): the crops of groups of this many
                         * images (0: like the backbone) */
    int sync_bn;        /* SyncBN: every group spans the processes (the pass's reducer) */
    int bn_shuffle;     /* a head's rows shuffled across the processes (or its groups) */
} bl_plan;

/* One pass: what bl_pass_make needs to know besides the plan. */
typedef struct bl_pass_spec {
    bl_bn_mode mode;   /* batch statistics (training, PreciseBN, mini-batch evaluation) or
                        * population statistics */
    int n;             /* samples in the forward */
    const int *ids;    /* their indices in the split (NULL: 0..n-1) */
    uint64_t seed;     /* of their per-sample draws */
    int stream;        /* which pass: a training epoch (>= 0) or a bl_stream */
    const bl_reducer *reducer; /* the processes' (SyncBN rides on the groups); NULL: one */
    const bl_shuffle *shuffle; /* a training step's shuffle (with plan->bn_shuffle) */
    const void *fixed; /* layers' given draws (bl_draw) */
} bl_pass_spec;

/* A pass's context and everything it points to, owned by the pass (no copy aliases anything
 * another pass owns). */
#define BL_PASS_GROUPS 2
typedef struct bl_pass {
    bl_ctx ctx;
    bl_bn_use *use;                  /* (n_bn) */
    bl_groups groups[BL_PASS_GROUPS]; /* [0]: the plan's groups of the batch; [1]: a family's */
    bl_draw draw;
} bl_pass;

/* The only place a forward context is built: every BN core gets s->mode and the plan's groups of
 * the s->n samples (ghost groups of plan->norm_batch, unless SyncBN; the reducer under SyncBN),
 * then the net's family adjusts its own layers (a crop head's groups). bl_pass_free after. */
bl_status bl_pass_make(bl_pass *p, const bl_net *net, const bl_plan *plan, const bl_pass_spec *s);
void bl_pass_free(bl_pass *p);
/* Groups of n samples for a family's plan_pass: ghost groups of `size` when 0 < size < n, else
 * one; into p->groups[slot]. */
bl_status bl_pass_groups(bl_pass *p, int slot, int n, int size, const bl_reducer *reducer);

/* ---- layers -------------------------------------------------------------------------------------- */
typedef enum {
    BL_LAYER_CONV,
    BL_LAYER_BN,
    BL_LAYER_RELU,
    BL_LAYER_ADD,
    BL_LAYER_GAP,
    BL_LAYER_LINEAR,
    BL_LAYER_GN,
    BL_LAYER_BN_PARTS, /* one BN over several inputs (bl_net_bn_levels) */
    BL_LAYER_ROI,      /* a crop head's RoIAlign */
    BL_LAYER_SHUFFLE,  /* a crop head's shuffle of rows */
    BL_LAYER_ELTWISE,  /* a binary elementwise op with broadcast (bl_net_eltwise) */
    BL_LAYER_CONV_GENERAL, /* the layers of imported graphs (forward only) */
    BL_LAYER_POOL,
    BL_LAYER_UNARY,
    BL_LAYER_GATHER,
    BL_LAYER_CONCAT,
    BL_LAYER_SOFTMAX,
    BL_LAYER_OTHER     /* an extender's */
} bl_layer_kind;

struct bl_cost;
typedef struct {
    bl_layer_kind kind;
    const char *kind_name;                           /* "conv", for messages */
    bl_status (*bind)(bl_layer *l, bl_net *net);     /* after memory exists (optional) */
    bl_status (*forward)(bl_layer *l, bl_net *net, const bl_ctx *ctx);
    /* add (acc) or write input gradients; ctx: the forward's */
    bl_status (*backward)(bl_layer *l, bl_net *net, const bl_ctx *ctx);
    void (*free)(bl_layer *l);
    /* Inference forward (optional, population statistics everywhere): may also compute the layers
     * after this one when they can be fused with it; sets *used to the number of layers done. */
    bl_status (*infer)(bl_layer *l, bl_net *net, int *used);
    /* BN layers: the BN cores the layer holds (with core NULL: how many), in the order the net
     * lists them; in[j] receives the mask of the layer inputs core j normalizes (bit k: in[k]). */
    int (*cores)(bl_layer *l, bl_bn **core, unsigned *in);
    /* A forward failed at an earlier layer (optional): a layer that makes collective calls joins
     * them anyway (with whatever data), so every process makes the same calls. */
    void (*abort)(bl_layer *l, bl_net *net, const bl_ctx *ctx);
    /* Initializes the parameters this layer declared (bl_param.owner), drawing from r in their
     * order (optional: the layer has none, or they need no values). bl_net_init_params calls the
     * layers in network order. */
    void (*init)(bl_layer *l, bl_net *net, bl_rng *r);
    /* The layer may read constant tensors (bl_net_const): it broadcasts them over the batch and
     * writes them no gradient. Other layers are refused one. */
    int const_inputs;
    /* Its backward passes the output's gradient unchanged to every input (a residual add): at
     * finalize, an input that only this layer reads gets the output's gradient buffer as its
     * own, and the backward skips an input whose gradient is the output's (no copy). */
    int grad_passthrough;
    /* The work of one sample in one pass (optional; the profiler's, bnlab/nn.h): layers without
     * it count no arithmetic and their tensors' bytes. */
    void (*cost)(const bl_layer *l, const bl_net *net, int pass, struct bl_cost *c);
} bl_layer_ops;

/* The most outputs a net declares (bl_net_set_outputs): the evaluation's per-output errors. */
#define BL_NET_MAX_OUTPUTS 4

/* A layer of the net: any number of inputs and outputs. Its ops read these fields (the layer API,
 * bnlab/layer.h). */
struct bl_layer {
    const bl_layer_ops *ops;
    char name[64];
    int *in, n_in;  /* the tensors it reads */
    int out, n_out; /* outputs: tensors out .. out + n_out - 1 */
    int *acc;       /* (n_in) backward adds into in[k]'s gradient (another consumer wrote it) */
    int need_dx;    /* 0 when it reads the network input or a constant: no input gradient */
    int bn_index;   /* its first BN core among the net's (network order), -1 for other kinds */
    void *state;
};

/* The net's fields are private to src/nn (compiled with BL_NET_INTERNAL): elsewhere their names
 * are mangled, so code outside src/nn - the trainer, the commands, an extender's family - reads
 * them through the accessors below and the layout may change under them. */
#ifdef BL_NET_INTERNAL
#define BL_NET_F(f) f
#else
#define BL_NET_F(f) f##_private_
#endif
struct bl_net {
    int BL_NET_F(n_layers), BL_NET_F(n_tensors), BL_NET_F(n_params);
    int BL_NET_F(cap_layers), BL_NET_F(cap_tensors), BL_NET_F(cap_params);
    bl_layer *BL_NET_F(layers);
    bl_tensor *BL_NET_F(t);  /* t[0] is the input */
    bl_param *BL_NET_F(params);
    int BL_NET_F(batch);     /* samples in the current forward */
    int BL_NET_F(max_batch); /* activations are allocated for this many */
    size_t BL_NET_F(n_param_floats), BL_NET_F(n_buffer_floats);
    float *BL_NET_F(param_block), *BL_NET_F(grad_block), *BL_NET_F(optim_block);
    float *BL_NET_F(buffer_block), *BL_NET_F(act_block);
    /* the BN cores, listed once at finalize: bn[i] belongs to layer bn_layer[i] and normalizes
     * the inputs in mask bn_in[i] (a plain BN layer: one core, its input) */
    int BL_NET_F(n_bn);
    int *BL_NET_F(bn_layer);
    unsigned *BL_NET_F(bn_in);
    bl_bn **BL_NET_F(bn);
    /* the outputs (logits, one per level of a multi-level head): the loss is the mean of their
     * cross-entropies, the prediction the mean of their logits; default: the last tensor */
    int BL_NET_F(n_outputs), BL_NET_F(outputs)[BL_NET_MAX_OUTPUTS];
    int BL_NET_F(n_classes);
    char BL_NET_F(arch)[64];    /* e.g. "resnet20", "resnet20-ml": model.name */
    int BL_NET_F(width);
    bl_model BL_NET_F(model);   /* the model it was built from (family NULL: built by hand) */
    /* declaring only (bl_model_declare): every parameter checked as it is declared, finalize
     * allocates nothing */
    bl_param_check BL_NET_F(declare_check);
    void *BL_NET_F(declare_ctx);
    bl_scratch BL_NET_F(ws);    /* im2col and friends, shared by all layers */
    int BL_NET_F(finalized);
    struct bl_profile *BL_NET_F(prof); /* the profiler's times (NULL: none taken) */
};

/* ---- reading a net (the accessors) --------------------------------------------------------- */
static inline int bl_net_tensor_count(const bl_net *net) { return net->BL_NET_F(n_tensors); }
/* Tensor id (0: the input), or NULL out of range. */
static inline bl_tensor *bl_net_tensor_at(const bl_net *net, int id)
{
    return id >= 0 && id < net->BL_NET_F(n_tensors) ? &net->BL_NET_F(t)[id] : (bl_tensor *)0;
}
static inline int bl_net_layer_count(const bl_net *net) { return net->BL_NET_F(n_layers); }
static inline bl_layer *bl_net_layer_at(const bl_net *net, int i)
{
    return i >= 0 && i < net->BL_NET_F(n_layers) ? &net->BL_NET_F(layers)[i] : (bl_layer *)0;
}
static inline int bl_net_param_count(const bl_net *net) { return net->BL_NET_F(n_params); }
/* Parameter i in declaration order (checkpoint order), or NULL. */
static inline bl_param *bl_net_param_at(const bl_net *net, int i)
{
    return i >= 0 && i < net->BL_NET_F(n_params) ? &net->BL_NET_F(params)[i] : (bl_param *)0;
}
/* Samples in the current forward, and the most a forward may hold. */
static inline int bl_net_batch(const bl_net *net) { return net->BL_NET_F(batch); }
static inline int bl_net_max_batch(const bl_net *net) { return net->BL_NET_F(max_batch); }
static inline int bl_net_classes(const bl_net *net) { return net->BL_NET_F(n_classes); }
/* The model it was built from (its family NULL for a net built by hand), its name and width. */
static inline const bl_model *bl_net_model(const bl_net *net) { return &net->BL_NET_F(model); }
static inline const char *bl_net_arch(const bl_net *net) { return net->BL_NET_F(arch); }
static inline int bl_net_width(const bl_net *net) { return net->BL_NET_F(width); }
/* The outputs: how many, and output k's tensor id. */
static inline int bl_net_output_count(const bl_net *net) { return net->BL_NET_F(n_outputs); }
static inline int bl_net_output(const bl_net *net, int k)
{
    return k >= 0 && k < net->BL_NET_F(n_outputs) ? net->BL_NET_F(outputs)[k] : -1;
}
/* The memory blocks, one per role (after finalize): a parameter's value, gradient and momentum
 * sit at param.offset in the first three, a buffer's at its offset in the fourth. */
typedef enum { BL_BLOCK_PARAMS, BL_BLOCK_GRADS, BL_BLOCK_OPTIM, BL_BLOCK_BUFFERS } bl_block;
static inline float *bl_net_block(const bl_net *net, bl_block b, size_t *floats)
{
    const int buf = b == BL_BLOCK_BUFFERS;
    if (floats) *floats = buf ? net->BL_NET_F(n_buffer_floats) : net->BL_NET_F(n_param_floats);
    return b == BL_BLOCK_PARAMS ? net->BL_NET_F(param_block)
         : b == BL_BLOCK_GRADS  ? net->BL_NET_F(grad_block)
         : b == BL_BLOCK_OPTIM  ? net->BL_NET_F(optim_block) : net->BL_NET_F(buffer_block);
}
static inline size_t bl_net_floats(const bl_net *net, bl_block b)
{
    size_t n;
    (void)bl_net_block(net, b, &n);
    return n;
}
/* Parameter idx's gradient (a layer's backward adds into it) and momentum. */
static inline float *bl_net_param_grad(const bl_net *net, int idx)
{
    return net->BL_NET_F(grad_block) + net->BL_NET_F(params)[idx].offset;
}
static inline float *bl_net_param_optim(const bl_net *net, int idx)
{
    return net->BL_NET_F(optim_block) + net->BL_NET_F(params)[idx].offset;
}
/* Scratch memory shared by the layers (valid until the next layer's call). */
static inline bl_scratch *bl_net_scratch(bl_net *net) { return &net->BL_NET_F(ws); }

bl_status bl_net_init(bl_net *net, int h, int w, int c, int max_batch);
void bl_net_free(bl_net *net);
/* Allocates the blocks, binds every layer and lists the BN layers; call once after adding the
 * layers. */
bl_status bl_net_finalize(bl_net *net);
/* Layer constructors: *out receives the output tensor id. On failure the reason names the layer;
 * the net is then only fit for bl_net_free. */
bl_status bl_net_conv(bl_net *net, const char *name, int in, int cout, int k, int stride, int pad,
                      int *out);
/* A convolution whose weight is the parameter `weight`: declared when new, shared when another
 * layer declared it already (the shapes must agree; gradients of all its users add up). */
bl_status bl_net_conv_param(bl_net *net, const char *name, const char *weight, int in, int cout,
                            int k, int stride, int pad, int *out);
bl_status bl_net_bn(bl_net *net, const char *name, int in, int *out);
bl_status bl_net_relu(bl_net *net, const char *name, int in, int *out);
bl_status bl_net_add(bl_net *net, const char *name, int a, int b, int *out);
bl_status bl_net_gap(bl_net *net, const char *name, int in, int *out);
/* y = a op b elementwise, broadcast as NumPy (and ONNX) broadcast (batch, h, w, c): in each of h,
 * w and c the two sizes agree or one is 1, and a constant tensor (bl_net_const) is one sample for
 * the whole batch. y has the larger size of each; a squeeze-excitation scale is x (h, w, c) times
 * s (1, 1, c), a bias a constant (1, 1, c). The backward sums each input's gradient over the
 * places it was broadcast to; constants get none. Refused: two constants (fold them first). */
typedef enum { BL_ELT_ADD, BL_ELT_SUB, BL_ELT_MUL, BL_ELT_DIV } bl_elt_op;
bl_status bl_net_eltwise(bl_net *net, const char *name, bl_elt_op op, int a, int b, int *out);
/* A BN layer whose parameters have the given names (gamma, beta, running mean, running var: an
 * imported graph's initializers), epsilon and momentum, without num_batches_tracked. */
bl_status bl_net_bn_named(bl_net *net, const char *name, int in, const char *const names[4],
                          double eps, double momentum, int *out);
/* A linear layer on the flattened sample with parameters of the given names: weight (cout, the
 * input's size), bias (cout) or NULL; shared when declared already. */
bl_status bl_net_linear_named(bl_net *net, const char *name, int in, int cout, const char *weight,
                              const char *bias, int *out);

/* ---- the layers of imported graphs (forward only: their backward is an error) -------------------
 * A convolution as ONNX defines it: kernel kh x kw, strides, dilations, pads (top, left, bottom,
 * right), groups; weight (cout, cin / groups, kh, kw) and an optional bias, by name (shared when
 * declared already). Group 1 through im2col + SGEMM, depthwise by a direct loop. */
typedef struct {
    int cout, kh, kw, sh, sw, dh, dw, groups;
    int pad[4]; /* top, left, bottom, right */
} bl_conv_spec;
bl_status bl_net_conv_general(bl_net *net, const char *name, int in, const bl_conv_spec *s,
                              const char *weight, const char *bias, int *out);
/* The output size of s on an h x w input (BL_ERR_ARG: the kernel does not fit). */
bl_status bl_conv_out(const bl_conv_spec *s, int h, int w, int *ho, int *wo);
/* Max or average pooling as ONNX (and PyTorch) define it. */
typedef struct {
    int max;                     /* 1: MaxPool, 0: AveragePool */
    int kh, kw, sh, sw, dh, dw;  /* dilations: MaxPool only */
    int pad[4];                  /* top, left, bottom, right */
    int ceil_mode, count_include_pad;
} bl_pool_spec;
bl_status bl_net_pool(bl_net *net, const char *name, int in, const bl_pool_spec *s, int *out);
/* Activations: clip to [a, b] (ReLU6: 0, 6), sigmoid, hard sigmoid max(0, min(1, a x + b)),
 * hard swish x * max(0, min(1, x / 6 + 1/2)), leaky relu (slope a). */
typedef enum {
    BL_UNARY_RELU,
    BL_UNARY_CLIP,
    BL_UNARY_SIGMOID,
    BL_UNARY_HARDSIGMOID,
    BL_UNARY_HARDSWISH,
    BL_UNARY_LEAKY_RELU
} bl_unary_op;
bl_status bl_net_unary(bl_net *net, const char *name, bl_unary_op op, int in, float a, float b,
                       int *out);
/* Output element k of each sample = input element map[k] of that sample; the output's shape is
 * (h, w, c) (a flatten in another order, a transpose, a slice). map is copied. */
bl_status bl_net_gather(bl_net *net, const char *name, int in, int h, int w, int c,
                        const int *map, int *out);
/* The channels of n inputs of one height and width, in order. */
bl_status bl_net_concat(bl_net *net, const char *name, const int *in, int n, int *out);
/* The softmax over each position's channels. */
bl_status bl_net_softmax(bl_net *net, const char *name, int in, int *out);
bl_status bl_net_linear(bl_net *net, const char *name, int in, int cout, int *out);
/* A linear layer on every position (row) of the input: (h, w, c) -> (h, w, cout), weight
 * name.weight (cout, c), and name.bias when bias. */
bl_status bl_net_linear_rows(bl_net *net, const char *name, int in, int cout, int bias, int *out);
/* GroupNorm of each position (row) on its own: a crop head's GN normalizes each crop. */
bl_status bl_net_gn_rows(bl_net *net, const char *name, int in, int groups, int *out);
/* A crop head's RoIAlign: the (h, w, c) map -> (K, 1, BL_CROP_OUT^2 * c) per image, K crops of
 * sides in [lo, hi] drawn from the context's bl_draw. */
bl_status bl_net_roi(bl_net *net, const char *name, int in, int K, double lo, double hi, int *out);
/* The rows of the input permuted by the context's shuffle (dir 1) or back (-1); the identity
 * without one. */
bl_status bl_net_shuffle(bl_net *net, const char *name, int in, int dir, int *out);
/* The crop head on map tensor `in`: RoIAlign - fc - shuffle - norm - ReLU - fc - norm - ReLU -
 * fc (classes, with bias) - unshuffle; *out: the logits (K, 1, classes) per image. */
bl_status bl_crop_head(bl_net *net, int in, const bl_resnet_crops_opts *hd, int classes, int *out);
/* GroupNorm over `groups` groups of the input's channels (eps 1e-5), parameters name.weight and
 * name.bias (trained like BN's gamma and beta); no batch statistics, so no context entry. */
bl_status bl_net_gn(bl_net *net, const char *name, int in, int groups, int *out);
/* The same with parameters prefix.weight and prefix.bias, shared when they exist already. */
bl_status bl_net_gn_param(bl_net *net, const char *name, const char *prefix, int in, int groups,
                          int *out);
/* One BN over n inputs (the levels of a feature pyramid: same channels, any H and W), outputs
 * *out .. *out + n - 1 (bn.h, "parts"). Batch statistics per level, or merged over the levels
 * (merged_sgd: BN over their concatenation); population statistics kept both per level (cores
 * name.{k}) and pooled (core `name`), inference using the pooled ones when merged_pop; gamma and
 * beta shared (name.weight) or per level (affine_levels: name.{k}.weight). The net lists its n + 1
 * cores: name.0 .. name.{n-1}, then name. */
bl_status bl_net_bn_levels(bl_net *net, const char *name, const int *in, int n, int merged_sgd,
                           int affine_levels, int *out);
/* An error naming the layer when a multi-level BN layer lacks per-level population statistics
 * (never estimated while the pooled ones were: a file with pooled statistics only). */
bl_status bl_net_levels_check(const bl_net *net);
/* Which population statistics inference uses in every multi-level BN layer: pooled (1) or per
 * level (0) (bl_net_head_pop checks them first). */
void bl_net_set_levels_pop(bl_net *net, int merged);

/* Forward on x: (n, h, w, c) NHWC, n <= max_batch. Output: the last tensor. ctx: how each BN
 * layer normalizes (NULL: every one with batch statistics over the whole batch). */
bl_status bl_net_forward(bl_net *net, const bl_ctx *ctx, const float *x, int n);
/* The forward up to and including layer `last` (bl_net_layer_at); no backward may
 * follow. */
bl_status bl_net_forward_to(bl_net *net, const bl_ctx *ctx, const float *x, int n, int last);
/* The stride-1 3x3 convolutions use Winograd F(2x2, 3x3) where supported (default on); off: the
 * direct kernel. Process-wide; for tests and benchmarks comparing the two. */
void bl_conv_set_winograd(int on);
/* Inference forward with population statistics in every BN layer: layers may be fused (conv + BN
 * + add + ReLU in one pass), so only the output, the last tensor, is written for sure and no
 * backward may follow. Bit-identical to bl_net_forward with every layer in BL_BN_POPULATION. */
bl_status bl_net_infer(bl_net *net, const float *x, int n);
/* Softmax cross-entropy against labels (mean over the batch; with several outputs, or an output of
 * several rows per sample (a crop head's), the mean over them of each one's cross-entropy and the
 * prediction from their mean logits); writes the gradient of the logits when grad is set. Returns
 * the summed loss and the count of correct argmax of the (mean) logits. */
bl_status bl_net_loss(bl_net *net, const uint8_t *labels, int grad, double *loss_sum, int *correct);
/* The same with the gradient of (summed loss) / mean_over (0: no gradient): data parallelism
 * divides by the global batch, so the processes' gradients add up to one process's. */
bl_status bl_net_loss_over(bl_net *net, const uint8_t *labels, long mean_over, double *loss_sum,
                           int *correct);
/* The count of correct argmax of each output on its own (outputs[k] -> correct[k]). */
void bl_net_output_correct(const bl_net *net, const uint8_t *labels, int *correct);
/* Declares the net's outputs (before finalize): tensors of equal size, at most
 * BL_NET_MAX_OUTPUTS. */
bl_status bl_net_set_outputs(bl_net *net, const int *t, int n);
/* Backward of the last forward, with its context. */
bl_status bl_net_backward(bl_net *net, const bl_ctx *ctx);
void bl_net_zero_grad(bl_net *net);

/* ---- the profiler (src/nn/profile.c) ------------------------------------------------------
 * With BL_PROFILE=1 in the environment (or bl_profile_set(1)) every layer call of a net is timed
 * per pass, and bl_net_free hands the table to the sink (the command's sets one that writes to
 * stderr; the library prints nothing itself): milliseconds per call, the rate of FMA
 * slots (a multiply-add is one slot, 2 FLOP; a transform add one slot too), its share of an FMA
 * peak measured in the same run, and the bytes moved per second (each tensor read or written once:
 * an estimate). Off, it costs one branch per layer call. */
typedef enum { BL_PASS_FWD, BL_PASS_BWD, BL_PASS_INFER, BL_PASSES } bl_pass_kind;
typedef enum { BL_PHASE_INPUT, BL_PHASE_LOSS, BL_PHASE_ZERO, BL_PHASE_SGD, BL_PHASES } bl_phase;
typedef struct bl_cost {
    double slots;     /* FMA-unit operations per sample */
    double bytes;     /* bytes read and written per sample */
    const char *algo; /* how the layer runs the pass ("winograd", "direct", "im2col"), or NULL */
} bl_cost;
int bl_profile_enabled(void);
void bl_profile_set(int on);
double bl_profile_now(void); /* seconds, monotonic */
/* Adds time to one of the step's phases outside the layers (the trainer's SGD). */
void bl_net_profile_phase(bl_net *net, bl_phase ph, double seconds);
/* The table as text (malloc'd; NULL when nothing was timed or out of memory). */
char *bl_net_profile_report(const bl_net *net);
/* Where bl_net_free sends the table when profiling is on and anything was timed (NULL: nowhere). */
void bl_profile_set_sink(void (*sink)(const char *text));
/* The FMA peak of this build's widest vector kernel: GFLOP/s over `threads` threads, measured
 * now (about 50 ms); *isa names the instruction set. */
double bl_fma_peak(int threads, const char **isa);
/* The first layer (in network order) whose output of the last forward holds NaN or Inf, or NULL:
 * names where a divergence started. */
const char *bl_net_first_nonfinite(const bl_net *net);
/* BN layers, in network order (for commits, PreciseBN, inspection); O(1). */
static inline int bl_net_bn_count(const bl_net *net) { return net->BL_NET_F(n_bn); }
static inline bl_bn *bl_net_bn_at(const bl_net *net, int i)
{
    return i >= 0 && i < net->BL_NET_F(n_bn) ? net->BL_NET_F(bn)[i] : (bl_bn *)0;
}
/* The layer (bl_net_layer_at) of the i-th BN core, or -1. */
static inline int bl_net_bn_layer(const bl_net *net, int i)
{
    return i >= 0 && i < net->BL_NET_F(n_bn) ? net->BL_NET_F(bn_layer)[i] : -1;
}
/* The mask of the inputs of its layer that BN core i normalizes (bit k: in[k]), 0 out of range. */
static inline unsigned bl_net_bn_inputs(const bl_net *net, int i)
{
    return i >= 0 && i < net->BL_NET_F(n_bn) ? net->BL_NET_F(bn_in)[i] : 0u;
}
/* The BN core of a BN layer, or NULL for a layer of another kind (the typed accessor). */
bl_bn *bl_layer_bn(const bl_layer *l);
/* Where BN core i sits: its layer (bl_net_layer_at) and, in a layer of several cores (one
 * BN over several inputs: a multi-level layer), which: parts = the layer's inputs, part k < parts
 * normalizes input k, part == parts the pooled core over all of them; a plain BN layer: part 0 of
 * parts 1. layer -1 for an i out of range. */
typedef struct {
    int layer, part, parts;
} bl_bn_where;
bl_bn_where bl_net_bn_where(const bl_net *net, int i);
/* Commits every BN layer's pending batch statistics to est (the EMA after a training step). */
bl_status bl_net_bn_commit(bl_net *net, bl_estimator est);
const bl_param *bl_net_param(const bl_net *net, const char *name);

/* ---- GroupNorm (Wu & He 2018) -------------------------------------------------------------------
 * Per sample, the channels in `groups` groups of C/groups; each group normalized over its channels
 * and pixels with its own mean and biased variance, 1/sqrt(var + eps) (PyTorch's GroupNorm), then
 * y = gamma_c xhat + beta_c. No batch statistics: a reference beside BN (the multi-level head's
 * --head-norm gn). x, y, dx, dy: (N,C,H,W) or (N,H,W,C) by s.layout; gamma, beta, dgamma, dbeta:
 * (C); mean, rstd: (N * groups), written by forward for backward. dgamma, dbeta accumulate. */
/* The shape and the groups (a divisor of the channels). */
bl_status bl_gn_check(bl_shape s, int groups);
bl_status bl_gn_forward(bl_shape s, int groups, double eps, const float *x, const float *gamma,
                        const float *beta, float *y, double *mean, double *rstd);
bl_status bl_gn_backward(bl_shape s, int groups, const float *x, const float *dy,
                         const float *gamma, const double *mean, const double *rstd, float *dx,
                         float *dgamma, float *dbeta);

/* A parameter's values between the inside layout and PyTorch's (conv weights OHWI <-> OIHW; other
 * parameters are copied). src and dst hold p->count floats and must not overlap. */
void bl_param_export(const bl_param *p, const float *src, float *dst);
void bl_param_import(const bl_param *p, const float *src, float *dst);

/* A normalization layer's constructor, as bl_net_bn: what a backbone puts after each convolution
 * (a family's choice: BN, or a wrapper of GroupNorm or of a layer of its own). */
typedef bl_status (*bl_norm_layer)(bl_net *net, const char *name, int in, int *out);
/* The CIFAR ResNet's stem and `stages` stages (1..3) on the net's input, each normalization
 * made by `norm` (NULL: bl_net_bn) under the PyTorch names (bn1, layer1.0.bn1, ...,
 * layer2.0.shortcut.1); stage_out[s] receives stage s's output tensor. Families build their
 * heads on it. */
bl_status bl_resnet_backbone(bl_net *net, int depth, int width, int stages, bl_norm_layer norm,
                             int *stage_out);
/* The CIFAR ResNet, depth 6n+2 (resnet8/14/20/32/56), option-B shortcuts, width w (the family
 * "resnet": bl_model_build with bl_model_init(m, "resnet20") does the same). On failure the net is
 * freed. */
bl_status bl_resnet(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                    int max_batch);
/* Initializes the parameters from a seed: conv weights Kaiming normal (fan_in, ReLU gain), linear
 * as PyTorch's default (uniform +-1/sqrt(fan_in)), BN gamma 1 and beta 0. */
void bl_net_init_params(bl_net *net, uint64_t seed);
/* Which population statistics a multi-level head's BN layers use at inference (the model's
 * head_pop): per level (1) is an error when they were never estimated while the pooled ones were
 * (a file without them: run bnlab precise). No-op for other models. */
bl_status bl_net_head_pop(bl_net *net, int pop_level);
/* Inference as bl_net_infer, with a context for the layers' draws (a crop head's crops); its BN
 * modes are ignored: population statistics everywhere. */
bl_status bl_net_infer_ctx(bl_net *net, const bl_ctx *ctx, const float *x, int n);
/* Rows per sample of the net's shuffle layers (what a shuffle permutes), 0 without any. */
int bl_net_shuffle_rows(const bl_net *net);

/* ---- BN folding (bl_onnx_fold for a model.onnx, bl_fold_net for a built-in model) -----------------
 * W' = W k and b' = (b - mu) k + beta per output channel, k = gamma / sqrt(var + eps). The report
 * counts, per folded layer, the channels a symmetric per-tensor int8 scale would starve: with
 * s = max|W'| / 127 a channel's values map to integers in [-q, q], q = round(max|W'_c| / s), which
 * is 2q + 1 levels; fewer than 16 (4 bits) means q <= 7 (docs/onnx.md). */
#define BL_FOLD_MAX 512
static inline int bl_fold_starved(double channel_max, double tensor_max)
{
    const double q = 127 * channel_max / tensor_max; /* compared, never converted: NaN is no q */
    return tensor_max > 0 && q < 7.5;
}
typedef struct {
    char bn[96], into[96]; /* the BN, and the convolution (or Gemm) it went into */
    int channels, starved; /* output channels; those with fewer than 4 bits under int8 */
    double min_ratio;      /* the smallest channel range over the tensor's range */
} bl_fold_row;
typedef struct {
    int folded, kept, channels, starved; /* channels and starved: over the folded layers */
    bl_fold_row row[BL_FOLD_MAX];
    char kept_name[BL_FOLD_MAX][96], kept_why[BL_FOLD_MAX][160];
} bl_fold_report;

#ifdef __cplusplus
}
#endif
#endif
