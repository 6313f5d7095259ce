/* A checkpoint written by PyTorch: tests/fixtures/torch_resnet8_w4.safetensors is the state_dict
 * of the ResNet twin (resnet8, width 4) trained in PyTorch with inputs normalized by mean 0.5 and
 * std 0.5, in the layout safetensors.torch.save_file writes (no metadata). Opened with a model
 * spec and that recipe, its logits on the first 256 test images match PyTorch's within 1e-4
 * (fused inference and the plain population forward), and its test error is PyTorch's. Without a
 * spec the file is refused with a message naming cfg.model (the command's --model); a bnlab checkpoint whose architecture
 * contradicts a given spec is refused too. Fixtures: tools/gen_torch_state_dict.py. */
#include "bnlab/bnlab.h"
#include "check.h"

#define N 256

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    char path[1024], lpath[1024];
    snprintf(path, sizeof path, "%s/torch_resnet8_w4.safetensors", dir);
    snprintf(lpath, sizeof lpath, "%s/torch_resnet8_w4_logits.safetensors", dir);
    bl_threads_set(2);

    bl_net net;
    bl_ckpt_info info;
    /* without a model spec: refused, naming what to pass */
    CHECK(bl_checkpoint_open(path, N, NULL, &net, &info) == BL_ERR_FORMAT &&
              strstr(bl_error(), "not a bnlab checkpoint") && strstr(bl_error(), "cfg.model"),
          "a state_dict without a spec: %s", bl_error());

    bl_safetensors ref;
    if (bl_st_read(lpath, &ref) != BL_OK) {
        CHECK(0, "%s", bl_error());
        return check_done("test_torch_state_dict");
    }
    static float logits[N * 10];
    double mean = 0, std = 0, test_err = -1;
    float tmp[2];
    CHECK(bl_st_get_f32(&ref, "logits", logits, N * 10) == BL_OK, "logits: %s", bl_error());
    CHECK(bl_st_get_f32(&ref, "data_mean", tmp, 1) == BL_OK, "%s", bl_error());
    mean = tmp[0];
    CHECK(bl_st_get_f32(&ref, "data_std", tmp, 1) == BL_OK, "%s", bl_error());
    std = tmp[0];
    const bl_st_entry *te = bl_st_find(&ref, "test_err");
    CHECK(te && te->dtype == BL_F64, "test_err missing");
    if (te) memcpy(&test_err, ref.data + te->begin, sizeof test_err);

    bl_model_spec spec;
    bl_model_spec_defaults(&spec);
    snprintf(spec.model, sizeof spec.model, "resnet8");
    spec.width = 4;
    spec.recipe.mean[0] = (float)mean, spec.recipe.std[0] = (float)std;
    if (bl_checkpoint_open(path, N, &spec, &net, &info) != BL_OK) {
        CHECK(0, "open with a spec: %s", bl_error());
        bl_st_free(&ref);
        return check_done("test_torch_state_dict");
    }
    CHECK(info.recipe.mean[0] == (float)mean && info.recipe.std[0] == (float)std &&
              info.epoch == 0 && bl_net_bn_at(&net, 0)->pop_source == BL_EST_LOADED,
          "the info carries the given recipe and the statistics count as loaded");
    CHECK(bl_net_bn_at(&net, 0)->num_batches_tracked[0] > 0, "num_batches_tracked read (I64 [])");

    /* a wrong width: the tensor sizes disagree, and the error names the tensor */
    bl_net bad;
    spec.width = 8;
    CHECK(bl_checkpoint_open(path, N, &spec, &bad, NULL) == BL_ERR_FORMAT &&
              strstr(bl_error(), "conv1.weight"), "a wrong --width: %s", bl_error());
    spec.width = 4;

    bl_dataset test;
    if (bl_fmnist_load(NULL, "test", &test) != BL_OK) {
        /* the data set comes with scripts/install-deps.sh (make test installs it) */
        CHECK(0, "Fashion-MNIST: %s", bl_error());
    } else {
        static float x[N * 784];
        uint8_t y[N];
        int idx[N];
        for (int i = 0; i < N; i++) idx[i] = i;
        bl_dataset_batch(&test, &info.recipe, idx, N, NULL, x, y);
        const bl_tensor *out = bl_net_tensor_at(&net, bl_net_tensor_count(&net) - 1);
        static double got[N * 10], want[N * 10];
        for (int i = 0; i < N * 10; i++) want[i] = logits[i];
        CHECK(bl_net_infer(&net, x, N) == BL_OK, "infer: %s", bl_error());
        for (int i = 0; i < N * 10; i++) got[i] = out->data[i];
        CHECK_CLOSE("fused inference logits vs PyTorch", got, want, N * 10, 1e-4, 0);
        const bl_ctx pop = bl_ctx_all(BL_BN_POPULATION, NULL);
        CHECK(bl_net_forward(&net, &pop, x, N) == BL_OK, "forward: %s", bl_error());
        for (int i = 0; i < N * 10; i++) got[i] = out->data[i];
        CHECK_CLOSE("population forward logits vs PyTorch", got, want, N * 10, 1e-4, 0);
        bl_eval_result r;
        CHECK(bl_evaluate(&net, &test, &info.recipe, BL_BN_POPULATION, 0, 0, 0, &r) == BL_OK,
              "evaluate: %s", bl_error());
        CHECK(fabs(r.err - test_err) < 1e-9, "test error %.4f%%, PyTorch's %.4f%%", r.err, test_err);
        /* the model was trained with mean 0.5, std 0.5: Fashion-MNIST's recipe feeds it other
         * inputs, and the error shows it */
        bl_recipe fm = bl_recipe_fmnist();
        bl_eval_result wrong;
        CHECK(bl_evaluate(&net, &test, &fm, BL_BN_POPULATION, 0, 0, 0, &wrong) == BL_OK &&
                  wrong.err > r.err + 1, "another normalization: %.2f%% vs %.2f%%", wrong.err,
              r.err);
        bl_dataset_free(&test);
    }

    /* a bnlab checkpoint of this net, opened with a contradicting spec: refused */
    char mine[1100];
    snprintf(mine, sizeof mine, "%s", "test_torch_state_dict.safetensors");
    CHECK(bl_checkpoint_save(&net, mine, &info) == BL_OK, "save: %s", bl_error());
    bl_net again;
    snprintf(spec.model, sizeof spec.model, "resnet20");
    CHECK(bl_checkpoint_open(mine, N, &spec, &again, NULL) == BL_ERR_ARG &&
              strstr(bl_error(), "resnet8"), "a contradicting spec: %s", bl_error());
    /* the recipe round-trips through a checkpoint's metadata */
    bl_ckpt_info back;
    CHECK(bl_checkpoint_open(mine, N, NULL, &again, &back) == BL_OK, "reopen: %s", bl_error());
    CHECK(back.recipe.mean[0] == info.recipe.mean[0] && back.recipe.std[0] == info.recipe.std[0] &&
              back.recipe.classes == 10 && back.recipe.channels == 1 &&
              !strcmp(back.recipe.name, "fashion-mnist"),
          "the recipe read back: mean %g std %g", back.recipe.mean[0], back.recipe.std[0]);
    bl_net_free(&again);
    bl_ckpt_info_free(&back);
    bl_ckpt_info_free(&info);
    remove(mine);
    bl_net_free(&net);
    bl_st_free(&ref);
    return check_done("test_torch_state_dict");
}
