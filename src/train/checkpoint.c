/* Checkpoints: a net's state dict, optimizer state and run metadata in safetensors. */
#include "bnlab/train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
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

bl_status bl_model_opts_json(const bl_model *m, char **json)
{
    *json = NULL;
    bl_json_init();
    const bl_family *f = m->family;
    int any = 0;
    for (int k = 0; f && k < f->n_opts; k++) any |= f->opts[k].key != NULL;
    if (!any) return BL_OK;
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; o && k < f->n_opts; k++) {
        const bl_family_opt *op = &f->opts[k];
        if (!op->key) continue;
        char v[64];
        bl_model_format(m, op, v, sizeof v);
        cJSON *item = op->type == BL_FOPT_CHOICE ? cJSON_CreateString(v)
                                                 : cJSON_CreateNumber(bl_model_get(m, op));
        if (!item || !cJSON_AddItemToObject(o, op->key, item)) {
            cJSON_Delete(item);
            cJSON_Delete(o);
            o = NULL;
        }
    }
    *json = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return *json ? BL_OK : bl_fail(BL_ERR_NOMEM, "out of memory writing the 'head' metadata");
}

bl_status bl_model_opts_from_json(bl_model *m, const char *json)
{
    int oom;
    cJSON *j = bl_json_parse(json, &oom);
    if (oom) return cJSON_Delete(j), bl_fail(BL_ERR_NOMEM, "out of memory parsing the 'head' metadata");
    const bl_family *f = m->family;
    bl_status st = cJSON_IsObject(j) ? BL_OK
                                     : bl_fail(BL_ERR_FORMAT, "the 'head' metadata is malformed: "
                                               "%.200s", json);
    for (int k = 0; f && k < f->n_opts && !st; k++) {
        const bl_family_opt *op = &f->opts[k];
        const cJSON *v = op->key ? cJSON_GetObjectItemCaseSensitive(j, op->key) : NULL;
        if (!v) continue; /* absent: the default (a file from before the option existed) */
        const double x = op->type == BL_FOPT_CHOICE
                             ? (cJSON_IsString(v) ? bl_family_opt_choice(op, v->valuestring) : -1)
                             : (cJSON_IsNumber(v) ? v->valuedouble : NAN);
        if (bl_family_opt_valid(op, x)) bl_model_set(m, op, x);
        else st = bl_fail(BL_ERR_FORMAT, "the 'head' metadata is malformed (its '%s'): %.200s",
                          op->key, json);
    }
    cJSON_Delete(j);
    return st;
}

/* The plan as the "plan" metadata, and back (keys absent: 0). */
static const struct {
    const char *key;
    size_t off;
} plan_keys[] = {{"norm_batch", offsetof(bl_plan, norm_batch)},
                 {"head_bn_images", offsetof(bl_plan, head_bn_images)},
                 {"sync_bn", offsetof(bl_plan, sync_bn)},
                 {"bn_shuffle", offsetof(bl_plan, bn_shuffle)}};
#define N_PLAN_KEYS ((int)(sizeof plan_keys / sizeof *plan_keys))

static char *plan_json(const bl_plan *p)
{
    bl_json_init();
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; o && k < N_PLAN_KEYS; k++)
        if (!cJSON_AddNumberToObject(o, plan_keys[k].key,
                                     *(const int *)((const char *)p + plan_keys[k].off))) {
            cJSON_Delete(o);
            o = NULL;
        }
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* From an object holding the plan's keys ("plan", or an old checkpoint's "config"). */
static bl_status plan_from(const cJSON *j, bl_plan *p, const char *what, const char *path)
{
    memset(p, 0, sizeof *p);
    for (int k = 0; k < N_PLAN_KEYS; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, plan_keys[k].key);
        if (!v) continue;
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 1 << 30) ||
            v->valuedouble != floor(v->valuedouble))
            return bl_fail(BL_ERR_FORMAT, "%s: the '%s' metadata's %s is malformed", path, what,
                           plan_keys[k].key);
        *(int *)((char *)p + plan_keys[k].off) = (int)v->valuedouble;
    }
    return BL_OK;
}

