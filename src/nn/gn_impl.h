/* The GroupNorm kernels (Wu & He 2018), written once for any floating type: include with T (the
 * data type) and P (the name prefix) defined. Plain loops over (sample, group, channel, pixel),
 * arithmetic in double, straight from the formulas; the float instance is what the layer runs, the
 * double one what the finite differences check.
 *   forward:  per sample i and group g (channels [g*C/G, (g+1)*C/G), all pixels: m values)
 *             mu = mean, var = biased variance, rstd = 1 / sqrt(var + eps)
 *             y = gamma_c * (x - mu) * rstd + beta_c
 *   backward: xhat = (x - mu) * rstd, dxhat = gamma_c * dy
 *             dx = rstd / m * (m * dxhat - sum_g(dxhat) - xhat * sum_g(dxhat * xhat))
 *             dgamma_c += sum(dy * xhat), dbeta_c += sum(dy) (accumulate, like the BN layer)
 * The same derivation as BN's (docs/bn-backward.md) with the group of a sample's channels in place
 * of the batch. mean, rstd: (N * G), written by forward, read by backward. */
#ifndef T
#error "define T and P before including gn_impl.h"
#endif

#define GN_CAT_(a, b) a##b
#define GN_CAT(a, b) GN_CAT_(a, b)
#define GN_FN(name) GN_CAT(P, name)

static size_t GN_FN(idx)(bl_shape s, int i, int c, size_t p)
{
    const size_t hw = bl_shape_hw(s);
    return s.layout == BL_NCHW ? ((size_t)i * s.c + c) * hw + p : ((size_t)i * hw + p) * s.c + c;
}

bl_status GN_FN(forward)(bl_shape s, int groups, double eps, const T *x, const T *gamma,
                         const T *beta, T *y, double *mean, double *rstd)
{
    bl_status st = bl_gn_check(s, groups);
    if (st) return st;
    if (!(eps > 0) || !isfinite(eps))
        return bl_fail(BL_ERR_ARG, "gn: eps %g must be positive and finite", eps);
    const int cpg = s.c / groups;
    const size_t hw = bl_shape_hw(s);
    const double m = (double)cpg * hw;
    for (int i = 0; i < s.n; i++)
        for (int g = 0; g < groups; g++) {
            double mu = 0, v = 0;
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (size_t p = 0; p < hw; p++) mu += x[GN_FN(idx)(s, i, c, p)];
            mu /= m;
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (size_t p = 0; p < hw; p++) {
                    const double d = x[GN_FN(idx)(s, i, c, p)] - mu;
                    v += d * d;
                }
            v /= m;
            if (!isfinite(mu) || !isfinite(v))
                return bl_fail(BL_ERR_NUMERIC, "gn: sample %d, group %d: the input holds NaN or Inf",
                               i, g);
            const double r = 1.0 / sqrt(v + eps);
            mean[i * groups + g] = mu, rstd[i * groups + g] = r;
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (size_t p = 0; p < hw; p++) {
                    const size_t k = GN_FN(idx)(s, i, c, p);
                    y[k] = (T)(gamma[c] * (x[k] - mu) * r + beta[c]);
                }
        }
    return BL_OK;
}

bl_status GN_FN(backward)(bl_shape s, int groups, const T *x, const T *dy, const T *gamma,
                          const double *mean, const double *rstd, T *dx, T *dgamma, T *dbeta)
{
    bl_status st = bl_gn_check(s, groups);
    if (st) return st;
    const int cpg = s.c / groups;
    const size_t hw = bl_shape_hw(s);
    const double m = (double)cpg * hw;
    for (int c = 0; c < s.c; c++) {
        double dg = 0, db = 0;
        for (int i = 0; i < s.n; i++) {
            const double mu = mean[i * groups + c / cpg], r = rstd[i * groups + c / cpg];
            for (size_t p = 0; p < hw; p++) {
                const size_t k = GN_FN(idx)(s, i, c, p);
                dg += dy[k] * (x[k] - mu) * r;
                db += dy[k];
            }
        }
        dgamma[c] = (T)(dgamma[c] + dg), dbeta[c] = (T)(dbeta[c] + db);
    }
    for (int i = 0; i < s.n; i++)
        for (int g = 0; g < groups; g++) {
            const double mu = mean[i * groups + g], r = rstd[i * groups + g];
            double sd = 0, sdx = 0; /* sums of dxhat and dxhat * xhat over the group */
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (size_t p = 0; p < hw; p++) {
                    const size_t k = GN_FN(idx)(s, i, c, p);
                    const double dxh = gamma[c] * dy[k];
                    sd += dxh, sdx += dxh * (x[k] - mu) * r;
                }
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (size_t p = 0; p < hw; p++) {
                    const size_t k = GN_FN(idx)(s, i, c, p);
                    const double xh = (x[k] - mu) * r, dxh = gamma[c] * dy[k];
                    dx[k] = (T)(r / m * (m * dxh - sd - xh * sdx));
                }
        }
    return BL_OK;
}

#undef GN_FN
#undef GN_CAT
#undef GN_CAT_
