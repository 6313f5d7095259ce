/* The registry of model families and the generic handling of their options (one table per
 * family: defaults, values as text, ranges). The built-in families are listed here; an extender
 * registers its own with bl_family_register before use. */
#include "nn/net.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_FAMILIES 32

/* The built-in families, found first, in this order. A new built-in family is one line here. */
static const bl_family *const builtin[] = {&bl_family_resnet, &bl_family_resnet_ml,
                                           &bl_family_resnet_crops};
#define N_BUILTIN ((int)(sizeof builtin / sizeof *builtin))

/* families registered at run time (before use, from one thread) */
static const bl_family *extra[MAX_FAMILIES];
static int n_extra;

int bl_family_count(void) { return N_BUILTIN + n_extra; }

const bl_family *bl_family_at(int i)
{
    if (i < 0 || i >= bl_family_count()) return NULL;
    return i < N_BUILTIN ? builtin[i] : extra[i - N_BUILTIN];
}

bl_status bl_family_register(const bl_family *f)
{
    if (!f || !f->name || !f->parse || !f->build || f->opts_size > BL_MODEL_OPTS_MAX ||
        (f->n_opts && !f->opts))
        return bl_fail(BL_ERR_ARG, "family '%s': needs a name, parse and build, options of at most "
                       "%d bytes and a table for its %d options", f && f->name ? f->name : "(null)",
                       BL_MODEL_OPTS_MAX, f ? f->n_opts : 0);
    for (int i = 0; i < bl_family_count(); i++) {
        if (bl_family_at(i) == f) return BL_OK;
        if (!strcmp(bl_family_at(i)->name, f->name))
            return bl_fail(BL_ERR_ARG, "family '%s' is registered already", f->name);
    }
    for (int k = 0; k < f->n_opts; k++) {
        const bl_family_opt *o = &f->opts[k];
        const size_t sz = o->type == BL_FOPT_DOUBLE ? sizeof(double) : sizeof(int);
        if (!o->name || o->offset + sz > f->opts_size || (o->type == BL_FOPT_CHOICE && !o->choices))
            return bl_fail(BL_ERR_ARG, "family '%s': option %d is malformed (a name, an offset "
                           "inside the options, choices for a choice)", f->name, k);
    }
    if (n_extra >= MAX_FAMILIES)
        return bl_fail(BL_ERR_ARG, "family '%s': at most %d families can be registered", f->name,
                       MAX_FAMILIES);
    extra[n_extra++] = f;
    return BL_OK;
}

const bl_family *bl_family_of(const char *model)
{
    bl_model scratch;
    for (int i = 0; model && i < bl_family_count(); i++) {
        const bl_family *f = bl_family_at(i);
        memset(&scratch, 0, sizeof scratch);
        if (f->defaults) f->defaults(scratch.opts.bytes);
        if (f->parse(model, scratch.opts.bytes)) return f;
    }
    return NULL;
}

const bl_family_opt *bl_family_opt_find(const bl_family *f, const char *name)
{
    for (int k = 0; f && name && k < f->n_opts; k++)
        if (!strcmp(f->opts[k].name, name)) return &f->opts[k];
    return NULL;
}

int bl_family_opt_choice(const bl_family_opt *o, const char *s)
{
    const char *c = o->type == BL_FOPT_CHOICE ? o->choices : NULL;
    for (int i = 0; c && s; i++) {
        const size_t l = strcspn(c, "|");
        if (strlen(s) == l && !strncmp(c, s, l)) return i;
        c = c[l] ? c + l + 1 : NULL;
    }
    return -1;
}

int bl_family_opt_valid(const bl_family_opt *o, double v)
{
    if (o->type != BL_FOPT_CHOICE)
        return v >= o->lo && v <= o->hi && (o->type == BL_FOPT_DOUBLE || v == floor(v));
    int n = 1;
    for (const char *c = o->choices; c && (c = strchr(c, '|')); c++) n++;
    return v >= 0 && v < n && v == floor(v);
}

void bl_family_list(char *buf, size_t len, const char *opt, unsigned plan_bits)
{
    size_t o = 0;
    if (len) buf[0] = 0;
    for (int i = 0; i < bl_family_count() && o < len; i++) {
        const bl_family *f = bl_family_at(i);
        if ((opt && !bl_family_opt_find(f, opt)) || (plan_bits && !(f->plan_uses & plan_bits)))
            continue;
        o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", f->usage);
    }
}

bl_status bl_model_init(bl_model *m, const char *name)
{
    memset(m, 0, sizeof *m);
    m->width = 16;
    const bl_family *f = bl_family_of(name);
    if (!f || strlen(name) >= sizeof m->name) {
        char list[512];
        bl_family_list(list, sizeof list, NULL, 0);
        return bl_fail(BL_ERR_ARG, "unknown model '%s': use %s", name ? name : "(null)", list);
    }
    m->family = f;
    snprintf(m->name, sizeof m->name, "%s", name);
    if (f->defaults) f->defaults(m->opts.bytes);
    f->parse(name, m->opts.bytes);
    return BL_OK;
}

