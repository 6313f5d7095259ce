/* The process group: MPI when launched by mpirun (and built with MPI), one process otherwise.
 * Every sum is a gather followed by additions in rank order, so all processes hold the same bits
 * (MPI_Allreduce promises neither the order nor that). Errors of MPI calls come back as statuses
 * (MPI_ERRORS_RETURN) with the call named. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef BL_HAVE_MPI
#include <mpi.h>
#endif

struct bl_pg {
    int rank, size, mpi, own_init;
    long calls;
#ifdef BL_HAVE_MPI
    MPI_Comm comm;
#endif
};

#ifdef BL_HAVE_MPI
/* Open MPI's and MPICH's launchers set these in every process they start. */
static int launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}
#endif

int bl_pg_launched(int *rank)
{
    const char *s = getenv("OMPI_COMM_WORLD_SIZE"), *r = getenv("OMPI_COMM_WORLD_RANK");
    if (!s) s = getenv("PMI_SIZE"), r = getenv("PMI_RANK");
    if (rank) *rank = r ? atoi(r) : 0;
    return s && atoi(s) > 1 ? atoi(s) : 1;
}

bl_status bl_pg_single(bl_pg **out)
{
    bl_pg *pg = bl_callocn(1, sizeof *pg);
    if (!pg) return bl_fail(BL_ERR_NOMEM, "out of memory for the process group");
    pg->size = 1;
    *out = pg;
    return BL_OK;
}

#ifdef BL_HAVE_MPI
static bl_status mpi_fail(int rc, const char *call)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    return bl_fail(BL_ERR_IO, "MPI: %s failed: %s (a process of the group may have ended)", call,
                   msg);
}
#define MPI_CHECK(call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS) return mpi_fail(rc_, #call);                                       \
    } while (0)
#endif

bl_status bl_pg_init(bl_pg **out, int *argc, char ***argv)
{
    bl_status st = bl_pg_single(out);
    if (st) return st;
#ifdef BL_HAVE_MPI
    bl_pg *pg = *out;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited && !launched_by_mpirun()) return BL_OK;
    if (!inited) {
        int provided;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            free(pg), *out = NULL;
            return bl_fail(BL_ERR_IO, "MPI_Init failed: check the mpirun command line");
        }
        pg->own_init = 1;
    }
    pg->mpi = 1;
    pg->comm = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(pg->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(pg->comm, &pg->rank);
    MPI_Comm_size(pg->comm, &pg->size);
#else
    (void)argc, (void)argv;
    /* W copies of one process would each train on everything and write the same files */
    const int w = bl_pg_launched(NULL);
    if (w > 1) {
        free(*out), *out = NULL;
        return bl_fail(BL_ERR_ARG, "started by mpirun as one of %d processes, but bnlab was built "
                       "without MPI: install libopenmpi-dev (scripts/install-deps.sh) and rebuild, "
                       "or run one process", w);
    }
#endif
    return BL_OK;
}

void bl_pg_free(bl_pg *pg)
{
    if (!pg) return;
#ifdef BL_HAVE_MPI
    if (pg->own_init) MPI_Finalize();
#endif
    free(pg);
}

int bl_pg_rank(const bl_pg *pg) { return pg->rank; }
int bl_pg_size(const bl_pg *pg) { return pg->size; }
int bl_pg_is_mpi(const bl_pg *pg) { return pg->mpi; }
long bl_pg_calls(const bl_pg *pg) { return pg->calls; }

void bl_pg_abort(bl_pg *pg, int code)
{
    fflush(stdout), fflush(stderr);
#ifdef BL_HAVE_MPI
    if (pg && pg->mpi) MPI_Abort(pg->comm, code);
#endif
    (void)pg;
    exit(code);
}

bl_status bl_pg_allgather(bl_pg *pg, const double *in, size_t n, double *out)
{
    pg->calls++;
    if (!pg->mpi) {
        if (n) memmove(out, in, n * sizeof(double));
        return BL_OK;
    }
#ifdef BL_HAVE_MPI
    if (n > (size_t)0x7fffffff) return bl_fail(BL_ERR_ARG, "pg: %zu values in one gather", n);
    MPI_CHECK(MPI_Allgather(in, (int)n, MPI_DOUBLE, out, (int)n, MPI_DOUBLE, pg->comm));
#endif
    return BL_OK;
}

