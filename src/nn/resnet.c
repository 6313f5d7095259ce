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

static bl_status build(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                       int max_batch);

bl_status bl_resnet(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                    int max_batch)
{
    bl_status st = build(net, depth, width, n_classes, h, w, c, max_batch);
    if (st) bl_net_free(net);
    return st;
}

static bl_status build(bl_net *net, int depth, int width, int n_classes, int h, int w, int c,
                       int max_batch)
{
    memset(net, 0, sizeof *net);
    if (depth < 8 || (depth - 2) % 6)
        return bl_fail(BL_ERR_ARG, "resnet depth %d: must be 6n+2 with n >= 1", depth);
    if (width < 1 || n_classes < 2)
        return bl_fail(BL_ERR_ARG, "resnet: width %d and classes %d must be >= 1 and >= 2", width,
                       n_classes);
    bl_status st = bl_net_init(net, h, w, c, max_batch);
    if (st) return st;
    snprintf(net->arch, sizeof net->arch, "resnet%d", depth);
    net->width = width;
    net->n_classes = n_classes;
    int n = (depth - 2) / 6, t, in_planes = width;
    TRY(bl_net_conv(net, "conv1", 0, width, 3, 1, 1, &t));
    TRY(bl_net_bn(net, "bn1", t, &t));
    TRY(bl_net_relu(net, "relu", t, &t));
    for (int stage = 1; stage <= 3; stage++) {
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
    }
    TRY(bl_net_gap(net, "avgpool", t, &t));
    TRY(bl_net_linear(net, "fc", t, n_classes, &t));
    return bl_net_finalize(net);
}