bl_status bl_model_resolve(bl_model *m)
{
    if (!m->family) return bl_fail(BL_ERR_ARG, "model: no family (bl_model_init first)");
    const bl_family *f = m->family;
    for (int k = 0; k < f->n_opts; k++) {
        const bl_family_opt *o = &f->opts[k];
        const double v = bl_model_get(m, o);
        if (!bl_family_opt_valid(o, v)) {
            char s[64];
            bl_model_format(m, o, s, sizeof s);
            if (o->type == BL_FOPT_CHOICE)
                return bl_fail(BL_ERR_ARG, "cfg.%s %.0f: use one of %s", o->name, v, o->choices);
            return bl_fail(BL_ERR_ARG, "cfg.%s %s: use %g..%g", o->name, s, o->lo, o->hi);
        }
    }
    return f->resolve ? f->resolve(m) : BL_OK;
}

static void *field(const bl_model *m, const bl_family_opt *o)
{
    return (void *)(m->opts.bytes + o->offset);
}

double bl_model_get(const bl_model *m, const bl_family_opt *o)
{
    return o->type == BL_FOPT_DOUBLE ? *(double *)field(m, o) : *(int *)field(m, o);
}

void bl_model_set(bl_model *m, const bl_family_opt *o, double v)
{
    if (o->type == BL_FOPT_DOUBLE) *(double *)field(m, o) = v;
    else *(int *)field(m, o) = (int)v;
}

void bl_model_format(const bl_model *m, const bl_family_opt *o, char *buf, size_t len)
{
    const double v = bl_model_get(m, o);
    if (o->type == BL_FOPT_CHOICE) {
        int k = (int)v;
        const char *c = o->choices;
        while (k-- > 0 && c && strchr(c, '|')) c = strchr(c, '|') + 1;
        snprintf(buf, len, "%.*s", (int)strcspn(c, "|"), c);
    } else if (o->type == BL_FOPT_INT) {
        snprintf(buf, len, "%d", (int)v);
    } else {
        snprintf(buf, len, "%.17g", v);
    }
}

int bl_model_is_default(const bl_model *m, const bl_family_opt *o)
{
    bl_model d;
    memset(&d, 0, sizeof d);
    if (m->family->defaults) m->family->defaults(d.opts.bytes);
    return bl_model_get(m, o) == bl_model_get(&d, o);
}

bl_status bl_model_build(bl_net *net, const bl_model *m, int classes, int h, int w, int c,
                         int max_batch)
{
    memset(net, 0, sizeof *net);
    if (!m || !m->family) return bl_fail(BL_ERR_ARG, "model: no family (bl_model_init first)");
    bl_model r = *m;
    bl_status st = bl_model_resolve(&r);
    if (!st) st = bl_net_init(net, h, w, c, max_batch);
    if (!st) st = m->family->build(net, &r, classes);
    if (st) {
        bl_net_free(net);
        return st;
    }
    net->model = r;
    snprintf(net->arch, sizeof net->arch, "%s", r.name);
    net->width = r.width;
    /* classes 0: the family's graph decides (an imported one): its first output's size */
    net->n_classes = classes ? classes : (int)bl_tsize(&net->t[net->outputs[0]]);
    return BL_OK;
}

bl_status bl_model_option(bl_model *m, const char *name, double v)
{
    const bl_family_opt *o = m->family ? bl_family_opt_find(m->family, name) : NULL;
    if (!o) return bl_fail(BL_ERR_ARG, "cfg.%s: a %s has no such option", name, m->name);
    if (!bl_family_opt_valid(o, v)) return bl_fail(BL_ERR_ARG, "cfg.%s %g: out of its range", name, v);
    bl_model_set(m, o, v);
    return BL_OK;
}

bl_status bl_model_rename(bl_model *m, const char *name)
{
    const int width = m->width;
    bl_status st = bl_model_init(m, name);
    m->width = width;
    return st;
}

bl_status bl_model_declare(const bl_model *m, int classes, int h, int w, int c,
                           bl_param_check check, void *ctx)
{
    if (!m || !m->family) return bl_fail(BL_ERR_ARG, "model: no family (bl_model_init first)");
    bl_net net;
    memset(&net, 0, sizeof net);
    bl_model r = *m;
    bl_status st = bl_model_resolve(&r);
    if (!st) st = bl_net_init(&net, h, w, c, 1);
    net.declare_check = check, net.declare_ctx = ctx;
    if (!st) st = m->family->build(&net, &r, classes);
    bl_net_free(&net);
    return st;
}
