/* Image folders as torchvision's ImageFolder sees them (the order of classes and files, the
 * labels), and batches of them decoded in parallel. Why the order matters: a model's labels are
 * indices into the sorted class names, and a sample index means the same file in bnlab and in
 * PyTorch only if both list the files alike - sorted(os.walk(class_dir, followlinks=True)) sorts
 * directories by their whole path ("x-y" before "x/z"), then the files of each by name. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/images.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_DEPTH 64  /* directories below a class folder; deeper is a loop or a mistake */
#define MAX_EXTS 32   /* skipped extensions told apart; more are counted together */

typedef struct {
    char **v;
    int n, cap;
} strvec;

/* takes s (freed on failure) */
static bl_status sv_push(strvec *a, char *s)
{
    if (!s) return BL_ERR_NOMEM;
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        char **v = bl_realloc(a->v, sizeof *v * cap);
        if (!v) {
            bl_free(s);
            return BL_ERR_NOMEM;
        }
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = s;
    return BL_OK;
}

static void sv_free(strvec *a)
{
    for (int i = 0; i < a->n; i++) bl_free(a->v[i]);
    bl_free(a->v);
    memset(a, 0, sizeof *a);
}

/* by bytes: strcmp compares as unsigned char, and UTF-8 sorts as its code points, as Python's
 * str does */
static int by_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* (qsort with a NULL array, even of 0 elements, is undefined) */
static void sv_sort(strvec *a)
{
    if (a->n > 1) qsort(a->v, a->n, sizeof *a->v, by_bytes);
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = bl_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int is_image_name(const char *name)
{
    static const char *ext[] = {".jpg", ".jpeg", ".png"};
    size_t n = strlen(name);
    for (int k = 0; k < 3; k++) {
        size_t e = strlen(ext[k]);
        if (n >= e) {
            int same = 1;
            for (size_t i = 0; i < e; i++)
                if ((name[n - e + i] | 0x20) != ext[k][i]) same = 0; /* ASCII lower case */
            if (same) return 1;
        }
    }
    return 0;
}

typedef struct {
    strvec images;
    int *labels;
    int nlabels, caplabels;
    int skipped, top_level;
    struct {
        char ext[16];
        int n;
    } ext[MAX_EXTS];
    int next, other;
} scan;

static void count_skipped(scan *s, const char *name)
{
    s->skipped++;
    const char *dot = strrchr(name, '.');
    char e[16] = "";
    if (dot && strlen(dot) < sizeof e)
        for (size_t i = 0; dot[i]; i++)
            e[i] = (char)(dot[i] >= 'A' && dot[i] <= 'Z' ? dot[i] | 0x20 : dot[i]);
    else if (dot)
        snprintf(e, sizeof e, "(long)");
    for (int k = 0; k < s->next; k++)
        if (!strcmp(s->ext[k].ext, e)) {
            s->ext[k].n++;
            return;
        }
    if (s->next == MAX_EXTS) {
        s->other++;
        return;
    }
    snprintf(s->ext[s->next].ext, sizeof s->ext[s->next].ext, "%s", e);
    s->ext[s->next++].n = 1;
}

static bl_status push_image(scan *s, char *path, int label)
{
    if (label >= 0) {
        if (s->nlabels == s->caplabels) {
            int cap = s->caplabels ? 2 * s->caplabels : 16;
            int *l = bl_realloc(s->labels, sizeof *l * cap);
            if (!l) {
                bl_free(path);
                return BL_ERR_NOMEM;
            }
            s->labels = l, s->caplabels = cap;
        }
        s->labels[s->nlabels++] = label;
    }
    return sv_push(&s->images, path);
}

/* One directory's entries: sub-directories (full paths) and other files (names), unsorted;
 * names starting with '.' left out. */
static bl_status list_dir(const char *dir, strvec *dirs, strvec *files)
{
    DIR *d = opendir(dir);
    if (!d) return bl_fail(BL_ERR_IO, "%s: cannot read (%s)", dir, strerror(errno));
    bl_status st = BL_OK;
    for (struct dirent *e; !st && (errno = 0, e = readdir(d));) {
        if (e->d_name[0] == '.') continue; /* ".", "..", hidden */
        char *p = join(dir, e->d_name);
        struct stat s;
        if (!p) st = BL_ERR_NOMEM;
        /* stat follows symbolic links (os.walk with followlinks=True); a broken link is a
         * file, which fails when it is read, as in torchvision */
        else if (!stat(p, &s) && S_ISDIR(s.st_mode)) st = sv_push(dirs, p);
        else {
            bl_free(p);
            st = sv_push(files, bl_strdup(e->d_name));
        }
    }
    if (!st && errno) st = bl_fail(BL_ERR_IO, "%s: cannot read (%s)", dir, strerror(errno));
    closedir(d);
    return st;
}

typedef struct {
    char *path;
    strvec files;
} dirfiles;

typedef struct {
    dirfiles *v;
    int n, cap;
} dirlist;

static void dl_free(dirlist *l)
{
    for (int i = 0; i < l->n; i++) bl_free(l->v[i].path), sv_free(&l->v[i].files);
    bl_free(l->v);
    memset(l, 0, sizeof *l);
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const dirfiles *)a)->path, ((const dirfiles *)b)->path);
}

