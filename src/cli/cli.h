/* The bnlab command: shared option parsing helpers and the commands. */
#ifndef BNLAB_CLI_H
#define BNLAB_CLI_H

#include "bnlab/bnlab.h"

/* Parses an integer/double option value or prints what is wrong and returns nonzero. */
int cli_int(const char *opt, const char *v, long lo, long hi, long *out);
int cli_double(const char *opt, const char *v, double *out);

int cmd_demo(int argc, char **argv);

#endif
