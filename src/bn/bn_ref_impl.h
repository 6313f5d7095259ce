/* The reference BN kernels, written once for any floating type: include with T (the data type)
 * and P (the name prefix) defined. Plain loops over (sample, channel, pixel) straight from the
 * formulas, all arithmetic in double; clarity over speed. Backward derivation: docs/bn-backward.md.
 *   forward:  xhat = (x - mu_g) / sqrt(var_g + eps),  y = gamma_a * xhat + beta_a
 *   backward: dxhat = gamma_a * dy
 *             dx = rstd_g / n_g * (n_g * dxhat - sum_g(dxhat) - xhat * sum_g(dxhat * xhat))
 * g = the sample's group, a = its affine row; population mode uses row s of the stored mean/var. */
#ifndef T
#error "define T and P before including bn_ref_impl.h"
#endif

#define BL_CAT_(a, b) a##b
#define BL_CAT(a, b) BL_CAT_(a, b)
#define FN(name) BL_CAT(P, name)

#define BL_FOR_ALL(a, i, c, p)                                                                     \
    for (int i = 0; i < (a)->s.n; i++)                                                             \
        for (int c = 0; c < (a)->s.c; c++)                                                         \
            for (size_t p = 0; p < bl_shape_hw((a)->s); p++)

bl_status FN(fwd_batch)(const bl_bn_kargs *a, const T *x, const T *gamma, const T *beta, T *y,
                        bl_moments *gm)
{
    int C = a->s.c, G = a->g->n_groups;
    const int *grp = a->g->sample_group;
    double hw = (double)bl_shape_hw(a->s);
    bl_moments_zero(gm);
    /* two passes: the mean, then squared deviations from it */
    BL_FOR_ALL(a, i, c, p) gm->mean[grp[i] * C + c] += x[bl_idx(a->s, i, c, p)];
    for (int i = 0; i < a->s.n; i++)
        for (int c = 0; c < C; c++) gm->n[grp[i] * C + c] += hw;
    for (int k = 0; k < G * C; k++)
        if (gm->n[k] > 0) gm->mean[k] /= gm->n[k];
    BL_FOR_ALL(a, i, c, p)
    {
        double d = x[bl_idx(a->s, i, c, p)] - gm->mean[grp[i] * C + c];
        gm->m2[grp[i] * C + c] += d * d;
    }
    bl_status st = bl_bn_reduce_moments(a->g, gm);
    if (!st) st = bl_bn_check_groups(a, gm);
    if (st) return st;
    BL_FOR_ALL(a, i, c, p)
    {
        int k = grp[i] * C + c, r = bl_affine_row(a, i) * C + c;
        size_t at = bl_idx(a->s, i, c, p);
        double xhat = (x[at] - gm->mean[k]) * bl_rstd(gm->m2[k] / gm->n[k], a->eps);
        y[at] = (T)(gamma[r] * xhat + beta[r]);
        if (!isfinite(y[at])) /* the input was checked: the affine parameters, as the fast kernel */
            return bl_fail(BL_ERR_NUMERIC, "bn '%s': the output (gamma or beta may be non-finite) "
                           "of sample %d holds NaN or Inf: check the data and the layer before",
                           a->name, i);
    }
    return BL_OK;
}

