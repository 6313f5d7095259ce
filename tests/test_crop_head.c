/* The crop head (src/nn/crop_head.c) against its PyTorch twin (tools/gen_crop_head_fixture.py):
 * RoIAlign - fc - norm - ReLU - fc - norm - ReLU - cls with BN over the crops of each image, of
 * each pair, of pairs after a shuffle of the rows (an asymmetric permutation, so a backward that
 * moves gradients the wrong way fails), and GN of each crop: logits, the mean loss over crops and
 * the gradients of the map and of every parameter. Then the model resnetN-crops: its shapes, the
 * shuffle and its inverse, the evaluation crops, and bad input (crops that do not fit the map, no
 * crops, one crop under mini-batch statistics). */
#include "bnlab/bnlab.h"
#include "check.h"
#include "st_fixture.h"

enum { N = 4, C = 3, H = 6, W = 6, K = 5, WIDTH = 64, CLASSES = 4 };

static const char *pnames[] = {"head.fc1.weight",   "head.fc2.weight",   "head.cls.weight",
                               "head.cls.bias",     "head.norm1.weight", "head.norm1.bias",
                               "head.norm2.weight", "head.norm2.bias"};

/* One variant: "img1", "img2", "shuf2" (BN) or "gn". */
static void variant(const bl_safetensors *st, const char *v)
{
    bl_resnet_crops_opts hd = {0};
    hd.head_width = WIDTH, hd.crops = K, hd.crop_min = 1, hd.crop_max = 6;
    hd.head_norm = strcmp(v, "gn") ? BL_HEAD_BN : BL_HEAD_GN;
    bl_net net;
    int out;
    bl_status s = bl_net_init(&net, H, W, C, N);
    if (!s) s = bl_crop_head(&net, 0, &hd, CLASSES, &out);
    if (!s) s = bl_net_finalize(&net);
    CHECK(s == BL_OK, "%s: build: %s", v, bl_error());
    if (s) return;
    CHECK(bl_net_shuffle_rows(&net) == K && bl_net_bn_count(&net) == (hd.head_norm == BL_HEAD_BN ? 2 : 0),
          "%s: %d rows per image, %d BN layers", v, bl_net_shuffle_rows(&net), bl_net_bn_count(&net));
    /* the map is the net's input here: its gradient is the RoIAlign layer's to write */
    for (int i = 0; i < bl_net_layer_count(&net); i++)
        if (bl_net_layer_at(&net, i)->ops->kind == BL_LAYER_ROI)
            bl_net_layer_at(&net, i)->need_dx = 1;
    for (size_t k = 0; k < sizeof pnames / sizeof *pnames; k++) {
        const bl_param *p = bl_net_param(&net, pnames[k]);
        if (!p && hd.head_norm != BL_HEAD_BN && strstr(pnames[k], "norm")) p = NULL;
        CHECK(p != NULL, "%s: parameter %s", v, pnames[k]);
        if (!p) return;
        float *val = st_get(st, pnames[k], p->count);
        memcpy(p->data, val, p->count * sizeof(float));
        free(val);
    }
    float *x = st_get(st, "x", (size_t)N * H * W * C), *b5 = st_get(st, "boxes", (size_t)N * K * 5);
    float *lab = st_get(st, "labels", N), *pf = st_get(st, "perm", (size_t)N * K);
    bl_box boxes[N * K];
    int perm[N * K];
    uint8_t labels[N];
    for (int i = 0; i < N * K; i++) {
        boxes[i] = (bl_box){b5[i * 5 + 1], b5[i * 5 + 2], b5[i * 5 + 3], b5[i * 5 + 4]};
        perm[i] = (int)pf[i];
    }
    for (int i = 0; i < N; i++) labels[i] = (uint8_t)lab[i];
    bl_groups g;
    CHECK(bl_groups_ghost(&g, N, strcmp(v, "img1") ? 2 : 1) == BL_OK, "groups");
    /* the head alone: every BN layer is the head's */
    bl_ctx ctx;
    CHECK(bl_ctx_init(&ctx, &net, BL_BN_BATCH, &g) == BL_OK, "ctx");
    const bl_draw src = {0, 0, NULL, boxes};
    const bl_shuffle sh = {perm, NULL, NULL};
    ctx.draw = &src;
    if (!strcmp(v, "shuf2")) ctx.shuffle = &sh;
    double loss;
    int ok;
    bl_net_zero_grad(&net);
    s = bl_net_forward(&net, &ctx, x, N);
    if (!s) s = bl_net_loss_over(&net, labels, N, &loss, &ok);
    if (!s) s = bl_net_backward(&net, &ctx);
    CHECK(s == BL_OK, "%s: forward/backward: %s", v, bl_error());
    char name[96];
    snprintf(name, sizeof name, "%s.logits", v);
    float *ref = st_get(st, name, (size_t)N * K * CLASSES);
    const float *z = bl_net_tensor_at(&net, bl_net_output(&net, 0))->data;
    CHECK(worst_rel(z, ref, (size_t)N * K * CLASSES) <= 2e-5, "%s: logits vs PyTorch %.3g", v,
          worst_rel(z, ref, (size_t)N * K * CLASSES));
    free(ref);
    snprintf(name, sizeof name, "%s.loss", v);
    ref = st_get(st, name, 1);
    CHECK(fabs(loss / N - ref[0]) <= 1e-5 * fabs(ref[0]), "%s: loss %.7g vs PyTorch %.7g", v,
          loss / N, ref[0]);
    free(ref);
    /* GN of 2 channels per group cancels more than BN over 5 or 10 crops: a looser bound */
    const double gtol = hd.head_norm == BL_HEAD_GN ? 2e-4 : 5e-5;
    snprintf(name, sizeof name, "%s.dx", v);
    ref = st_get(st, name, (size_t)N * H * W * C);
    CHECK(worst_rel(bl_net_tensor_at(&net, 0)->grad, ref, (size_t)N * H * W * C) <= gtol,
          "%s: map gradient %.3g", v,
          worst_rel(bl_net_tensor_at(&net, 0)->grad, ref, (size_t)N * H * W * C));
    free(ref);
    for (size_t k = 0; k < sizeof pnames / sizeof *pnames; k++) {
        const bl_param *p = bl_net_param(&net, pnames[k]);
        snprintf(name, sizeof name, "%s.grad.%s", v, pnames[k]);
        ref = st_get(st, name, p->count);
        const float *gr = bl_net_block(&net, BL_BLOCK_GRADS, NULL) + p->offset;
        CHECK(worst_rel(gr, ref, p->count) <= gtol, "%s: gradient of %s %.3g", v, pnames[k],
              worst_rel(gr, ref, p->count));
        free(ref);
    }
    bl_ctx_free(&ctx);
    bl_groups_free(&g);
    free(x), free(b5), free(lab), free(pf);
    bl_net_free(&net);
}

