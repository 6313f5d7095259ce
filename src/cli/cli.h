/* The bnlab command: one table-driven option parser shared by every command, and the commands. */
#ifndef BNLAB_CLI_H
#define BNLAB_CLI_H

#include "bnlab/bnlab.h"

#include <stdio.h>

typedef enum { OPT_INT, OPT_LONG, OPT_U64, OPT_DOUBLE, OPT_STR, OPT_ONOFF, OPT_CHOICE } cli_type;

typedef struct {
    const char *name;    /* "--epochs" */
    cli_type type;
    void *ptr;           /* int, long, uint64_t, double, char[len], int (on/off, choice index) */
    size_t len;          /* OPT_STR buffer size */
    double lo, hi;       /* numeric range */
    const char *choices; /* OPT_CHOICE: "cosine|step|const" */
    const char *help;
} cli_opt;

/* Parses argv[1..) (argv[0] is the command): options from the table, and up to max_pos positional
 * arguments into pos. Returns 0 to go on, 1 when --help was printed (exit 0), 2 on a bad command
 * line (the message printed, exit 2). */
int cli_parse(const char *cmd, const char *synopsis, int argc, char **argv, const cli_opt *opts,
              int n_opts, const char **pos, int max_pos, int *n_pos);
/* Whether the last cli_parse saw option `name` on the command line. */
int cli_given(const char *name);
void cli_usage(FILE *f, const char *cmd, const char *synopsis, const cli_opt *opts, int n_opts);
/* The option table's current values as one line, "name=value ..." (the resolved configuration). */
void cli_print_config(FILE *f, const char *cmd, const cli_opt *opts, int n_opts);

/* Prints bl_error() as "bnlab CMD: ...", with the library's cfg.<field> names turned into the
 * command's flags (--<field with - for _>) where the command has such an option. */
void cli_error(const char *cmd, const cli_opt *opts, int n_opts);

/* For eval, precise, inspect: --model/--width open a PyTorch state_dict (no bnlab metadata) as
 * that ResNet; --data-mean/--data-std override the normalization of the recipe. */
/* The options model families declare, as a command's options: for train the model's own (into
 * its bl_model) and every other family's (refused when given: "applies to resnetN-ml"); for the
 * commands that open a checkpoint the families' open options, with a first choice "checkpoint"
 * (keep the checkpoint's value). */
#define CLI_MAX_FAMOPTS 48
typedef struct {
    cli_opt opt[CLI_MAX_FAMOPTS];
    int n, n_own;          /* opt[0..n_own): the model's own (train) */
    const bl_family_opt *fopt[CLI_MAX_FAMOPTS];
    int value[CLI_MAX_FAMOPTS];
    char flag[CLI_MAX_FAMOPTS][40], choices[CLI_MAX_FAMOPTS][96], help[CLI_MAX_FAMOPTS][320];
    bl_model scratch[8];   /* other families' values (never used) */
} cli_famopts;
/* train: the options of m's family (writing into m), then the other families'. */
void cli_famopts_model(cli_famopts *f, bl_model *m);
/* eval, precise, inspect, adapt: every family's open options. */
void cli_famopts_open(cli_famopts *f);
/* After cli_parse: 2 (printed why) when an option of another family than m's was given. */
int cli_famopts_refuse(const char *cmd, const cli_famopts *f, const bl_model *m);
/* base + f's options into out (at most max). */
int cli_table(cli_opt *out, int max, const cli_opt *base, int n_base, const cli_famopts *f);