/* Every directory under dir (dir included) with its files; anc: the (device, inode) of the
 * directories above, so a symbolic link back up is an error rather than endless. */
static bl_status walk(const char *dir, int depth, dev_t *anc_dev, ino_t *anc_ino, dirlist *out)
{
    struct stat s;
    if (stat(dir, &s)) return bl_fail(BL_ERR_IO, "%s: cannot read (%s)", dir, strerror(errno));
    for (int i = 0; i < depth; i++)
        if (anc_dev[i] == s.st_dev && anc_ino[i] == s.st_ino)
            return bl_fail(BL_ERR_ARG, "%s: a symbolic link to a folder above it (a loop)", dir);
    if (depth == MAX_DEPTH)
        return bl_fail(BL_ERR_ARG, "%s: folders nested more than %d deep", dir, MAX_DEPTH);
    anc_dev[depth] = s.st_dev, anc_ino[depth] = s.st_ino;
    if (out->n == out->cap) {
        int cap = out->cap ? 2 * out->cap : 8;
        dirfiles *v = bl_realloc(out->v, sizeof *v * cap);
        if (!v) return BL_ERR_NOMEM;
        out->v = v, out->cap = cap;
    }
    dirfiles *me = &out->v[out->n];
    memset(me, 0, sizeof *me);
    if (!(me->path = bl_strdup(dir))) return BL_ERR_NOMEM;
    out->n++;
    strvec subs = {0};
    bl_status st = list_dir(dir, &subs, &out->v[out->n - 1].files);
    for (int i = 0; !st && i < subs.n; i++) st = walk(subs.v[i], depth + 1, anc_dev, anc_ino, out);
    sv_free(&subs);
    return st;
}

/* The images of one class folder in os.walk's sorted order; returns how many through *found */
static bl_status scan_class(scan *s, const char *dir, int label, int *found)
{
    dev_t dev[MAX_DEPTH + 1];
    ino_t ino[MAX_DEPTH + 1];
    dirlist l = {0};
    bl_status st = walk(dir, 0, dev, ino, &l);
    if (!st && l.n > 1) qsort(l.v, l.n, sizeof *l.v, by_path);
    const int before = s->images.n;
    for (int i = 0; !st && i < l.n; i++) {
        strvec *f = &l.v[i].files;
        sv_sort(f);
        for (int k = 0; !st && k < f->n; k++) {
            if (is_image_name(f->v[k])) st = push_image(s, join(l.v[i].path, f->v[k]), label);
            else count_skipped(s, f->v[k]);
        }
    }
    dl_free(&l);
    *found = s->images.n - before;
    return st;
}

typedef struct {
    char ext[16];
    int n;
} extn;

static int by_count(const void *a, const void *b)
{
    const extn *x = a, *y = b;
    if (x->n != y->n) return x->n > y->n ? -1 : 1;
    if (!x->ext[0] || !y->ext[0]) return !x->ext[0] - !y->ext[0]; /* "without extension" last */
    return strcmp(x->ext, y->ext);
}

