/* Table-driven options: every command lists its options once, and usage, parsing, range checks and
 * the printed configuration all come from that table. Unknown options are errors. */
#define _POSIX_C_SOURCE 200809L
#include "cli/cli.h"
#include "bnlab/images.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

static void value(const cli_opt *o, char *buf, size_t len)
{
    switch (o->type) {
    case OPT_INT: snprintf(buf, len, "%d", *(int *)o->ptr); break;
    case OPT_LONG: snprintf(buf, len, "%ld", *(long *)o->ptr); break;
    case OPT_U64: snprintf(buf, len, "%llu", (unsigned long long)*(uint64_t *)o->ptr); break;
    case OPT_DOUBLE: snprintf(buf, len, "%g", *(double *)o->ptr); break;
    case OPT_STR: snprintf(buf, len, "%s", *(char *)o->ptr ? (char *)o->ptr : "(none)"); break;
    case OPT_ONOFF: snprintf(buf, len, "%s", *(int *)o->ptr ? "on" : "off"); break;
    case OPT_CHOICE: {
        int k = *(int *)o->ptr;
        const char *c = o->choices;
        while (k-- > 0 && strchr(c, '|')) c = strchr(c, '|') + 1;
        size_t l = strcspn(c, "|");
        snprintf(buf, len, "%.*s", (int)(l < len ? l : len - 1), c);
        break;
    }
    }
}

void cli_usage(FILE *f, const char *cmd, const char *synopsis, const cli_opt *opts, int n)
{
    fprintf(f, "usage: bnlab %s %s\n\noptions (default in brackets):\n", cmd, synopsis);
    for (int i = 0; i < n; i++) {
        char v[256], arg[160];
        value(&opts[i], v, sizeof v);
        const char *a = opts[i].type == OPT_ONOFF    ? "on|off"
                        : opts[i].type == OPT_CHOICE ? opts[i].choices
                        : opts[i].type == OPT_STR    ? "S"
                        : opts[i].type == OPT_DOUBLE ? "X"
                                                     : "N";
        char nm[64];
        snprintf(nm, sizeof nm, "%s", opts[i].name);
        for (char *q = strchr(nm, '|'); q; q = strchr(q, '|')) *q = ','; /* "--out,-o" */
        snprintf(arg, sizeof arg, "%s %s", nm, a);
        fprintf(f, "  %-30s %s [%s]\n", arg, opts[i].help, v);
    }
    fprintf(f, "  %-30s %s\n", "--help", "this text");
}

void cli_print_config(FILE *f, const char *cmd, const cli_opt *opts, int n)
{
    fprintf(f, "bnlab %s:", cmd);
    for (int i = 0; i < n; i++) {
        char v[256];
        value(&opts[i], v, sizeof v);
        fprintf(f, " %.*s=%s", (int)strcspn(opts[i].name + 2, "|"), opts[i].name + 2, v);
    }
    fprintf(f, "\n");
}

static int set(const char *cmd, const cli_opt *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    if (!v) {
        fprintf(stderr, "bnlab %s: %s needs a value (see bnlab %s --help)\n", cmd, o->name, cmd);
        return 2;
    }
    switch (o->type) {
    case OPT_INT:
    case OPT_LONG:
    case OPT_U64:
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        int integral = o->type != OPT_DOUBLE;
        /* written so NaN fails every test (it compares false), and checked before any
         * conversion to an integer (out of range that is undefined) */
        if (errno || end == v || *end || !(x >= o->lo && x <= o->hi) || (integral && x != floor(x))) {
            fprintf(stderr, "bnlab %s: %s wants %s in [%g, %g], got '%s'\n", cmd, o->name,
                    integral ? "an integer" : "a number", o->lo, o->hi, v);
            return 2;
        }
        if (o->type == OPT_INT) *(int *)o->ptr = (int)x;
        else if (o->type == OPT_LONG) *(long *)o->ptr = (long)x;
        else if (o->type == OPT_U64) *(uint64_t *)o->ptr = (uint64_t)x;
        else *(double *)o->ptr = x;
        return 0;
    }
    case OPT_STR:
        if (strlen(v) >= o->len) {
            fprintf(stderr, "bnlab %s: %s value is too long\n", cmd, o->name);
            return 2;
        }
        strcpy((char *)o->ptr, v);
        return 0;
    case OPT_ONOFF:
        if (strcmp(v, "on") && strcmp(v, "off")) {
            fprintf(stderr, "bnlab %s: %s wants on or off, got '%s'\n", cmd, o->name, v);
            return 2;
        }
        *(int *)o->ptr = !strcmp(v, "on");
        return 0;
    case OPT_CHOICE: {
        const char *c = o->choices;
        for (int k = 0; c; k++) {
            size_t l = strcspn(c, "|");
            if (strlen(v) == l && !strncmp(c, v, l)) {
                *(int *)o->ptr = k;
                return 0;
            }
            c = c[l] ? c + l + 1 : NULL;
        }
        fprintf(stderr, "bnlab %s: %s wants one of %s, got '%s'\n", cmd, o->name, o->choices, v);
        return 2;
    }
    }
    return 2;
}

