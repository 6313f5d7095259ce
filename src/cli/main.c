/* bnlab: the command-line lab. Dispatches to one function per command. */
#define _POSIX_C_SOURCE 200809L
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "bnlab %s - BatchNorm with an explicit batch (Wu & Johnson, CVPR 2021)\n"
            "\n"
            "usage: bnlab <command> [options]\n"
            "\n"
            "commands:\n"
            "  train     train a ResNet on Fashion-MNIST (batch, normalization batch, schedule)\n"
            "  eval      test error of a checkpoint with population or mini-batch statistics\n"
            "  precise   recompute a checkpoint's population statistics with PreciseBN (or the\n"
            "            exact layer-by-layer mode) and write a new checkpoint\n"
            "  inspect   are a checkpoint's stored BN statistics right? per layer, against\n"
            "            PreciseBN and the spread of mini-batch statistics, with a verdict\n"
            "  corrupt   write a corrupted Fashion-MNIST split (Fashion-MNIST-C: noise, blur,\n"
            "            contrast, jpeg, ... at severity 1-5) and a preview image\n"
            "  adapt     population statistics from a target domain (a corruption, or any IDX\n"
            "            split, or a model.onnx's images): error with the source and the target\n"
            "            statistics; --prior N mixes them, --online adapts as images stream in\n"
            "  fold      fold BN into the Conv or Gemm before it in a model.onnx, with a report\n"
            "            of the channels per-tensor int8 would starve\n"
            "  demo      BN on real Fashion-MNIST features: ghost groups vs whole batch vs\n"
            "            population statistics; EMA vs PreciseBN estimates\n"
            "  version   print the version and the optional parts built in\n"
            "\n"

            "eval, precise, inspect and adapt also take a model.onnx exported with BN kept\n"
            "(docs/onnx.md).\n"
            "'bnlab <command> --help' lists a command's options and their defaults.\n",
            BNLAB_VERSION);
}

static bl_fault counted = BL_FAULT_N;
static void print_fault_count(void)
{
    fprintf(stderr, "bnlab: %s calls: %ld\n", bl_fault_name(counted), bl_fault_calls(counted));
}

/* BL_PROFILE=1: each net's profile table, as the net is freed (docs/engine.md) */
static void profile_to_stderr(const char *text) { fputs(text, stderr); }

int main(int argc, char **argv)
{
    bl_profile_set_sink(profile_to_stderr);
    /* test hooks (docs/robustness.md): BNLAB_FAULT="write:N" makes the Nth write (0-based)
     * fail as a full disk would (alloc, fsync and rename likewise; several with commas);
     * BNLAB_FAULT_COUNT=write prints at exit how many such calls the command made */
    const char *count = getenv("BNLAB_FAULT_COUNT"), *fault = getenv("BNLAB_FAULT");
    if (count && *count) {
        if (bl_fault_parse(count, &counted) || strchr(count, ':')) {
            fprintf(stderr, "bnlab: BNLAB_FAULT_COUNT=%s: use alloc, write, fsync or rename\n", count);
            return 2;
        }
        atexit(print_fault_count);
    }
    if (fault && *fault) {
        char spec[256];
        snprintf(spec, sizeof spec, "%s", fault);
        for (char *save = NULL, *t = strtok_r(spec, ",", &save); t; t = strtok_r(NULL, ",", &save))
            if (bl_fault_parse(t, NULL)) {
                fprintf(stderr, "bnlab: BNLAB_FAULT: %s\n", bl_error());
                return 2;
            }
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("bnlab %s (openmp %s, cblas %s, zlib %s, cjson %s, mpi %s)\n", BNLAB_VERSION,
#ifdef BL_HAVE_OPENMP
               "yes",
#else
               "no",
#endif
#ifdef BL_HAVE_CBLAS
               "yes",
#else
               "no",
#endif
#ifdef BL_HAVE_ZLIB
               "yes",
#else
               "no",
#endif
#ifdef BL_HAVE_CJSON
               "yes",
#else
               "no",
#endif
#ifdef BL_HAVE_MPI
               "yes"
#else
               "no"
#endif
        );
        return 0;
    }
    /* only train, precise and inspect spread over processes: W copies of another command would
     * each do all of it and write the same files */
    int rank;
    const int spreads = !strcmp(argv[1], "train") || !strcmp(argv[1], "precise") ||
                        !strcmp(argv[1], "inspect");
    if (!spreads && bl_pg_launched(&rank) > 1) {
        if (rank == 0)
            fprintf(stderr, "bnlab %s: runs in one process; under mpirun only train, precise and "
                    "inspect use the processes: run it without mpirun\n", argv[1]);
        return 2;
    }
    if (!strcmp(argv[1], "demo")) return cmd_demo(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if ((!strcmp(argv[1], "eval") || !strcmp(argv[1], "precise") || !strcmp(argv[1], "inspect") ||
         !strcmp(argv[1], "adapt")) &&
        cli_is_onnx(argc - 1, argv + 1))
        return cmd_onnx(argv[1], argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "precise")) return cmd_precise(argc - 1, argv + 1);
    if (!strcmp(argv[1], "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(argv[1], "corrupt")) return cmd_corrupt(argc - 1, argv + 1);
    if (!strcmp(argv[1], "fold")) return cmd_fold(argc - 1, argv + 1);
    if (!strcmp(argv[1], "adapt")) return cmd_adapt(argc - 1, argv + 1);
    fprintf(stderr, "bnlab: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