/* "3 .txt, 1 .webp, 2 at the top level" */
static void describe_skipped(const scan *s, char *buf, size_t len)
{
    extn e[MAX_EXTS];
    for (int k = 0; k < s->next; k++) memcpy(e[k].ext, s->ext[k].ext, 16), e[k].n = s->ext[k].n;
    if (s->next > 1) qsort(e, s->next, sizeof *e, by_count);
    size_t o = 0;
    buf[0] = 0;
    for (int k = 0; k < s->next && o < len; k++)
        o += snprintf(buf + o, len - o, "%s%d %s", k ? ", " : "", e[k].n,
                      e[k].ext[0] ? e[k].ext : "without extension");
    if (s->other && o < len)
        o += snprintf(buf + o, len - o, "%s%d of other extensions", o ? ", " : "", s->other);
    if (s->top_level && o < len)
        snprintf(buf + o, len - o, "%s%d at the top level", o ? ", " : "", s->top_level);
}

void bl_imgfolder_free(bl_imgfolder *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) bl_free(f->paths[i]);
    for (int k = 0; k < f->classes; k++) bl_free(f->class_names[k]);
    bl_free(f->paths), bl_free(f->labels), bl_free(f->class_names), bl_free(f->root);
    memset(f, 0, sizeof *f);
}