/* names: "--out" or "--out|-o" */
static int matches(const char *names, const char *a)
{
    for (const char *c = names; c; c = strchr(c, '|') ? strchr(c, '|') + 1 : NULL) {
        size_t l = strcspn(c, "|");
        if (strlen(a) == l && !strncmp(c, a, l)) return 1;
    }
    return 0;
}

/* the options the last cli_parse saw (cli_given) */
static const char *given[64];
static int n_given;

int cli_given(const char *name)
{
    for (int k = 0; k < n_given; k++)
        if (!strcmp(given[k], name)) return 1;
    return 0;
}

int cli_parse(const char *cmd, const char *synopsis, int argc, char **argv, const cli_opt *opts,
              int n, const char **pos, int max_pos, int *n_pos)
{
    *n_pos = 0;
    n_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_usage(stdout, cmd, synopsis, opts, n);
            return 1;
        }
        if (a[0] == '-' && a[1]) {
            const cli_opt *o = NULL;
            for (int k = 0; k < n; k++)
                if (matches(opts[k].name, a)) o = &opts[k];
            if (!o) {
                fprintf(stderr, "bnlab %s: unknown option '%s' (see bnlab %s --help)\n", cmd, a, cmd);
                return 2;
            }
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (n_given < 64) given[n_given++] = o->name;
            if (o->type == OPT_ONOFF && (!v || (strcmp(v, "on") && strcmp(v, "off")))) {
                *(int *)o->ptr = 1; /* a bare on/off option means on */
                continue;
            }
            if (set(cmd, o, v)) return 2;
            i++;
            continue;
        }
        if (*n_pos >= max_pos) {
            fprintf(stderr, "bnlab %s: unexpected argument '%s' (see bnlab %s --help)\n", cmd, a, cmd);
            return 2;
        }
        pos[(*n_pos)++] = a;
    }
    return 0;
}

int cli_load_fmnist(const char *cmd, const char *dir, const char *split, bl_dataset *d)
{
#ifdef BL_HAVE_ZLIB
    if (!bl_fmnist_load(dir, split, d)) return 0;
    fprintf(stderr, "bnlab %s: %s (Fashion-MNIST comes from Debian's dataset-fashion-mnist "
                    "package; or point --data-dir at the IDX files)\n", cmd, bl_error());
#else
    (void)dir, (void)split;
    fprintf(stderr, "bnlab %s: built without zlib: install zlib1g-dev and rebuild\n", cmd);
#endif
    memset(d, 0, sizeof *d);
    return 1;
}

/* An image folder's decoding on a terminal: images decoded so far, as passes over the folder,
 * at most four times a second; cli_decode_done ends the line. */
static int decode_line;
static void decode_progress(void *ctx, long fetched, int n)
{
    static double last;
    const double now = cli_now();
    if (now - last < 0.25 && fetched % n) return;
    last = now;
    fprintf(stderr, "\r%s: %ld images decoded (%.2f passes over the folder)   ",
            (const char *)ctx, fetched, (double)fetched / n);
    decode_line = 1;
}

void cli_decode_progress(const char *cmd, bl_dataset *d)
{
    /* precise shows its own progress, in samples */
    if (!d->source || !isatty(2) || !strcmp(cmd, "precise")) return;
    d->source->progress = decode_progress;
    d->source->progress_ctx = (void *)cmd;
}

void cli_decode_done(void)
{
    if (decode_line) fprintf(stderr, "\n");
    decode_line = 0;
}

