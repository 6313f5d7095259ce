/* BN folded into the convolution before it in a built-in model (bnlab fold CKPT): the folded
 * weights as a safetensors state_dict in PyTorch's names and layouts (conv weights OIHW), each
 * folded convolution gaining a bias and its BN's parameters gone - what a PyTorch model with those
 * BN layers replaced by Identity and bias=True on their convolutions loads. A BN is folded when it
 * reads the output of a convolution that nothing else reads and whose weight is its own; the
 * others are kept and named. The report is bl_onnx_fold's (nn.h). */
#include "bnlab/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the layer writing tensor t (-1: none), and how many layers read it (outputs count too) */
static int producer(const bl_net *net, int t, int *readers)
{
    int p = -1;
    *readers = 0;
    for (int i = 0; i < bl_net_layer_count(net); i++) {
        const bl_layer *l = bl_net_layer_at(net, i);
        if (t >= l->out && t < l->out + l->n_out) p = i;
        for (int k = 0; k < l->n_in; k++) *readers += l->in[k] == t;
    }
    for (int k = 0; k < bl_net_output_count(net); k++) *readers += bl_net_output(net, k) == t;
    return p;
}

static const bl_param *owned(const bl_net *net, int layer, bl_param_kind kind, int ndim)
{
    for (int i = 0; i < bl_net_param_count(net); i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->owner == layer && p->kind == kind && p->ndim == ndim) return p;
    }
    return NULL;
}

static void keep(bl_fold_report *r, const char *name, const char *why)
{
    if (r->kept < BL_FOLD_MAX) {
        snprintf(r->kept_name[r->kept], sizeof r->kept_name[0], "%s", name);
        snprintf(r->kept_why[r->kept], sizeof r->kept_why[0], "%s", why);
    }
    r->kept++;
}

