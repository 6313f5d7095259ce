/* Checkpoints: a net's state dict, optimizer state and run metadata in safetensors. */
#include "bnlab/train.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/json.h"

#define FORMAT "bnlab-checkpoint-1"

static void shape64(const bl_param *p, int64_t *s)
{
    for (int d = 0; d < p->ndim; d++) s[d] = p->shape[d];
}

/* The estimator shared by all BN layers, or "mixed". */
static const char *estimator(const bl_net *net)
{
    bl_net *n = (bl_net *)net;
    const char *e = NULL;
    for (int i = 0; i < bl_net_bn_count(n); i++) {
        const char *x = bl_estimator_name(bl_net_bn_at(n, i)->pop_source);
        if (!e) e = x;
        else if (strcmp(e, x)) return "mixed";
    }
    return e ? e : "none";
}

void bl_head_json(const bl_head_cfg *h, char *buf, size_t len)
{
    snprintf(buf, len, "{\"norm\":\"%s\",\"sgd\":\"%s\",\"pop\":\"%s\",\"affine\":\"%s\","
             "\"width\":%d,\"crops\":%d,\"crop_min\":%.17g,\"crop_max\":%.17g}",
             bl_head_norm_name(h->norm), h->sgd_level ? "level" : "shared",
             h->pop_level ? "level" : "shared", h->affine_level ? "level" : "shared", h->width,
             h->crops, h->crop_min, h->crop_max);
}

/* "shared" -> 0, "level" -> 1, else -1 */
static int level_flag(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsString(v)) return -1;
    return !strcmp(v->valuestring, "level") ? 1 : !strcmp(v->valuestring, "shared") ? 0 : -1;
}

bl_status bl_head_from_json(const char *json, bl_head_cfg *h)
{
    bl_head_defaults(h);
    int oom;
    cJSON *j = bl_json_parse(json, &oom);
    if (oom) return cJSON_Delete(j), bl_fail(BL_ERR_NOMEM, "out of memory parsing the 'head' metadata");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "norm"),
                *width = cJSON_GetObjectItemCaseSensitive(j, "width");
    const int sgd = level_flag(j, "sgd"), pop = level_flag(j, "pop"), aff = level_flag(j, "affine");
    bl_status st = BL_OK;
    if (!cJSON_IsString(norm) || bl_head_norm_parse(norm->valuestring, &h->norm) || sgd < 0 ||
        pop < 0 || aff < 0 || !cJSON_IsNumber(width) || !(width->valuedouble >= 4) ||
        !(width->valuedouble <= 4096))
        st = bl_fail(BL_ERR_FORMAT, "the 'head' metadata is malformed: %.200s", json);
    else
        h->sgd_level = sgd, h->pop_level = pop, h->affine_level = aff,
        h->width = (int)width->valuedouble;
    /* the crop head's (absent before it existed: the defaults) */
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "crops"),
                *lo = cJSON_GetObjectItemCaseSensitive(j, "crop_min"),
                *hi = cJSON_GetObjectItemCaseSensitive(j, "crop_max");
    if (!st && ((k && !(cJSON_IsNumber(k) && k->valuedouble >= 1 && k->valuedouble <= 4096)) ||
                (lo && !(cJSON_IsNumber(lo) && lo->valuedouble > 0 && lo->valuedouble <= 1e4)) ||
                (hi && !(cJSON_IsNumber(hi) && hi->valuedouble > 0 && hi->valuedouble <= 1e4))))
        st = bl_fail(BL_ERR_FORMAT, "the 'head' metadata's crops are malformed: %.200s", json);
    if (!st && k) h->crops = (int)k->valuedouble;
    if (!st && lo) h->crop_min = lo->valuedouble;
    if (!st && hi) h->crop_max = hi->valuedouble;
    cJSON_Delete(j);
    return st;
}

/* one metadata entry, once everything before it went well (a failed one must fail the save:
 * a checkpoint without its metadata is not one) */