int cli_load_data(const char *cmd, const char *dir, const char *images, const char *split,
                  const bl_net *net, bl_dataset *d)
{
    if (!images || !images[0]) return cli_load_fmnist(cmd, dir, split, d);
    /* a built-in model's small square input: Resize and CenterCrop to it (both are no-ops on
     * images of that size), grey or RGB by its channels */
    const bl_tensor *in = bl_net_tensor_at(net, 0);
    bl_img_recipe r = {in->h, in->h, in->c == 1};
    int classes = 0;
    char skipped[256] = "", rs[128];
    if (in->h != in->w || bl_dataset_from_folder(images, &r, d, &classes, skipped, sizeof skipped)) {
        fprintf(stderr, "bnlab %s: --images: %s\n", cmd,
                in->h != in->w ? "the model's input is not square" : bl_error());
        memset(d, 0, sizeof *d);
        return 1;
    }
    bl_img_recipe_str(&r, rs, sizeof rs);
    cli_decode_progress(cmd, d);
    fprintf(stderr, "%s: %d images %s%s%s; %s\n", images, d->n,
            classes ? "in class folders" : "without class folders (no labels)",
            skipped[0] ? ", skipped " : "", skipped, rs);
    if (classes == 1)
        fprintf(stderr, "%s: one class folder: every image has label 0 (unlabelled images go "
                "in a flat folder, without subfolders)\n", images);
    return 0;
}

/* "cfg.norm_batch" -> "--norm-batch" when the command has that option; other text is kept. */
void cli_error(const char *cmd, const cli_opt *opts, int n)
{
    const char *e = bl_error();
    char out[2048];
    size_t o = 0;
    const char *start = e;
    while (*e && o + 1 < sizeof out) {
        /* at a word's start only: a path like /x/cfg.lr stays as it is */
        if (!strncmp(e, "cfg.", 4) && (e == start || strchr(" ([,'", e[-1]))) {
            size_t l = strspn(e + 4, "abcdefghijklmnopqrstuvwxyz_0123456789");
            char flag[80];
            int k = snprintf(flag, sizeof flag, "--%.*s", (int)l, e + 4);
            for (char *q = flag + 2; *q; q++) *q = *q == '_' ? '-' : *q;
            int known = 0;
            for (int i = 0; i < n && k > 0 && (size_t)k < sizeof flag; i++) known |= matches(opts[i].name, flag);
            if (known && l > 0) {
                o += (size_t)snprintf(out + o, sizeof out - o, "%s", flag);
                e += 4 + l;
                continue;
            }
        }
        out[o++] = *e++;
    }
    out[o < sizeof out ? o : sizeof out - 1] = 0;
    fprintf(stderr, "bnlab %s: %s\n", cmd, out);
}

/* One family option as a command-line option: --name with '-' for '_'. */
static cli_opt *add_fopt(cli_famopts *f, const bl_family_opt *o, void *ptr, int open,
                         const char *owner)
{
    const int k = f->n;
    if (k >= CLI_MAX_FAMOPTS) return NULL;
    snprintf(f->flag[k], sizeof f->flag[k], "--%s", o->name);
    for (char *q = f->flag[k] + 2; *q; q++) *q = *q == '_' ? '-' : *q;
    for (int i = 0; i < k; i++)
        if (!strcmp(f->flag[i], f->flag[k])) return NULL; /* declared by an earlier family */
    cli_opt *c = &f->opt[k];
    f->fopt[k] = o;
    c->name = f->flag[k];
    c->type = o->type == BL_FOPT_INT ? OPT_INT : o->type == BL_FOPT_DOUBLE ? OPT_DOUBLE : OPT_CHOICE;
    c->ptr = ptr;
    c->lo = o->lo, c->hi = o->hi;
    c->choices = o->choices;
    if (open) {
        snprintf(f->choices[k], sizeof f->choices[k], "checkpoint|%s", o->choices);
        c->choices = f->choices[k];
        c->ptr = &f->value[k];
        f->value[k] = 0;
    }
    snprintf(f->help[k], sizeof f->help[k], "%s%s%s%s", owner ? owner : "", owner ? ": " : "",
             o->help, open ? " (checkpoint: the one it was trained with)" : "");
    c->help = f->help[k];
    f->n++;
    return c;
}

void cli_famopts_model(cli_famopts *f, bl_model *m)
{
    memset(f, 0, sizeof *f);
    const bl_family *own = m->family;
    for (int k = 0; own && k < own->n_opts; k++)
        add_fopt(f, &own->opts[k], m->opts.bytes + own->opts[k].offset, 0, NULL);
    f->n_own = f->n;
    for (int i = 0, s = 0; i < bl_family_count() && s < 8; i++) {
        const bl_family *o = bl_family_at(i);
        if (o == own) continue;
        bl_model *sc = &f->scratch[s++];
        memset(sc, 0, sizeof *sc);
        sc->family = o;
        if (o->defaults) o->defaults(sc->opts.bytes);
        for (int k = 0; k < o->n_opts; k++)
            add_fopt(f, &o->opts[k], sc->opts.bytes + o->opts[k].offset, 0, o->usage);
    }
}

