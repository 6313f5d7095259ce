/* The reference kernels, instantiated for float and double from one template. */
#include "bn/kernels.h"

#define T float
#define P bl_bn_ref_f32_
#include "bn/bn_ref_impl.h"
#undef T
#undef P

#define T double
#define P bl_bn_ref_f64_
#include "bn/bn_ref_impl.h"
#undef T
#undef P

const bl_bn_kernels bl_bn_kernels_ref = {bl_bn_ref_f32_fwd_batch, bl_bn_ref_f32_bwd_batch,
                                         bl_bn_ref_f32_fwd_pop, bl_bn_ref_f32_bwd_pop};
