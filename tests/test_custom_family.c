/* An extender's own model family with the public headers alone (docs/extending.md's worked
 * example): "tinycnn", conv3x3-BN-ReLU three times (strides 1, 2, 2), global average pooling and a
 * linear classifier, with one option of its own (its channels, recorded in checkpoints). It is
 * registered at run time, then trained 30 steps by the trainer, re-estimated by PreciseBN,
 * evaluated with population and mini-batch statistics, and its checkpoint reopened by name: the
 * same family, option and tensors. Nothing under src/ or include/ knows it. */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "bnlab/bnlab.h"
#include "check.h"

typedef struct {
    int channels; /* of every convolution */
} tiny_opts;

static int tiny_parse(const char *name, void *opts)
{
    (void)opts;
    return name && !strcmp(name, "tinycnn");
}

static void tiny_defaults(void *opts) { ((tiny_opts *)opts)->channels = 8; }

#define TRY(e)                                                                                     \
    do {                                                                                           \
        if ((st = (e))) return st;                                                                 \
    } while (0)

/* the net holds its input already (tensor 0) */
static bl_status tiny_build(bl_net *net, const bl_model *m, int classes)
{
    const tiny_opts *o = bl_model_opts_c(m);
    bl_status st;
    int t = 0;
    for (int k = 0; k < 3; k++) {
        char conv[32], bn[32], relu[32];
        snprintf(conv, sizeof conv, "block%d.conv", k);
        snprintf(bn, sizeof bn, "block%d.bn", k);
        snprintf(relu, sizeof relu, "block%d.relu", k);
        TRY(bl_net_conv(net, conv, t, o->channels, 3, k ? 2 : 1, 1, &t));
        TRY(bl_net_bn(net, bn, t, &t));
        TRY(bl_net_relu(net, relu, t, &t));
    }
    TRY(bl_net_gap(net, "pool", t, &t));
    TRY(bl_net_linear(net, "fc", t, classes, &t));
    return bl_net_finalize(net);
}

static const bl_family_opt tiny_opt_table[] = {
    {.name = "channels", .key = "channels", .type = BL_FOPT_INT,
     .offset = offsetof(tiny_opts, channels), .lo = 1, .hi = 256, .help = "channels of every conv"},
};

static const bl_family tiny = {
    .name = "tinycnn",
    .usage = "tinycnn",
    .help = "three conv-BN-ReLU blocks, pooling, a linear classifier",
    .opts_size = sizeof(tiny_opts),
    .opts = tiny_opt_table,
    .n_opts = 1,
    .parse = tiny_parse,
    .defaults = tiny_defaults,
    .build = tiny_build,
};

/* Every parameter and buffer of two nets equal bit for bit. */
static int same_params(const bl_net *a, const bl_net *b)
{
    if (bl_net_param_count(a) != bl_net_param_count(b)) return 0;
    for (int i = 0; i < bl_net_param_count(a); i++) {
        const bl_param *p = bl_net_param_at(a, i), *q = bl_net_param(b, p->name);
        if (!q || q->count != p->count) return 0;
        if (p->kind == BL_P_COUNT ? *p->i64 != *q->i64
                                  : memcmp(p->data, q->data, p->count * sizeof(float)))
            return 0;
    }
    return 1;
}

/* The backbone's normalization is the family's choice: a ResNet backbone with GroupNorm after
 * every convolution, through a constructor of the extender's own. */
static bl_status gn2(bl_net *net, const char *name, int in, int *out)
{
    return bl_net_gn(net, name, in, 2, out);
}

static void gn_backbone(void)
{
    bl_net net;
    int stage[3], t;
    bl_status st = bl_net_init(&net, 28, 28, 1, 4);
    if (!st) st = bl_resnet_backbone(&net, 8, 4, 3, gn2, stage);
    if (!st) st = bl_net_gap(&net, "avgpool", stage[2], &t);
    if (!st) st = bl_net_linear(&net, "fc", t, 10, &t);
    if (!st) st = bl_net_finalize(&net);
    CHECK(st == BL_OK, "a GN backbone: %s", bl_error());
    if (st) {
        bl_net_free(&net);
        return;
    }
    const bl_param *g = bl_net_param(&net, "layer2.0.shortcut.1.weight");
    CHECK(bl_net_bn_count(&net) == 0 && g && g->count == 8 && !bl_net_param(&net, "bn1.running_mean"),
          "GN in every normalization slot: %d BN cores", bl_net_bn_count(&net));
    bl_net_init_params(&net, 1);
    float x[4 * 28 * 28];
    for (int i = 0; i < 4 * 28 * 28; i++) x[i] = (float)(i % 29) / 29;
    CHECK(bl_net_forward(&net, NULL, x, 4) == BL_OK && !bl_net_first_nonfinite(&net),
          "GN backbone forward: %s", bl_error());
    bl_net_free(&net);
}

