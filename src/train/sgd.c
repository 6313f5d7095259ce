/* SGD with momentum, Nesterov and coupled weight decay, as torch.optim.SGD computes it. */
#include "bnlab/train.h"

void bl_sgd_step(bl_net *net, const bl_sgd *o, double lr)
{
    const float m = (float)o->momentum, flr = (float)lr;
    for (int i = 0; i < net->n_params; i++) {
        const bl_param *p = &net->params[i];
        if (p->kind == BL_P_BUFFER || p->kind == BL_P_COUNT) continue;
        float wd = (float)((p->kind == BL_P_WEIGHT || o->wd_bn) ? o->wd : 0.0);
        float *w = p->data, *g = net->grad_block + p->offset, *buf = net->optim_block + p->offset;
        const size_t n = p->count;
        const int nest = o->nesterov;
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t k = 0; k < n; k++) {
            float d = g[k] + wd * w[k];
            if (m != 0) {
                buf[k] = m * buf[k] + d;
                d = nest ? d + m * buf[k] : buf[k];
            }
            w[k] -= flr * d;
        }
    }
}