bl_status bl_imgfolder_scan(const char *dir, bl_imgfolder *out)
{
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (!dir || !*dir) return bl_fail(BL_ERR_ARG, "image folder: no path given");
    if (stat(dir, &sb))
        return bl_fail(BL_ERR_IO, "image folder %s: %s", dir,
                       errno == ENOENT ? "no such folder" : strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return bl_fail(BL_ERR_ARG, "image folder %s: not a folder", dir);
    /* "dir/" and "dir" give the same paths, as os.path.join makes them */
    char *root = bl_strdup(dir);
    if (!root) return bl_fail_ctx(BL_ERR_NOMEM, "image folder %s", dir);
    for (size_t l = strlen(root); l > 1 && root[l - 1] == '/'; l--) root[l - 1] = 0;
    dir = root;
    scan s;
    memset(&s, 0, sizeof s);
    strvec classes = {0}, top = {0};
    char empty[512] = "";
    int n_empty = 0;
    bl_status st = list_dir(dir, &classes, &top);
    if (!st) {
        sv_sort(&classes);
        sv_sort(&top);
    }
    if (!st && classes.n == 0) {
        /* a flat folder: its images, no labels */
        for (int k = 0; !st && k < top.n; k++) {
            if (is_image_name(top.v[k])) st = push_image(&s, join(dir, top.v[k]), -1);
            else count_skipped(&s, top.v[k]);
        }
    } else if (!st) {
        /* ImageFolder reads class folders only; files beside them are skipped */
        s.top_level = top.n;
        s.skipped += top.n;
        for (int k = 0; !st && k < classes.n; k++) {
            int found;
            st = scan_class(&s, classes.v[k], k, &found);
            if (!st && !found) {
                const char *name = strrchr(classes.v[k], '/') + 1;
                size_t o = strlen(empty);
                if (o + strlen(name) + 8 < sizeof empty)
                    snprintf(empty + o, sizeof empty - o, "%s'%s'", n_empty ? ", " : "", name);
                else if (!strstr(empty, "..."))
                    snprintf(empty + o, sizeof empty - o, ", ...");
                n_empty++;
            }
        }
    }
    describe_skipped(&s, out->skipped_what, sizeof out->skipped_what);
    if (st == BL_ERR_NOMEM) bl_fail_ctx(st, "image folder %s", dir);
    else if (!st && n_empty)
        st = bl_fail(BL_ERR_FORMAT, "image folder %s: %d class folder%s without images (.jpg, "
                     ".jpeg, .png): %s; torchvision's ImageFolder refuses %s too: add images or "
                     "remove %s", dir, n_empty, n_empty > 1 ? "s" : "", empty,
                     n_empty > 1 ? "them" : "it", n_empty > 1 ? "them" : "it");
    else if (!st && s.images.n == 0)
        st = s.skipped ? bl_fail(BL_ERR_FORMAT, "image folder %s: no images (.jpg, .jpeg, .png); "
                                 "%d other file%s skipped (%s)", dir, s.skipped,
                                 s.skipped > 1 ? "s" : "", out->skipped_what)
                       : bl_fail(BL_ERR_FORMAT, "image folder %s: empty (no images: .jpg, .jpeg, "
                                 ".png)", dir);
    if (!st) {
        out->root = root;
        root = NULL;
        out->n = s.images.n;
        out->paths = s.images.v;
        out->labels = classes.n ? s.labels : NULL;
        out->skipped = s.skipped;
        s.images.v = NULL, s.images.n = 0;
        if (classes.n) {
            s.labels = NULL;
            out->classes = classes.n;
            out->class_names = classes.v;
            /* the names alone: "root/a_class" -> "a_class" */
            for (int k = 0; k < classes.n; k++) {
                char *name = strrchr(classes.v[k], '/') + 1;
                memmove(classes.v[k], name, strlen(name) + 1);
            }
            classes.v = NULL, classes.n = 0;
        }
    } else {
        out->skipped_what[0] = 0;
    }
    sv_free(&s.images);
    bl_free(s.labels);
    sv_free(&classes);
    sv_free(&top);
    bl_free(root);
    return st;
}

bl_status bl_imgfolder_out_size(const bl_imgfolder *f, const bl_img_recipe *r, int *h, int *w,
                                int *c)
{
    bl_status st = bl_img_recipe_check(r);
    if (st) return st;
    *c = bl_img_recipe_channels(r);
    if (r->crop) {
        *h = *w = r->crop;
        return BL_OK;
    }
    if (!f || f->n < 1) return bl_fail(BL_ERR_ARG, "bl_imgfolder_out_size: an empty folder");
    bl_img_format fmt;
    int ih, iw;
    if ((st = bl_img_probe(f->paths[0], &fmt, &ih, &iw))) return st;
    bl_img_recipe_size(r, ih, iw, h, w);
    if ((long long)*h * *w > BL_IMG_MAX_PIXELS || *h > BL_IMG_MAX_SIDE || *w > BL_IMG_MAX_SIDE)
        return bl_fail(BL_ERR_ARG, "%s: Resize(%d) makes this %d x %d image %d x %d (width x "
                       "height): above bnlab's limit; add a CenterCrop (recipe.crop)",
                       f->paths[0], r->resize, iw, ih, *w, *h);
    return BL_OK;
}

/* One image of a batch into dst (h, w, c) */
static bl_status fetch_one(const char *path, const bl_img_recipe *r, uint8_t *dst, int h, int w)
{
    bl_image im;
    bl_status st = bl_img_decode(path, r->gray, &im);
    if (st) return st;
    /* decoding errors name the file; these do not */
    st = bl_img_apply_into(&im, r, dst, h, w);
    if (st) bl_fail_ctx(st, "%s", path);
    if (st == BL_ERR_ARG)
        bl_error_append("; a batch has one size (the first image's, without a crop): add a "
                        "CenterCrop (recipe.crop)");
    bl_image_free(&im);
    return st;
}

bl_status bl_imgfolder_fetch(const bl_imgfolder *f, const bl_img_recipe *r, const int *idx, int n,
                             uint8_t *out, int h, int w)
{
    bl_status st = bl_img_recipe_check(r);
    if (st) return st;
    if (!f || n < 0 || (n && (!idx || !out)) || h <= 0 || w <= 0)
        return bl_fail(BL_ERR_ARG, "bl_imgfolder_fetch: bad arguments (n %d, size %d x %d)", n,
                       w, h);
    if (r->crop && (h != r->crop || w != r->crop))
        return bl_fail(BL_ERR_ARG, "bl_imgfolder_fetch: %d x %d, but the recipe crops to %d x %d",
                       w, h, r->crop, r->crop);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= f->n)
            return bl_fail(BL_ERR_ARG, "bl_imgfolder_fetch: index %d (batch position %d) is "
                           "outside the folder's %d images", idx[i], i, f->n);
    const size_t per = (size_t)h * w * bl_img_recipe_channels(r);
    char *why = bl_malloc(1024);
    if (!why) return st = BL_ERR_NOMEM;
    why[0] = 0;
    /* the first failure in batch order, whichever thread meets it first: images after a known
     * failure are not decoded, those before it are, so the reported one is always the first */
    int first = n;
    bl_status first_st = BL_OK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
        int known;
#pragma omp atomic read
        known = first;
        if (i > known) continue;
        bl_status s = fetch_one(f->paths[idx[i]], r, out + per * i, h, w);
        if (s) {
#pragma omp critical(bl_imgfolder_fetch)
            {
                if (i < first) {
                    first_st = s;
                    snprintf(why, 1024, "%s", bl_error());
#pragma omp atomic write
                    first = i;
                }
            }
        }
    }
    if (first < n) st = bl_fail(first_st, "%s", why);
    bl_free(why);
    return st;
}