static void meta(bl_st_writer *w, bl_status *st, const char *key, const char *value)
{
    if (!*st) *st = bl_st_set_meta(w, key, value);
}

bl_status bl_checkpoint_save(const bl_net *net, const char *path, const bl_ckpt_info *info)
{
    bl_st_writer w = {0};
    bl_status st = BL_OK;
    size_t maxc = 1;
    for (int i = 0; i < net->n_params; i++)
        if (net->params[i].count > maxc) maxc = net->params[i].count;
    float *t = bl_malloc(maxc * sizeof(float));
    if (!t) return BL_ERR_NOMEM; /* the reason is the allocation's */
    for (int i = 0; i < net->n_params && !st; i++) {
        const bl_param *p = &net->params[i];
        int64_t s[4];
        shape64(p, s);
        if (p->kind == BL_P_COUNT) {
            st = bl_st_add(&w, p->name, BL_I64, 0, s, p->i64);
            continue;
        }
        bl_param_export(p, p->data, t);
        st = bl_st_add(&w, p->name, BL_F32, p->ndim, s, t);
    }
    for (int i = 0; i < net->n_params && !st; i++) {
        const bl_param *p = &net->params[i];
        if (p->kind == BL_P_COUNT || p->kind == BL_P_BUFFER) continue;
        int64_t s[4];
        shape64(p, s);
        char name[160];
        snprintf(name, sizeof name, "optim.%s.momentum_buffer", p->name);
        bl_param_export(p, net->optim_block + p->offset, t);
        st = bl_st_add(&w, name, BL_F32, p->ndim, s, t);
    }
    free(t);
    char v[64];
    const bl_tensor *in = &net->t[0];
    meta(&w, &st, "format", FORMAT);
    meta(&w, &st, "arch", net->arch);
    snprintf(v, sizeof v, "%d", net->width), meta(&w, &st, "width", v);
    snprintf(v, sizeof v, "%d", net->n_classes), meta(&w, &st, "classes", v);
    snprintf(v, sizeof v, "%d,%d,%d", in->h, in->w, in->c), meta(&w, &st, "input", v);
    /* an info whose recipe was never set (all zero) records the Fashion-MNIST one */
    const bl_recipe rc = info && info->recipe.channels ? info->recipe : bl_recipe_fmnist();
    if (bl_recipe_check(&rc)) {
        bl_st_writer_free(&w);
        return bl_fail_ctx(BL_ERR_ARG, "%s: info", path);
    }
    char rj[512];
    bl_recipe_json(&rc, rj, sizeof rj);
    snprintf(v, sizeof v, "%.4f", rc.mean[0]), meta(&w, &st, "data_mean", v);
    snprintf(v, sizeof v, "%.4f", rc.std[0]), meta(&w, &st, "data_std", v);
    meta(&w, &st, "recipe", rj);
    meta(&w, &st, "estimator", estimator(net));
    if (net->levels || net->crops) {
        char hj[256];
        bl_head_json(&net->head, hj, sizeof hj);
        meta(&w, &st, "head", hj);
    }
    if (info) {
        snprintf(v, sizeof v, "%d", info->epoch), meta(&w, &st, "epoch", v);
        snprintf(v, sizeof v, "%ld", info->step), meta(&w, &st, "step", v);
        snprintf(v, sizeof v, "%llu", (unsigned long long)info->seed), meta(&w, &st, "seed", v);
        snprintf(v, sizeof v, "%.17g,%ld,%ld", info->ep_loss, info->ep_wrong, info->ep_seen);
        meta(&w, &st, "epoch_progress", v);
        meta(&w, &st, "rng", "derived: one global order from (seed, epoch), each rank "
                                  "taking its share; augmentation from (seed, epoch, sample)");
        meta(&w, &st, "config", info->config);
        if (info->precise[0]) meta(&w, &st, "precise", info->precise);
        if (info->adapt[0]) meta(&w, &st, "adapt", info->adapt);
    }
    if (!st) st = bl_st_write(&w, path);
    bl_st_writer_free(&w);
    return st;
}

