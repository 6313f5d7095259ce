/* The CIFAR ResNet of He et al., "Deep Residual Learning" (CVPR 2016), section 4.2, with option-B
 * shortcuts (1x1 conv + BN where the shape changes). Names follow the common PyTorch module:
 * conv1, bn1, layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, fc. */
#include "nn/net.h"

#include <stdio.h>
#include <string.h>

bl_status bl_resnet_depth(const char *model, int *depth)
{
    int d = 0;
    char tail;
    if (!model || sscanf(model, "resnet%d%c", &d, &tail) != 1 || d < 8 || (d - 2) % 6)
        return bl_fail(BL_ERR_ARG, "unknown model '%s': use resnet8, resnet14, resnet20, resnet32, "
                       "resnet56 (depth 6n+2)", model ? model : "(null)");
    *depth = d;
    return BL_OK;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((st = (expr))) return st;                                                              \
    } while (0)

void bl_head_defaults(bl_head_cfg *h)
{
    memset(h, 0, sizeof *h);
    h->norm = BL_HEAD_BN;
    h->crops = 16;
    h->crop_min = 4, h->crop_max = 10;
}

void bl_head_resolve(bl_head_cfg *h, int kind)
{
    if (!h->width) h->width = kind == BL_MODEL_CROPS ? 256 : 32;
}

const char *bl_head_norm_name(bl_head_norm n)
{
    return n == BL_HEAD_GN ? "gn" : n == BL_HEAD_NONE ? "none" : "bn";
}

bl_status bl_head_norm_parse(const char *s, bl_head_norm *n)
{
    for (int k = BL_HEAD_BN; k <= BL_HEAD_NONE; k++)
        if (s && !strcmp(s, bl_head_norm_name((bl_head_norm)k))) return *n = (bl_head_norm)k, BL_OK;
    return bl_fail(BL_ERR_ARG, "head norm '%s': use bn, gn or none", s ? s : "(null)");
}

bl_status bl_model_parse(const char *model, int *depth, int *head)
{
    char base[32];
    const char *dash = model ? strchr(model, '-') : NULL;
    *head = BL_MODEL_PLAIN;
    if (dash) {
        const int kind = !strcmp(dash, "-ml") ? BL_MODEL_ML : !strcmp(dash, "-crops") ? BL_MODEL_CROPS : -1;
        if (kind < 0 || (size_t)(dash - model) >= sizeof base)
            return bl_fail(BL_ERR_ARG, "unknown model '%s': use resnetN (N = 6n+2: 8, 14, 20, 32, "
                           "56), resnetN-ml (with the multi-level head) or resnetN-crops (with the "
                           "crop head)", model);
        memcpy(base, model, (size_t)(dash - model));
        base[dash - model] = 0;
        *head = kind;
        return bl_resnet_depth(base, depth);
    }
    return bl_resnet_depth(model, depth);
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((st = (expr))) return st;                                                              \
    } while (0)

/* The backbone: stem and `stages` stages; stage[s] receives stage s's output tensor. */
static bl_status backbone(bl_net *net, int depth, int width, int stages, int *stage_out)
{
    bl_status st;
    int n = (depth - 2) / 6, t, in_planes = width;
    TRY(bl_net_conv(net, "conv1", 0, width, 3, 1, 1, &t));
    TRY(bl_net_bn(net, "bn1", t, &t));
    TRY(bl_net_relu(net, "relu", t, &t));
    for (int stage = 1; stage <= stages; stage++) {
        int planes = width << (stage - 1);
        for (int j = 0; j < n; j++) {
            int stride = stage > 1 && j == 0 ? 2 : 1, x = t, sc = t;
            char p[64], name[96];
#define NAME(s) (snprintf(name, sizeof name, "%s.%s", p, s), name)
            snprintf(p, sizeof p, "layer%d.%d", stage, j);
            TRY(bl_net_conv(net, NAME("conv1"), x, planes, 3, stride, 1, &t));
            TRY(bl_net_bn(net, NAME("bn1"), t, &t));
            TRY(bl_net_relu(net, NAME("relu1"), t, &t));
            TRY(bl_net_conv(net, NAME("conv2"), t, planes, 3, 1, 1, &t));
            TRY(bl_net_bn(net, NAME("bn2"), t, &t));
            if (stride != 1 || in_planes != planes) {
                TRY(bl_net_conv(net, NAME("shortcut.0"), x, planes, 1, stride, 0, &sc));
                TRY(bl_net_bn(net, NAME("shortcut.1"), sc, &sc));
            }
            TRY(bl_net_add(net, NAME("add"), t, sc, &t));
            TRY(bl_net_relu(net, NAME("relu2"), t, &t));
#undef NAME
            in_planes = planes;
        }
        stage_out[stage - 1] = t;
    }
    return BL_OK;
}