/* The shuffle layers alone: rows moved by perm, then back, bit for bit; the gradient of each is
 * the other (rows of an asymmetric dy go back to where they came from). */
static void shuffle_layers(void)
{
    bl_net net;
    int t1, t2;
    bl_status s = bl_net_init(&net, 3, 1, 2, 4);
    if (!s) s = bl_net_shuffle(&net, "s", 0, 1, &t1);
    if (!s) s = bl_net_shuffle(&net, "u", t1, -1, &t2);
    if (!s) s = bl_net_finalize(&net);
    CHECK(s == BL_OK, "shuffle net: %s", bl_error());
    if (s) return;
    bl_net_layer_at(&net, 0)->need_dx = 1;
    float x[24], dy[24];
    for (int i = 0; i < 24; i++) x[i] = (float)i, dy[i] = (float)(100 + i * i);
    int perm[12];
    bl_shuffle_perm(3, 1, 12, perm);
    const bl_shuffle sh = {perm, NULL, NULL};
    bl_ctx c = bl_ctx_all(BL_BN_BATCH, NULL);
    c.shuffle = &sh;
    CHECK(bl_net_forward(&net, &c, x, 4) == BL_OK, "forward");
    int moved = 1;
    for (int r = 0; r < 12; r++)
        moved &= bl_net_tensor_at(&net, t1)->data[2 * r] == x[2 * perm[r]] &&
                 bl_net_tensor_at(&net, t1)->data[2 * r + 1] == x[2 * perm[r] + 1];
    CHECK(moved, "slot s does not hold row perm[s]");
    CHECK(!memcmp(bl_net_tensor_at(&net, t2)->data, x, sizeof x),
          "shuffle then unshuffle is not the identity");
    memcpy(bl_net_tensor_at(&net, t2)->grad, dy, sizeof dy);
    CHECK(bl_net_backward(&net, &c) == BL_OK, "backward");
    CHECK(!memcmp(bl_net_tensor_at(&net, 0)->grad, dy, sizeof dy),
          "the gradient through both is not dy");
    int back = 1;
    for (int r = 0; r < 12; r++) back &= bl_net_tensor_at(&net, t1)->grad[2 * r] == dy[2 * perm[r]];
    CHECK(back, "the unshuffle's gradient");
    bl_net_free(&net);
}

