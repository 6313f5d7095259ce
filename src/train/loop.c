/* The training loop and evaluation: data -> ResNet -> SGD, BN estimators committed after every
 * step, evaluation with population and (optionally) mini-batch statistics, one metrics line and one
 * atomic checkpoint per epoch. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

void bl_train_defaults(bl_train_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "resnet20");
    c->width = 16;
    c->epochs = 30;
    c->batch = 128;
    c->lr = 0.1;
    c->momentum = 0.9;
    c->wd = 5e-4;
    c->nesterov = 1;
    c->wd_bn = 0;
    c->schedule = BL_SCHED_COSINE;
    c->seed = 1;
    c->threads = 2;
    c->eval_every = 1;
    c->checkpoint_every = 1;
    c->final_precise = -1;
    c->precise_samples = 0; /* 10^4, or the whole split if smaller */
    c->precise_batch = 200;
    snprintf(c->data_dir, sizeof c->data_dir, "%s", BL_FMNIST_DIR);
}

double bl_lr_at(const bl_train_cfg *c, long t, long T, long W)
{
    double base = c->lr * (c->lr_linear ? c->batch / 128.0 : 1.0);
    if (t < W) return base * (double)(t + 1) / (double)W;
    double f = T > W ? (double)(t - W) / (double)(T - W) : 1.0;
    switch (c->schedule) {
    case BL_SCHED_COSINE: return base * 0.5 * (1.0 + cos(3.14159265358979323846 * f));
    case BL_SCHED_STEP: return base * (f >= 0.75 ? 0.01 : f >= 0.5 ? 0.1 : 1.0);
    case BL_SCHED_CONST: return base;
    }
    return base;
}

bl_status bl_eval_order(const bl_dataset *d, uint64_t seed, int by_class, int *order)
{
    bl_epoch_order(d->n, seed, -1, 0, order);
    if (!by_class) return BL_OK;
    /* a stable counting sort of the shuffled order by label: consecutive groups share a class */
    int count[257] = {0};
    int *tmp = malloc(sizeof(int) * (size_t)d->n);
    if (!tmp) return bl_fail(BL_ERR_NOMEM, "out of memory for the by-class evaluation order");
    for (int i = 0; i < d->n; i++) count[d->labels[order[i]] + 1]++;
    for (int k = 1; k < 257; k++) count[k] += count[k - 1];
    for (int i = 0; i < d->n; i++) tmp[count[d->labels[order[i]]]++] = order[i];
    memcpy(order, tmp, sizeof(int) * (size_t)d->n);
    free(tmp);
    return BL_OK;
}

bl_status bl_evaluate(bl_net *net, const bl_dataset *d, bl_bn_mode bn, int norm_batch,
                      uint64_t seed, int by_class, bl_eval_result *r)
{
    int chunk = net->max_batch, g = norm_batch;
    if (bn == BL_BN_BATCH) {
        if (g < 1) return bl_fail(BL_ERR_ARG, "mini-batch evaluation needs a normalization batch");
        if (g > chunk)
            return bl_fail(BL_ERR_ARG, "normalization batch %d exceeds the evaluation batch %d", g,
                           chunk);
        chunk -= chunk % g;
    }
    int *order = malloc(sizeof(int) * d->n);
    float *x = bl_alloc((size_t)chunk * d->h * d->w * sizeof(float));
    uint8_t *y = malloc((size_t)chunk);
    if (!order || !x || !y) {
        free(order), bl_free(x), free(y);
        return bl_fail(BL_ERR_NOMEM, "out of memory");
    }
    if (bn == BL_BN_BATCH) {
        bl_status so = bl_eval_order(d, seed, by_class, order);
        if (so) {
            free(order), bl_free(x), free(y);
            return so;
        }
    } else {
        for (int i = 0; i < d->n; i++) order[i] = i;
    }
    double loss = 0;
    long wrong = 0;
    bl_status st = BL_OK;
    const bl_groups *keep = net->groups;
    bl_bn_mode keep_mode = net->bn_mode;
    net->bn_mode = bn;
    net->groups = NULL;
    for (int s = 0; s < d->n && !st; s += chunk) {
        int n = d->n - s < chunk ? d->n - s : chunk;
        bl_groups groups;
        bl_dataset_batch(d, order + s, n, NULL, x, y);
        if (bn == BL_BN_BATCH) {
            if ((st = bl_groups_ghost(&groups, n, g))) break;
            net->groups = &groups;
        }
        double ls;
        int ok;
        st = bn == BL_BN_POPULATION ? bl_net_infer(net, x, n) : bl_net_forward(net, x, n);
        if (!st) st = bl_net_loss(net, y, 0, &ls, &ok);
        if (bn == BL_BN_BATCH) bl_groups_free(&groups);
        loss += ls;
        wrong += n - ok;
    }
    net->groups = keep;
    net->bn_mode = keep_mode;
    free(order), bl_free(x), free(y);
    if (st) return st;
    r->n = d->n;
    r->err = 100.0 * (double)wrong / d->n;
    r->loss = loss / d->n;
    return BL_OK;
}

