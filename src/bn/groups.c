/* Normalization groups: which samples of the memory batch normalize together. One general
 * constructor; whole batch and ghost groups are its special cases. */
#include "bnlab/bn.h"

#include <stdlib.h>
#include <string.h>

void bl_groups_free(bl_groups *g)
{
    bl_free(g->sample_group);
    memset(g, 0, sizeof *g);
}

bl_status bl_groups_make(bl_groups *g, int n, int ghost, const int *domain, int n_domains,
                         int split_by_domain)
{
    memset(g, 0, sizeof *g);
    if (n < 0) return bl_fail(BL_ERR_ARG, "groups: negative batch size %d", n);
    if (ghost < 0) return bl_fail(BL_ERR_ARG, "groups: ghost group size %d must be >= 0", ghost);
    if (n_domains < 1)
        return bl_fail(BL_ERR_ARG, "groups: %d domains: need at least 1", n_domains);
    if (!domain && n_domains != 1)
        return bl_fail(BL_ERR_ARG, "groups: %d domains but no per-sample domain ids given",
                       n_domains);
    for (int i = 0; domain && i < n; i++)
        if (domain[i] < 0 || domain[i] >= n_domains)
            return bl_fail(BL_ERR_ARG,
                           "groups: sample %d has domain id %d outside [0, %d): fix the domain "
                           "labels or raise the domain count",
                           i, domain[i], n_domains);
    /* one block: sample_group (n), sample_domain (n), group_domain (at most n + n_domains) */
    size_t cap = 2 * (size_t)n + (size_t)n + (size_t)n_domains + 1;
    int *block = bl_alloc(cap * sizeof(int));
    if (!block) return BL_ERR_NOMEM;
    g->sample_group = block;
    g->sample_domain = block + n;
    g->group_domain = block + 2 * (size_t)n;
    g->n = n;
    g->n_domains = n_domains;
    g->ghost = ghost;
    for (int i = 0; i < n; i++) g->sample_domain[i] = domain ? domain[i] : 0;

    int ng = 0;
    if (!split_by_domain || n_domains == 1) {
        /* groups in memory order: one, or chunks of `ghost` */
        for (int i = 0; i < n; i++) g->sample_group[i] = ghost ? i / ghost : 0;
        ng = n == 0 ? (ghost ? 0 : 1) : (ghost ? (n + ghost - 1) / ghost : 1);
        for (int j = 0; j < ng; j++) g->group_domain[j] = -2; /* unset */
        for (int i = 0; i < n; i++) {
            int *gd = &g->group_domain[g->sample_group[i]];
            *gd = (*gd == -2 || *gd == g->sample_domain[i]) ? g->sample_domain[i] : -1;
        }
        for (int j = 0; j < ng; j++)
            if (g->group_domain[j] == -2) g->group_domain[j] = n_domains == 1 ? 0 : -1;
    } else {
        /* per domain, in domain order; within a domain, chunks of `ghost` in memory order */
        for (int d = 0; d < n_domains; d++) {
            int seen = 0, first = ng;
            /* without ghost groups every domain has its group, even when empty, so the group
             * count does not depend on the batch (a reducer merges groups by index) */
            if (!ghost) g->group_domain[ng++] = d;
            for (int i = 0; i < n; i++) {
                if (g->sample_domain[i] != d) continue;
                int j = first + (ghost ? seen / ghost : 0);
                g->sample_group[i] = j;
                if (j >= ng) g->group_domain[ng++] = d;
                seen++;
            }
        }
    }
    g->n_groups = ng;
    return BL_OK;
}

bl_status bl_groups_whole(bl_groups *g, int n) { return bl_groups_make(g, n, 0, NULL, 1, 0); }

bl_status bl_groups_ghost(bl_groups *g, int n, int size)
{
    if (size < 1) return bl_fail(BL_ERR_ARG, "groups: ghost group size %d must be >= 1", size);
    return bl_groups_make(g, n, size, NULL, 1, 0);
}

int bl_groups_size(const bl_groups *g, int j)
{
    int k = 0;
    for (int i = 0; i < g->n; i++) k += g->sample_group[i] == j;
    return k;
}
