#define _POSIX_C_SOURCE 200809L
/* The command under mpirun: the process group, the trainer's hooks on it, and who prints. Rank 0
 * prints and writes; the others are quiet (their stdout and stderr go to /dev/null) except for an
 * error of their own that the others do not know of, which they print before ending the job. */
#include "cli/cli.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bl_status hook_grads(void *ctx, bl_net *net)
{
    cli_dist *d = ctx;
    size_t n;
    float *g = bl_net_block(net, BL_BLOCK_GRADS, &n);
    return bl_pg_sum_float(d->pg, g, n);
}

static bl_status hook_agree(void *ctx, int *flags, int n)
{
    return bl_pg_or(((cli_dist *)ctx)->pg, flags, n);
}

static bl_status hook_agree_error(void *ctx, bl_status st)
{
    cli_dist *d = ctx;
    int agreed;
    bl_status a = bl_pg_agree_error(d->pg, st, &agreed);
    d->agreed = agreed; /* every process returns this error: rank 0 alone reports it */
    return a;
}

/* Test hook (tests/cli_mpi.sh): BNLAB_TEST_POISON=RANK:STEP makes that rank's weights NaN after
 * that step, so its next loss is not finite on that rank alone. */
static void poison_check(cli_dist *d, bl_net *net, long step)
{
    const char *p = getenv("BNLAB_TEST_POISON");
    int r;
    long s;
    if (p && sscanf(p, "%d:%ld", &r, &s) == 2 && r == bl_pg_rank(d->pg) && s == step) {
        size_t n;
        float *w = bl_net_block(net, BL_BLOCK_PARAMS, &n);
        for (size_t i = 0; i < n; i++) w[i] = 0.0f / 0.0f;
    }
}

static bl_status hook_route(void *ctx, const int *counts, const int *perm, int dir, int d,
                            const float *in, float *out)
{
    return bl_pg_route(((cli_dist *)ctx)->pg, counts, perm, dir, d, in, out);
}

int cli_dist_init(cli_dist *d, const char *cmd)
{
    memset(d, 0, sizeof *d);
    d->err_fd = -1;
    if (bl_pg_init(&d->pg, NULL, NULL)) {
        fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error());
        return 1;
    }
    d->red = bl_pg_reducer(d->pg);
    d->rank = bl_pg_rank(d->pg), d->world = bl_pg_size(d->pg);
    if (d->rank > 0) { /* quiet: rank 0 speaks for the group */
        fflush(stdout), fflush(stderr);
        d->err_fd = dup(2);
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1), dup2(nul, 2), close(nul);
    }
    return 0;
}

void cli_dist_hooks(cli_dist *d, bl_train_hooks *h)
{
    memset(h, 0, sizeof *h);
    h->ctx = d;
    h->rank = d->rank, h->world = d->world, h->not_writer = d->rank != 0;
    if (d->world > 1) {
        h->grads = hook_grads;
        h->reducer = &d->red;
        h->agree = hook_agree;
        h->agree_error = hook_agree_error;
        h->route = hook_route;
    }
}

void cli_dist_step(cli_dist *d, bl_net *net, long step)
{
    if (d->world > 1) poison_check(d, net, step);
}

int cli_dist_failed(cli_dist *d, const char *cmd, const cli_opt *opts, int n, int rc)
{
    if (d->world <= 1 || d->agreed) {
        cli_error(cmd, opts, n); /* rank 0's stderr; the others' is /dev/null */
        return rc;
    }
    /* this process alone knows: say so on the real stderr and end the whole job */
    if (d->err_fd >= 0) dup2(d->err_fd, 2);
    bl_fail_ctx(BL_ERR_STATE, "rank %d of %d", d->rank, d->world);
    cli_error(cmd, opts, n);
    bl_pg_abort(d->pg, rc);
}

void cli_dist_free(cli_dist *d)
{
    fflush(stdout), fflush(stderr);
    bl_pg_free(d->pg);
    if (d->err_fd >= 0) close(d->err_fd);
    d->pg = NULL;
}
