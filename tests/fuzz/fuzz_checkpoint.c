/* libFuzzer target: opening a checkpoint. The first byte picks the entry point, the rest is the
 * file: 0 bl_checkpoint_open of a bnlab checkpoint (safetensors header, JSON metadata, the
 * architecture it describes, the tensors) and inference with what it loaded, 1 the same with a foreign spec (a PyTorch state_dict
 * opened as resnet8 w=4), 2 bl_checkpoint_read_info, 3 bl_st_read and every tensor converted. */
#include "bnlab/bnlab.h"
#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    char path[256];
    fuzz_path(path, sizeof path, "ckpt.safetensors");
    if (fuzz_write(path, data + 1, size - 1)) return 0;
    const int mode = data[0] & 3;
    bl_net net;
    bl_ckpt_info info;
    if (mode == 0 || mode == 1) {
        bl_model_spec spec;
        bl_model_spec_defaults(&spec);
        if (mode == 1) snprintf(spec.model, sizeof spec.model, "resnet8"), spec.width = 4;
        if (!bl_checkpoint_open(path, 2, mode ? &spec : NULL, &net, &info)) {
            /* what was loaded is used: inference of two images (the statistics and weights as
             * the file has them: an error for unusable ones, never a crash) */
            static float x[2 * 28 * 28];
            const bl_tensor *in = bl_net_tensor_at(&net, 0);
            if (bl_net_model(&net)->family == &bl_family_resnet && in->h * in->w * in->c <= 28 * 28)
                bl_net_infer(&net, x, 2);
            bl_net_free(&net);
            bl_ckpt_info_free(&info);
        }
    } else if (mode == 2) {
        if (!bl_checkpoint_read_info(path, &info)) bl_ckpt_info_free(&info);
    } else {
        bl_safetensors st;
        if (!bl_st_read(path, &st)) {
            for (int i = 0; i < st.n; i++) {
                size_t n = bl_st_numel(&st.e[i]);
                float *buf = n <= (1u << 20) ? malloc((n ? n : 1) * sizeof *buf) : NULL;
                if (buf) bl_st_get_f32(&st, st.e[i].name, buf, n);
                free(buf);
            }
            for (int i = 0; i < st.n_meta; i++) bl_st_meta(&st, st.meta_key[i]);
            bl_st_free(&st);
        }
    }
    bl_error_clear();
    unlink(path);
    return 0;
}