static int is_bnlab(const bl_safetensors *st)
{
    const char *fmt = bl_st_meta(st, "format");
    return fmt && !strncmp(fmt, "bnlab-checkpoint", 16);
}

/* A multi-level head's per-level population statistics (name.{k}.running_*), absent from the
 * file: files with pooled statistics only load; inference with per-level ones is then refused. */
static int level_stats_absent(const bl_net *net, const bl_safetensors *st, const bl_param *p)
{
    if (!net->levels || (p->kind != BL_P_BUFFER && p->kind != BL_P_COUNT) || bl_st_find(st, p->name))
        return 0;
    const char *dot = strrchr(p->name, '.');
    if (!dot || dot == p->name) return 0;
    const char *q = dot - 1; /* the level index before the leaf: "head.norm1.0.running_mean" */
    while (q > p->name && *q >= '0' && *q <= '9') q--;
    if (!(*q == '.' && q < dot - 1 && !strncmp(p->name, "head.", 5))) return 0;
    /* all of the level's statistics absent, or it is a missing tensor like any other */
    static const char *leaf[3] = {"running_mean", "running_var", "num_batches_tracked"};
    for (int k = 0; k < 3; k++) {
        char name[160];
        snprintf(name, sizeof name, "%.*s.%s", (int)(dot - p->name), p->name, leaf[k]);
        if (bl_st_find(st, name)) return 0;
    }
    return 1;
}

/* foreign: a state_dict without bnlab's metadata, read by the names of the net it was built for */
static bl_status load_into(bl_net *net, const bl_safetensors *st, const char *path, int with_optim,
                           int foreign)
{
    const char *arch = bl_st_meta(st, "arch");
    if (!foreign && !is_bnlab(st))
        return bl_fail(BL_ERR_FORMAT, "%s: not a bnlab checkpoint (no '%s' format in its "
                       "metadata)", path, FORMAT);
    if (foreign && with_optim)
        return bl_fail(BL_ERR_FORMAT, "%s: a state_dict without bnlab metadata holds no optimizer "
                       "state to resume from", path);
    if (!foreign && (!arch || strcmp(arch, net->arch)))
        return bl_fail(BL_ERR_FORMAT, "%s: checkpoint of a %s, the model is a %s", path,
                       arch ? arch : "(unknown)", net->arch);
    size_t maxc = 1;
    for (int i = 0; i < net->n_params; i++)
        if (net->params[i].count > maxc) maxc = net->params[i].count;
    float *t = bl_malloc(maxc * sizeof(float));
    if (!t) return BL_ERR_NOMEM; /* the reason is the allocation's */
    bl_status rc = BL_OK;
    /* first check that every tensor is there with the right size, so a bad file changes nothing */
    for (int i = 0; i < net->n_params && !rc; i++) {
        const bl_param *p = &net->params[i];
        if (p->kind == BL_P_COUNT || level_stats_absent(net, st, p)) continue;
        rc = bl_st_get_f32(st, p->name, t, p->count);
        if (!rc && with_optim && p->kind != BL_P_BUFFER) {
            char name[160];
            snprintf(name, sizeof name, "optim.%s.momentum_buffer", p->name);
            rc = bl_st_get_f32(st, name, t, p->count);
        }
    }
    for (int i = 0; i < net->n_params && !rc; i++) {
        bl_param *p = &net->params[i];
        char name[160];
        if (level_stats_absent(net, st, p)) continue;
        if (p->kind == BL_P_COUNT) {
            const bl_st_entry *e = bl_st_find(st, p->name);
            if (!e || e->dtype != BL_I64 || bl_st_numel(e) != 1)
                rc = bl_fail(BL_ERR_FORMAT, "%s: '%s' missing or not an I64 scalar", path, p->name);
            else
                memcpy(p->i64, st->data + e->begin, 8);
            continue;
        }
        if ((rc = bl_st_get_f32(st, p->name, t, p->count))) break;
        bl_param_import(p, t, p->data);
        if (!with_optim || p->kind == BL_P_BUFFER) continue;
        snprintf(name, sizeof name, "optim.%s.momentum_buffer", p->name);
        if ((rc = bl_st_get_f32(st, name, t, p->count))) break;
        bl_param_import(p, t, net->optim_block + p->offset);
    }
    free(t);
    if (rc) return bl_fail_ctx(rc, "%s", path);
    /* the estimator that produced the stored statistics (from outside: loaded) */
    const char *est = bl_st_meta(st, "estimator");
    bl_estimator e = BL_EST_LOADED;
    for (int k = BL_EST_INIT; k <= BL_EST_LOADED; k++)
        if (est && !strcmp(est, bl_estimator_name((bl_estimator)k))) e = (bl_estimator)k;
    for (int i = 0; i < bl_net_bn_count(net); i++) {
        bl_bn *b = bl_net_bn_at(net, i);
        char name[96];
        snprintf(name, sizeof name, "%s.running_mean", b->name);
        /* per-level statistics the file lacks: never estimated (bl_net_head_pop refuses them) */
        b->pop_source = bl_st_find(st, name) ? e : BL_EST_INIT;
    }
    return BL_OK;
}

