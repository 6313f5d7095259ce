/* bnlab dist: the process group - rank, size and the collectives bnlab needs, on MPI when the
 * program was launched by mpirun (and bnlab was built with MPI), trivially for one process.
 *
 * Sums whose bits matter are computed here in rank order (every process gathers all
 * contributions and adds them rank 0 first), never by MPI_Allreduce, which guarantees neither the
 * order nor the same bits on every process: every rank gets the same bits, and for a given rank
 * count the same bits on every run. A collective is called by every process of the group, an
 * empty one included. docs/processes.md. */
#ifndef BNLAB_DIST_H
#define BNLAB_DIST_H

#include "bnlab/bn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bl_pg bl_pg;

/* Joins the processes mpirun started (MPI_Init), or makes a group of one when the program was not
 * launched by mpirun or bnlab has no MPI. argc/argv may be NULL. */
bl_status bl_pg_init(bl_pg **pg, int *argc, char ***argv);
/* Without joining anything: how many processes the launcher (mpirun) started, 1 when none, and
 * this one's rank (may be NULL). */
int bl_pg_launched(int *rank);
/* A group of one process, whatever the environment (tests, library users). */
bl_status bl_pg_single(bl_pg **pg);
/* Leaves the group (MPI_Finalize for the group that called MPI_Init). */
void bl_pg_free(bl_pg *pg);
int bl_pg_rank(const bl_pg *pg);
int bl_pg_size(const bl_pg *pg);
int bl_pg_is_mpi(const bl_pg *pg);
/* Collective calls made so far (tests check that inference makes none). */
long bl_pg_calls(const bl_pg *pg);
/* Ends every process of the group now with `code` (MPI_Abort), or exits this one. */
void bl_pg_abort(bl_pg *pg, int code) __attribute__((noreturn));

/* buf <- the sum over processes, added in rank order (same bits on every process). */
bl_status bl_pg_sum(bl_pg *pg, double *buf, size_t n);
bl_status bl_pg_sum_float(bl_pg *pg, float *buf, size_t n);
/* out (size * n doubles) <- every process's n doubles, rank 0 first. */
bl_status bl_pg_allgather(bl_pg *pg, const double *in, size_t n, double *out);
/* Every process's n_r doubles, rank 0 first: *out (bl_alloc'ed, the caller frees with bl_free)
 * holds *n_out = sum of n_r; counts (size entries, may be NULL) receives each n_r. */
bl_status bl_pg_allgatherv(bl_pg *pg, const double *in, size_t n, double **out, size_t *n_out,
                           size_t *counts);
/* Root's bytes to every process. */
bl_status bl_pg_bcast(bl_pg *pg, void *buf, size_t bytes, int root);
/* flags[0..n) <- OR over processes (exact for any order). */
bl_status bl_pg_or(bl_pg *pg, int *flags, int n);
/* All-to-all with counts: process p sends send_counts[q] floats (from send, packed by destination
 * in rank order) to each q and receives recv_counts[q] from each q (into recv, packed by source
 * in rank order). Counts in floats. */
bl_status bl_pg_alltoallv(bl_pg *pg, const float *send, const int *send_counts, float *recv,
                          const int *recv_counts);
/* Rows of d floats moved by one global permutation (the crop head's shuffle across processes):
 * items and slots numbered globally in rank order, process r holding counts[r] of each, so every
 * process gets as many rows as it gave. dir 1: slot s takes item perm[s]; dir -1 the inverse
 * (item perm[s] takes slot s); each is the other's gradient. in, out: this process's
 * counts[rank] rows. Collective (an empty process too); one process: a plain gather. */
bl_status bl_pg_route(bl_pg *pg, const int *counts, const int *perm, int dir, int d,
                      const float *in, float *out);
/* Agreement on an error: every process passes its status; all OK -> OK. Otherwise every process
 * returns the status of the lowest failing rank with that rank's reason ("rank r: ..."), and
 * *agreed (may be NULL) is set: every process knows. A failure of the agreement itself returns
 * its own error with *agreed 0. */
bl_status bl_pg_agree_error(bl_pg *pg, bl_status st, int *agreed);

/* The BN core's reducer over this group: merge_moments (exact merge in rank order), sum (rank
 * order), gather (concatenation in rank order). Valid while pg lives. */
bl_reducer bl_pg_reducer(bl_pg *pg);

#ifdef __cplusplus
}
#endif
#endif
