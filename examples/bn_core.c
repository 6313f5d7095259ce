/* The BN core alone on a float buffer: 8 samples x 3 channels x 4x4 pixels (NCHW), normalized by
 * the whole batch and by ghost groups of 2, the EMA of the population statistics after a commit,
 * and population-statistics inference. Build against an installed bnlab:
 *   cc bn_core.c $(pkg-config --cflags --libs bnlab) -o bn_core */
#include <bnlab/bnlab.h>

#include <math.h>
#include <stdio.h>

#define N 8
#define C 3
#define HW 16

static int check(bl_status st, const char *what)
{
    if (st) fprintf(stderr, "bn_core: %s: %s\n", what, bl_error());
    return st != BL_OK;
}

int main(void)
{
    static float x[N * C * HW], y[N * C * HW];
    bl_rng rng;
    bl_rng_seed(&rng, 1);
    for (int i = 0; i < N * C * HW; i++) x[i] = (float)(2.0 + 3.0 * bl_rng_normal(&rng));

    bl_bn_config cfg = bl_bn_config_default(C);
    cfg.name = "example.bn";
    bl_bn bn;
    if (check(bl_bn_init(&bn, &cfg), "init")) return 1;
    const bl_shape s = {N, C, 4, 4, BL_NCHW};

    /* the whole batch: every channel of y has mean 0 and variance 1 */
    if (check(bl_bn_forward(&bn, BL_BN_BATCH, NULL, s, x, y), "forward")) return 1;
    double m = 0, v = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < HW; k++) m += y[(n * C + 0) * HW + k];
    m /= N * HW;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < HW; k++) v += pow(y[(n * C + 0) * HW + k] - m, 2);
    v /= N * HW;
    printf("whole batch: channel 0 of y has mean %.2e, variance %.6f\n", m, v);
    if (check(bl_bn_commit(&bn, BL_EST_EMA), "commit")) return 1;
    printf("EMA after one commit: pop_mean[0] = %.4f, pop_var[0] = %.4f (from 0 and 1, momentum 0.1)\n",
           bn.pop_mean[0], bn.pop_var[0]);

    /* ghost groups of 2 samples: the same layer, four normalization groups */
    bl_groups g;
    if (check(bl_groups_ghost(&g, N, 2), "groups")) return 1;
    if (check(bl_bn_forward(&bn, BL_BN_BATCH, &g, s, x, y), "ghost forward")) return 1;
    printf("ghost groups of 2: %d groups, y[0] = %.4f\n", g.n_groups, y[0]);
    bl_groups_free(&g);

    /* inference with the population statistics */
    if (check(bl_bn_forward(&bn, BL_BN_POPULATION, NULL, s, x, y), "population forward")) return 1;
    printf("population statistics: y[0] = %.4f\n", y[0]);

    /* a single value per channel cannot be normalized by its own statistics: an error, not NaN */
    const bl_shape one = {1, C, 1, 1, BL_NCHW};
    if (bl_bn_forward(&bn, BL_BN_BATCH, NULL, one, x, y) == BL_ERR_NUMERIC)
        printf("one value per channel: refused (%s)\n", bl_error());
    bl_bn_free(&bn);
    return 0;
}