static const char *sched_name(bl_schedule s)
{
    return s == BL_SCHED_STEP ? "step" : s == BL_SCHED_CONST ? "const" : "cosine";
}

static void config_json(const bl_train_cfg *c, char *out, size_t len)
{
    snprintf(out, len,
             "{\"model\":\"%s\",\"width\":%d,\"epochs\":%d,\"batch\":%d,\"norm_batch\":%d,"
             "\"lr\":%g,\"momentum\":%g,\"nesterov\":%d,\"wd\":%g,\"wd_bn\":%d,\"schedule\":\"%s\","
             "\"warmup_epochs\":%g,\"lr_scaling\":\"%s\",\"seed\":%llu,\"threads\":%d,"
             "\"eval_every\":%d,\"eval_minibatch\":%d,\"val\":%d,\"max_steps\":%ld,"
             "\"precise_bn_every\":%d,\"final_precise_bn\":%d,\"precise_samples\":%ld,"
             "\"precise_batch\":%d,\"keep_every\":%d,\"frozen_bn_epochs\":%d,"
             "\"frozen_bn_reestimate\":%d,\"data_dir\":\"%s\"}",
             c->model, c->width, c->epochs, c->batch, c->norm_batch, c->lr, c->momentum,
             c->nesterov, c->wd, c->wd_bn, sched_name(c->schedule), c->warmup_epochs,
             c->lr_linear ? "linear" : "none", (unsigned long long)c->seed, c->threads,
             c->eval_every, c->eval_minibatch, c->val, c->max_steps, c->precise_every,
             c->final_precise, c->precise_samples, c->precise_batch, c->keep_every,
             c->frozen_epochs, c->frozen_reestimate, c->data_dir);
}

static bl_status load_data(const bl_train_cfg *c, bl_dataset *train, bl_dataset *test)
{
    bl_dataset full;
    bl_status st = bl_fmnist_load(c->data_dir, "train", &full);
    if (!st) st = bl_fmnist_load(c->data_dir, "test", test);
    if (st) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s", bl_error());
        return bl_fail(st, "%s (Fashion-MNIST comes from Debian's dataset-fashion-mnist package; "
                       "or point --data-dir at the IDX files)", msg);
    }
    if (c->val <= 0) {
        *train = full;
        return BL_OK;
    }
    if (c->val >= full.n) {
        bl_dataset_free(&full);
        bl_dataset_free(test);
        return bl_fail(BL_ERR_ARG, "--val %d leaves no training samples", c->val);
    }
    /* validation = the first `val` samples of a fixed permutation; it replaces the test set */
    int *order = malloc(sizeof(int) * full.n);
    bl_epoch_order(full.n, 0x7a1u, 0, 0, order);
    bl_dataset_free(test);
    st = bl_dataset_subset(&full, order, c->val, test);
    if (!st) st = bl_dataset_subset(&full, order + c->val, full.n - c->val, train);
    free(order);
    bl_dataset_free(&full);
    return st;
}