/* The whole model: shapes, the shuffle and its inverse, evaluation crops, bad input. */
static void model(void)
{
    bl_model m;
    CHECK(bl_model_init(&m, "resnet8-crops") == BL_OK && m.family == &bl_family_resnet_crops,
          "resnet8-crops: %s", bl_error());
    m.width = 4;
    bl_resnet_crops_opts *hd = bl_model_opts(&m);
    hd->head_width = 32, hd->crops = 3;
    bl_net net;
    bl_status s = bl_model_build(&net, &m, 10, 28, 28, 1, 4);
    CHECK(s == BL_OK, "resnet8-crops: %s", bl_error());
    if (s) return;
    const bl_tensor *o = bl_net_tensor_at(&net, bl_net_output(&net, 0));
    CHECK(!strcmp(bl_net_arch(&net), "resnet8-crops") && o->h == 3 && o->w == 1 && o->c == 10,
          "arch %s, output (%d, %d, %d)", bl_net_arch(&net), o->h, o->w, o->c);
    /* backbone: stem + stages 1-2 of resnet8 = 1 + 2 + 3 BN layers, then the head's 2 */
    CHECK(bl_net_bn_count(&net) == 8, "BN %d", bl_net_bn_count(&net));
    /* mini-batch evaluation: the backbone on population statistics, the head's 2 on the groups
     * of its plan (one image each); training: all on batch statistics, the head on its groups */
    {
        const bl_plan plan = {.norm_batch = 1, .head_bn_images = 1};
        const bl_pass_spec ev = {.mode = BL_BN_BATCH, .n = 4, .stream = BL_STREAM_EVAL};
        bl_pass p;
        CHECK(bl_pass_make(&p, &net, &plan, &ev) == BL_OK, "pass: %s", bl_error());
        int pop = 0, head = 0;
        for (int k = 0; k < 8; k++) pop += p.use[k].mode == BL_BN_POPULATION;
        for (int k = 6; k < 8; k++) head += p.use[k].groups->n_groups == 4;
        CHECK(pop == 6 && head == 2, "evaluation pass: %d backbone layers on population "
              "statistics, %d head layers on one image's crops", pop, head);
        bl_pass_free(&p);
        const bl_plan tp = {.head_bn_images = 2};
        const bl_pass_spec tr = {.mode = BL_BN_BATCH, .n = 4, .stream = 0};
        CHECK(bl_pass_make(&p, &net, &tp, &tr) == BL_OK, "pass: %s", bl_error());
        CHECK(p.use[5].groups->n_groups == 1 && p.use[6].groups->n_groups == 2 &&
              p.use[0].mode == BL_BN_BATCH, "training pass: backbone %d groups, head %d",
              p.use[5].groups->n_groups, p.use[6].groups->n_groups);
        bl_pass_free(&p);
    }
    bl_net_init_params(&net, 3);
    float x[4 * 28 * 28];
    bl_rng r;
    bl_rng_seed(&r, 5);
    for (int i = 0; i < 4 * 28 * 28; i++) x[i] = (float)bl_rng_normal(&r);
    /* a shuffle whose groups see other crops, then back: with population statistics (no batch
     * statistics to change) the logits are those without a shuffle (up to the GEMM's rounding,
     * which may differ by a row's position in its blocks) */
    int perm[12];
    CHECK(bl_shuffle_perm(9, 4, 12, perm) == BL_OK, "perm");
    const bl_shuffle sh = {perm, NULL, NULL};
    bl_ctx c0 = bl_ctx_all(BL_BN_POPULATION, NULL), c1 = c0;
    c1.shuffle = &sh;
    float z0[120], z1[120];
    CHECK(bl_net_forward(&net, &c0, x, 4) == BL_OK, "forward: %s", bl_error());
    memcpy(z0, bl_net_tensor_at(&net, bl_net_output(&net, 0))->data, sizeof z0);
    CHECK(bl_net_forward(&net, &c1, x, 4) == BL_OK, "forward shuffled: %s", bl_error());
    memcpy(z1, bl_net_tensor_at(&net, bl_net_output(&net, 0))->data, sizeof z1);
    CHECK(worst_rel(z1, z0, 120) < 1e-5, "shuffled model: %.3g from the unshuffled",
          worst_rel(z1, z0, 120));
    /* the evaluation crops are a function of the sample index: ids given = ids implied */
    int ids[4] = {0, 1, 2, 3};
    const bl_draw src = {BL_SEED_EVAL_CROPS, BL_STREAM_EVAL, ids, NULL};
    c1 = c0;
    c1.draw = &src;
    CHECK(bl_net_forward(&net, &c1, x, 4) == BL_OK &&
              !memcmp(z0, bl_net_tensor_at(&net, bl_net_output(&net, 0))->data, sizeof z0),
          "the evaluation crops of ids 0..3 differ from the default ones");
    ids[0] = 7; /* another sample index: other crops */
    CHECK(bl_net_forward(&net, &c1, x, 4) == BL_OK &&
              memcmp(z0, bl_net_tensor_at(&net, bl_net_output(&net, 0))->data, 30 * sizeof(float)),
          "sample 7's crops equal sample 0's");
    /* the logits' gradient, per crop, through the unshuffle: the loss is the mean over crops */
    uint8_t y[4] = {1, 2, 3, 4};
    double loss;
    int ok;
    CHECK(bl_net_forward(&net, &c0, x, 4) == BL_OK &&
          bl_net_loss_over(&net, y, 4, &loss, &ok) == BL_OK, "loss: %s", bl_error());
    double gsum = 0;
    for (int i = 0; i < 120; i++) gsum += bl_net_tensor_at(&net, bl_net_output(&net, 0))->grad[i];
    CHECK(fabs(gsum) < 1e-6, "softmax gradients of each crop sum to 0: %g", gsum);
    bl_net_free(&net);

    /* bad input */
    hd->crop_max = 20;
    s = bl_model_build(&net, &m, 10, 28, 28, 1, 4);
    CHECK(s == BL_ERR_ARG && strstr(bl_error(), "do not fit the 14x14 feature map") &&
          strstr(bl_error(), "crop_max <= 14"), "crops larger than the map: %s", bl_error());
    hd->crop_max = 10, hd->crops = 0;
    s = bl_model_build(&net, &m, 10, 28, 28, 1, 4);
    CHECK(s == BL_ERR_ARG && strstr(bl_error(), "cfg.crops 0: use 1..4096"), "no crops: %s",
          bl_error());
    /* one crop per image, mini-batch statistics over one image: one value per channel */
    hd->crops = 1;
    s = bl_model_build(&net, &m, 10, 28, 28, 1, 4);
    CHECK(s == BL_OK, "one crop: %s", bl_error());
    if (!s) {
        bl_net_init_params(&net, 3);
        bl_dataset d = {0};
        d.n = 4, d.h = 28, d.w = 28;
        d.pixels = malloc(4 * 28 * 28);
        d.labels = y;
        for (int i = 0; i < 4 * 28 * 28; i++) d.pixels[i] = (uint8_t)(i * 7);
        const bl_recipe rc = bl_recipe_fmnist();
        bl_eval_result er;
        s = bl_evaluate(&net, &d, &rc, BL_BN_BATCH, 1, 1, 0, &er);
        CHECK(s != BL_OK && strstr(bl_error(), "single value per channel") &&
              strstr(bl_error(), "head.norm1"),
              "one crop under mini-batch statistics: %s", bl_error());
        s = bl_evaluate(&net, &d, &rc, BL_BN_POPULATION, 0, 1, 0, &er);
        CHECK(s == BL_OK, "one crop, population statistics: %s", bl_error());
        free(d.pixels);
        bl_net_free(&net);
    }
    CHECK(bl_model_init(&m, "resnet20-crops") == BL_OK &&
              ((bl_resnet_crops_opts *)bl_model_opts(&m))->depth == 20, "parse resnet20-crops");
    CHECK(bl_model_init(&m, "resnet20-crop") != BL_OK && strstr(bl_error(), "resnetN-crops"),
          "resnet20-crop accepted: %s", bl_error());
}

int main(int argc, char **argv)
{
    bl_safetensors st;
    if (st_fixture_open(argc, argv, "crop_head.safetensors", "test_crop_head", &st)) return 1;
    bl_threads_set(1);
    variant(&st, "img1");
    variant(&st, "img2");
    variant(&st, "shuf2");
    variant(&st, "gn");
    bl_st_free(&st);
    shuffle_layers();
    model();
    return check_done("test_crop_head");
}
