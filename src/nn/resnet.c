/* The CIFAR ResNet of He et al., "Deep Residual Learning" (CVPR 2016), section 4.2, with option-B
 * shortcuts (1x1 conv + BN where the shape changes), and the family of the plain model
 * ("resnetN"). Names follow the common PyTorch module: conv1, bn1,
 * layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, fc. */
#include "nn/resnet.h"

#include <stdio.h>
#include <string.h>

int bl_resnet_name(const char *name, const char *suffix, int *depth)
{
    int d = 0, used = 0;
    if (!name || strncmp(name, "resnet", 6) || sscanf(name + 6, "%d%n", &d, &used) != 1 ||
        name[6] < '0' || name[6] > '9' || strcmp(name + 6 + used, suffix) || d < 8 || (d - 2) % 6)
        return 0;
    *depth = d;
    return 1;
}

bl_status bl_resnet_check(int depth, int width, int classes)
{
    if (depth < 8 || (depth - 2) % 6)
        return bl_fail(BL_ERR_ARG, "resnet depth %d: must be 6n+2 with n >= 1", depth);
    if (width < 1 || classes < 2)
        return bl_fail(BL_ERR_ARG, "resnet: width %d and classes %d must be >= 1 and >= 2", width,
                       classes);
    return BL_OK;
}

bl_status bl_resnet_backbone(bl_net *net, int depth, int width, int stages, bl_norm_layer norm,
                             int *stage_out)
{
    bl_status st;
    if (stages < 1 || stages > 3)
        return bl_fail(BL_ERR_ARG, "resnet: %d stages (1..3)", stages);
    if (!norm) norm = bl_net_bn;
    int n = (depth - 2) / 6, t, in_planes = width;
    TRY(bl_net_conv(net, "conv1", 0, width, 3, 1, 1, &t));
    TRY(norm(net, "bn1", t, &t));
    TRY(bl_net_relu(net, "relu", t, &t));
    for (int stage = 1; stage <= stages; stage++) {
        int planes = width << (stage - 1);
        for (int j = 0; j < n; j++) {
            int stride = stage > 1 && j == 0 ? 2 : 1, x = t, sc = t;
            char p[64], name[96];
#define NAME(s) (snprintf(name, sizeof name, "%s.%s", p, s), name)
            snprintf(p, sizeof p, "layer%d.%d", stage, j);
            TRY(bl_net_conv(net, NAME("conv1"), x, planes, 3, stride, 1, &t));
            TRY(norm(net, NAME("bn1"), t, &t));
            TRY(bl_net_relu(net, NAME("relu1"), t, &t));
            TRY(bl_net_conv(net, NAME("conv2"), t, planes, 3, 1, 1, &t));
            TRY(norm(net, NAME("bn2"), t, &t));
            if (stride != 1 || in_planes != planes) {
                TRY(bl_net_conv(net, NAME("shortcut.0"), x, planes, 1, stride, 0, &sc));
                TRY(norm(net, NAME("shortcut.1"), sc, &sc));
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

bl_status bl_resnet_begin(bl_net *net, int depth, int width, int classes, int stages,
                          bl_norm_layer norm, int *stage_out)
{
    bl_status st = bl_resnet_check(depth, width, classes);
    return st ? st : bl_resnet_backbone(net, depth, width, stages, norm, stage_out);
}

/* ---- the family "resnet" -------------------------------------------------------------------------- */
static int parse(const char *name, void *opts)
{
    return bl_resnet_name(name, "", &((bl_resnet_opts *)opts)->depth);
}

static bl_status build(bl_net *net, const bl_model *m, int classes)
{
    const bl_resnet_opts *o = bl_model_opts_c(m);
    bl_status st;
    int stage[3], t;
    TRY(bl_resnet_begin(net, o->depth, m->width, classes, 3, bl_net_bn, stage));
    TRY(bl_net_gap(net, "avgpool", stage[2], &t));
    TRY(bl_net_linear(net, "fc", t, classes, &t));
    return bl_net_finalize(net);
}

const bl_family bl_family_resnet = {
    .name = "resnet",
    .usage = "resnetN (N = 6n+2: 8, 14, 20, 32, 56)",
    .help = "the CIFAR ResNet",
    .opts_size = sizeof(bl_resnet_opts),
    .parse = parse,
    .build = build,
};

bl_status bl_resnet(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                    int max_batch)
{
    bl_model m;
    char name[32];
    snprintf(name, sizeof name, "resnet%d", depth);
    bl_status st = bl_model_init(&m, name);
    if (st) {
        memset(net, 0, sizeof *net);
        return bl_resnet_check(depth, width, n_classes) ? BL_ERR_ARG : st;
    }
    m.width = width;
    return bl_model_build(net, &m, n_classes, h, w, c, max_batch);
}

const char *bl_head_norm_name(bl_head_norm n)
{
    return n == BL_HEAD_GN ? "gn" : n == BL_HEAD_NONE ? "none" : "bn";
}
