/* bl_fold_net on the committed baseline (resnet20, trained statistics): the folded state_dict
 * against the net itself. Each folded convolution's OIHW weight is the net's OHWI weight times
 * gamma / sqrt(var + eps) per output channel, and since a convolution is linear, the folded
 * convolution applied to the input is k * T + b' with T the unfolded convolution's output: that
 * must be the BN's output of a population-statistics forward on Fashion-MNIST-like inputs, within
 * 1e-5 of its largest value. The folded BNs' parameters are gone; every other tensor is the
 * net's; the report's starved count is recounted from the file. */
#include "bnlab/bnlab.h"
#include "check.h"
#include "st_fixture.h"

#include <math.h>
#include <string.h>

static int layer_named(const bl_net *net, const char *name)
{
    for (int i = 0; i < bl_net_layer_count(net); i++)
        if (!strcmp(bl_net_layer_at(net, i)->name, name)) return i;
    return -1;
}

int main(int argc, char **argv)
{
    char ck[1024];
    snprintf(ck, sizeof ck, "%s/../../results/resnet20-baseline/last.safetensors",
             argc > 1 ? argv[1] : "tests/fixtures");
    bl_threads_set(2);
    bl_net net;
    bl_ckpt_info info;
    const int N = 4;
    bl_status st = bl_checkpoint_open(ck, N, NULL, &net, &info);
    CHECK(st == BL_OK, "%s: %s", ck, bl_error());
    if (st) return check_done("test_fold_net");
    static bl_fold_report r;
    const char out[] = "/tmp/bnlab_fold_net.safetensors";
    st = bl_fold_net(&net, out, "{\"test\":1}", &r);
    CHECK(st == BL_OK && r.folded == bl_net_bn_count(&net) && r.kept == 0,
          "fold: %s; %d folded, %d kept of %d", bl_error(), r.folded, r.kept, bl_net_bn_count(&net));
    bl_safetensors f;
    if (!st) st = bl_st_read(out, &f);
    CHECK(st == BL_OK, "read the folded file: %s", bl_error());
    if (st) return check_done("test_fold_net");
    /* a forward with population statistics on smooth pseudo-images keeps every tensor */
    const bl_tensor *in = bl_net_tensor_at(&net, 0);
    const size_t S = (size_t)in->h * in->w * in->c;
    float *x = malloc(sizeof(float) * S * N);
    for (size_t i = 0; i < S * N; i++) x[i] = (float)sin(0.37 * i) + 0.3f * (float)cos(0.011 * i);
    bl_ctx pop = bl_ctx_all(BL_BN_POPULATION, NULL);
    st = bl_net_forward(&net, &pop, x, N);
    CHECK(st == BL_OK, "forward: %s", bl_error());
    double worst_w = 0, worst_y = 0;
    int starved = 0, extra = 0;
    for (int k = 0; k < r.folded && !st; k++) {
        const bl_fold_row *row = &r.row[k];
        const int lc = layer_named(&net, row->into);
        const bl_bn *bn = NULL;
        int lb = -1;
        for (int b = 0; b < bl_net_bn_count(&net); b++)
            if (!strcmp(bl_net_bn_at(&net, b)->name, row->bn)) bn = bl_net_bn_at(&net, b), lb = bl_net_bn_layer(&net, b);
        const bl_param *wp = NULL;
        for (int i = 0; i < bl_net_param_count(&net) && lc >= 0; i++)
            if (bl_net_param_at(&net, i)->owner == lc && bl_net_param_at(&net, i)->ndim == 4)
                wp = bl_net_param_at(&net, i);
        CHECK(lc >= 0 && bn && wp, "row %d: %s into %s not found", k, row->bn, row->into);
        if (lc < 0 || !bn || !wp) continue;
        char bname[128];
        snprintf(bname, sizeof bname, "%.*s.bias", (int)strlen(wp->name) - 7, wp->name);
        const int O = wp->shape[0], I = wp->shape[1], H = wp->shape[2], W = wp->shape[3];
        float *wf = st_get(&f, wp->name, wp->count), *bf = st_get(&f, bname, (size_t)O);
        CHECK(wf && bf, "%s: no folded weight or bias %s", row->into, bname);
        if (!wf || !bf) continue;
        double cmax[512] = {0}, wmax = 0;
        for (int o = 0; o < O && o < 512; o++) {
            const double kk = bn->gamma[o] / sqrt((double)bn->pop_var[o] + bn->cfg.eps);
            for (int ci = 0; ci < I; ci++)
                for (int y = 0; y < H; y++)
                    for (int xx = 0; xx < W; xx++) {
                        const float got = wf[(((size_t)o * I + ci) * H + y) * W + xx];
                        const double want = wp->data[(((size_t)o * H + y) * W + xx) * I + ci] * kk;
                        worst_w = fmax(worst_w, fabs(got - want) / (fabs(want) + 1e-12) * (fabs(want) > 1e-6));
                        cmax[o] = fmax(cmax[o], fabs(got)), wmax = fmax(wmax, fabs(got));
                    }
        }
        for (int o = 0; o < O; o++) starved += bl_fold_starved(cmax[o], wmax);
        /* the folded convolution's output, k T + b', against the BN's */
        const bl_tensor *T = bl_net_tensor_at(&net, bl_net_layer_at(&net, lc)->out);
        const bl_tensor *Y = bl_net_tensor_at(&net, bl_net_layer_at(&net, lb)->out);
        const size_t px = (size_t)N * T->h * T->w;
        double ymax = 0, d = 0;
        for (size_t p = 0; p < px; p++)
            for (int o = 0; o < O; o++) {
                const double kk = bn->gamma[o] / sqrt((double)bn->pop_var[o] + bn->cfg.eps);
                const double y = Y->data[p * O + o];
                d = fmax(d, fabs(kk * T->data[p * O + o] + bf[o] - y));
                ymax = fmax(ymax, fabs(y));
            }
        worst_y = fmax(worst_y, d / ymax);
        free(wf), free(bf);
    }
    /* the folded BNs' tensors are gone; the rest are the net's (the weights and the biases added) */
    for (int i = 0; i < f.n; i++) extra += strstr(f.e[i].name, "running_mean") != NULL;
    CHECK(extra == 0, "%d running means left in the folded file", extra);
    CHECK(worst_w <= 1e-6 && worst_y <= 1e-5 && starved == r.starved,
          "folded weights %.3g from W k, outputs %.3g from BN's, starved %d (report %d)", worst_w,
          worst_y, starved, r.starved);
    printf("test_fold_net: %d BN layers folded into resnet20's convolutions; weights within %.2g "
           "of W k, k T + b' within %.2g of the BN outputs; %d of %d channels under 4 bits\n",
           r.folded, worst_w, worst_y, r.starved, r.channels);
    free(x);
    bl_st_free(&f);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    remove(out);
    return check_done("test_fold_net");
}