/* The "recipe" metadata; a checkpoint without one was trained with the Fashion-MNIST recipe. */
static bl_status read_recipe(const bl_safetensors *st, const char *path, bl_recipe *r)
{
    *r = bl_recipe_fmnist();
    const char *v = bl_st_meta(st, "recipe");
    if (!v) return BL_OK;
    int oom;
    cJSON *j = bl_json_parse(v, &oom);
    if (oom)
        return cJSON_Delete(j), bl_fail(BL_ERR_NOMEM, "%s: out of memory parsing the 'recipe' metadata", path);
    bl_status rc = BL_OK;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name"),
                *ch = cJSON_GetObjectItemCaseSensitive(j, "channels"),
                *cl = cJSON_GetObjectItemCaseSensitive(j, "classes"),
                *mean = cJSON_GetObjectItemCaseSensitive(j, "mean"),
                *std = cJSON_GetObjectItemCaseSensitive(j, "std"),
                *pad = cJSON_GetObjectItemCaseSensitive(j, "pad"),
                *flip = cJSON_GetObjectItemCaseSensitive(j, "flip");
    if (!cJSON_IsString(name) || !cJSON_IsNumber(ch) || !cJSON_IsNumber(cl) ||
        !cJSON_IsArray(mean) || !cJSON_IsArray(std) || !cJSON_IsNumber(pad) || !cJSON_IsBool(flip) ||
        !(ch->valuedouble >= 1 && ch->valuedouble <= BL_RECIPE_MAX_CHANNELS) ||
        !(cl->valuedouble >= 2 && cl->valuedouble <= 1e6) ||
        !(pad->valuedouble >= 0 && pad->valuedouble <= 64) ||
        cJSON_GetArraySize(mean) != (int)ch->valuedouble ||
        cJSON_GetArraySize(std) != (int)ch->valuedouble) {
        rc = bl_fail(BL_ERR_FORMAT, "%s: the 'recipe' metadata is malformed: %.200s", path, v);
    } else {
        snprintf(r->name, sizeof r->name, "%s", name->valuestring);
        r->channels = (int)ch->valuedouble, r->classes = (int)cl->valuedouble;
        r->pad = (int)pad->valuedouble, r->flip = cJSON_IsTrue(flip);
        for (int c = 0; c < r->channels && !rc; c++) {
            const cJSON *m = cJSON_GetArrayItem(mean, c), *s = cJSON_GetArrayItem(std, c);
            if (!cJSON_IsNumber(m) || !cJSON_IsNumber(s))
                rc = bl_fail(BL_ERR_FORMAT, "%s: the 'recipe' mean/std are not numbers", path);
            else
                r->mean[c] = (float)m->valuedouble, r->std[c] = (float)s->valuedouble;
        }
        if (!rc && (rc = bl_recipe_check(r))) rc = bl_fail_ctx(rc, "%s", path);
    }
    cJSON_Delete(j);
    return rc;
}