int main(void)
{
    gn_backbone();
    bl_threads_set(2);
    CHECK(bl_model_init(&(bl_model){0}, "tinycnn") == BL_ERR_ARG, "tinycnn known before it was "
          "registered");
    CHECK(bl_family_register(&tiny) == BL_OK, "register: %s", bl_error());
    CHECK(bl_family_register(&tiny) == BL_OK, "registering the same family twice is a no-op");
    bl_family twin = tiny;
    CHECK(bl_family_register(&twin) == BL_ERR_ARG && strstr(bl_error(), "registered already"),
          "a second family of the same name: %s", bl_error());

    char dir[] = "/tmp/bnlab_custom_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    bl_train_cfg c;
    bl_train_defaults(&c);
    CHECK(bl_model_rename(&c.model, "tinycnn") == BL_OK, "model: %s", bl_error());
    CHECK(bl_model_option(&c.model, "channels", 6) == BL_OK, "option: %s", bl_error());
    CHECK(bl_model_option(&c.model, "channels", 0) == BL_ERR_ARG, "channels 0 accepted");
    CHECK(bl_model_option(&c.model, "crops", 4) == BL_ERR_ARG && strstr(bl_error(), "cfg.crops"),
          "another family's option: %s", bl_error());
    c.batch = 32, c.epochs = 1, c.max_steps = 30, c.val = 59000, c.lr = 0.1, c.eval_every = 0;
    c.precise.final = 0;
    snprintf(c.out, sizeof c.out, "%s", dir);
    bl_trainer *t;
    bl_status st = bl_trainer_init(&t, &c, NULL, NULL);
    CHECK(st == BL_OK, "trainer: %s", bl_error());
    if (st) return check_done("test_custom_family");
    bl_train_event ev = BL_TRAIN_STEPPED;
    long steps = 0;
    while (!(st = bl_trainer_step(t, &ev)) && ev == BL_TRAIN_STEPPED) steps++;
    CHECK(st == BL_OK && ev == BL_TRAIN_STOPPED && steps == 30, "30 steps: %ld, event %d: %s",
          steps, (int)ev, bl_error());
    bl_net *net = bl_trainer_net(t);
    CHECK(bl_net_model(net)->family == &tiny && bl_net_bn_count(net) == 3,
          "the trained net: family %s, "
          "%d BN layers",
          bl_net_model(net)->family ? bl_net_model(net)->family->name : "none",
          bl_net_bn_count(net));

    /* the checkpoint of the stop opens by its architecture name: the family, its option, the
     * tensors */
    char path[1100];
    snprintf(path, sizeof path, "%s/last.safetensors", dir);
    bl_net back;
    bl_ckpt_info info;
    st = bl_checkpoint_open(path, 256, NULL, &back, &info);
    CHECK(st == BL_OK, "open: %s", bl_error());
    if (st) return check_done("test_custom_family");
    CHECK(bl_net_model(&back)->family == &tiny &&
              ((const tiny_opts *)bl_model_opts_c(bl_net_model(&back)))->channels == 6 &&
              info.step == 30,
          "reopened: family %s, channels %d, step %ld",
          bl_net_model(&back)->family ? bl_net_model(&back)->family->name : "none",
          ((const tiny_opts *)bl_model_opts_c(bl_net_model(&back)))->channels, info.step);
    CHECK(same_params(net, &back), "the reopened checkpoint differs from the trained net");
    bl_trainer_free(t);

    /* PreciseBN and evaluation with the library's passes */
    bl_dataset train, test;
    CHECK(bl_fmnist_load(BL_FMNIST_DIR, "train", &train) == BL_OK &&
              bl_fmnist_load(BL_FMNIST_DIR, "test", &test) == BL_OK, "data: %s", bl_error());
    const bl_recipe rc = bl_recipe_fmnist();
    bl_eval_result ema, pre, mb;
    CHECK(bl_evaluate(&back, &test, &rc, BL_BN_POPULATION, 0, 0, 0, &ema) == BL_OK, "eval: %s",
          bl_error());
    bl_precise_cfg pc;
    bl_precise_defaults(&pc);
    pc.samples = 2000;
    bl_precise_report rep;
    CHECK(bl_precise(&back, &train, &pc, &rep) == BL_OK && rep.layers == 3, "precise: %s",
          bl_error());
    CHECK(bl_net_bn_at(&back, 0)->pop_source == BL_EST_PRECISE, "PreciseBN left the EMA "
          "statistics");
    CHECK(bl_evaluate(&back, &test, &rc, BL_BN_POPULATION, 0, 0, 0, &pre) == BL_OK &&
              bl_evaluate(&back, &test, &rc, BL_BN_BATCH, 64, 1, 0, &mb) == BL_OK,
          "eval: %s", bl_error());
    /* 30 steps learn something: all three well below chance (90% error) */
    CHECK(ema.err < 80 && pre.err < 80 && mb.err < 80, "test error: EMA %.2f%%, PreciseBN %.2f%%, "
          "mini-batch %.2f%%", ema.err, pre.err, mb.err);
    printf("tinycnn after 30 steps: test error %.2f%% (EMA), %.2f%% (PreciseBN), %.2f%% (mini-batch "
           "of 64)\n", ema.err, pre.err, mb.err);
    /* and the re-estimated checkpoint round trip */
    snprintf(path, sizeof path, "%s/precise.safetensors", dir);
    CHECK(bl_checkpoint_save(&back, path, &info) == BL_OK, "save: %s", bl_error());
    bl_net again;
    CHECK(bl_checkpoint_open(path, 256, NULL, &again, NULL) == BL_OK && same_params(&back, &again),
          "the PreciseBN checkpoint does not round-trip: %s", bl_error());
    bl_net_free(&again);
    bl_net_free(&back);
    bl_ckpt_info_free(&info);
    bl_dataset_free(&train);
    bl_dataset_free(&test);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    return check_done("test_custom_family");
}