bl_status FN(bwd_batch)(const bl_bn_kargs *a, const T *x, const T *dy, const T *gamma,
                        const bl_moments *gm, T *dx, T *dgamma, T *dbeta)
{
    int C = a->s.c, G = a->g->n_groups, A = a->affine_rows;
    const int *grp = a->g->sample_group;
    /* sums[0 .. GC): sum dxhat per group; [GC .. 2GC): sum dxhat*xhat; then dgamma, dbeta (A*C) */
    size_t gc = (size_t)G * C;
    double *sums = bl_calloc((2 * gc + 2 * (size_t)A * C) * sizeof(double));
    if (!sums) return BL_ERR_NOMEM;
    double *s1 = sums, *s2 = sums + gc, *dg = sums + 2 * gc, *db = dg + (size_t)A * C;
    BL_FOR_ALL(a, i, c, p)
    {
        int k = grp[i] * C + c, r = bl_affine_row(a, i) * C + c;
        size_t at = bl_idx(a->s, i, c, p);
        double xhat = (x[at] - gm->mean[k]) * bl_rstd(gm->m2[k] / gm->n[k], a->eps);
        double dxhat = (double)dy[at] * gamma[r];
        s1[k] += dxhat;
        s2[k] += dxhat * xhat;
        dg[r] += (double)dy[at] * xhat;
        db[r] += dy[at];
    }
    bl_status st = bl_bn_reduce_sum(a->g, sums, 2 * gc);
    for (size_t k = 0; !st && k < 2 * gc; k++)
        if (!isfinite(sums[k]))
            st = bl_fail(BL_ERR_NUMERIC,
                         "bn '%s': the gradient arriving in backward holds NaN or Inf", a->name);
    if (st) {
        bl_free(sums);
        return st;
    }
    BL_FOR_ALL(a, i, c, p)
    {
        int k = grp[i] * C + c, r = bl_affine_row(a, i) * C + c;
        size_t at = bl_idx(a->s, i, c, p);
        double n = gm->n[k], rstd = bl_rstd(gm->m2[k] / n, a->eps);
        double xhat = (x[at] - gm->mean[k]) * rstd;
        double dxhat = (double)dy[at] * gamma[r];
        dx[at] = (T)(rstd / n * (n * dxhat - s1[k] - xhat * s2[k]));
    }
    for (int k = 0; k < A * C; k++) {
        dgamma[k] += (T)dg[k];
        dbeta[k] += (T)db[k];
    }
    bl_free(sums);
    return BL_OK;
}

bl_status FN(fwd_pop)(const bl_bn_kargs *a, const T *x, const T *gamma, const T *beta,
                      const T *mean, const T *var, T *y)
{
    int C = a->s.c;
    BL_FOR_ALL(a, i, c, p)
    {
        int r = bl_affine_row(a, i) * C + c, q = bl_stats_row(a, i) * C + c;
        size_t at = bl_idx(a->s, i, c, p);
        double xhat = ((double)x[at] - mean[q]) * bl_rstd(var[q], a->eps);
        y[at] = (T)(gamma[r] * xhat + beta[r]);
        if (!isfinite(y[at]))
            return bl_fail(BL_ERR_NUMERIC, "bn '%s': the input of sample %d holds NaN or Inf: "
                           "check the data and the layer before", a->name, i);
    }
    return BL_OK;
}

bl_status FN(bwd_pop)(const bl_bn_kargs *a, const T *x, const T *dy, const T *gamma,
                      const T *mean, const T *var, T *dx, T *dgamma, T *dbeta)
{
    int C = a->s.c, A = a->affine_rows;
    double *dg = bl_calloc(2 * (size_t)A * C * sizeof(double));
    if (!dg) return BL_ERR_NOMEM;
    double *db = dg + (size_t)A * C;
    BL_FOR_ALL(a, i, c, p)
    {
        int r = bl_affine_row(a, i) * C + c, q = bl_stats_row(a, i) * C + c;
        size_t at = bl_idx(a->s, i, c, p);
        double rstd = bl_rstd(var[q], a->eps);
        dx[at] = (T)((double)gamma[r] * dy[at] * rstd);
        dg[r] += (double)dy[at] * ((double)x[at] - mean[q]) * rstd;
        db[r] += dy[at];
    }
    for (int k = 0; k < A * C; k++)
        if (!isfinite(dg[k]) || !isfinite(db[k])) {
            bl_free(dg);
            return bl_fail(BL_ERR_NUMERIC,
                           "bn '%s': the gradient arriving in backward holds NaN or Inf", a->name);
        }
    for (int k = 0; k < A * C; k++) {
        dgamma[k] += (T)dg[k];
        dbeta[k] += (T)db[k];
    }
    bl_free(dg);
    return BL_OK;
}

#undef BL_FOR_ALL
#undef FN
#undef BL_CAT
#undef BL_CAT_
