#define _POSIX_C_SOURCE 200809L
/* bnlab train: a ResNet on Fashion-MNIST with every batch choice explicit. */
#include "cli/cli.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* SIGINT/SIGTERM: finish the current step, write a checkpoint, exit cleanly. A second signal
 * kills as usual (the handler is reset), and the checkpoint write itself is atomic anyway. */
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    stop_flag = 1;
    signal(sig, SIG_DFL);
}
#endif

int cmd_train(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    bl_train_cfg c;
    bl_train_defaults(&c);
    int sched = (int)c.schedule, scaling = 0, final_precise = 0; /* auto|on|off */
    const cli_opt opts[] = {
        {"--model", OPT_STR, c.model, sizeof c.model, 0, 0, NULL, "resnet8|14|20|32|56 (6n+2)"},
        {"--width", OPT_INT, &c.width, 0, 1, 1024, NULL, "channels of the first stage"},
        {"--epochs", OPT_INT, &c.epochs, 0, 1, 100000, NULL, "epochs"},
        {"--batch", OPT_INT, &c.batch, 0, 2, 65536, NULL, "SGD batch"},
        {"--norm-batch", OPT_INT, &c.norm_batch, 0, 0, 65536, NULL,
         "normalization batch: ghost groups of G inside the SGD batch (0 = the SGD batch)"},
        {"--lr", OPT_DOUBLE, &c.lr, 0, 0, 100, NULL, "base learning rate"},
        {"--lr-scaling", OPT_CHOICE, &scaling, 0, 0, 0, "none|linear", "linear: lr x batch/128"},
        {"--momentum", OPT_DOUBLE, &c.momentum, 0, 0, 1, NULL, "SGD momentum"},
        {"--nesterov", OPT_ONOFF, &c.nesterov, 0, 0, 0, NULL, "Nesterov momentum"},
        {"--wd", OPT_DOUBLE, &c.wd, 0, 0, 1, NULL, "weight decay (coupled, as PyTorch's SGD)"},
        {"--wd-bn", OPT_ONOFF, &c.wd_bn, 0, 0, 0, NULL, "weight decay also on BN and biases"},
        {"--schedule", OPT_CHOICE, &sched, 0, 0, 0, "cosine|step|const",
         "per-step schedule (step: x0.1 at 50% and 75%)"},
        {"--warmup-epochs", OPT_DOUBLE, &c.warmup_epochs, 0, 0, 1000, NULL, "linear warmup"},
        {"--seed", OPT_U64, &c.seed, 0, 0, 9e15, NULL, "seed of weights, order, augmentation"},
        {"--threads", OPT_INT, &c.threads, 0, 1, 256, NULL, "threads (OpenMP and BLAS)"},
        {"--eval-every", OPT_INT, &c.eval_every, 0, 0, 100000, NULL,
         "evaluate every k epochs (0: only at the end)"},
        {"--eval-minibatch", OPT_ONOFF, &c.eval_minibatch, 0, 0, 0, NULL,
         "also evaluate with mini-batch statistics at the normalization batch: test error, and "
         "train error on 10^4 training images"},
        {"--val", OPT_INT, &c.val, 0, 0, 59999, NULL,
         "carve a validation split of N training images (it replaces the test set)"},
        {"--max-steps", OPT_LONG, &c.max_steps, 0, 0, 9e15, NULL,
         "stop after N steps in all (0: none), with a checkpoint to --resume from"},
        {"--precise-bn-every", OPT_INT, &c.precise_every, 0, 0, 100000, NULL,
         "also evaluate with fresh PreciseBN statistics every K epochs (0: never)"},
        {"--final-precise-bn", OPT_CHOICE, &final_precise, 0, 0, 0, "auto|on|off",
         "at the end, replace the EMA statistics by PreciseBN ones (checkpoint included); "
         "auto: on, off with --frozen-bn-epochs"},
        {"--frozen-bn-epochs", OPT_INT, &c.frozen_epochs, 0, 0, 100000, NULL,
         "FrozenBN: the last K epochs normalize with fixed PreciseBN population statistics "
         "(gamma, beta keep training); with --resume, branch from a regular run"},
        {"--frozen-bn-reestimate", OPT_ONOFF, &c.frozen_reestimate, 0, 0, 0, NULL,
         "FrozenBN: re-estimate the statistics at every epoch of the phase"},
        {"--precise-samples", OPT_LONG, &c.precise_samples, 0, 0, 60000, NULL,
         "PreciseBN: training images (0: 10^4, or all if fewer)"},
        {"--precise-batch", OPT_INT, &c.precise_batch, 0, 1, 65536, NULL,
         "PreciseBN: images per batch"},
        {"--keep-every", OPT_INT, &c.keep_every, 0, 0, 100000, NULL,
         "also keep DIR/epoch<N>.safetensors every K epochs (0: none)"},
        {"--checkpoint-every", OPT_INT, &c.checkpoint_every, 0, 1, 100000, NULL,
         "write last.safetensors every K epochs (also at the end and on a stop)"},
        {"--out", OPT_STR, c.out, sizeof c.out, 0, 0, NULL,
         "directory for metrics.jsonl and last.safetensors"},
        {"--resume", OPT_STR, c.resume, sizeof c.resume, 0, 0, NULL,
         "continue from a checkpoint (at its epoch)"},
        {"--data-dir", OPT_STR, c.data_dir, sizeof c.data_dir, 0, 0, NULL, "Fashion-MNIST IDX files"},
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("train", "[options]", argc, argv, opts, n, pos, 0, &np);
    if (rc) return rc == 1 ? 0 : 2;
    c.schedule = (bl_schedule)sched;
    c.lr_linear = scaling;
    c.final_precise = final_precise == 0 ? -1 : final_precise == 1;
    cli_print_config(stdout, "train", opts, n);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    c.stop = &stop_flag;
    if (bl_train(&c)) {
        fprintf(stderr, "bnlab train: %s\n", bl_error());
        return 1;
    }
    return 0;
#else
    fprintf(stderr, "bnlab train: built without zlib or cJSON: install zlib1g-dev and libcjson-dev "
                    "(scripts/install-deps.sh) and rebuild\n");
    return 1;
#endif
}