/* One head stage on every level: conv (shared weight) per level, then the norm, then ReLU. */
static bl_status head_stage(bl_net *net, const bl_head_cfg *hd, int stage, int *t, int L)
{
    bl_status st;
    char name[64], param[64];
    snprintf(param, sizeof param, "head.conv%d.weight", stage);
    for (int k = 0; k < L; k++) {
        snprintf(name, sizeof name, "head.conv%d[%d]", stage, k);
        TRY(bl_net_conv_param(net, name, param, t[k], hd->width, 3, 1, 1, &t[k]));
    }
    snprintf(name, sizeof name, "head.norm%d", stage);
    if (hd->norm == BL_HEAD_BN) {
        int o;
        TRY(bl_net_bn_levels(net, name, t, L, !hd->sgd_level, hd->affine_level, &o));
        for (int k = 0; k < L; k++) t[k] = o + k;
    } else if (hd->norm == BL_HEAD_GN) {
        for (int k = 0; k < L; k++) {
            char ln[80], pre[80];
            snprintf(ln, sizeof ln, "%s[%d]", name, k);
            if (hd->affine_level) snprintf(pre, sizeof pre, "%s.%d", name, k);
            else snprintf(pre, sizeof pre, "%s", name);
            TRY(bl_net_gn_param(net, ln, pre, t[k], hd->width / 4, &t[k]));
        }
    }
    for (int k = 0; k < L; k++) {
        snprintf(name, sizeof name, "head.relu%d[%d]", stage, k);
        TRY(bl_net_relu(net, name, t[k], &t[k]));
    }
    return BL_OK;
}

static bl_status build(bl_net *net, int depth, int width, int n_classes, int kind,
                       const bl_head_cfg *head, int h, int w, int c, int max_batch)
{
    bl_head_cfg res = *head;
    bl_head_resolve(&res, kind);
    const bl_head_cfg *hd = kind == BL_MODEL_ML ? &res : NULL;
    memset(net, 0, sizeof *net);
    if (depth < 8 || (depth - 2) % 6)
        return bl_fail(BL_ERR_ARG, "resnet depth %d: must be 6n+2 with n >= 1", depth);
    if (width < 1 || n_classes < 2)
        return bl_fail(BL_ERR_ARG, "resnet: width %d and classes %d must be >= 1 and >= 2", width,
                       n_classes);
    if (hd && (hd->width < 4 || hd->width % 4 || hd->norm < BL_HEAD_BN || hd->norm > BL_HEAD_NONE))
        return bl_fail(BL_ERR_ARG, "head: width %d must be a positive multiple of 4 (GN: groups "
                       "of 4 channels)", hd->width);
    bl_status st = bl_net_init(net, h, w, c, max_batch);
    if (st) return st;
    snprintf(net->arch, sizeof net->arch, "resnet%d%s", depth,
             kind == BL_MODEL_ML ? "-ml" : kind == BL_MODEL_CROPS ? "-crops" : "");
    net->width = width;
    net->n_classes = n_classes;
    int stage[3], t;
    if (kind == BL_MODEL_CROPS) { /* stages 1-2 (a 14x14 map from 28x28), then the crop head */
        TRY(backbone(net, depth, width, 2, stage));
        TRY(bl_crop_head(net, stage[1], &res, n_classes, &t));
        return bl_net_finalize(net);
    }
    TRY(backbone(net, depth, width, 3, stage));
    if (!hd) {
        TRY(bl_net_gap(net, "avgpool", stage[2], &t));
        TRY(bl_net_linear(net, "fc", t, n_classes, &t));
        return bl_net_finalize(net);
    }
    const int L = 3;
    int lv[3];
    for (int k = 0; k < L; k++) {
        char name[64];
        snprintf(name, sizeof name, "lateral.%d", k);
        TRY(bl_net_conv(net, name, stage[k], hd->width, 1, 1, 0, &lv[k]));
    }
    TRY(head_stage(net, hd, 1, lv, L));
    TRY(head_stage(net, hd, 2, lv, L));
    for (int k = 0; k < L; k++) {
        char name[64];
        snprintf(name, sizeof name, "head.cls[%d]", k);
        TRY(bl_net_conv_param(net, name, "head.cls.weight", lv[k], n_classes, 1, 1, 0, &lv[k]));
        snprintf(name, sizeof name, "head.avgpool[%d]", k);
        TRY(bl_net_gap(net, name, lv[k], &lv[k]));
    }
    TRY(bl_net_set_outputs(net, lv, L));
    net->head = *hd;
    net->levels = L;
    TRY(bl_net_finalize(net));
    bl_net_set_levels_pop(net, !hd->pop_level);
    return BL_OK;
}

bl_status bl_resnet(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                    int max_batch)
{
    bl_head_cfg def;
    bl_head_defaults(&def);
    bl_status st = build(net, depth, width, n_classes, BL_MODEL_PLAIN, &def, h, w, c, max_batch);
    if (st) bl_net_free(net);
    return st;
}

bl_status bl_model_build(bl_net *net, const char *model, int width, int n_classes,
                         const bl_head_cfg *head, int h, int w, int c, int max_batch)
{
    int depth, kind;
    bl_status st = bl_model_parse(model, &depth, &kind);
    if (st) return st;
    bl_head_cfg def;
    bl_head_defaults(&def);
    st = build(net, depth, width, n_classes, kind, head ? head : &def, h, w, c, max_batch);
    if (st) bl_net_free(net);
    return st;
}

bl_status bl_net_head_pop(bl_net *net, int pop_level)
{
    if (!net->levels) return BL_OK;
    if (pop_level && net->head.norm == BL_HEAD_BN) {
        bl_status st = bl_net_levels_check(net);
        if (st) return st;
    }
    net->head.pop_level = pop_level;
    bl_net_set_levels_pop(net, !pop_level);
    return BL_OK;
}
