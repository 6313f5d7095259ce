/* bnlab: the command-line lab. Dispatches to one function per command. */
#include "cli/cli.h"

#include <errno.h>
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
            "  demo      BN on real Fashion-MNIST features: ghost groups vs whole batch vs\n"
            "            population statistics; EMA vs PreciseBN estimates\n"
            "  version   print the version and the optional parts built in\n"
            "\n"
            "train, eval, precise, adapt and inspect arrive with the training engine.\n"
            "'bnlab <command> --help' lists a command's options and their defaults.\n",
            BNLAB_VERSION);
}

int cli_int(const char *opt, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "bnlab: %s needs an integer in [%ld, %ld], got '%s'\n", opt, lo, hi,
                v ? v : "(nothing)");
        return 1;
    }
    *out = x;
    return 0;
}

int cli_double(const char *opt, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = v ? strtod(v, &end) : 0;
    if (!v || errno || *end || end == v) {
        fprintf(stderr, "bnlab: %s needs a number, got '%s'\n", opt, v ? v : "(nothing)");
        return 1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
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
    if (!strcmp(argv[1], "demo")) return cmd_demo(argc - 1, argv + 1);
    fprintf(stderr, "bnlab: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
