/* Internal: the double instance of the GroupNorm kernels (tests), beside the float ones of nn.h. */
#ifndef BNLAB_NN_GROUPNORM_H
#define BNLAB_NN_GROUPNORM_H

#include "bnlab/nn.h"

bl_status bl_gn_f64_forward(bl_shape s, int groups, double eps, const double *x,
                            const double *gamma, const double *beta, double *y, double *mean,
                            double *rstd);
bl_status bl_gn_f64_backward(bl_shape s, int groups, const double *x, const double *dy,
                             const double *gamma, const double *mean, const double *rstd,
                             double *dx, double *dgamma, double *dbeta);

#endif