bl_status bl_fold_net(const bl_net *net, const char *path, const char *record, bl_fold_report *r)
{
    memset(r, 0, sizeof *r);
    const int L = bl_net_layer_count(net), P = bl_net_param_count(net);
    /* per layer: the BN folded into it (a conv), or -1; per layer: 1 when a folded BN */
    int *into = bl_malloc(sizeof(int) * (size_t)L), *gone = bl_callocn((size_t)L, sizeof(int));
    if (!into || !gone) return free(into), free(gone), bl_fail(BL_ERR_NOMEM, "out of memory");
    for (int i = 0; i < L; i++) into[i] = -1;
    for (int k = 0; k < bl_net_bn_count(net); k++) {
        const int li = bl_net_bn_layer(net, k);
        const bl_layer *l = bl_net_layer_at(net, li);
        const bl_bn *bn = bl_net_bn_at(net, k);
        char why[160];
        int readers;
        const int p = l->ops->kind == BL_LAYER_BN ? producer(net, l->in[0], &readers) : -1;
        if (l->ops->kind != BL_LAYER_BN || bn->cfg.stats_domains != 1 || bn->cfg.affine_domains != 1) {
            keep(r, bn->name, "a BN of several parts or domains");
            continue;
        }
        if (p < 0 || bl_net_layer_at(net, p)->ops->kind != BL_LAYER_CONV) {
            snprintf(why, sizeof why, "follows a %s, not a convolution",
                     p < 0 ? "network input" : bl_net_layer_at(net, p)->ops->kind_name);
            keep(r, bn->name, why);
            continue;
        }
        if (readers != 1 || into[p] >= 0 || !owned(net, p, BL_P_WEIGHT, 4)) {
            snprintf(why, sizeof why, "the output of %s is also read elsewhere, or its weight is "
                     "shared", bl_net_layer_at(net, p)->name);
            keep(r, bn->name, why);
            continue;
        }
        int finite = 1;
        for (int c = 0; c < bn->cfg.channels; c++)
            finite &= isfinite(bn->gamma[c] / sqrt((double)bn->pop_var[c] + bn->cfg.eps)) &&
                      isfinite(bn->pop_mean[c]) && isfinite(bn->beta[c]);
        if (!finite) {
            keep(r, bn->name, "non-finite statistics or parameters: run bnlab precise first");
            continue;
        }
        into[p] = k, gone[li] = 1;
    }
    bl_st_writer w;
    memset(&w, 0, sizeof w);
    bl_status st = BL_OK;
    for (int i = 0; i < P && !st; i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->owner >= 0 && p->owner < L && gone[p->owner]) continue; /* a folded BN's */
        /* a folded convolution's own bias goes out with the folded one below */
        if (p->kind == BL_P_BIAS && p->owner >= 0 && p->owner < L && into[p->owner] >= 0) continue;
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        if (p->kind == BL_P_COUNT) {
            st = bl_st_add(&w, p->name, BL_I64, p->ndim, shape, p->i64);
            continue;
        }
        const int k = p->kind == BL_P_WEIGHT && p->ndim == 4 && p->owner >= 0 && p->owner < L
                          ? into[p->owner] : -1;
        if (k < 0 && !p->ohwi) {
            st = bl_st_add(&w, p->name, BL_F32, p->ndim, shape, p->data);
            continue;
        }
        /* OIHW for PyTorch, each output channel scaled when a BN folds in */
        const int O = p->shape[0], I = p->shape[1], H = p->shape[2], W = p->shape[3];
        float *wf = bl_malloc(sizeof(float) * p->count), *bias = NULL;
        double *cmax = bl_callocn((size_t)O, sizeof(double)), wmax = 0;
        if (!wf || !cmax) {
            free(wf), free(cmax);
            st = bl_fail(BL_ERR_NOMEM, "out of memory");
            break;
        }
        const bl_bn *bn = k >= 0 ? bl_net_bn_at(net, k) : NULL;
        for (int o = 0; o < O; o++) {
            const double s = bn ? bn->gamma[o] / sqrt((double)bn->pop_var[o] + bn->cfg.eps) : 1;
            for (int ci = 0; ci < I; ci++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) {
                        const size_t from = p->ohwi ? (((size_t)o * H + y) * W + x) * I + ci
                                                    : (((size_t)o * I + ci) * H + y) * W + x;
                        const size_t to = (((size_t)o * I + ci) * H + y) * W + x;
                        wf[to] = (float)(p->data[from] * s);
                        cmax[o] = fmax(cmax[o], fabs(wf[to]));
                    }
            wmax = fmax(wmax, cmax[o]);
        }
        st = bl_st_add(&w, p->name, BL_F32, 4, shape, wf);
        if (!st && bn) {
            /* the bias: (b - mu) k + beta, on the convolution's own if it has one */
            const bl_param *b0 = owned(net, p->owner, BL_P_BIAS, 1);
            bias = bl_malloc(sizeof(float) * (size_t)O);
            if (!bias) st = bl_fail(BL_ERR_NOMEM, "out of memory");
            for (int o = 0; !st && o < O; o++) {
                const double s = bn->gamma[o] / sqrt((double)bn->pop_var[o] + bn->cfg.eps);
                bias[o] = (float)(((b0 ? b0->data[o] : 0) - bn->pop_mean[o]) * s + bn->beta[o]);
            }
            char bname[128];
            const size_t nl = strlen(p->name), stem = nl > 7 && !strcmp(p->name + nl - 7, ".weight") ? nl - 7 : nl;
            snprintf(bname, sizeof bname, "%.*s.bias", (int)stem, p->name);
            const int64_t bshape[1] = {O};
            if (!st) st = bl_st_add(&w, bname, BL_F32, 1, bshape, bias);
            bl_fold_row *row = r->folded < BL_FOLD_MAX ? &r->row[r->folded] : NULL;
            if (row) {
                snprintf(row->bn, sizeof row->bn, "%s", bn->name);
                snprintf(row->into, sizeof row->into, "%s", bl_net_layer_at(net, p->owner)->name);
                row->channels = O, row->starved = 0, row->min_ratio = 1;
                for (int o = 0; o < O; o++) {
                    row->starved += bl_fold_starved(cmax[o], wmax);
                    row->min_ratio = fmin(row->min_ratio, wmax > 0 ? cmax[o] / wmax : 0);
                }
                r->starved += row->starved, r->channels += O;
            }
            r->folded++;
        }
        free(wf), free(cmax), free(bias);
    }
    if (!st && record) st = bl_st_set_meta(&w, "bnlab_fold", record);
    if (!st) st = bl_st_write(&w, path);
    bl_st_writer_free(&w);
    free(into), free(gone);
    return st;
}