bl_status bl_train(const bl_train_cfg *c)
{
    int depth;
    bl_status st = bl_resnet_depth(c->model, &depth);
    if (st) return st;
    if (c->batch < 2 || c->epochs < 1)
        return bl_fail(BL_ERR_ARG, "--batch must be >= 2 and --epochs >= 1");
    int g = c->norm_batch ? c->norm_batch : c->batch;
    if (g < 1 || g > c->batch)
        return bl_fail(BL_ERR_ARG, "--norm-batch %d must be in [1, --batch %d]", g, c->batch);
    if (c->out[0] && mkdir(c->out, 0755) && errno != EEXIST)
        return bl_fail(BL_ERR_IO, "cannot create --out %s: %s", c->out, strerror(errno));
    bl_threads_set(c->threads);
    bl_dataset train, test;
    if ((st = load_data(c, &train, &test))) return st;
    if (train.n < c->batch) {
        bl_dataset_free(&train), bl_dataset_free(&test);
        return bl_fail(BL_ERR_ARG, "--batch %d exceeds the %d training samples", c->batch, train.n);
    }
    bl_net net;
    bl_dataset train_sub = {0}; /* the training images mini-batch evaluation sees */
    if (c->frozen_epochs < 0 || c->frozen_epochs > c->epochs) {
        bl_dataset_free(&train), bl_dataset_free(&test);
        return bl_fail(BL_ERR_ARG, "--frozen-bn-epochs %d: use 0..%d (--epochs)", c->frozen_epochs,
                       c->epochs);
    }
    const int final_precise = c->final_precise < 0 ? c->frozen_epochs == 0 : c->final_precise;
    const int use_precise = c->precise_every > 0 || final_precise || c->frozen_epochs > 0;
    const long psamples = c->precise_samples ? c->precise_samples
                                             : (train.n < 10000 ? train.n : 10000);
    if (use_precise && (psamples < 1 || psamples > train.n || c->precise_batch < 1)) {
        bl_dataset_free(&train), bl_dataset_free(&test);
        return bl_fail(BL_ERR_ARG, "PreciseBN with %ld samples in batches of %d: use --precise-samples "
                       "in 1..%d and --precise-batch >= 1", psamples, c->precise_batch,
                       train.n);
    }
    /* room for PreciseBN's batches too (the activations are sized by the largest batch) */
    const int max_batch = use_precise && c->precise_batch > c->batch ? c->precise_batch : c->batch;
    if ((st = bl_resnet(&net, depth, c->width, 10, train.h, train.w, 1, max_batch))) {
        bl_dataset_free(&train), bl_dataset_free(&test);
        return st;
    }
    bl_net_init_params(&net, c->seed);
    bl_ckpt_info info = {0};
    info.seed = c->seed;
    config_json(c, info.config, sizeof info.config);
    if (c->resume[0]) {
        if ((st = bl_checkpoint_load(&net, c->resume, 1, &info))) goto done;
        config_json(c, info.config, sizeof info.config);
        /* training goes on with EMA statistics, unless it resumes inside a FrozenBN phase */
        if (!(c->frozen_epochs > 0 && info.epoch >= c->epochs - c->frozen_epochs))
            info.precise[0] = 0;
        printf("resumed from %s at epoch %d, step %ld\n", c->resume, info.epoch, info.step);
        if (info.seed != c->seed)
            printf("note: the data order and augmentation follow the checkpoint's seed %llu, not "
                   "--seed %llu\n", (unsigned long long)info.seed, (unsigned long long)c->seed);
    }
    const uint64_t seed = info.seed; /* the run's seed: a resume continues the same streams */
    const long spe = train.n / c->batch, T = spe * c->epochs, W = (long)(c->warmup_epochs * spe);
    /* a checkpoint may come from inside an epoch (a stop): resume at that step exactly */
    long s0 = info.step - (long)info.epoch * spe;
    if (s0 < 0 || s0 >= spe || info.ep_seen != s0 * c->batch) {
        st = bl_fail(BL_ERR_FORMAT, "%s: step %ld does not fit epoch %d of %ld steps with batch %d "
                     "(was it written with another --batch or data split?)", c->resume, info.step,
                     info.epoch, spe, c->batch);
        goto done;
    }
    char mpath[1100], cpath[1100];
    FILE *metrics = NULL;
    if (c->out[0]) {
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", c->out);
        snprintf(cpath, sizeof cpath, "%s/last.safetensors", c->out);
        metrics = fopen(mpath, c->resume[0] ? "a" : "w");
        if (!metrics) {
            st = bl_fail(BL_ERR_IO, "cannot write %s: %s", mpath, strerror(errno));
            goto done;
        }
    }
    int *order = malloc(sizeof(int) * train.n);
    if (c->eval_minibatch && order) {
        /* the train-split curve of the three (train and test error with mini-batch statistics,
         * test error with PreciseBN): 10^4 fixed training images, no augmentation */
        bl_epoch_order(train.n, seed, -4, 0, order);
        if (bl_dataset_subset(&train, order, train.n < 10000 ? train.n : 10000, &train_sub)) {
            free(order);
            if (metrics) fclose(metrics);
            st = bl_fail(BL_ERR_NOMEM, "out of memory for the mini-batch evaluation images");
            goto done;
        }
    }
    float *x = bl_alloc((size_t)c->batch * train.h * train.w * sizeof(float));
    uint8_t *y = malloc((size_t)c->batch);
    bl_groups groups;
    bl_groups_ghost(&groups, c->batch, g);
    bl_sgd sgd = {c->momentum, c->wd, c->nesterov, c->wd_bn};
    bl_augment aug = {BL_FMNIST_MEAN, BL_FMNIST_STD, 2, 1, seed, 0};
    printf("%-6s %-9s %-10s %-9s %-9s %-9s %-9s %-9s %-8s\n", "epoch", "lr", "train_loss",
           "train_err", "test_pop", "test_mb", "test_pre", "img/s", "seconds");
    bl_precise_cfg pcfg;
    bl_precise_defaults(&pcfg);
    pcfg.samples = psamples, pcfg.batch = c->precise_batch, pcfg.seed = seed;
    double t_run = now();
    bl_eval_result final = {-1, 0, 0}, final_mb = {-1, 0, 0}, final_pre = {-1, 0, 0};
    const char *final_src = "ema";
    int final_epoch = -1, best_epoch = 0;
    double best = 101;
    const int tty = isatty(1);
    int stopped = 0;
    for (int ep = info.epoch; ep < c->epochs && !st && !stopped; ep++) {
        double t0 = now(), loss_sum = info.ep_loss, lr = 0;
        long wrong = info.ep_wrong, seen = info.ep_seen, fresh = 0;
        bl_epoch_order(train.n, seed, ep, 0, order);
        aug.epoch = ep;
        /* FrozenBN: population statistics from PreciseBN when the phase starts (or every epoch
         * with re-estimation); a run resumed inside the phase keeps its checkpoint's */
        const int frozen = c->frozen_epochs > 0 && ep >= c->epochs - c->frozen_epochs;
        if (frozen && seen == 0 && (ep == c->epochs - c->frozen_epochs || c->frozen_reestimate)) {
            bl_precise_report rep;
            if ((st = bl_precise(&net, &train, &pcfg, &rep))) break;
            bl_precise_record(info.precise, sizeof info.precise, &pcfg, &rep, &net);
            printf("epoch %d: BN statistics frozen (PreciseBN, %ld images); gamma and beta keep "
                   "training\n", ep + 1, pcfg.samples);
        }
        for (long s = seen / c->batch; s < spe && !st; s++) {
            if ((c->max_steps && info.step >= c->max_steps) || (c->stop && *c->stop)) {
                stopped = 1;
                break;
            }
            lr = bl_lr_at(c, info.step, T, W);
            bl_dataset_batch(&train, order + s * c->batch, c->batch, &aug, x, y);
            net.bn_mode = frozen ? BL_BN_POPULATION : BL_BN_BATCH;
            net.groups = g < c->batch ? &groups : NULL;
            bl_net_zero_grad(&net);
            double ls;
            int ok;
            st = bl_net_forward(&net, x, c->batch);
            if (!st) st = bl_net_loss(&net, y, 1, &ls, &ok);
            if (!st) st = bl_net_backward(&net);
            if (st) {
                char msg[700];
                const char *where = bl_net_first_nonfinite(&net);
                snprintf(msg, sizeof msg, "%s", bl_error());
                st = bl_fail(st, "step %ld (epoch %d): %s%s%s: the run stops; the last good "
                             "checkpoint is kept (try a lower --lr, or --resume it)", info.step + 1,
                             ep + 1, msg, where ? "; first non-finite output: layer " : "",
                             where ? where : "");
                break;
            }
            bl_sgd_step(&net, &sgd, lr);
            for (int b = 0; b < bl_net_bn_count(&net) && !st && !frozen; b++)
                st = bl_bn_commit(bl_net_bn_at(&net, b), BL_EST_EMA);
            loss_sum += ls;
            wrong += c->batch - ok;
            seen += c->batch;
            fresh += c->batch;
            info.step++;
            if (tty && (s % 10 == 9 || s + 1 == spe)) {
                double el = now() - t0, ips = fresh / el, eta = (spe - s - 1) * c->batch / ips;
                int bar = (int)(30 * (s + 1) / spe);
                printf("\r  epoch %d [%.*s%*s] %ld/%ld  %.0f img/s  ETA %.0f s  ", ep + 1, bar,
                       "==============================", 30 - bar, "", s + 1, spe, ips, eta);
                fflush(stdout);
            }
        }
        if (tty) printf("\r%*s\r", 78, "");
        info.ep_loss = loss_sum, info.ep_wrong = wrong, info.ep_seen = seen;
        if (stopped && !st) {
            /* a stop inside an epoch: save exactly where we are, no evaluation */
            if (c->out[0] && (st = bl_checkpoint_save(&net, cpath, &info))) break;
            printf("stopped at step %ld (epoch %d, %ld of %ld steps)%s%s\n", info.step, ep + 1,
                   seen / c->batch, spe, c->out[0] ? "; resume with --resume " : "",
                   c->out[0] ? cpath : "");
            break;
        }
        if (st) break;
        info.ep_loss = 0, info.ep_wrong = 0, info.ep_seen = 0;
        double secs = now() - t0, ips = fresh / secs;
        bl_eval_result pop = {-1, 0, 0}, mb = {-1, 0, 0}, pre = {-1, 0, 0}, tmb = {-1, 0, 0};
        int last = ep + 1 == c->epochs;
        if (c->eval_every > 0 && ((ep + 1) % c->eval_every == 0 || last)) {
            if ((st = bl_evaluate(&net, &test, BL_BN_POPULATION, 0, 0, 0, &pop))) break;
            final_src = bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source);
            if (c->eval_minibatch &&
                ((st = bl_evaluate(&net, &test, BL_BN_BATCH, g, seed, 0, &mb)) ||
                 (st = bl_evaluate(&net, &train_sub, BL_BN_BATCH, g, seed, 0, &tmb))))
                break;
        }
        const int keep_precise = last && final_precise;
        if ((c->precise_every > 0 && ((ep + 1) % c->precise_every == 0 || last)) || keep_precise) {
            /* fresh PreciseBN statistics for this evaluation; training goes on with the EMA ones
             * (restored exactly), except at the end with final_precise */
            bl_pop_snapshot ema;
            bl_precise_report rep;
            if ((st = bl_pop_save(&net, &ema))) break;
            st = bl_precise(&net, &train, &pcfg, &rep);
            if (!st) st = bl_evaluate(&net, &test, BL_BN_POPULATION, 0, 0, 0, &pre);
            if (st || !keep_precise) bl_pop_restore(&net, &ema);
            bl_pop_free(&ema);
            if (st) break;
            if (keep_precise) bl_precise_record(info.precise, sizeof info.precise, &pcfg, &rep, &net);
        }
        info.epoch = ep + 1;
        char ps[16] = "-", ms[16] = "-", rs[16] = "-";
        if (pre.err >= 0) snprintf(rs, sizeof rs, "%.2f", pre.err), final_pre = pre;
        if (pop.err >= 0) snprintf(ps, sizeof ps, "%.2f", pop.err), final = pop;
        if (mb.err >= 0) snprintf(ms, sizeof ms, "%.2f", mb.err), final_mb = mb;
        if (pop.err >= 0 && pop.err < best) best = pop.err, best_epoch = info.epoch;
        final_epoch = pop.err >= 0 ? info.epoch : final_epoch;
        printf("%-6d %-9.5f %-10.4f %-9.2f %-9s %-9s %-9s %-9.0f %-8.1f\n", ep + 1, lr,
               loss_sum / seen, 100.0 * wrong / seen, ps, ms, rs, ips, secs);
        fflush(stdout);
        if (metrics) {
            fprintf(metrics, "{\"epoch\":%d,\"step\":%ld,\"lr\":%.6g,\"train_loss\":%.6f,"
                    "\"train_err\":%.4f", ep + 1, info.step, lr, loss_sum / seen, 100.0 * wrong / seen);
            if (pop.err >= 0) fprintf(metrics, ",\"test_err_population\":%.4f", pop.err);
            if (mb.err >= 0) fprintf(metrics, ",\"test_err_minibatch\":%.4f", mb.err);
            if (tmb.err >= 0) fprintf(metrics, ",\"train_err_minibatch\":%.4f", tmb.err);
            if (pre.err >= 0) fprintf(metrics, ",\"test_err_precise\":%.4f", pre.err);
            fprintf(metrics, ",\"img_per_s\":%.1f,\"seconds\":%.2f}\n", ips, secs);
            fflush(metrics);
            if ((info.epoch % c->checkpoint_every == 0 || last) &&
                (st = bl_checkpoint_save(&net, cpath, &info)))
                break;
            if (c->keep_every > 0 && info.epoch % c->keep_every == 0) {
                char kpath[1100];
                snprintf(kpath, sizeof kpath, "%s/epoch%d.safetensors", c->out, info.epoch);
                if ((st = bl_checkpoint_save(&net, kpath, &info))) break;
            }
        }
    }
    if (!st && !stopped) {
        bl_eval_result pop = final;
        if (final_epoch != info.epoch && final_pre.err < 0) {
            final_src = bl_estimator_name(bl_net_bn_at(&net, 0)->pop_source);
            st = bl_evaluate(&net, &test, BL_BN_POPULATION, 0, 0, 0, &pop);
        }
        if (!st) {
            const char *set = c->val > 0 ? "validation" : "test";
            printf("\nsummary\n");
            printf("  %-24s %s w=%d\n", "model", c->model, c->width);
            printf("  %-24s %d / %ld\n", "epochs / steps", info.epoch, info.step);
            printf("  %-24s %d / %d\n", "batch / norm batch", c->batch, g);
            if (pop.err >= 0)
                printf("  %-24s %.2f%% (population statistics, %s)\n",
                       c->val > 0 ? "validation error" : "test error", pop.err, final_src);
            if (final_pre.err >= 0)
                printf("  %-24s %.2f%% (PreciseBN statistics, %ld images%s)\n",
                       pop.err >= 0 ? "" : c->val > 0 ? "validation error" : "test error",
                       final_pre.err, psamples,
                       final_precise ? "; the checkpoint keeps these" : "");
            if (final_mb.err >= 0)
                printf("  %-24s %.2f%% (mini-batch statistics, groups of %d)\n", "", final_mb.err, g);
            if (best_epoch > 0)
                printf("  %-24s %.2f%% at epoch %d (%s)\n", "best during the run", best, best_epoch,
                       set);
            printf("  %-24s %.0f s\n", "wall time", now() - t_run);
            if (c->out[0]) printf("  %-24s %s, %s\n", "written", mpath, cpath);
        }
    }
    bl_groups_free(&groups);
    free(order), bl_free(x), free(y);
    if (metrics) fclose(metrics);
done:
    bl_net_free(&net);
    bl_dataset_free(&train_sub);
    bl_dataset_free(&train);
    bl_dataset_free(&test);
    return st;
}
