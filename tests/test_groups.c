/* Normalization groups: torch.split layout of ghost groups, per-domain groups, ghost groups within
 * domains, groups that mix domains, and bad descriptors. */
#include "bnlab/bn.h"
#include "check.h"

int main(void)
{
    bl_groups g;
    /* ghost groups of 4 over 10 samples: [0,4) [4,8) [8,10) like torch.split */
    CHECK(bl_groups_ghost(&g, 10, 4) == BL_OK, "%s", bl_error());
    CHECK(g.n_groups == 3, "groups %d", g.n_groups);
    int want[10] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2}, ok = 1;
    for (int i = 0; i < 10; i++) ok &= g.sample_group[i] == want[i];
    CHECK(ok, "ghost layout differs from torch.split");
    CHECK(bl_groups_size(&g, 2) == 2, "last group size %d", bl_groups_size(&g, 2));
    bl_groups_free(&g);

    CHECK(bl_groups_whole(&g, 5) == BL_OK && g.n_groups == 1 && g.group_domain[0] == 0, "whole");
    bl_groups_free(&g);
    CHECK(bl_groups_ghost(&g, 6, 6) == BL_OK && g.n_groups == 1, "ghost = batch is one group");
    bl_groups_free(&g);
    CHECK(bl_groups_ghost(&g, 6, 100) == BL_OK && g.n_groups == 1, "ghost > batch is one group");
    bl_groups_free(&g);

    /* per-domain groups: one group per domain, in domain order, even when a domain is absent */
    int dom[7] = {2, 0, 2, 0, 0, 2, 2};
    CHECK(bl_groups_make(&g, 7, 0, dom, 3, 1) == BL_OK, "%s", bl_error());
    CHECK(g.n_groups == 3, "per-domain groups %d", g.n_groups);
    ok = 1;
    for (int i = 0; i < 7; i++) ok &= g.sample_group[i] == dom[i];
    CHECK(ok && g.group_domain[1] == 1 && bl_groups_size(&g, 1) == 0, "per-domain assignment");
    bl_groups_free(&g);

    /* ghost groups of 2 within domains: domain 0 = samples 1,3,4 -> {1,3},{4}; domain 2 = 0,2,5,6
     * -> {0,2},{5,6} */
    CHECK(bl_groups_make(&g, 7, 2, dom, 3, 1) == BL_OK, "%s", bl_error());
    CHECK(g.n_groups == 4, "ghost within domains: %d groups", g.n_groups);
    int want2[7] = {2, 0, 2, 0, 1, 3, 3}, wd[4] = {0, 0, 2, 2};
    ok = 1;
    for (int i = 0; i < 7; i++) ok &= g.sample_group[i] == want2[i];
    for (int j = 0; j < 4; j++) ok &= g.group_domain[j] == wd[j];
    CHECK(ok, "ghost-within-domain assignment");
    bl_groups_free(&g);

    /* whole batch with domains: one group marked mixed; a pure group keeps its domain */
    CHECK(bl_groups_make(&g, 7, 0, dom, 3, 0) == BL_OK && g.n_groups == 1 &&
              g.group_domain[0] == -1, "mixed whole group");
    bl_groups_free(&g);
    int same[3] = {1, 1, 1};
    CHECK(bl_groups_make(&g, 3, 0, same, 2, 0) == BL_OK && g.group_domain[0] == 1, "pure group");
    bl_groups_free(&g);

    /* bad descriptors */
    int bad[3] = {0, 3, 1};
    CHECK(bl_groups_make(&g, 3, 0, bad, 3, 1) == BL_ERR_ARG && strstr(bl_error(), "sample 1") &&
              strstr(bl_error(), "domain id 3"), "domain out of range: %s", bl_error());
    CHECK(bl_groups_ghost(&g, 4, 0) == BL_ERR_ARG, "ghost size 0");
    CHECK(bl_groups_make(&g, -1, 0, NULL, 1, 0) == BL_ERR_ARG, "negative n");
    CHECK(bl_groups_make(&g, 3, 0, NULL, 2, 1) == BL_ERR_ARG, "domains without ids");
    /* the empty batch is legal (an empty rank) */
    CHECK(bl_groups_whole(&g, 0) == BL_OK && g.n_groups == 1, "empty batch");
    bl_groups_free(&g);
    return check_done("test_groups");
}