void bl_ckpt_info_free(bl_ckpt_info *info)
{
    free(info->config), free(info->precise), free(info->adapt);
    info->config = info->precise = info->adapt = NULL;
}

void bl_ckpt_info_set(char **field, char *text)
{
    free(*field);
    *field = text;
}

/* x rounded to `digits` significant digits (printf's %.*g), so the JSON shows no more */
static double digits(double x, int n)
{
    char b[40];
    snprintf(b, sizeof b, "%.*g", n, x);
    return strtod(b, NULL);
}

char *bl_precise_record(const bl_precise_cfg *c, const bl_precise_report *r, const bl_net *net)
{
    bl_json_init();
    cJSON *o = cJSON_CreateObject(), *se = NULL;
    int ok = o && cJSON_AddStringToObject(o, "estimator", c->sequential ? "precise-sequential"
                                                                        : "precise") &&
             cJSON_AddNumberToObject(o, "samples", (double)c->samples) &&
             cJSON_AddNumberToObject(o, "batch", c->batch) &&
             cJSON_AddBoolToObject(o, "augment", c->augment) &&
             cJSON_AddNumberToObject(o, "seed", (double)c->seed) &&
             cJSON_AddNumberToObject(o, "forwards", round(r->forwards * 1000) / 1000) &&
             cJSON_AddNumberToObject(o, "worst_se", digits(r->worst_se, 6));
    if (ok && c->prior > 0) ok = cJSON_AddNumberToObject(o, "prior", c->prior) != NULL;
    if (ok && c->plan.norm_batch) ok = cJSON_AddNumberToObject(o, "norm_batch", c->plan.norm_batch) != NULL;
    if (ok && c->plan.head_bn_images)
        ok = cJSON_AddNumberToObject(o, "head_bn_images", c->plan.head_bn_images) != NULL;
    ok = ok && (se = cJSON_AddObjectToObject(o, "max_se"));
    for (int k = 0; ok && k < r->layers; k++)
        ok = cJSON_AddNumberToObject(se, bl_net_bn_at(net, k)->name, digits(r->max_se[k], 6)) != NULL;
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) bl_fail(BL_ERR_NOMEM, "out of memory writing the PreciseBN record");
    return text;
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
    for (int i = 0; i < bl_net_param_count(net); i++)
        if (bl_net_param_at(net, i)->count > maxc) maxc = bl_net_param_at(net, i)->count;
    float *t = bl_malloc(maxc * sizeof(float));
    if (!t) return BL_ERR_NOMEM; /* the reason is the allocation's */
    for (int i = 0; i < bl_net_param_count(net) && !st; i++) {
        const bl_param *p = bl_net_param_at(net, i);
        int64_t s[4];
        shape64(p, s);
        if (p->kind == BL_P_COUNT) {
            st = bl_st_add(&w, p->name, BL_I64, 0, s, p->i64);
            continue;
        }
        bl_param_export(p, p->data, t);
        st = bl_st_add(&w, p->name, BL_F32, p->ndim, s, t);
    }
    for (int i = 0; i < bl_net_param_count(net) && !st; i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->kind == BL_P_COUNT || p->kind == BL_P_BUFFER) continue;
        int64_t s[4];
        shape64(p, s);
        char name[160];
        snprintf(name, sizeof name, "optim.%s.momentum_buffer", p->name);
        bl_param_export(p, bl_net_block(net, BL_BLOCK_OPTIM, NULL) + p->offset, t);
        st = bl_st_add(&w, name, BL_F32, p->ndim, s, t);
    }
    free(t);
    char v[64];
    const bl_tensor *in = bl_net_tensor_at(net, 0);
    meta(&w, &st, "format", FORMAT);
    meta(&w, &st, "arch", bl_net_arch(net));
    snprintf(v, sizeof v, "%d", bl_net_width(net)), meta(&w, &st, "width", v);
    snprintf(v, sizeof v, "%d", bl_net_classes(net)), meta(&w, &st, "classes", v);
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
    char *hj = NULL;
    if (!st) st = bl_model_opts_json(bl_net_model(net), &hj);
    if (hj) meta(&w, &st, "head", hj);
    free(hj);
    if (info) {
        char *pj = plan_json(&info->plan);
        if (!pj && !st) st = bl_fail(BL_ERR_NOMEM, "out of memory writing the 'plan' metadata");
        if (pj) meta(&w, &st, "plan", pj);
        free(pj);
        snprintf(v, sizeof v, "%d", info->epoch), meta(&w, &st, "epoch", v);
        snprintf(v, sizeof v, "%ld", info->step), meta(&w, &st, "step", v);
        snprintf(v, sizeof v, "%llu", (unsigned long long)info->seed), meta(&w, &st, "seed", v);
        snprintf(v, sizeof v, "%.17g,%ld,%ld", info->ep_loss, info->ep_wrong, info->ep_seen);
        meta(&w, &st, "epoch_progress", v);
        meta(&w, &st, "rng", "derived: one global order from (seed, epoch), each rank "
                                  "taking its share; augmentation from (seed, epoch, sample)");
        if (info->config) meta(&w, &st, "config", info->config);
        if (info->precise) meta(&w, &st, "precise", info->precise);
        if (info->adapt) meta(&w, &st, "adapt", info->adapt);
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

/* An optional parameter (bl_param.optional) that the file lacks together with every other one of
 * its group: not loaded (a multi-level layer's per-level statistics in a file with pooled ones
 * only; inference with them is then refused). One of a group present: all must be. */
static int optional_absent(const bl_net *net, const bl_safetensors *st, const bl_param *p)
{
    if (!p->optional || bl_st_find(st, p->name)) return 0;
    for (int i = 0; i < bl_net_param_count(net); i++)
        if (bl_net_param_at(net, i)->optional == p->optional &&
            bl_st_find(st, bl_net_param_at(net, i)->name))
            return 0;
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
    if (!foreign && (!arch || strcmp(arch, bl_net_arch(net))))
        return bl_fail(BL_ERR_FORMAT, "%s: checkpoint of a %s, the model is a %s", path,
                       arch ? arch : "(unknown)", bl_net_arch(net));
    size_t maxc = 1;
    for (int i = 0; i < bl_net_param_count(net); i++)
        if (bl_net_param_at(net, i)->count > maxc) maxc = bl_net_param_at(net, i)->count;
    float *t = bl_malloc(maxc * sizeof(float));
    if (!t) return BL_ERR_NOMEM; /* the reason is the allocation's */
    bl_status rc = BL_OK;
    /* first check that every tensor is there with the right size, so a bad file changes nothing */
    for (int i = 0; i < bl_net_param_count(net) && !rc; i++) {
        const bl_param *p = bl_net_param_at(net, i);
        if (p->kind == BL_P_COUNT || optional_absent(net, st, p)) continue;
        rc = bl_st_get_f32(st, p->name, t, p->count);
        if (!rc && with_optim && p->kind != BL_P_BUFFER) {
            char name[160];
            snprintf(name, sizeof name, "optim.%s.momentum_buffer", p->name);
            rc = bl_st_get_f32(st, name, t, p->count);
        }
    }
    for (int i = 0; i < bl_net_param_count(net) && !rc; i++) {
        bl_param *p = bl_net_param_at(net, i);
        char name[160];
        if (optional_absent(net, st, p)) continue;
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
        bl_param_import(p, t, bl_net_block(net, BL_BLOCK_OPTIM, NULL) + p->offset);
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

/* A metadata number: all of the text an integer in [lo, hi]. */
static bl_status meta_long(const bl_safetensors *st, const char *path, const char *key, long lo,
                           long hi, long *out)
{
    const char *v = bl_st_meta(st, key);
    if (!v) return BL_OK;
    char *end;
    errno = 0;
    const long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return bl_fail(BL_ERR_FORMAT, "%s: the '%s' metadata '%.40s' is not an integer in "
                       "%ld..%ld: corrupt", path, key, v, lo, hi);
    *out = x;
    return BL_OK;
}

/* The plan: the "plan" metadata, or (a file from before it) what the run's "config" says. */
static bl_status read_plan(const bl_safetensors *st, const char *path, bl_plan *p)
{
    const char *v = bl_st_meta(st, "plan"), *what = "plan";
    memset(p, 0, sizeof *p);
    if (!v) v = bl_st_meta(st, "config"), what = "config";
    if (!v) return BL_OK;
    int oom;
    cJSON *j = bl_json_parse(v, &oom);
    bl_status rc = BL_OK;
    if (oom) rc = bl_fail(BL_ERR_NOMEM, "%s: out of memory parsing the '%s' metadata", path, what);
    else if (!cJSON_IsObject(j) && !strcmp(what, "plan"))
        rc = bl_fail(BL_ERR_FORMAT, "%s: the 'plan' metadata is malformed: %.200s", path, v);
    else if (cJSON_IsObject(j))
        rc = plan_from(j, p, what, path);
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
    long x = 0;
    const char *arch = bl_st_meta(st, "arch");
    if (arch && (rc = bl_model_init(&info->model, arch))) return bl_fail_ctx(rc, "%s", path);
    if ((rc = meta_long(st, path, "width", 1, 1 << 20, &x))) return rc;
    if (x) info->model.width = (int)x;
    if ((v = bl_st_meta(st, "head")) && info->model.family &&
        (rc = bl_model_opts_from_json(&info->model, v)))
        return bl_fail_ctx(rc, "%s", path);
    if ((rc = read_plan(st, path, &info->plan))) return rc;
    x = 0;
    if ((rc = meta_long(st, path, "epoch", 0, 1L << 40, &x))) return rc;
    info->epoch = (int)x;
    if ((rc = meta_long(st, path, "step", 0, 1L << 50, &info->step))) return rc;
    if ((v = bl_st_meta(st, "seed"))) {
        char *end;
        errno = 0;
        info->seed = strtoull(v, &end, 10);
        if (errno || end == v || *end || *v == '-')
            return bl_fail(BL_ERR_FORMAT, "%s: the 'seed' metadata '%.40s' is not an unsigned "
                           "integer: corrupt", path, v);
    }
    if ((v = bl_st_meta(st, "epoch_progress"))) {
        int used = 0;
        if (sscanf(v, "%lf,%ld,%ld%n", &info->ep_loss, &info->ep_wrong, &info->ep_seen, &used) != 3 ||
            v[used] || !isfinite(info->ep_loss) || info->ep_wrong < 0 || info->ep_seen < 0 ||
            info->ep_wrong > info->ep_seen)
            return bl_fail(BL_ERR_FORMAT, "%s: the 'epoch_progress' metadata '%.60s' is "
                           "malformed: corrupt", path, v);
    }
    /* the texts last: an error before them leaves nothing to free */
    const char *key[3] = {"config", "precise", "adapt"};
    char **field[3] = {&info->config, &info->precise, &info->adapt};
    for (int k = 0; k < 3; k++)
        if ((v = bl_st_meta(st, key[k])) && !(*field[k] = bl_strdup(v))) {
            bl_ckpt_info_free(info);
            return BL_ERR_NOMEM; /* the reason is the allocation's */
        }
    return BL_OK;
}

bl_status bl_checkpoint_load(bl_net *net, const char *path, int with_optim, bl_ckpt_info *info)
{
    bl_safetensors st;
    bl_status rc = bl_st_read(path, &st);
    if (rc) return rc;
    /* the recipe first: a malformed one changes nothing */
    bl_ckpt_info tmp = {0};
    rc = read_info(&st, path, &tmp);
    if (!rc) rc = load_into(net, &st, path, with_optim, 0);
    if (!rc && info) *info = tmp;
    else bl_ckpt_info_free(&tmp); /* (read_info leaves none on its own failure) */
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

/* One declared parameter of the architecture a file's metadata claims, against the file's tensor
 * (bl_model_declare): there, of its dtype and shape; an optional one may be absent. */
static bl_status check_param(void *ctx, const bl_param *p)
{
    const bl_st_entry *e = bl_st_find(ctx, p->name);
    if (!e && p->optional) return BL_OK;
    if (!e)
        return bl_fail(BL_ERR_FORMAT, "the metadata's model has a tensor '%s' that the file "
                       "lacks: corrupt or forged", p->name);
    if (p->kind == BL_P_COUNT)
        return e->dtype == BL_I64 && bl_st_numel(e) == 1
                   ? BL_OK
                   : bl_fail(BL_ERR_FORMAT, "'%s' is not an I64 scalar: corrupt", p->name);
    int same = (e->dtype == BL_F32 || e->dtype == BL_F64) && e->ndim == p->ndim;
    for (int d = 0; d < p->ndim && same; d++) same = e->shape[d] == p->shape[d];
    if (same) return BL_OK;
    char want[96] = "", has[160] = "";
    for (int d = 0, o = 0; d < p->ndim; d++)
        o += snprintf(want + o, sizeof want - o, "%s%d", d ? ", " : "", p->shape[d]);
    for (int d = 0, o = 0; d < e->ndim && d < 8; d++)
        o += snprintf(has + o, sizeof has - o, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
    return bl_fail(BL_ERR_FORMAT, "the metadata's model needs tensor '%s' of shape [%s] in float, "
                   "the file's is [%s]%s: corrupt or forged", p->name, want, has,
                   e->dtype == BL_F32 || e->dtype == BL_F64 ? "" : " and not float");
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
    int h = 28, w = 28, c = 1, k = 0, used = 0;
    bl_ckpt_info tmp = {0};
    if (ours) {
        if (!arch || !width || !classes || !input ||
            sscanf(input, "%d,%d,%d%n", &h, &w, &c, &used) != 3 || input[used]) {
            bl_st_free(&st);
            return bl_fail(BL_ERR_FORMAT, "%s: no architecture in the metadata: not a bnlab "
                           "checkpoint", path);
        }
        long kl = 0;
        rc = read_info(&st, path, &tmp);
        if (!rc) rc = meta_long(&st, path, "classes", 2, 1 << 30, &kl);
        k = (int)kl;
        if (!rc && foreign && foreign->model[0] &&
            (strcmp(arch, foreign->model) || tmp.model.width != foreign->width))
            rc = bl_fail(BL_ERR_ARG, "%s: a bnlab checkpoint of a %s w=%s, but cfg.model %s "
                         "cfg.width %d was given: drop them (the checkpoint says what it is)", path,
                         arch, width, foreign->model, foreign->width);
        /* the input, which no tensor shows, bounded; then every declared parameter against the
         * file, before anything of the claimed sizes is allocated */
        if (!rc && (h < 1 || w < 1 || c < 1 || h > 1024 || w > 1024 || c > BL_RECIPE_MAX_CHANNELS))
            rc = bl_fail(BL_ERR_FORMAT, "input %dx%dx%d in its metadata: corrupt (at most "
                         "1024x1024x%d)", h, w, c, BL_RECIPE_MAX_CHANNELS);
        if (!rc) rc = bl_model_declare(&tmp.model, k, h, w, c, check_param, &st);
    } else if (use_spec) {
        /* a PyTorch state_dict: the model named by the caller, fed by its recipe */
        memset(&tmp, 0, sizeof tmp);
        tmp.recipe = foreign->recipe;
        k = foreign->recipe.classes, c = foreign->recipe.channels;
        rc = bl_recipe_check(&tmp.recipe);
        if (!rc) rc = bl_model_init(&tmp.model, foreign->model);
        tmp.model.width = foreign->width;
    } else {
        bl_st_free(&st);
        return bl_fail(BL_ERR_FORMAT, "%s: not a bnlab checkpoint (no '%s' format in its "
                       "metadata); a PyTorch state_dict of the ResNet twin opens with cfg.model "
                       "(e.g. resnet20) and cfg.width", path, FORMAT);
    }
    if (!rc) rc = bl_model_build(net, &tmp.model, k, h, w, c, max_batch);
    if (rc) {
        bl_st_free(&st);
        bl_ckpt_info_free(&tmp);
        return bl_fail_ctx(rc, "%s", path);
    }
    rc = load_into(net, &st, path, 0, use_spec);
    bl_st_free(&st);
    if (rc) {
        bl_net_free(net);
        bl_ckpt_info_free(&tmp);
        return rc;
    }
    if (info) *info = tmp;
    else bl_ckpt_info_free(&tmp);
    return BL_OK;
}
