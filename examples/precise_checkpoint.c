/* PreciseBN on a checkpoint: opens a bnlab checkpoint, measures its test error, recomputes its BN
 * population statistics from N training images (PreciseBN, exact pooling), measures again and
 * writes the new checkpoint. Build against an installed bnlab:
 *   cc precise_checkpoint.c $(pkg-config --cflags --libs bnlab) -o precise_checkpoint
 * usage: precise_checkpoint CHECKPOINT OUT [SAMPLES [FASHION_MNIST_DIR]] */
#include <bnlab/bnlab.h>

#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what)
{
    fprintf(stderr, "precise_checkpoint: %s: %s\n", what, bl_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CHECKPOINT OUT [SAMPLES [FASHION_MNIST_DIR]]\n", argv[0]);
        return 2;
    }
    const long samples = argc > 3 ? atol(argv[3]) : 2000;
    const char *data = argc > 4 ? argv[4] : NULL; /* NULL: Debian's dataset-fashion-mnist */
    bl_net net;
    bl_ckpt_info info;
    bl_precise_cfg c;
    bl_precise_defaults(&c);
    if (bl_checkpoint_open(argv[1], c.batch, NULL, &net, &info)) return fail(argv[1]);
    bl_dataset train, test;
    if (bl_fmnist_load(data, "train", &train) || bl_fmnist_load(data, "test", &test))
        return fail("Fashion-MNIST");

    bl_eval_result before, after;
    if (bl_evaluate(&net, &test, &info.recipe, BL_BN_POPULATION, 0, 1, 0, &before))
        return fail("evaluate");
    c.samples = samples, c.recipe = info.recipe;
    bl_precise_report rep;
    if (bl_precise(&net, &train, &c, &rep)) return fail("PreciseBN");
    if (bl_evaluate(&net, &test, &info.recipe, BL_BN_POPULATION, 0, 1, 0, &after))
        return fail("evaluate");
    printf("%s: %d BN layers, %ld images; test error %.2f%% with the stored statistics, %.2f%% "
           "with PreciseBN's (largest standard error of a channel mean: %.3f std)\n", argv[1],
           rep.layers, rep.samples, before.err, after.err, rep.worst_se);
    bl_ckpt_info_set(&info.precise, bl_precise_record(&c, &rep, &net));
    if (!info.precise) return fail("record");
    if (bl_checkpoint_save(&net, argv[2], &info)) return fail(argv[2]);
    printf("wrote %s\n", argv[2]);
    bl_net_free(&net);
    bl_ckpt_info_free(&info);
    bl_dataset_free(&train);
    bl_dataset_free(&test);
    return 0;
}
