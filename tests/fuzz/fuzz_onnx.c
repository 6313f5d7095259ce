/* libFuzzer target: an ONNX model through the loader and the graph builder, then one inference of
 * zeros, the statistics written back and the BN folded (each must load again) when it builds.
 * Input: the model's bytes. A symbolic input gets (C, H, W) from the first input byte's bits
 * (1-3 channels, 4-19 pixels a side), so shape-dependent paths are reached. */
#include "bnlab/bnlab.h"
#include "fuzz_util.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[256];
    fuzz_path(path, sizeof path, "model.onnx");
    if (fuzz_write(path, data, size)) return 0;
    bl_onnx *m = NULL;
    if (!bl_onnx_load(path, &m)) {
        int c, h, w;
        if (bl_onnx_input_shape(m, &c, &h, &w)) {
            const int b = size ? data[0] : 0;
            bl_onnx_set_input_shape(m, c ? c : 1 + b % 3, h ? h : 4 + b % 16, w ? w : 4 + b / 16 % 16);
        }
        bl_net net;
        /* small inputs only: a fuzzed header may declare a huge image */
        if (!bl_onnx_input_shape(m, &c, &h, &w) && (long)c * h * w <= 3 * 64 * 64 &&
            !bl_onnx_build(m, 2, &net)) {
            float *x = calloc((size_t)2 * c * h * w, sizeof(float));
            if (x) bl_net_infer(&net, x, 2);
            free(x);
            /* the statistics written back (spliced in place or repacked): what is written must
             * load again */
            char out[256];
            fuzz_path(out, sizeof out, "out.onnx");
            int split;
            if (!bl_onnx_save(m, &net, out, "{\"fuzz\":1}", &split)) {
                bl_onnx *back = NULL;
                if (bl_onnx_load(out, &back)) {
                    fprintf(stderr, "fuzz_onnx: the written model does not load: %s\n", bl_error());
                    abort();
                }
                bl_onnx_free(back);
                unlink(out);
            }
            /* and folded: what is written must load again too */
            static bl_fold_report fr;
            if (!bl_onnx_fold(m, &net, out, NULL, &fr)) {
                bl_onnx *back = NULL;
                if (bl_onnx_load(out, &back)) {
                    fprintf(stderr, "fuzz_onnx: the folded model does not load: %s\n", bl_error());
                    abort();
                }
                bl_onnx_free(back);
                unlink(out);
            }
            bl_net_free(&net);
        }
        bl_onnx_free(m);
    }
    bl_error_clear();
    unlink(path);
    return 0;
}
