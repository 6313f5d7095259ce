/* relu_kinks: why do two runs that differ only in the order of their floating-point sums (1 vs 2
 * threads) drift apart by more than rounding at some steps? Each step s of a run is taken twice
 * from the same checkpoint (the 1-thread run's state after s - 1 steps): with 1 thread and with 2.
 * For that one step it prints the relative difference of the two gradients and the number of
 * ReLU outputs that are 0 in one and positive in the other (a pre-activation within rounding of
 * the kink), with the smallest such |pre-activation|. If the kinks are the cause, steps with a
 * flip have gradients apart by far more than rounding and steps without one do not.
 * usage: relu_kinks STEPS DIR [bnlab train options: --model, --width, --batch, --norm-batch, --lr,
 *        --head-bn-images, --seed] (DIR: a scratch directory for the checkpoints) */
#include "bnlab/bnlab.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One step from `from` ("" for the start) with `threads`; the trainer is returned for its net's
 * activations and gradients; a stop right after writes DIR/last.safetensors when keep. */
static bl_trainer *one_step(const bl_train_cfg *base, const char *from, int threads, long step,
                            int keep)
{
    bl_train_cfg c = *base;
    c.threads = threads;
    c.max_steps = step;
    snprintf(c.resume, sizeof c.resume, "%s", from);
    if (!keep) c.out[0] = 0;
    bl_trainer *t;
    bl_train_event ev;
    if (bl_trainer_init(&t, &c, NULL, NULL) || bl_trainer_step(t, &ev) || ev != BL_TRAIN_STEPPED) {
        fprintf(stderr, "relu_kinks: step %ld: %s\n", step, bl_error());
        exit(1);
    }
    bl_threads_set(threads);
    return t;
}

static void save(bl_trainer *t)
{
    bl_train_event ev; /* the stop at max_steps writes the checkpoint of this exact step */
    if (bl_trainer_step(t, &ev) || ev != BL_TRAIN_STOPPED) {
        fprintf(stderr, "relu_kinks: stop: %s\n", bl_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: relu_kinks STEPS DIR [--model M --width W --batch B --norm-batch G "
                        "--lr LR --head-bn-images N --seed S]\n");
        return 2;
    }
    const long steps = atol(argv[1]);
    bl_train_cfg c;
    bl_train_defaults(&c);
    bl_model_rename(&c.model, "resnet8");
    c.model.width = 8, c.epochs = 1, c.precise.final = 0, c.eval_every = 0;
    snprintf(c.out, sizeof c.out, "%s", argv[2]);
    for (int i = 3; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--model")) bl_model_rename(&c.model, v);
        else if (!strcmp(k, "--width")) c.model.width = atoi(v);
        else if (!strcmp(k, "--batch")) c.batch = atoi(v);
        else if (!strcmp(k, "--norm-batch")) c.plan.norm_batch = atoi(v);
        else if (!strcmp(k, "--lr")) c.lr = atof(v);
        else if (!strcmp(k, "--head-bn-images")) c.plan.head_bn_images = atoi(v);
        else if (!strcmp(k, "--seed")) c.seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "relu_kinks: unknown option %s\n", k);
            return 2;
        }
    }
    char ck[1100] = "", keep[1100];
    snprintf(keep, sizeof keep, "%s/last.safetensors", c.out);
    printf("step  grad_rel_diff  relu_flips  min_|pre|_of_a_flip\n");
    for (long s = 1; s <= steps; s++) {
        bl_trainer *a = one_step(&c, ck, 1, s, 1), *b = one_step(&c, ck, 2, s, 0);
        const bl_net *na = bl_trainer_net(a), *nb = bl_trainer_net(b);
        double d2 = 0, g2 = 0;
        for (size_t i = 0; i < bl_net_floats(na, BL_BLOCK_PARAMS); i++) {
            const double d = (double)bl_net_block(na, BL_BLOCK_GRADS, NULL)[i] -
                             bl_net_block(nb, BL_BLOCK_GRADS, NULL)[i];
            d2 += d * d, g2 += (double)bl_net_block(na, BL_BLOCK_GRADS, NULL)[i] *
                               bl_net_block(na, BL_BLOCK_GRADS, NULL)[i];
        }
        long flips = 0;
        double minpre = INFINITY;
        for (int li = 0; li < bl_net_layer_count(na); li++) {
            const bl_layer *l = bl_net_layer_at(na, li);
            if (l->ops->kind != BL_LAYER_RELU) continue;
            const size_t n = (size_t)bl_net_batch(na) * (size_t)bl_net_tensor_at(na, l->out)->h *
                             bl_net_tensor_at(na, l->out)->w * bl_net_tensor_at(na, l->out)->c;
            const float *ya = bl_net_tensor_at(na, l->out)->data,
                        *yb = bl_net_tensor_at(nb, l->out)->data;
            const float *pa = bl_net_tensor_at(na, l->in[0])->data;
            for (size_t k = 0; k < n; k++)
                if ((ya[k] > 0) != (yb[k] > 0)) {
                    flips++;
                    if (fabs(pa[k]) < minpre) minpre = fabs(pa[k]);
                }
        }
        printf("%4ld  %12.3g  %10ld  %.3g\n", s, sqrt(d2 / g2), flips, flips ? minpre : 0.0);
        fflush(stdout);
        save(a);
        bl_trainer_free(a), bl_trainer_free(b);
        snprintf(ck, sizeof ck, "%s", keep);
    }
    return 0;
}
