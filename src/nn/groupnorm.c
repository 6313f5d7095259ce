/* GroupNorm: the float kernels the layer runs and the double instance the tests differentiate,
 * both from gn_impl.h. */
#include "nn/groupnorm.h"

#include <math.h>

bl_status bl_gn_check(bl_shape s, int groups)
{
    if (s.n < 0 || s.c < 1 || s.h < 1 || s.w < 1)
        return bl_fail(BL_ERR_ARG, "gn: shape (%d, %d, %d, %d)", s.n, s.c, s.h, s.w);
    if (groups < 1 || s.c % groups)
        return bl_fail(BL_ERR_ARG, "gn: %d groups do not divide %d channels: use a divisor of the "
                       "channels (32 channels: 8 groups of 4)", groups, s.c);
    return BL_OK;
}

#define T float
#define P bl_gn_
#include "nn/gn_impl.h"
#undef T
#undef P

#define T double
#define P bl_gn_f64_
#include "nn/gn_impl.h"
#undef T
#undef P
