/* The ONNX entry points of a build made without protobuf-c or onnx.proto: each says how to get
 * them (CMakeLists.txt compiles this file instead of src/onnx/). */
#include "bnlab/onnx.h"

#include <string.h>

const char bl_onnx_export_recipe[] =
    "model.eval(); torch.onnx.export(model, x, path, "
    "training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, opset_version=13)";

static bl_status absent(void)
{
    return bl_fail(BL_ERR_STATE, "this bnlab was built without ONNX support: install "
                   "protobuf-c-compiler, libprotobuf-c-dev and libonnx-dev "
                   "(scripts/install-deps.sh) and rebuild");
}

bl_status bl_onnx_load(const char *path, bl_onnx **out)
{
    (void)path;
    *out = NULL;
    return absent();
}
void bl_onnx_free(bl_onnx *m) { (void)m; }
bl_status bl_onnx_input_shape(const bl_onnx *m, int *c, int *h, int *w)
{
    (void)m;
    *c = *h = *w = 0;
    return absent();
}
bl_status bl_onnx_set_input_shape(bl_onnx *m, int c, int h, int w)
{
    (void)m, (void)c, (void)h, (void)w;
    return absent();
}
bl_status bl_onnx_build(const bl_onnx *m, int max_batch, bl_net *net)
{
    (void)m, (void)max_batch;
    memset(net, 0, sizeof *net);
    return absent();
}
int bl_onnx_bn_count(const bl_onnx *m) { return (void)m, 0; }
const char *bl_onnx_path(const bl_onnx *m) { return (void)m, ""; }
const char *bl_onnx_producer(const bl_onnx *m) { return (void)m, ""; }
int bl_onnx_opset(const bl_onnx *m) { return (void)m, 0; }
bl_status bl_onnx_save(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       int *split)
{
    (void)m, (void)net, (void)path, (void)record;
    *split = 0;
    return absent();
}
bl_status bl_onnx_save_stats(const bl_onnx *m, const bl_net *net, const char *path,
                             const char *record, int *unnamed)
{
    (void)m, (void)net, (void)path, (void)record;
    *unnamed = 0;
    return absent();
}
bl_status bl_onnx_fold(const bl_onnx *m, const bl_net *net, const char *path, const char *record,
                       bl_fold_report *r)
{
    (void)m, (void)net, (void)path, (void)record;
    memset(r, 0, sizeof *r);
    return absent();
}