static bl_status read_info(const bl_safetensors *st, const char *path, bl_ckpt_info *info)
{
    if (!info) return BL_OK;
    memset(info, 0, sizeof *info);
    bl_status rc = read_recipe(st, path, &info->recipe);
    if (rc) return rc;
    const char *v;
    bl_head_defaults(&info->head);
    if ((v = bl_st_meta(st, "head")) && (rc = bl_head_from_json(v, &info->head)))
        return bl_fail_ctx(rc, "%s", path);
    if ((v = bl_st_meta(st, "epoch"))) info->epoch = atoi(v);
    if ((v = bl_st_meta(st, "step"))) info->step = atol(v);
    if ((v = bl_st_meta(st, "seed"))) info->seed = strtoull(v, NULL, 10);
    if ((v = bl_st_meta(st, "config"))) snprintf(info->config, sizeof info->config, "%s", v);
    if ((v = bl_st_meta(st, "precise"))) snprintf(info->precise, sizeof info->precise, "%s", v);
    if ((v = bl_st_meta(st, "adapt"))) snprintf(info->adapt, sizeof info->adapt, "%s", v);
    if ((v = bl_st_meta(st, "epoch_progress")))
        sscanf(v, "%lf,%ld,%ld", &info->ep_loss, &info->ep_wrong, &info->ep_seen);
    return BL_OK;
}

bl_status bl_checkpoint_load(bl_net *net, const char *path, int with_optim, bl_ckpt_info *info)
{
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    /* the recipe first: a malformed one changes nothing */
    bl_ckpt_info tmp;
    rc = read_info(&st, path, &tmp);
    if (!rc) rc = load_into(net, &st, path, with_optim, 0);
    if (!rc && info) *info = tmp;
    bl_st_free(&st);
    return rc;
}

bl_status bl_checkpoint_read_info(const char *path, bl_ckpt_info *info)
{
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    rc = is_bnlab(&st) ? read_info(&st, path, info)
                       : bl_fail(BL_ERR_FORMAT, "%s: not a bnlab checkpoint", path);
    bl_st_free(&st);
    return rc;
}

void bl_model_spec_defaults(bl_model_spec *m)
{
    memset(m, 0, sizeof *m);
    m->width = 16;
    m->recipe = bl_recipe_fmnist();
}

/* A float tensor `name` whose first dimension is n (and second n2 unless n2 < 0). */
static int has_rows(const bl_safetensors *st, const char *name, int64_t n, int64_t n2)
{
    const bl_st_entry *e = bl_st_find(st, name);
    return e && (e->dtype == BL_F32 || e->dtype == BL_F64) && e->ndim >= 2 && e->shape[0] == n &&
           (n2 < 0 || e->shape[1] == n2);
}

/* The architecture a bnlab file's metadata claims, held against the tensors it has, before any
 * of it is built: a forged depth, width, class count or input size would otherwise allocate that
 * network first (docs/robustness.md). Every claimed size is backed by float tensors of that size
 * in the file: the stem [width, channels, ...], every block's first convolution, the classifier
 * [classes, ...]; the input, which no tensor shows, is bounded (the lab's images are 28x28). */