bl_status bl_pg_allgatherv(bl_pg *pg, const double *in, size_t n, double **out, size_t *n_out,
                           size_t *counts)
{
    *out = NULL, *n_out = 0;
    if (!pg->mpi) {
        pg->calls++;
        if (!(*out = bl_alloc((n ? n : 1) * sizeof(double))))
            return bl_fail(BL_ERR_NOMEM, "pg: out of memory for a gather of %zu values", n);
        if (n) memcpy(*out, in, n * sizeof(double));
        *n_out = n;
        if (counts) counts[0] = n;
        return BL_OK;
    }
#ifdef BL_HAVE_MPI
    const int W = pg->size;
    double cn = (double)n, *all_n = bl_malloc(sizeof(double) * W);
    int *cnt = bl_malloc(sizeof(int) * W), *off = bl_malloc(sizeof(int) * W);
    bl_status st = all_n && cnt && off ? BL_OK : bl_fail(BL_ERR_NOMEM, "pg: out of memory");
    if (!st) st = bl_pg_allgather(pg, &cn, 1, all_n);
    size_t total = 0;
    for (int r = 0; !st && r < W; r++) {
        off[r] = (int)total, cnt[r] = (int)all_n[r];
        total += (size_t)all_n[r];
        if (counts) counts[r] = (size_t)all_n[r];
    }
    if (!st && total > (size_t)0x7fffffff)
        st = bl_fail(BL_ERR_ARG, "pg: %zu values in one gather", total);
    if (!st && !(*out = bl_alloc((total ? total : 1) * sizeof(double))))
        st = bl_fail(BL_ERR_NOMEM, "pg: out of memory for a gather of %zu values", total);
    if (!st) {
        pg->calls++;
        int rc = MPI_Allgatherv(in, (int)n, MPI_DOUBLE, *out, cnt, off, MPI_DOUBLE, pg->comm);
        if (rc != MPI_SUCCESS) st = mpi_fail(rc, "MPI_Allgatherv");
    }
    free(all_n), free(cnt), free(off);
    if (st) {
        bl_free(*out), *out = NULL;
        return st;
    }
    *n_out = total;
#endif
    return BL_OK;
}

bl_status bl_pg_sum(bl_pg *pg, double *buf, size_t n)
{
    if (!pg->mpi) return pg->calls++, BL_OK;
    const int W = pg->size;
    double *all = bl_alloc((n ? n : 1) * W * sizeof(double));
    if (!all) return bl_fail(BL_ERR_NOMEM, "pg: out of memory for a sum of %zu values", n);
    bl_status st = bl_pg_allgather(pg, buf, n, all);
    if (!st)
        for (size_t i = 0; i < n; i++) {
            double s = all[i];
            for (int r = 1; r < W; r++) s += all[(size_t)r * n + i];
            buf[i] = s;
        }
    bl_free(all);
    return st;
}

bl_status bl_pg_sum_float(bl_pg *pg, float *buf, size_t n)
{
    if (!pg->mpi) return pg->calls++, BL_OK;
#ifdef BL_HAVE_MPI
    const int W = pg->size;
    if (n > (size_t)0x7fffffff) return bl_fail(BL_ERR_ARG, "pg: %zu values in one sum", n);
    float *all = bl_alloc((n ? n : 1) * W * sizeof(float));
    if (!all) return bl_fail(BL_ERR_NOMEM, "pg: out of memory for a sum of %zu values", n);
    pg->calls++;
    int rc = MPI_Allgather(buf, (int)n, MPI_FLOAT, all, (int)n, MPI_FLOAT, pg->comm);
    if (rc != MPI_SUCCESS) {
        bl_free(all);
        return mpi_fail(rc, "MPI_Allgather");
    }
    /* float additions in rank order: exactly what one process adding W partial sums does */
    for (size_t i = 0; i < n; i++) {
        float s = all[i];
        for (int r = 1; r < W; r++) s += all[(size_t)r * n + i];
        buf[i] = s;
    }
    bl_free(all);
#endif
    return BL_OK;
}

bl_status bl_pg_bcast(bl_pg *pg, void *buf, size_t bytes, int root)
{
    pg->calls++;
    if (!pg->mpi) return BL_OK;
#ifdef BL_HAVE_MPI
    if (bytes > (size_t)0x7fffffff) return bl_fail(BL_ERR_ARG, "pg: broadcast of %zu bytes", bytes);
    MPI_CHECK(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, pg->comm));
#endif
    return BL_OK;
}