typedef struct {
    bl_model_spec spec;
    char mean[64], std[64]; /* "" : the checkpoint's (or the Fashion-MNIST) recipe */
    cli_famopts fam;        /* the families' open options (--head-pop) */
    int reestimates;        /* the command replaces the statistics (precise): no check of them */
} cli_foreign;
void cli_foreign_init(cli_foreign *f);
#define CLI_FOREIGN_OPTS(f)                                                                        \
    {"--model", OPT_STR, (f)->spec.model, sizeof (f)->spec.model, 0, 0, NULL,                      \
     "for a PyTorch state_dict without bnlab metadata: the ResNet it holds (resnet8|14|20|32|56)"}, \
    {"--width", OPT_INT, &(f)->spec.width, 0, 1, 1024, NULL, "with --model: its width"},          \
    {"--data-mean", OPT_STR, (f)->mean, sizeof (f)->mean, 0, 0, NULL,                              \
     "override the recipe's normalization mean (one per channel)"},                               \
    {"--data-std", OPT_STR, (f)->std, sizeof (f)->std, 0, 0, NULL,                                 \
     "override the recipe's normalization std (one per channel)"}
/* Applies --data-mean/--data-std to r (the checkpoint's recipe); prints why and returns 2 on a bad
 * value. */
int cli_foreign_recipe(const char *cmd, const cli_foreign *f, bl_recipe *r);
/* Opens a checkpoint (a bnlab one, or a state_dict as --model says) with the recipe overrides
 * applied to info->recipe. Returns 0, or the exit status after printing why (the net is then
 * freed): 1 for a file that cannot be opened, 2 for a bad --data-mean/--data-std. */
int cli_open_checkpoint(const char *cmd, const char *path, int max_batch, const cli_foreign *f,
                        const cli_opt *opts, int n_opts, bl_net *net, bl_ckpt_info *info);
/* Seconds on a monotonic clock. */
double cli_now(void);

/* Loads a Fashion-MNIST split; on failure prints why and what to do, prefixed "bnlab CMD: ",
 * and returns non-zero (d is then empty). */
int cli_load_fmnist(const char *cmd, const char *dir, const char *split, bl_dataset *d);
/* The data of a command on a built-in model: the image folder `images` (Resize and CenterCrop to
 * the model's input, grey or RGB by its channels; the recipe printed), or without one the
 * Fashion-MNIST split; 0, or 1 after printing why. */
int cli_load_data(const char *cmd, const char *dir, const char *images, const char *split,
                  const bl_net *net, bl_dataset *d);
/* An image folder's passes shown on a terminal (stderr): the images decoded so far; the command
 * ends the line with cli_decode_done (main does, at exit). */
void cli_decode_progress(const char *cmd, bl_dataset *d);
void cli_decode_done(void);

/* Under mpirun (dist.c): the process group, quiet ranks other than 0, the trainer's hooks. */
typedef struct {
    bl_pg *pg;
    bl_reducer red;
    int rank, world;
    int agreed; /* the error being returned is known to every process */
    int err_fd; /* a quiet rank's real stderr, for an error of its own */
} cli_dist;
int cli_dist_init(cli_dist *d, const char *cmd); /* 0, or 1 after printing why */
void cli_dist_hooks(cli_dist *d, bl_train_hooks *h);
void cli_dist_step(cli_dist *d, bl_net *net, long step); /* after each step (a test hook) */
/* Reports the failure in bl_error() and returns rc; an error this process alone has ends every
 * process of the job (MPI_Abort) after printing it. */
int cli_dist_failed(cli_dist *d, const char *cmd, const cli_opt *opts, int n, int rc);
void cli_dist_free(cli_dist *d);