void cli_famopts_open(cli_famopts *f)
{
    memset(f, 0, sizeof *f);
    for (int i = 0; i < bl_family_count(); i++) {
        const bl_family *o = bl_family_at(i);
        for (int k = 0; k < o->n_opts; k++)
            if (o->opts[k].open && o->opts[k].type == BL_FOPT_CHOICE)
                add_fopt(f, &o->opts[k], NULL, 1, o->usage);
    }
}

int cli_famopts_refuse(const char *cmd, const cli_famopts *f, const bl_model *m)
{
    for (int k = f->n_own; k < f->n; k++) {
        if (!cli_given(f->opt[k].name)) continue;
        char who[512];
        bl_family_list(who, sizeof who, f->fopt[k]->name, 0);
        fprintf(stderr, "bnlab %s: %s applies to %s, not %s\n", cmd, f->opt[k].name, who, m->name);
        return 2;
    }
    return 0;
}

int cli_table(cli_opt *out, int max, const cli_opt *base, int n_base, const cli_famopts *f)
{
    int n = 0;
    for (int k = 0; k < n_base && n < max; k++) out[n++] = base[k];
    for (int k = 0; f && k < f->n && n < max; k++) out[n++] = f->opt[k];
    return n;
}

#ifdef BL_HAVE_CJSON
void cli_foreign_init(cli_foreign *f)
{
    bl_model_spec_defaults(&f->spec);
    f->mean[0] = f->std[0] = 0;
    cli_famopts_open(&f->fam);
    f->reestimates = 0;
}

/* "0.5" or "0.5,0.4,0.3": one value per channel */
static int parse_list(const char *s, float *v, int *n)
{
    *n = 0;
    while (*s && *n < BL_RECIPE_MAX_CHANNELS) {
        char *end;
        errno = 0;
        double x = strtod(s, &end);
        if (errno || end == s || (*end && *end != ',')) return -1;
        v[(*n)++] = (float)x;
        s = *end ? end + 1 : end;
    }
    return *s ? -1 : 0;
}

int cli_foreign_recipe(const char *cmd, const cli_foreign *f, bl_recipe *r)
{
    const char *what[2] = {f->mean, f->std};
    float *dst[2] = {r->mean, r->std};
    for (int k = 0; k < 2; k++) {
        if (!what[k][0]) continue;
        float v[BL_RECIPE_MAX_CHANNELS];
        int n;
        if (parse_list(what[k], v, &n) || n != r->channels) {
            fprintf(stderr, "bnlab %s: %s '%s': give %d number%s (one per channel), e.g. 0.5\n",
                    cmd, k ? "--data-std" : "--data-mean", what[k], r->channels,
                    r->channels > 1 ? "s" : "");
            return 2;
        }
        for (int c = 0; c < n; c++) dst[k][c] = v[c];
    }
    if (bl_recipe_check(r)) {
        fprintf(stderr, "bnlab %s: %s\n", cmd, bl_error());
        return 2;
    }
    return 0;
}

int cli_open_checkpoint(const char *cmd, const char *path, int max_batch, const cli_foreign *f,
                        const cli_opt *opts, int n_opts, bl_net *net, bl_ckpt_info *info)
{
    if (bl_checkpoint_open(path, max_batch, &f->spec, net, info)) {
        cli_error(cmd, opts, n_opts);
        return 1;
    }
    if (cli_foreign_recipe(cmd, f, &info->recipe)) {
        bl_net_free(net);
        bl_ckpt_info_free(info);
        return 2;
    }
    /* the families' open options given: the net's family must have them (then it applies them) */
    bl_model m = *bl_net_model(net);
    int any = 0;
    for (int k = 0; k < f->fam.n; k++) {
        if (!f->fam.value[k]) continue;
        const bl_family_opt *o = bl_family_opt_find(m.family, f->fam.fopt[k]->name);
        if (!o) {
            char who[512];
            bl_family_list(who, sizeof who, f->fam.fopt[k]->name, 0);
            fprintf(stderr, "bnlab %s: %s applies to %s; %s is a %s\n", cmd, f->fam.opt[k].name,
                    who, path, bl_net_arch(net));
            bl_net_free(net);
            bl_ckpt_info_free(info);
            return 2;
        }
        bl_model_set(&m, o, f->fam.value[k] - 1);
        any = 1;
    }
    if (any && m.family->reopen && m.family->reopen(net, &m, f->reestimates)) {
        cli_error(cmd, opts, n_opts);
        bl_net_free(net);
        bl_ckpt_info_free(info);
        return 2;
    }
    return 0;
}
#endif

double cli_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
