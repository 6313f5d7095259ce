/* bnlab model families: which network a model name means, and everything that depends on it.
 *
 * A family (the plain ResNet, the ResNet with the multi-level head, with the crop head; an
 * extender's own) registers once and is then found by the model names it claims ("resnet20-ml"),
 * which is also what a checkpoint records as its architecture. A model name is parsed once into a
 * bl_model: the family and its options. The family builds the net, checks a training
 * configuration against itself, plans how each pass normalizes (bl_pass_make calls it), and names
 * the options a checkpoint records. Nothing outside a family's own file tests which family a model
 * is. docs/extending.md shows how to write one. */
#ifndef BNLAB_FAMILY_H
#define BNLAB_FAMILY_H

#include "bnlab/bn.h"

#ifdef __cplusplus
extern "C" {
#endif

struct bl_net;
struct bl_param;
struct bl_plan;
struct bl_pass;
struct bl_pass_spec;

/* ---- a family's options -------------------------------------------------------------------------
 * Each option is an int or a double of the family's options struct. Its name is the field's, the
 * command-line flag's (head_sgd is --head-sgd) and the name errors use (cfg.head_sgd). */
typedef enum { BL_FOPT_INT, BL_FOPT_DOUBLE, BL_FOPT_CHOICE } bl_fopt_type;

typedef struct {
    const char *name;    /* "head_sgd" */
    const char *key;     /* its key in a checkpoint's "head" metadata; NULL: not recorded (it is
                          * implied by the model name) */
    bl_fopt_type type;   /* CHOICE: an int, the index of the value in choices */
    size_t offset;       /* of the int or double in the options struct */
    double lo, hi;       /* INT, DOUBLE: the range */
    const char *choices; /* CHOICE: "shared|level" */
    int open;            /* 1: commands that open a checkpoint may set it too (it changes no
                          * parameter: how inference uses the statistics, say) */
    const char *help;
} bl_family_opt;

#define BL_MODEL_OPTS_MAX 128

typedef struct bl_family bl_family;

/* A model: the family, the name it was parsed from, the backbone width and the family's
 * options. */
typedef struct {
    const bl_family *family;
    char name[32];        /* "resnet20-ml" */
    int width;            /* channels of the first stage (families that have one) */
    union {
        double align;
        unsigned char bytes[BL_MODEL_OPTS_MAX];
    } opts;               /* the family's options struct */
} bl_model;

/* What a training run looks like, for a family to check (check_train); the family may also set
 * the out fields. */
typedef struct {
    int batch, world, share; /* the global batch, the processes, the largest share */
    int eval_minibatch;      /* mini-batch evaluation during the run */
    int uses_precise;        /* PreciseBN or FrozenBN during the run */
    /* in: the training groups; out: the normalization batch of mini-batch evaluation */
    int eval_norm_batch;
    /* out: the images a head's BN normalizes together in training, for the summary (0: none) */
    int head_bn_images;
    /* in: 1; out: 0 when the EMA statistics are the model's population statistics (no final
     * PreciseBN unless asked) */
    int final_precise;
} bl_train_check;

enum { BL_PLAN_HEAD_BN_IMAGES = 1u, BL_PLAN_BN_SHUFFLE = 2u };

struct bl_family {
    const char *name;    /* "resnet-ml" */
    const char *usage;   /* the model names, for messages: "resnetN-ml (N = 6n+2)" */
    const char *help;    /* one line */
    size_t opts_size;    /* at most BL_MODEL_OPTS_MAX */
    const bl_family_opt *opts;
    int n_opts;
    /* 1 when `name` is one of this family's models (and the options it implies set: a ResNet's
     * depth), 0 when not */
    /* the plan's fields beyond the backbone's (norm_batch, sync_bn) that its plan_pass acts on:
     * BL_PLAN_HEAD_BN_IMAGES, BL_PLAN_BN_SHUFFLE; a run asking for another is refused */
    unsigned plan_uses;
    int (*parse)(const char *name, void *opts);
    void (*defaults)(void *opts);
    /* Options that depend on others (a head width of 0: the head's default) and checks of the
     * options together. Errors name options as cfg.<name>. Optional. */
    bl_status (*resolve)(bl_model *m);
    /* Adds the model's layers to the net, which holds its input (tensor 0) already, and
     * finalizes it; on failure the net is only fit for bl_net_free. */
    bl_status (*build)(struct bl_net *net, const bl_model *m, int classes);
    /* A training run against the family. Optional. */
    bl_status (*check_train)(const bl_model *m, const struct bl_plan *plan, bl_train_check *c);
    /* How each BN core of a pass normalizes: bl_pass_make has filled every core with the pass's
     * mode and the plan's groups; a family whose layers normalize other groups changes its own.
     * Optional. */
    bl_status (*plan_pass)(const struct bl_net *net, const struct bl_plan *plan,
                           const struct bl_pass_spec *s, struct bl_pass *p);
    /* A checkpoint was opened with open options given (m: the net's model with them applied):
     * apply them to the net. reestimates: the statistics are about to be replaced (no check of
     * them). Optional. */
    bl_status (*reopen)(struct bl_net *net, const bl_model *m, int reestimates);
};

/* Registers a family (the built-in ones are there from the start). Its model names must not be
 * claimed by another family: the first registered wins. */
bl_status bl_family_register(const bl_family *f);
int bl_family_count(void);
const bl_family *bl_family_at(int i);
/* The family that claims a model name, or NULL. */
const bl_family *bl_family_of(const char *model);
/* An option of the family by name, or NULL. */
const bl_family_opt *bl_family_opt_find(const bl_family *f, const char *name);
/* Whether v is a value of the option (CHOICE: an index of its choices; INT: integral; in range). */
int bl_family_opt_valid(const bl_family_opt *o, double v);
/* The index of choice s of a CHOICE option, or -1. */
int bl_family_opt_choice(const bl_family_opt *o, const char *s);
/* The model names (usage) of the registered families, ", "-separated: all, or those that declare
 * option `opt` (non-NULL), or whose plan_uses has a bit of `plan_bits` (non-zero). */
void bl_family_list(char *buf, size_t len, const char *opt, unsigned plan_bits);

/* Parses a model name: its family, the family's defaults and what the name implies. An unknown
 * name is an error listing the families' model names. */
bl_status bl_model_init(bl_model *m, const char *name);
/* The family's resolve step (idempotent). */
bl_status bl_model_resolve(bl_model *m);
/* The family's options struct. */
static inline void *bl_model_opts(bl_model *m) { return m->opts.bytes; }
static inline const void *bl_model_opts_c(const bl_model *m) { return m->opts.bytes; }
/* An option's value as a double (CHOICE: its index), and set from one. */
double bl_model_get(const bl_model *m, const bl_family_opt *o);
void bl_model_set(bl_model *m, const bl_family_opt *o, double v);
/* An option's value as text ("level", "16", "4.5"). */
void bl_model_format(const bl_model *m, const bl_family_opt *o, char *buf, size_t len);
/* Sets the option `name` (CHOICE: the index of its value); an error naming it when the family has no
 * such option or the value is outside its range. */
bl_status bl_model_option(bl_model *m, const char *name, double v);
/* Another model name, keeping the width (the options start at the new family's defaults). */
bl_status bl_model_rename(bl_model *m, const char *name);
/* Whether the option is at the family's default. */
int bl_model_is_default(const bl_model *m, const bl_family_opt *o);
/* Builds the named model's net (NULL opts: its defaults); on failure the net is freed. classes 0:
 * the family's graph decides them (an imported one: its first output's size). */
bl_status bl_model_build(struct bl_net *net, const bl_model *m, int classes, int h, int w, int c,
                         int max_batch);
/* Declares the model's net without allocating it: check is called with every parameter as it is
 * declared (name, kind, PyTorch shape, optional), and its first error ends the declaration, so a
 * checkpoint's claimed architecture is held against the file's tensors before anything of its
 * size exists (a forged width or depth fails at the first tensor that does not match). */
typedef bl_status (*bl_param_check)(void *ctx, const struct bl_param *p);
bl_status bl_model_declare(const bl_model *m, int classes, int h, int w, int c,
                           bl_param_check check, void *ctx);

/* The built-in families' options (their structs; the first field of a ResNet's is its depth). */
typedef enum { BL_HEAD_BN = 0, BL_HEAD_GN = 1, BL_HEAD_NONE = 2 } bl_head_norm;
const char *bl_head_norm_name(bl_head_norm n); /* "bn", "gn", "none" */

typedef struct {
    int depth;
} bl_resnet_opts;

/* the multi-level head (docs/multi-level.md) */
typedef struct {
    int depth;
    int head_norm;   /* bl_head_norm */
    int head_sgd;    /* BN: batch statistics merged over the levels (0) or per level (1) */
    int head_pop;    /* BN: inference with population statistics pooled (0) or per level (1) */
    int head_affine; /* gamma and beta shared (0) or per level (1) */
    int head_width;  /* 0: 32; GN: groups of 4 channels */
} bl_resnet_ml_opts;

/* the crop head (docs/crop-head.md) */
typedef struct {
    int depth;
    int head_norm;    /* bl_head_norm */
    int head_width;   /* 0: 256; GN: 32 groups */
    int crops;        /* per image, default 16 */
    double crop_min, crop_max; /* their sides in map pixels, default 4..10 */
} bl_resnet_crops_opts;

extern const bl_family bl_family_resnet, bl_family_resnet_ml, bl_family_resnet_crops;

#ifdef __cplusplus
}
#endif
#endif
