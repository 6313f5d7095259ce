/* SGD with momentum, Nesterov and coupled weight decay, as torch.optim.SGD computes it. */
#include "bnlab/train.h"

void bl_sgd_step(bl_net *net, const bl_sgd *o, double lr)
{
    const double t0 = bl_profile_enabled() ? bl_profile_now() : 0;
    const float m = (float)o->momentum, flr = (float)lr;
    float *grads = bl_net_block(net, BL_BLOCK_GRADS, NULL);
    float *optim = bl_net_block(net, BL_BLOCK_OPTIM, NULL);
    const int np = bl_net_param_count(net), nest = o->nesterov;
    /* one parallel region for every tensor, each split statically (no barrier between them:
     * tensors are independent); every element is computed as the serial loop computes it */
#pragma omp parallel
    for (int i = 0; i < np; i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->kind == BL_P_BUFFER || p->kind == BL_P_COUNT) continue;
        float wd = (float)((p->kind == BL_P_WEIGHT || o->wd_bn) ? o->wd : 0.0);
        float *w = p->data, *g = grads + p->offset, *buf = optim + p->offset;
        const long n = (long)p->count;
#pragma omp for simd schedule(static) nowait
        for (long k = 0; k < n; k++) {
            float d = g[k] + wd * w[k];
            if (m != 0) {
                buf[k] = m * buf[k] + d;
                d = nest ? d + m * buf[k] : buf[k];
            }
            w[k] -= flr * d;
        }
    }
    if (t0) bl_net_profile_phase(net, BL_PHASE_SGD, bl_profile_now() - t0);
}