int cmd_demo(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_precise(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
/* An inspect report, as a table or JSON (epoch < 0: none). */
void cli_inspect_print(const char *path, const char *desc, const char *src, int epoch,
                       const bl_inspect_cfg *c, const bl_inspect_report *r, int json);
/* The data options of the commands on a model.onnx (onnx_data.c): the struct, its defaults, the
 * option table's rows, and the model opened (its input shape fixed from --input-shape or the
 * data) with the data as a dataset and its recipe; 0, or the exit status after printing why. */
typedef struct {
    char tensors[1024], labels[1024], mean[128], std[128], shape[64], data_dir[1024];
    int split, threads, json;
    /* --images DIR: an image folder, preprocessed by --resize/--crop (-1: from the model's input
     * size) and --color (0: from the model's channels, 1 rgb, 2 gray); the resolved recipe and
     * what the folder held, as cli_onnx_open found them, for messages and records */
    char images[1024];
    int resize, crop, color;
    char resolved[256];
    int resize_used, crop_used; /* the recipe resolved from -1 */
} cli_onnx_data;
void cli_onnx_data_defaults(cli_onnx_data *o);
int cli_onnx_open(const char *cmd, const char *path, cli_onnx_data *o, bl_onnx **m,
                  bl_dataset *d, bl_recipe *r);
#define ONNX_DATA_OPTS(o)                                                                          \
    {"--images", OPT_STR, (o)->images, sizeof (o)->images, 0, 0, NULL,                             \
     "an image folder (JPEG, PNG; class subfolders give the labels, as torchvision's ImageFolder)"}, \
    {"--resize", OPT_INT, &(o)->resize, 0, -1, 32768, NULL,                                        \
     "--images: shorter side to S (torchvision's Resize, bilinear with antialias; -1: the crop "   \
     "x 256/224, 0: none)"},                                                                       \
    {"--crop", OPT_INT, &(o)->crop, 0, -1, 32768, NULL,                                            \
     "--images: CenterCrop(C) (-1: the model's input size, 0: none)"},                             \
    {"--color", OPT_CHOICE, &(o)->color, 0, 0, 0, "auto|rgb|gray",                                 \
     "--images: convert('RGB') or convert('L') (auto: by the model's input channels)"},            \
    {"--tensors", OPT_STR, (o)->tensors, sizeof (o)->tensors, 0, 0, NULL,                          \
     "images as .npy or .safetensors ('images', and 'labels'), (N, C, H, W): uint8 (normalized " \
     "by --mean/--std) or float (as they are); default: the Fashion-MNIST split"},                 \
    {"--labels", OPT_STR, (o)->labels, sizeof (o)->labels, 0, 0, NULL,                             \
     "their labels as .npy, (N) uint8 or int64 (eval's error)"},                                   \
    {"--mean", OPT_STR, (o)->mean, sizeof (o)->mean, 0, 0, NULL,                                   \
     "per-channel mean of uint8 images in [0, 1] (default ImageNet's: 0.485,0.456,0.406)"},        \
    {"--std", OPT_STR, (o)->std, sizeof (o)->std, 0, 0, NULL,                                      \
     "per-channel std (default ImageNet's: 0.229,0.224,0.225)"},                                   \
    {"--input-shape", OPT_STR, (o)->shape, sizeof (o)->shape, 0, 0, NULL,                          \
     "C,H,W of a model whose input has symbolic dimensions (default: the data's)"},                \
    {"--split", OPT_CHOICE, &(o)->split, 0, 0, 0, "test|train", "the Fashion-MNIST split"},        \
    {"--data-dir", OPT_STR, (o)->data_dir, sizeof (o)->data_dir, 0, 0, NULL,                       \
     "Fashion-MNIST IDX files"},                                                                   \
    {"--threads", OPT_INT, &(o)->threads, 0, 1, 256, NULL, "threads"},                             \
    {"--json", OPT_ONOFF, &(o)->json, 0, 0, 0, NULL, "print one JSON object"}

/* The ONNX commands (onnx.c): whether the command line names a model.onnx, and the command. */
int cli_is_onnx(int argc, char **argv);
/* A model without BN given to `cmd`: the error and the export recipe that keeps BN; returns 1. */
int cli_onnx_no_bn(const char *cmd, const char *path);
int cli_onnx_adapt(int argc, char **argv); /* onnx_adapt.c */
int cmd_fold(int argc, char **argv);       /* fold.c */
int cmd_onnx(const char *cmd, int argc, char **argv);
int cmd_corrupt(int argc, char **argv);
void cli_adapt_stream(void *ctx, long seen, double err); /* adapt --online's progress */
int cmd_adapt(int argc, char **argv);

#endif