static bl_status arch_plausible(const bl_safetensors *st, int depth, int kind, int width,
                                int classes, int h, int w, int c)
{
    if (!has_rows(st, "conv1.weight", width, c))
        return bl_fail(BL_ERR_FORMAT, "the metadata's width %d and %d input channels do not match "
                       "its conv1.weight: corrupt or forged", width, c);
    if (depth > 1202)
        return bl_fail(BL_ERR_FORMAT, "depth %d in its metadata: corrupt (at most 1202)", depth);
    const int blocks = (depth - 2) / 6, stages = kind == BL_MODEL_CROPS ? 2 : 3;
    for (int s = 0; s < stages; s++)
        for (int b = 0; b < blocks; b++) {
            char name[64];
            snprintf(name, sizeof name, "layer%d.%d.conv1.weight", s + 1, b);
            if (!has_rows(st, name, (int64_t)width << s, -1))
                return bl_fail(BL_ERR_FORMAT, "the metadata's resnet%d w=%d needs a float tensor "
                               "%s of %lld rows: corrupt or forged", depth, width, name,
                               (long long)width << s);
        }
    if (!has_rows(st, kind == BL_MODEL_PLAIN ? "fc.weight" : "head.cls.weight", classes, -1))
        return bl_fail(BL_ERR_FORMAT, "the metadata's %d classes do not match its classifier's "
                       "weight: corrupt or forged", classes);
    if (h < 1 || w < 1 || h > 256 || w > 256)
        return bl_fail(BL_ERR_FORMAT, "input %dx%d in its metadata: corrupt (at most 256x256)", h, w);
    return BL_OK;
}

bl_status bl_checkpoint_open(const char *path, int max_batch, const bl_model_spec *foreign,
                             bl_net *net, bl_ckpt_info *info)
{
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    const char *arch = bl_st_meta(&st, "arch"), *width = bl_st_meta(&st, "width"),
               *classes = bl_st_meta(&st, "classes"), *input = bl_st_meta(&st, "input");
    const int ours = is_bnlab(&st);
    const int use_spec = !ours && foreign && foreign->model[0];
    int depth, ml = 0, h = 28, w = 28, c = 1, wd = 0, k = 0;
    bl_ckpt_info tmp;
    if (ours) {
        if (!arch || !width || !classes || !input || sscanf(input, "%d,%d,%d", &h, &w, &c) != 3) {
            bl_st_free(&st);
            return bl_fail(BL_ERR_FORMAT, "%s: no architecture in the metadata: not a bnlab "
                           "checkpoint", path);
        }
        if (foreign && foreign->model[0] &&
            (strcmp(arch, foreign->model) || atoi(width) != foreign->width)) {
            rc = bl_fail(BL_ERR_ARG, "%s: a bnlab checkpoint of a %s w=%s, but cfg.model %s "
                         "cfg.width %d was given: drop them (the checkpoint says what it is)", path,
                         arch, width, foreign->model, foreign->width);
            bl_st_free(&st);
            return rc;
        }
        wd = atoi(width), k = atoi(classes);
        rc = bl_model_parse(arch, &depth, &ml);
        if (!rc) rc = arch_plausible(&st, depth, ml, wd, k, h, w, c);
        if (!rc) rc = read_info(&st, path, &tmp);
    } else if (use_spec) {
        /* a PyTorch state_dict: the model named by the caller, fed by its recipe */
        memset(&tmp, 0, sizeof tmp);
        tmp.recipe = foreign->recipe;
        wd = foreign->width, k = foreign->recipe.classes, c = foreign->recipe.channels;
        rc = bl_recipe_check(&tmp.recipe);
        if (!rc) rc = bl_model_parse(foreign->model, &depth, &ml);
        bl_head_defaults(&tmp.head);
    } else {
        bl_st_free(&st);
        return bl_fail(BL_ERR_FORMAT, "%s: not a bnlab checkpoint (no '%s' format in its "
                       "metadata); a PyTorch state_dict of the ResNet twin opens with cfg.model "
                       "(e.g. resnet20) and cfg.width", path, FORMAT);
    }
    if (!rc)
        rc = bl_model_build(net, ours ? arch : foreign->model, wd, k, &tmp.head, h, w, c, max_batch);
    if (rc) {
        bl_st_free(&st);
        return bl_fail_ctx(rc, "%s", path);
    }
    rc = load_into(net, &st, path, 0, use_spec);
    bl_st_free(&st);
    if (rc) {
        bl_net_free(net);
        return rc;
    }
    if (info) *info = tmp;
    return BL_OK;
}