bl_status bl_pg_or(bl_pg *pg, int *flags, int n)
{
    pg->calls++;
    if (!pg->mpi) return BL_OK;
#ifdef BL_HAVE_MPI
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, flags, n, MPI_INT, MPI_LOR, pg->comm));
#endif
    return BL_OK;
}

bl_status bl_pg_alltoallv(bl_pg *pg, const float *send, const int *send_counts, float *recv,
                          const int *recv_counts)
{
    pg->calls++;
    if (!pg->mpi) {
        if (send_counts[0] != recv_counts[0])
            return bl_fail(BL_ERR_ARG, "pg: sends %d values to itself, expects %d", send_counts[0],
                           recv_counts[0]);
        if (send_counts[0]) memmove(recv, send, (size_t)send_counts[0] * sizeof(float));
        return BL_OK;
    }
#ifdef BL_HAVE_MPI
    const int W = pg->size;
    int *so = bl_malloc(sizeof(int) * W), *ro = bl_malloc(sizeof(int) * W);
    if (!so || !ro) {
        free(so), free(ro);
        return bl_fail(BL_ERR_NOMEM, "pg: out of memory");
    }
    for (int r = 0, a = 0, b = 0; r < W; r++) so[r] = a, ro[r] = b, a += send_counts[r], b += recv_counts[r];
    int rc = MPI_Alltoallv(send, send_counts, so, MPI_FLOAT, recv, recv_counts, ro, MPI_FLOAT,
                           pg->comm);
    free(so), free(ro);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Alltoallv");
#endif
    return BL_OK;
}

bl_status bl_pg_agree_error(bl_pg *pg, bl_status st, int *agreed)
{
    if (agreed) *agreed = 0;
    if (!pg->mpi) {
        pg->calls++;
        if (agreed) *agreed = st != BL_OK;
        return st;
    }
    /* the lowest failing rank (size when none), then its status and reason */
    double mine = st ? pg->rank : pg->size, *all = bl_malloc(sizeof(double) * pg->size);
    if (!all) return bl_fail(BL_ERR_NOMEM, "pg: out of memory");
    char reason[1024];
    snprintf(reason, sizeof reason, "%s", st ? bl_error() : "");
    bl_status s2 = bl_pg_allgather(pg, &mine, 1, all);
    int first = pg->size;
    for (int r = 0; !s2 && r < pg->size; r++)
        if ((int)all[r] < first) first = (int)all[r];
    free(all);
    if (s2) return s2;
    if (first == pg->size) return BL_OK;
    int code[1] = {st};
    if ((s2 = bl_pg_bcast(pg, code, sizeof code, first)) ||
        (s2 = bl_pg_bcast(pg, reason, sizeof reason, first)))
        return s2;
    reason[sizeof reason - 1] = 0;
    if (agreed) *agreed = 1;
    return bl_fail((bl_status)code[0], "rank %d: %s", first, reason);
}

/* ---- the BN core's reducer ---- */
static bl_status red_sum(void *ctx, double *buf, size_t n) { return bl_pg_sum(ctx, buf, n); }

static bl_status red_gather(void *ctx, const double *in, size_t n, double **out, size_t *n_out)
{
    return bl_pg_allgatherv(ctx, in, n, out, n_out, NULL);
}

/* Every process's moments, then Chan's exact merge in rank order: the merge of one process over
 * its samples and of W processes over theirs agree to rounding, and all processes agree bitwise. */
static bl_status red_merge(void *ctx, bl_moments *m)
{
    bl_pg *pg = ctx;
    if (!pg->mpi) return pg->calls++, BL_OK;
    const size_t k = (size_t)m->k, W = (size_t)pg->size;
    double *all = bl_alloc(3 * k * W * sizeof(double) + 1);
    if (!all) return bl_fail(BL_ERR_NOMEM, "pg: out of memory merging moments");
    /* one buffer [n | mean | m2] (bl_moments keeps them contiguous) */
    bl_status st = bl_pg_allgather(pg, m->n, 3 * k, all);
    if (!st) {
        bl_moments_zero(m);
        for (size_t r = 0; r < W; r++) {
            const double *o = all + r * 3 * k;
            for (size_t i = 0; i < k; i++)
                bl_moments_merge1(&m->n[i], &m->mean[i], &m->m2[i], o[i], o[k + i], o[2 * k + i]);
        }
    }
    bl_free(all);
    return st;
}

bl_reducer bl_pg_reducer(bl_pg *pg)
{
    return (bl_reducer){.ctx = pg, .merge_moments = red_merge, .sum = red_sum, .gather = red_gather};
}
