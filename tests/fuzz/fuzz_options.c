/* libFuzzer target: the command line. The input is split at NUL bytes into argv (up to 48
 * arguments) and parsed by cli_parse against a table with every option type (the commands' tables
 * are built from the same types); then the per-channel lists of --data-mean/--data-std, an error
 * message's cfg.<field> rewriting (cli_error), and the name parsers the commands call on option
 * values: models, head JSON, corruptions, layouts. */
#include "cli/cli.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    char *argv[50];
    int argc = 0;
    argv[argc++] = "train";
    for (size_t i = 0; i <= size && argc < 49;) {
        argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    argv[argc] = NULL;

    int n_int = 1, onoff = 0, choice = 0;
    long n_long = 0;
    uint64_t seed = 0;
    double lr = 0.1;
    char out[16] = "";
    cli_foreign f;
    cli_foreign_init(&f);
    const cli_opt opts[] = {
        {"--epochs", OPT_INT, &n_int, 0, 1, 100000, NULL, "int"},
        {"--max-steps", OPT_LONG, &n_long, 0, 0, 1e15, NULL, "long"},
        {"--seed", OPT_U64, &seed, 0, 0, 1.8e19, NULL, "u64"},
        {"--lr", OPT_DOUBLE, &lr, 0, 0, 10, NULL, "double"},
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL, "string"},
        {"--eval-minibatch", OPT_ONOFF, &onoff, 0, 0, 0, NULL, "on/off"},
        {"--schedule", OPT_CHOICE, &choice, 0, 0, 0, "cosine|step|const", "choice"},
        CLI_FOREIGN_OPTS(&f),
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *pos[2];
    int np = 0;
    int rc = cli_parse("train", "[options]", argc, argv, opts, n, pos, 2, &np);
    if (rc == 0) {
        if (lr != lr || n_int < 1 || n_int > 100000 || n_long < 0)
            abort(); /* a value outside its declared range was accepted */
        bl_recipe r = bl_recipe_fmnist();
        cli_foreign_recipe("train", &f, &r);
        cli_given("--lr");
        cli_print_config(stdout, "train", opts, n);
        for (int i = 0; i < np; i++) {
            bl_model m;
            bl_corruption c;
            bl_layout l;
            if (bl_model_init(&m, pos[i])) bl_model_init(&m, "resnet8-crops");
            bl_model_opts_from_json(&m, pos[i]);
            bl_corruption_parse(pos[i], &c);
            bl_layout_parse(pos[i], &l);
            bl_fail(BL_ERR_ARG, "%s", pos[i]);
            cli_error("train", opts, n);
        }
    }
    bl_error_clear();
    free(buf);
    return 0;
}
