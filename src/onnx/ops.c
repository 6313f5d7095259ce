/* The ONNX operators bnlab builds: each turns one node into layers (or folds it, when every input
 * is a constant: the shape chains Shape -> Gather -> Unsqueeze -> Concat -> Reshape that exporters
 * write). Attributes and semantics as the ONNX operator specification defines them for opsets
 * 7-17; axes are ONNX's (NCHW) whatever layout runs inside (graph.h). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx/graph.h"

/* ---- helpers ---------------------------------------------------------------------------------- */
static int64_t prod(const int64_t *d, int from, int to)
{
    int64_t p = 1;
    for (int k = from; k < to; k++) p *= d[k];
    return p;
}

static int is_batch_dim(int64_t v) { return v == OX_BATCH; }

/* A value's dims as "(N, 8, 16, 16)". */
static const char *dims_str(const ox_value *v, char *buf, size_t len)
{
    const int r = v->is_const ? v->k.rank : v->rank;
    const int64_t *d = v->is_const ? v->k.dims : v->dims;
    size_t o = (size_t)snprintf(buf, len, "(");
    for (int k = 0; k < r && o < len; k++) {
        if (is_batch_dim(d[k])) o += (size_t)snprintf(buf + o, len - o, "%sN", k ? ", " : "");
        else o += (size_t)snprintf(buf + o, len - o, "%s%lld", k ? ", " : "", (long long)d[k]);
    }
    if (o < len) snprintf(buf + o, len - o, ")");
    return buf;
}

static bl_status need_const(ox_build *b, ox_value *v, const char *what)
{
    if (!v->is_const)
        return ox_fail(b, BL_ERR_FORMAT, "%s '%s' must be a constant (an initializer, a Constant "
                       "node or a shape computed from constants)", what, v->name);
    return BL_OK;
}

/* Indices, shapes and pads must be integers, as ONNX types them: a float constant there is
 * refused (and no float is ever converted to an integer out of its range). */
static bl_status need_ints(ox_build *b, ox_value *v, const char *what)
{
    bl_status st = need_const(b, v, what);
    if (!st && !v->k.is_int)
        return ox_fail(b, BL_ERR_FORMAT, "%s '%s' holds floats: ONNX types it int64", what, v->name);
    return st;
}

/* a double as int64, saturating: ONNX leaves a Cast of a NaN or out-of-range float undefined,
 * and C's conversion would be undefined behaviour */
static int64_t sat_i64(double v)
{
    return v != v ? 0 : v >= 9.2e18 ? INT64_MAX : v <= -9.2e18 ? INT64_MIN : (int64_t)v;
}

/* an axis in [-rank, rank) to [0, rank) */
static bl_status norm_axis(ox_build *b, int64_t a, int rank, int *out)
{
    *out = 0;
    if (a < -rank || a >= rank)
        return ox_fail(b, BL_ERR_FORMAT, "axis %lld outside the %d dimensions", (long long)a, rank);
    *out = (int)(a < 0 ? a + rank : a);
    return BL_OK;
}

static bl_status new_const(ox_build *b, ox_const *c, int is_int, int rank, const int64_t *dims)
{
    memset(c, 0, sizeof *c);
    if (rank < 0 || rank > OX_MAX_RANK) return ox_fail(b, BL_ERR_FORMAT, "rank %d", rank);
    size_t count = 1;
    for (int k = 0; k < rank; k++) {
        if (dims[k] < 0 || dims[k] > (1LL << 31) || (dims[k] && count > ((size_t)1 << 31) / (size_t)dims[k]))
            return ox_fail(b, BL_ERR_FORMAT, "a constant of dimension %lld (at most 2^31 "
                           "values)", (long long)dims[k]);
        count *= (size_t)dims[k];
    }
    c->rank = rank, c->is_int = is_int;
    c->count = count;
    memcpy(c->dims, dims, sizeof(int64_t) * (size_t)rank);
    const size_t n = c->count ? c->count : 1;
    if (is_int ? !(c->i = bl_callocn(n, sizeof(int64_t))) : !(c->f = bl_callocn(n, sizeof(float))))
        return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    return BL_OK;
}

static double cget(const ox_const *c, size_t k) { return c->is_int ? (double)c->i[k] : c->f[k]; }

/* ---- constants and aliases --------------------------------------------------------------------- */
static bl_status op_identity(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    return st ? st : ox_def_alias(b, 0, x);
}

static bl_status op_dropout(ox_build *b)
{
    /* inference: the identity; a mask output nobody may read */
    return op_identity(b);
}

static bl_status op_constant(ox_build *b)
{
    const Onnx__NodeProto *n = b->nd;
    ox_const c;
    memset(&c, 0, sizeof c);
    const Onnx__AttributeProto *a;
    int64_t one = 1;
    bl_status st;
    if ((a = ox_attr(n, "value")) && a->t) {
        char what[200];
        snprintf(what, sizeof what, "%s's value", b->desc);
        if ((st = ox_tensor_read(b->m, a->t, what, &c))) return st;
    } else if ((a = ox_attr(n, "value_float")) && a->has_f) {
        if ((st = new_const(b, &c, 0, 0, &one))) return st;
        c.f[0] = a->f;
    } else if ((a = ox_attr(n, "value_int")) && a->has_i) {
        if ((st = new_const(b, &c, 1, 0, &one))) return st;
        c.i[0] = a->i;
    } else if ((a = ox_attr(n, "value_floats"))) {
        int64_t d = (int64_t)a->n_floats;
        if ((st = new_const(b, &c, 0, 1, &d))) return st;
        for (size_t k = 0; k < a->n_floats; k++) c.f[k] = a->floats[k];
    } else if ((a = ox_attr(n, "value_ints"))) {
        int64_t d = (int64_t)a->n_ints;
        if ((st = new_const(b, &c, 1, 1, &d))) return st;
        for (size_t k = 0; k < a->n_ints; k++) c.i[k] = a->ints[k];
    } else {
        return ox_fail(b, BL_ERR_FORMAT, "no value (value, value_float(s), value_int(s)); "
                       "sparse and string constants are not supported");
    }
    return ox_def_const(b, 0, &c);
}

static bl_status op_shape(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    const int r = x->is_const ? x->k.rank : x->rank;
    const int64_t *d = x->is_const ? x->k.dims : x->dims;
    int s = (int)ox_attr_int(b->nd, "start", 0), e = (int)ox_attr_int(b->nd, "end", r);
    if (s < 0) s += r;
    if (e < 0) e += r;
    s = s < 0 ? 0 : s > r ? r : s;
    e = e < s ? s : e > r ? r : e;
    ox_const c;
    int64_t len = e - s;
    if ((st = new_const(b, &c, 1, 1, &len))) return st;
    for (int k = s; k < e; k++) c.i[k - s] = d[k];
    return ox_def_const(b, 0, &c);
}

static bl_status op_cast(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    const int64_t to = ox_attr_int(b->nd, "to", 1);
    const int to_float = to == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ||
                         to == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ||
                         to == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16;
    if (!x->is_const) {
        if (!to_float)
            return ox_fail(b, BL_ERR_FORMAT, "a cast of the batch's tensor '%s' to type %lld: "
                           "bnlab computes in float", x->name, (long long)to);
        return ox_def_alias(b, 0, x);
    }
    ox_const c;
    if ((st = new_const(b, &c, !to_float, x->k.rank, x->k.dims))) return st;
    for (size_t k = 0; k < c.count; k++) {
        const double v = cget(&x->k, k);
        if (to_float) c.f[k] = (float)v;
        else if (to == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL) c.i[k] = v != 0;
        else c.i[k] = sat_i64(v);
    }
    return ox_def_const(b, 0, &c);
}

/* Gather on constants (a shape's element): data and indices constant, any axis. */
static bl_status op_gather(ox_build *b)
{
    ox_value *x, *ix;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &ix);
    if (!st) st = need_const(b, x, "Gather's data");
    if (!st) st = need_ints(b, ix, "Gather's indices");
    if (st) return st;
    int axis;
    if ((st = norm_axis(b, ox_attr_int(b->nd, "axis", 0), x->k.rank > 0 ? x->k.rank : 1, &axis)))
        return st;
    const int r = x->k.rank;
    const int64_t outer = prod(x->k.dims, 0, axis), dim = r ? x->k.dims[axis] : 1;
    const int64_t inner = r ? prod(x->k.dims, axis + 1, r) : 1;
    int64_t dims[OX_MAX_RANK];
    int rank = 0;
    if ((r ? r - 1 : 0) + ix->k.rank > OX_MAX_RANK)
        return ox_fail(b, BL_ERR_FORMAT, "more than %d dimensions", OX_MAX_RANK);
    for (int k = 0; k < axis; k++) dims[rank++] = x->k.dims[k];
    for (int k = 0; k < ix->k.rank; k++) dims[rank++] = ix->k.dims[k];
    for (int k = axis + 1; k < r; k++) dims[rank++] = x->k.dims[k];
    ox_const c;
    if ((st = new_const(b, &c, x->k.is_int, rank, dims))) return st;
    size_t o = 0;
    for (int64_t p = 0; p < outer; p++)
        for (size_t q = 0; q < ix->k.count; q++) {
            int64_t i = ix->k.i[q];
            if (i < 0) i += dim;
            if (i < 0 || i >= dim) {
                ox_const_free(&c);
                return ox_fail(b, BL_ERR_FORMAT, "index %lld outside %lld", (long long)i,
                               (long long)dim);
            }
            for (int64_t s = 0; s < inner; s++, o++) {
                const size_t from = (size_t)((p * dim + i) * inner + s);
                if (c.is_int) c.i[o] = x->k.i[from];
                else c.f[o] = x->k.f[from];
            }
        }
    return ox_def_const(b, 0, &c);
}

/* ints of input k (>= opset where it became an input) or of attribute `attr` */
static bl_status ints_of(ox_build *b, int k, const char *attr, int64_t *v, int max, int *n)
{
    ox_value *x = NULL;
    bl_status st = ox_input(b, k, 1, &x);
    if (st) return st;
    if (x) {
        if ((st = need_ints(b, x, attr))) return st;
        if (x->k.count > (size_t)max) return ox_fail(b, BL_ERR_FORMAT, "%s: too many values", attr);
        for (size_t q = 0; q < x->k.count; q++) v[q] = x->k.i[q];
        *n = (int)x->k.count;
        return BL_OK;
    }
    st = ox_attr_ints(b->nd, attr, v, max, n);
    return st ? ox_fail(b, st, "%s", bl_error()) : BL_OK;
}

/* Slice on constants. */
static bl_status op_slice(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = need_const(b, x, "Slice's data (of the batch's tensors bnlab slices none)");
    if (st) return st;
    const int r = x->k.rank;
    int64_t starts[OX_MAX_RANK], ends[OX_MAX_RANK], axes[OX_MAX_RANK], steps[OX_MAX_RANK];
    int ns, ne, na = 0, nst = 0;
    if ((st = ints_of(b, 1, "starts", starts, OX_MAX_RANK, &ns)) ||
        (st = ints_of(b, 2, "ends", ends, OX_MAX_RANK, &ne)) ||
        (st = ints_of(b, 3, "axes", axes, OX_MAX_RANK, &na)) ||
        (st = ints_of(b, 4, "steps", steps, OX_MAX_RANK, &nst)))
        return st;
    if (ns != ne || (na && na != ns) || (nst && nst != ns))
        return ox_fail(b, BL_ERR_FORMAT, "starts, ends, axes and steps differ in length");
    int64_t lo[OX_MAX_RANK], step[OX_MAX_RANK], dims[OX_MAX_RANK];
    for (int d = 0; d < r; d++) lo[d] = 0, step[d] = 1, dims[d] = x->k.dims[d];
    for (int q = 0; q < ns; q++) {
        int a;
        if ((st = norm_axis(b, na ? axes[q] : q, r, &a))) return st;
        const int64_t D = x->k.dims[a];
        int64_t s = nst ? steps[q] : 1;
        if (s == 0) return ox_fail(b, BL_ERR_FORMAT, "step 0");
        if (s > D + 1) s = D + 1; /* the same slice, without overflow */
        if (s < -(D + 1)) s = -(D + 1);
        if (starts[q] > (1LL << 40)) starts[q] = 1LL << 40;
        if (starts[q] < -(1LL << 40)) starts[q] = -(1LL << 40);
        if (ends[q] > (1LL << 40)) ends[q] = 1LL << 40;
        if (ends[q] < -(1LL << 40)) ends[q] = -(1LL << 40);
        int64_t st0 = starts[q] < 0 ? starts[q] + D : starts[q];
        int64_t en = ends[q] < 0 ? ends[q] + D : ends[q];
        if (s > 0) {
            st0 = st0 < 0 ? 0 : st0 > D ? D : st0;
            en = en < 0 ? 0 : en > D ? D : en;
            dims[a] = en > st0 ? (en - st0 + s - 1) / s : 0;
        } else {
            st0 = st0 < 0 ? -1 : st0 > D - 1 ? D - 1 : st0;
            en = en < -1 ? -1 : en > D - 1 ? D - 1 : en;
            dims[a] = st0 > en ? (st0 - en + (-s) - 1) / (-s) : 0;
        }
        lo[a] = st0, step[a] = s;
    }
    ox_const c;
    if ((st = new_const(b, &c, x->k.is_int, r, dims))) return st;
    for (size_t o = 0; o < c.count; o++) {
        size_t rem = o, from = 0, stride = 1;
        for (int d = r - 1; d >= 0; d--) {
            const size_t id = rem % (size_t)dims[d];
            rem /= (size_t)dims[d];
            from += (size_t)(lo[d] + (int64_t)id * step[d]) * stride;
            stride *= (size_t)x->k.dims[d];
        }
        if (c.is_int) c.i[o] = x->k.i[from];
        else c.f[o] = x->k.f[from];
    }
    return ox_def_const(b, 0, &c);
}

/* ---- shapes: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat --------------------------- */
/* A runtime value relabelled with new logical dims (same elements, ONNX order). */
static bl_status relabel(ox_build *b, ox_value *x, int rank, const int64_t *dims)
{
    int t;
    bl_status st = ox_flat(b, x, &t);
    if (st) return st;
    if (prod(dims, 1, rank) != prod(x->dims, 1, x->rank)) {
        char s[96];
        return ox_fail(b, BL_ERR_FORMAT, "%lld values per sample from '%s' %s", (long long)prod(dims, 1, rank),
                       x->name, dims_str(x, s, sizeof s));
    }
    /* flat storage; a rank-4 value of 1x1 maps is spatial as well */
    return ox_def_runtime(b, 0, t, rank, dims, rank == 4 && dims[2] * dims[3] == 1);
}

/* the same on a constant: new dims, the same values */
static bl_status reshape_const(ox_build *b, ox_value *x, int rank, const int64_t *dims)
{
    ox_const c;
    bl_status st = new_const(b, &c, x->k.is_int, rank, dims);
    if (st) return st;
    if (c.count != x->k.count) {
        ox_const_free(&c);
        return ox_fail(b, BL_ERR_FORMAT, "%zu values reshaped to %zu", x->k.count, c.count);
    }
    memcpy(c.is_int ? (void *)c.i : (void *)c.f, c.is_int ? (void *)x->k.i : (void *)x->k.f,
           c.count * (c.is_int ? sizeof(int64_t) : sizeof(float)));
    return ox_def_const(b, 0, &c);
}

static bl_status op_reshape(ox_build *b)
{
    ox_value *x, *sh;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &sh);
    if (!st) st = need_ints(b, sh, "Reshape's shape");
    if (st) return st;
    const int r = (int)sh->k.count;
    if (r < 1 || r > OX_MAX_RANK) return ox_fail(b, BL_ERR_FORMAT, "a shape of %d dimensions", r);
    const int allowzero = (int)ox_attr_int(b->nd, "allowzero", 0);
    const int xr = x->is_const ? x->k.rank : x->rank;
    const int64_t *xd = x->is_const ? x->k.dims : x->dims;
    int64_t d[OX_MAX_RANK];
    int infer = -1;
    for (int k = 0; k < r; k++) {
        d[k] = sh->k.i[k];
        if (d[k] == 0 && !allowzero) {
            if (k >= xr) return ox_fail(b, BL_ERR_FORMAT, "dimension %d copies a missing one", k);
            d[k] = xd[k];
        }
        if (d[k] == -1) {
            if (infer >= 0) return ox_fail(b, BL_ERR_FORMAT, "two -1 dimensions");
            infer = k;
        }
    }
    if (x->is_const) {
        if (infer >= 0) {
            int64_t rest = 1;
            for (int k = 0; k < r; k++)
                if (k != infer) rest *= d[k];
            d[infer] = rest ? (int64_t)x->k.count / rest : 0;
        }
        return reshape_const(b, x, r, d);
    }
    /* the batch: dimension 0 stays the batch - the marker a shape chain carried, a copy (0), or
     * the export batch (or -1) with the rest holding one sample exactly */
    const int64_t per = prod(x->dims, 1, x->rank);
    int64_t rest = 1;
    for (int k = 1; k < r; k++)
        if (k != infer) rest *= d[k];
    if (infer > 0) {
        if (!rest || per % rest)
            return ox_fail(b, BL_ERR_FORMAT, "cannot infer dimension %d: %lld values per sample "
                           "over %lld", infer, (long long)per, (long long)rest);
        d[infer] = per / rest, rest *= d[infer];
    }
    for (int k = 1; k < r; k++)
        if (d[k] < 1 || d[k] > (1LL << 31))
            return ox_fail(b, BL_ERR_FORMAT, "reshape to dimension %d of %lld", k, (long long)d[k]);
    if (!is_batch_dim(d[0]) && rest != per)
        return ox_fail(b, BL_ERR_FORMAT, "reshape to a first dimension of %lld with %lld values "
                       "per sample (a sample has %lld): bnlab keeps dimension 0 the batch, so a "
                       "reshape that moves values across samples is not supported", (long long)d[0],
                       (long long)rest, (long long)per);
    d[0] = OX_BATCH;
    return relabel(b, x, r, d);
}

static bl_status op_flatten(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    const int xr = x->is_const ? x->k.rank : x->rank;
    int axis;
    if ((st = norm_axis(b, ox_attr_int(b->nd, "axis", 1), xr + 1, &axis))) return st;
    const int64_t *xd = x->is_const ? x->k.dims : x->dims;
    int64_t d[2] = {prod(xd, 0, axis), prod(xd, axis, xr)};
    if (x->is_const) return reshape_const(b, x, 2, d);
    if (axis != 1)
        return ox_fail(b, BL_ERR_FORMAT, "Flatten at axis %d: bnlab keeps dimension 0 the "
                       "batch (axis 1)", axis);
    d[0] = OX_BATCH;
    return relabel(b, x, 2, d);
}

static bl_status op_squeeze_unsqueeze(ox_build *b, int unsqueeze)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    int64_t axes[OX_MAX_RANK];
    int na = 0;
    if ((st = ints_of(b, 1, "axes", axes, OX_MAX_RANK, &na))) return st;
    const int xr = x->is_const ? x->k.rank : x->rank;
    const int64_t *xd = x->is_const ? x->k.dims : x->dims;
    int64_t d[OX_MAX_RANK];
    int r = 0;
    if (unsqueeze) {
        const int out = xr + na;
        if (out > OX_MAX_RANK) return ox_fail(b, BL_ERR_FORMAT, "more than %d dimensions", OX_MAX_RANK);
        int ins[OX_MAX_RANK] = {0};
        for (int q = 0; q < na; q++) {
            int a;
            if ((st = norm_axis(b, axes[q], out, &a))) return st;
            ins[a] = 1;
        }
        for (int k = 0, j = 0; k < out; k++) d[r++] = ins[k] ? 1 : xd[j++];
    } else {
        int drop[OX_MAX_RANK] = {0};
        for (int q = 0; q < na; q++) {
            int a;
            if ((st = norm_axis(b, axes[q], xr, &a))) return st;
            if (xd[a] != 1)
                return ox_fail(b, BL_ERR_FORMAT, "squeezes dimension %d of size %lld", a,
                               (long long)xd[a]);
            drop[a] = 1;
        }
        for (int k = 0; k < xr; k++)
            if (!(na ? drop[k] : xd[k] == 1)) d[r++] = xd[k];
    }
    if (x->is_const) return reshape_const(b, x, r, d);
    if (r < 1 || !is_batch_dim(d[0]))
        return ox_fail(b, BL_ERR_FORMAT, "moves the batch dimension (axis 0)");
    return relabel(b, x, r, d);
}

static bl_status op_squeeze(ox_build *b) { return op_squeeze_unsqueeze(b, 0); }
static bl_status op_unsqueeze(ox_build *b) { return op_squeeze_unsqueeze(b, 1); }

static bl_status op_transpose(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    const int r = x->is_const ? x->k.rank : x->rank;
    if (r == 0) return ox_def_alias(b, 0, x); /* a scalar */
    int64_t perm[OX_MAX_RANK];
    int np = 0;
    if ((st = ox_attr_ints(b->nd, "perm", perm, OX_MAX_RANK, &np))) return ox_fail(b, st, "%s", bl_error());
    if (!np)
        for (int k = 0; k < r; k++) perm[k] = r - 1 - k, np = r;
    int seen[OX_MAX_RANK] = {0};
    for (int k = 0; k < np; k++)
        if (np != r || perm[k] < 0 || perm[k] >= r || seen[perm[k]]++)
            return ox_fail(b, BL_ERR_FORMAT, "perm is not a permutation of %d axes", r);
    const int64_t *xd = x->is_const ? x->k.dims : x->dims;
    int64_t d[OX_MAX_RANK], in_stride[OX_MAX_RANK];
    for (int k = 0; k < r; k++) d[k] = xd[perm[k]];
    in_stride[r - 1] = 1;
    for (int k = r - 2; k >= 0; k--) in_stride[k] = in_stride[k + 1] * xd[k + 1];
    if (!x->is_const && perm[0] != 0)
        return ox_fail(b, BL_ERR_FORMAT, "moves the batch dimension (perm[0] = %lld)",
                       (long long)perm[0]);
    /* the index map over one sample (constants: over everything) */
    const int from = x->is_const ? 0 : 1;
    const size_t n = (size_t)prod(d, from, r);
    int *map = bl_callocn(n ? n : 1, sizeof(int));
    if (!map) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    for (size_t o = 0; o < n; o++) {
        size_t rem = o, src = 0;
        for (int k = r - 1; k >= from; k--) {
            const size_t id = rem % (size_t)d[k];
            rem /= (size_t)d[k];
            src += id * (size_t)in_stride[perm[k]];
        }
        map[o] = (int)src;
    }
    if (x->is_const) {
        ox_const c;
        if (!(st = new_const(b, &c, x->k.is_int, r, d))) {
            for (size_t o = 0; o < n; o++)
                if (c.is_int) c.i[o] = x->k.i[map[o]];
                else c.f[o] = x->k.f[map[o]];
            st = ox_def_const(b, 0, &c);
        }
        free(map);
        return st;
    }
    int t, y;
    char ln[96];
    st = ox_flat(b, x, &t);
    if (!st) st = bl_net_gather(b->net, ox_layer_name(b, ln, sizeof ln), t, 1, 1, (int)n, map, &y);
    free(map);
    d[0] = OX_BATCH;
    return st ? st : ox_def_runtime(b, 0, y, r, d, 0);
}

static bl_status op_concat(ox_build *b)
{
    const Onnx__NodeProto *nd = b->nd;
    const int n = (int)nd->n_input;
    if (n < 1) return ox_fail(b, BL_ERR_FORMAT, "no inputs");
    ox_value *x0;
    bl_status st = ox_input(b, 0, 0, &x0);
    if (st) return st;
    const int r = x0->is_const ? x0->k.rank : x0->rank;
    int axis;
    if ((st = norm_axis(b, ox_attr_int(nd, "axis", 1), r > 0 ? r : 1, &axis))) return st;
    int all_const = 1;
    for (int k = 0; k < n && !st; k++) {
        ox_value *x;
        if (!(st = ox_input(b, k, 0, &x))) all_const &= x->is_const;
    }
    if (st) return st;
    if (all_const) { /* a shape: concatenate the values along the axis */
        int64_t d[OX_MAX_RANK];
        memcpy(d, x0->k.dims, sizeof d);
        d[axis] = 0;
        int is_int = x0->k.is_int;
        for (int k = 0; k < n; k++) {
            ox_value *x;
            ox_input(b, k, 0, &x);
            if (x->k.rank != r) return ox_fail(b, BL_ERR_FORMAT, "inputs of different ranks");
            for (int j = 0; j < r; j++)
                if (j != axis && x->k.dims[j] != x0->k.dims[j])
                    return ox_fail(b, BL_ERR_FORMAT, "inputs differ in dimension %d", j);
            d[axis] += x->k.dims[axis];
        }
        ox_const c;
        if ((st = new_const(b, &c, is_int, r, d))) return st;
        const int64_t outer = prod(d, 0, axis), inner = prod(d, axis + 1, r);
        size_t o = 0;
        for (int64_t p = 0; p < outer; p++)
            for (int k = 0; k < n; k++) {
                ox_value *x;
                ox_input(b, k, 0, &x);
                const int64_t run = x->k.dims[axis] * inner;
                for (int64_t q = 0; q < run; q++, o++) {
                    const double v = cget(&x->k, (size_t)(p * run + q));
                    if (is_int) c.i[o] = (int64_t)v;
                    else c.f[o] = (float)v;
                }
            }
        return ox_def_const(b, 0, &c);
    }
    /* tensors of the batch: channels of maps (axis 1 of rank 4), or features (axis 1 of rank 2) */
    if (axis != 1 || (r != 4 && r != 2))
        return ox_fail(b, BL_ERR_FORMAT, "concatenates axis %d of rank-%d tensors: bnlab "
                       "concatenates channels (axis 1 of (N, C, H, W) or (N, K))", axis, r);
    int *ts = bl_callocn((size_t)n, sizeof(int));
    if (!ts) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    int64_t d[OX_MAX_RANK];
    memcpy(d, x0->dims, sizeof d);
    d[1] = 0;
    for (int k = 0; k < n && !st; k++) {
        ox_value *x;
        if ((st = ox_input(b, k, 0, &x))) break;
        if (x->is_const || x->rank != r || (r == 4 && (x->dims[2] != d[2] || x->dims[3] != d[3]))) {
            st = ox_fail(b, BL_ERR_FORMAT, "input '%s' is a constant or differs in shape", x->name);
            break;
        }
        d[1] += x->dims[1];
        st = ox_spatial(b, x, &ts[k]);
    }
    int y = -1;
    char ln[96];
    if (!st) st = bl_net_concat(b->net, ox_layer_name(b, ln, sizeof ln), ts, n, &y);
    free(ts);
    return st ? st : ox_def_runtime(b, 0, y, r, d, 1);
}

/* ---- arithmetic --------------------------------------------------------------------------------- */
/* Both constants: NumPy broadcasting, folded (float, or int64 for shapes). */
static bl_status fold_binary(ox_build *b, ox_value *x, ox_value *z, bl_elt_op op)
{
    const int r = x->k.rank > z->k.rank ? x->k.rank : z->k.rank;
    int64_t d[OX_MAX_RANK], dx[OX_MAX_RANK], dz[OX_MAX_RANK];
    for (int k = 0; k < r; k++) {
        const int ix = k - (r - x->k.rank), iz = k - (r - z->k.rank);
        dx[k] = ix >= 0 ? x->k.dims[ix] : 1, dz[k] = iz >= 0 ? z->k.dims[iz] : 1;
        if (dx[k] != dz[k] && dx[k] != 1 && dz[k] != 1)
            return ox_fail(b, BL_ERR_FORMAT, "constants of shapes that do not broadcast");
        d[k] = dx[k] == 1 ? dz[k] : dx[k]; /* NumPy: 0 against 1 is 0 */
    }
    const int is_int = x->k.is_int && z->k.is_int;
    ox_const c;
    bl_status st = new_const(b, &c, is_int, r, d);
    if (st) return st;
    for (size_t o = 0; o < c.count; o++) {
        size_t rem = o, ax = 0, az = 0, sx = 1, sz = 1;
        for (int k = r - 1; k >= 0; k--) {
            const size_t id = rem % (size_t)d[k];
            rem /= (size_t)d[k];
            ax += (dx[k] == 1 ? 0 : id) * sx, az += (dz[k] == 1 ? 0 : id) * sz;
            sx *= (size_t)dx[k], sz *= (size_t)dz[k];
        }
        const double u = cget(&x->k, ax), v = cget(&z->k, az);
        if (is_int && (is_batch_dim((int64_t)u) || is_batch_dim((int64_t)v))) {
            ox_const_free(&c);
            return ox_fail(b, BL_ERR_FORMAT, "arithmetic on the batch size: bnlab keeps the batch "
                           "out of shape computations (export with a fixed shape, or "
                           "torch.flatten(x, 1))");
        }
        double w = op == BL_ELT_ADD ? u + v : op == BL_ELT_SUB ? u - v : op == BL_ELT_MUL ? u * v
                 : is_int ? (v != 0 ? (double)((int64_t)u / (int64_t)v) : 0) : u / v;
        if (is_int) c.i[o] = (int64_t)w;
        else c.f[o] = (float)w;
    }
    return ox_def_const(b, 0, &c);
}

/* A constant operand of a spatial op as a bnlab constant (h, w, c): its dims right-aligned to
 * (N, C, H, W) (or (N, K) when rank 2), each 1 or the other operand's. */
static bl_status const_operand(ox_build *b, ox_value *z, int out_rank, int *t)
{
    int64_t d[4] = {1, 1, 1, 1};
    if (z->k.rank > out_rank)
        return ox_fail(b, BL_ERR_FORMAT, "constant '%s' has more dimensions than the tensor",
                       z->name);
    for (int k = 0; k < z->k.rank; k++) d[4 - z->k.rank + k] = z->k.dims[k];
    if (out_rank == 2) { /* (N, K): K channels */
        if (d[2] != 1)
            return ox_fail(b, BL_ERR_FORMAT, "constant '%s' of %lld rows against (N, K) features",
                           z->name, (long long)d[2]);
        d[1] = d[3], d[3] = 1, d[2] = 1;
    }
    if (d[0] != 1)
        return ox_fail(b, BL_ERR_FORMAT, "constant '%s' spans the batch (dimension 0 of %lld)",
                       z->name, (long long)d[0]);
    const int C = (int)d[1], H = (int)d[2], W = (int)d[3];
    float *v = bl_callocn((size_t)C * H * W, sizeof(float));
    if (!v) return bl_fail(BL_ERR_NOMEM, "%s: out of memory", b->m->path);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                v[((size_t)y * W + x) * C + c] = (float)cget(&z->k, ((size_t)c * H + y) * W + x);
    bl_status st = bl_net_const(b->net, H, W, C, v, t);
    free(v);
    return st;
}

static bl_status binary(ox_build *b, bl_elt_op op)
{
    ox_value *x, *z;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &z);
    if (st) return st;
    if (x->is_const && z->is_const) return fold_binary(b, x, z, op);
    const ox_value *rt = x->is_const ? z : x;
    const int r = rt->rank;
    int64_t d[OX_MAX_RANK];
    memcpy(d, rt->dims, sizeof d);
    if (!x->is_const && !z->is_const && x->rank != z->rank)
        return ox_fail(b, BL_ERR_FORMAT, "tensors of ranks %d and %d", x->rank, z->rank);
    if (r != 4 && r != 2)
        return ox_fail(b, BL_ERR_FORMAT, "an elementwise op on rank-%d tensors: bnlab broadcasts "
                       "(N, C, H, W) maps and (N, K) features", r);
    int ta, tb;
    ox_value *ops[2] = {x, z};
    int *ts[2] = {&ta, &tb};
    for (int k = 0; k < 2 && !st; k++) {
        if (ops[k]->is_const) st = const_operand(b, ops[k], r, ts[k]);
        else st = ox_spatial(b, ops[k], ts[k]);
    }
    if (st) return st;
    /* the output's logical dims: the broadcast of the operands' */
    for (int k = 0; k < 2; k++) {
        const ox_value *o = ops[k];
        if (o->is_const) {
            for (int j = 0; j < o->k.rank; j++) {
                const int64_t v = o->k.dims[j];
                int at = r - o->k.rank + j;
                if (at > 0 && v != 1) d[at] = v;
            }
        } else {
            for (int j = 1; j < r; j++)
                if (o->dims[j] != 1) d[j] = o->dims[j];
        }
    }
    int y;
    char ln[96];
    st = bl_net_eltwise(b->net, ox_layer_name(b, ln, sizeof ln), op, ta, tb, &y);
    return st ? st : ox_def_runtime(b, 0, y, r, d, 1);
}

static bl_status op_add(ox_build *b) { return binary(b, BL_ELT_ADD); }
static bl_status op_sub(ox_build *b) { return binary(b, BL_ELT_SUB); }
static bl_status op_mul(ox_build *b) { return binary(b, BL_ELT_MUL); }
static bl_status op_div(ox_build *b) { return binary(b, BL_ELT_DIV); }

/* ---- activations --------------------------------------------------------------------------------- */
static bl_status unary(ox_build *b, bl_unary_op op, float a, float c)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    if (x->is_const) return ox_fail(b, BL_ERR_FORMAT, "an activation of a constant");
    int y;
    char ln[96];
    /* elementwise: any storage will do */
    if (op == BL_UNARY_RELU) st = bl_net_relu(b->net, ox_layer_name(b, ln, sizeof ln), x->t, &y);
    else st = bl_net_unary(b->net, ox_layer_name(b, ln, sizeof ln), op, x->t, a, c, &y);
    return st ? st : ox_def_runtime(b, 0, y, x->rank, x->dims, x->spatial);
}

static bl_status op_relu(ox_build *b) { return unary(b, BL_UNARY_RELU, 0, 0); }
static bl_status op_sigmoid(ox_build *b) { return unary(b, BL_UNARY_SIGMOID, 0, 0); }
static bl_status op_hardswish(ox_build *b) { return unary(b, BL_UNARY_HARDSWISH, 0, 0); }
static bl_status op_hardsigmoid(ox_build *b)
{
    return unary(b, BL_UNARY_HARDSIGMOID, ox_attr_float(b->nd, "alpha", 0.2f),
                 ox_attr_float(b->nd, "beta", 0.5f));
}
static bl_status op_leakyrelu(ox_build *b)
{
    return unary(b, BL_UNARY_LEAKY_RELU, ox_attr_float(b->nd, "alpha", 0.01f), 0);
}

static bl_status op_clip(ox_build *b)
{
    float lo = -FLT_MAX, hi = FLT_MAX;
    if (b->m->opset < 11) {
        lo = ox_attr_float(b->nd, "min", lo), hi = ox_attr_float(b->nd, "max", hi);
    } else {
        ox_value *v[2];
        for (int k = 0; k < 2; k++) {
            bl_status st = ox_input(b, k + 1, 1, &v[k]);
            if (!st && v[k]) st = need_const(b, v[k], k ? "Clip's max" : "Clip's min");
            if (!st && v[k] && v[k]->k.count != 1)
                st = ox_fail(b, BL_ERR_FORMAT, "Clip's %s holds %zu values", k ? "max" : "min",
                             v[k]->k.count);
            if (st) return st;
        }
        if (v[0]) lo = (float)cget(&v[0]->k, 0);
        if (v[1]) hi = (float)cget(&v[1]->k, 0);
    }
    if (lo == 0 && hi == FLT_MAX) return unary(b, BL_UNARY_RELU, 0, 0);
    return unary(b, BL_UNARY_CLIP, lo, hi);
}

static bl_status op_softmax(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    if (x->is_const) return ox_fail(b, BL_ERR_FORMAT, "a softmax of a constant");
    int axis;
    if ((st = norm_axis(b, ox_attr_int(b->nd, "axis", b->m->opset < 13 ? 1 : -1), x->rank, &axis)))
        return st;
    int t, y;
    char ln[96];
    const int rank = x->rank;
    int64_t dims[OX_MAX_RANK];
    memcpy(dims, x->dims, sizeof dims);
    int spatial = 0;
    if (b->m->opset < 13 && axis == 1 && (rank != 4 || dims[2] * dims[3] > 1)) {
        /* before opset 13: over everything from the axis on, flattened */
        st = ox_flat(b, x, &t);
    } else if (rank == 2 && axis == 1) {
        st = ox_flat(b, x, &t);
    } else if (rank == 4 && axis == 1) {
        st = ox_spatial(b, x, &t), spatial = 1;
    } else {
        return ox_fail(b, BL_ERR_FORMAT, "a softmax over axis %d of a rank-%d tensor: bnlab "
                       "takes it over channels (axis 1)", axis, rank);
    }
    if (!st) st = bl_net_softmax(b->net, ox_layer_name(b, ln, sizeof ln), t, &y);
    return st ? st : ox_def_runtime(b, 0, y, rank, dims, spatial);
}

/* ---- convolution, BN, pooling, linear ---------------------------------------------------------- */
/* Pads for auto_pad SAME_UPPER / SAME_LOWER / VALID, or the pads attribute (NOTSET). */
static bl_status pads_of(ox_build *b, int h, int w, const int k[2], const int s[2], const int d[2],
                         int pad[4])
{
    char ap[32] = "NOTSET";
    ox_attr_string(b->nd, "auto_pad", ap, sizeof ap);
    int64_t p[4] = {0, 0, 0, 0};
    int np = 0;
    if (!strcmp(ap, "NOTSET")) {
        bl_status st = ox_attr_ints(b->nd, "pads", p, 4, &np);
        if (st || (np && np != 4))
            return ox_fail(b, BL_ERR_FORMAT, "pads: %d values for a 2-D op (need 4)", np);
        for (int q = 0; q < 4; q++) {
            if (p[q] < 0 || p[q] > 4096) return ox_fail(b, BL_ERR_FORMAT, "pad %lld", (long long)p[q]);
            pad[q] = (int)p[q];
        }
        return BL_OK;
    }
    if (!strcmp(ap, "VALID")) {
        for (int q = 0; q < 4; q++) pad[q] = 0;
        return BL_OK;
    }
    if (strcmp(ap, "SAME_UPPER") && strcmp(ap, "SAME_LOWER"))
        return ox_fail(b, BL_ERR_FORMAT, "auto_pad '%s'", ap);
    const int in[2] = {h, w};
    for (int a = 0; a < 2; a++) {
        const int out = (in[a] + s[a] - 1) / s[a];
        int total = (out - 1) * s[a] + (k[a] - 1) * d[a] + 1 - in[a];
        if (total < 0) total = 0;
        const int small = total / 2, big = total - small;
        pad[a] = !strcmp(ap, "SAME_UPPER") ? small : big;
        pad[a + 2] = !strcmp(ap, "SAME_UPPER") ? big : small;
    }
    return BL_OK;
}

/* kernel-like 2-int attribute (default def) */
static bl_status pair(ox_build *b, const char *name, int def, int v[2])
{
    int64_t a[2];
    int n = 0;
    if (ox_attr_ints(b->nd, name, a, 2, &n) || (n && n != 2))
        return ox_fail(b, BL_ERR_FORMAT, "%s: %d values for a 2-D op (need 2)", name, n);
    v[0] = n ? (int)a[0] : def, v[1] = n ? (int)a[1] : def;
    if (!n && def == 0) return BL_OK; /* absent, no default: 0 (the caller decides) */
    if (n && (a[0] < 1 || a[1] < 1 || a[0] > 4096 || a[1] > 4096))
        return ox_fail(b, BL_ERR_FORMAT, "%s %lld, %lld", name, (long long)a[0], (long long)a[1]);
    if (v[0] < 1 || v[1] < 1 || v[0] > 4096 || v[1] > 4096)
        return ox_fail(b, BL_ERR_FORMAT, "%s %d, %d", name, v[0], v[1]);
    return BL_OK;
}

static bl_status check_name(ox_build *b, const char *name)
{
    if (strlen(name) >= 96)
        return ox_fail(b, BL_ERR_FORMAT, "the name '%.40s...' is longer than 95 characters", name);
    return BL_OK;
}

static bl_status op_conv(ox_build *b)
{
    ox_value *x, *w, *bias;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &w);
    if (!st) st = ox_input(b, 2, 1, &bias);
    if (!st) st = need_const(b, w, "the weight");
    if (!st && bias) st = need_const(b, bias, "the bias");
    if (st) return st;
    if (x->is_const || x->rank != 4 || w->k.rank != 4)
        return ox_fail(b, BL_ERR_FORMAT, "a 2-D convolution needs an (N, C, H, W) input and an "
                       "(O, I, kH, kW) weight ('%s', '%s')", x->name, w->name);
    int c, h, wd, t;
    c = (int)x->dims[1], h = (int)x->dims[2], wd = (int)x->dims[3];
    const int group = (int)ox_attr_int(b->nd, "group", 1);
    const int cout = (int)w->k.dims[0];
    int k[2] = {(int)w->k.dims[2], (int)w->k.dims[3]}, s[2], d[2], pad[4], ks[2];
    if ((st = pair(b, "kernel_shape", 0, ks)) || (st = pair(b, "strides", 1, s)) ||
        (st = pair(b, "dilations", 1, d)))
        return st;
    if (ks[0] == 0) ks[0] = k[0], ks[1] = k[1]; /* absent: the weight's */
    if (ks[0] != k[0] || ks[1] != k[1])
        return ox_fail(b, BL_ERR_FORMAT, "kernel_shape %dx%d, weight %dx%d", ks[0], ks[1], k[0], k[1]);
    if (group < 1 || c % group || w->k.dims[1] * group != c)
        return ox_fail(b, BL_ERR_FORMAT, "group %d with %d input channels and a weight of %lld "
                       "per group", group, c, (long long)w->k.dims[1]);
    if (bias && bias->k.count != (size_t)cout)
        return ox_fail(b, BL_ERR_FORMAT, "bias of %zu values for %d outputs", bias->k.count, cout);
    if ((st = pads_of(b, h, wd, k, s, d, pad)) || (st = check_name(b, w->name)) ||
        (bias && (st = check_name(b, bias->name))) || (st = ox_spatial(b, x, &t)))
        return st;
    char ln[96];
    ox_layer_name(b, ln, sizeof ln);
    int y;
    const int simple = group == 1 && k[0] == k[1] && s[0] == s[1] && d[0] == 1 && d[1] == 1 &&
                       pad[0] == pad[1] && pad[0] == pad[2] && pad[0] == pad[3] && !bias;
    if (simple) { /* the ResNet kernel: Winograd, fused with BN at inference */
        st = bl_net_conv_param(b->net, ln, w->name, t, cout, k[0], s[0], pad[0], &y);
    } else {
        bl_conv_spec cs = {.cout = cout, .kh = k[0], .kw = k[1], .sh = s[0], .sw = s[1],
                           .dh = d[0], .dw = d[1], .groups = group,
                           .pad = {pad[0], pad[1], pad[2], pad[3]}};
        st = bl_net_conv_general(b->net, ln, t, &cs, w->name, bias ? bias->name : NULL, &y);
    }
    if (!st) st = ox_load_add(b, w->name, w, 0, 1.0f);
    if (!st && bias) st = ox_load_add(b, bias->name, bias, 0, 1.0f);
    if (st) return st;
    const bl_tensor *yt = bl_net_tensor_at(b->net, y);
    const int64_t dims[4] = {OX_BATCH, cout, yt->h, yt->w};
    return ox_def_runtime(b, 0, y, 4, dims, 1);
}

static bl_status op_batchnorm(ox_build *b)
{
    ox_value *x, *p[4];
    bl_status st = ox_input(b, 0, 0, &x);
    static const char *what[4] = {"the scale", "the bias", "the mean", "the variance"};
    for (int k = 0; k < 4 && !st; k++) {
        if (!(st = ox_input(b, k + 1, 0, &p[k]))) st = need_const(b, p[k], what[k]);
        if (!st) st = check_name(b, p[k]->name);
    }
    if (st) return st;
    if (x->is_const || (x->rank != 4 && x->rank != 2))
        return ox_fail(b, BL_ERR_FORMAT, "BN of '%s': bnlab normalizes (N, C, H, W) maps and "
                       "(N, C) features", x->name);
    if (b->m->opset < 9 && ox_attr_int(b->nd, "spatial", 1) != 1)
        return ox_fail(b, BL_ERR_FORMAT, "spatial=0 (statistics per position): bnlab's BN keeps "
                       "one per channel");
    const int C = (int)x->dims[1];
    for (int k = 0; k < 4; k++)
        if (p[k]->k.count != (size_t)C)
            return ox_fail(b, BL_ERR_FORMAT, "%s '%s' holds %zu values for %d channels", what[k],
                           p[k]->name, p[k]->k.count, C);
    /* each BN its own statistics: a name another BN declared already gets this node's suffix
     * (the statistic is split off when written back) */
    char names[4][96];
    ox_bn_names(b->m, b->node, names);
    const char *const nm[4] = {names[0], names[1], names[2], names[3]};
    const double eps = ox_attr_float(b->nd, "epsilon", 1e-5f);
    const double mom = 1.0 - ox_attr_float(b->nd, "momentum", 0.9f); /* ONNX keeps the old */
    int t, y;
    char ln[96];
    if ((st = ox_spatial(b, x, &t))) return st;
    st = bl_net_bn_named(b->net, ox_layer_name(b, ln, sizeof ln), t, nm, eps,
                         mom < 0 ? 0 : mom > 1 ? 1 : mom, &y);
    for (int k = 0; k < 4 && !st; k++) st = ox_load_add(b, names[k], p[k], 0, 1.0f);
    return st ? st : ox_def_runtime(b, 0, y, x->rank, x->dims, 1);
}

static bl_status pool(ox_build *b, int max)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    if (x->is_const || x->rank != 4)
        return ox_fail(b, BL_ERR_FORMAT, "pooling needs an (N, C, H, W) input");
    if (max && b->nd->n_output > 1 && b->nd->output[1][0])
        return ox_fail(b, BL_ERR_FORMAT, "MaxPool's indices output is not supported");
    int k[2], s[2], d[2] = {1, 1}, pad[4], t, y;
    if (!(st = pair(b, "kernel_shape", 0, k)) && !k[0])
        return ox_fail(b, BL_ERR_FORMAT, "no kernel_shape");
    if (st || (st = pair(b, "strides", 1, s)) ||
        (max && (st = pair(b, "dilations", 1, d))) ||
        (st = pads_of(b, (int)x->dims[2], (int)x->dims[3], k, s, d, pad)) ||
        (st = ox_spatial(b, x, &t)))
        return st;
    bl_pool_spec ps = {.max = max, .kh = k[0], .kw = k[1], .sh = s[0], .sw = s[1], .dh = d[0],
                       .dw = d[1], .pad = {pad[0], pad[1], pad[2], pad[3]},
                       .ceil_mode = (int)ox_attr_int(b->nd, "ceil_mode", 0),
                       .count_include_pad = (int)ox_attr_int(b->nd, "count_include_pad", 0)};
    char ln[96];
    if ((st = bl_net_pool(b->net, ox_layer_name(b, ln, sizeof ln), t, &ps, &y))) return st;
    const bl_tensor *yt = bl_net_tensor_at(b->net, y);
    const int64_t dims[4] = {OX_BATCH, x->dims[1], yt->h, yt->w};
    return ox_def_runtime(b, 0, y, 4, dims, 1);
}

static bl_status op_maxpool(ox_build *b) { return pool(b, 1); }
static bl_status op_avgpool(ox_build *b) { return pool(b, 0); }

static bl_status op_gap(ox_build *b)
{
    ox_value *x;
    bl_status st = ox_input(b, 0, 0, &x);
    if (st) return st;
    if (x->is_const || x->rank != 4)
        return ox_fail(b, BL_ERR_FORMAT, "GlobalAveragePool needs an (N, C, H, W) input");
    int t, y;
    char ln[96];
    if ((st = ox_spatial(b, x, &t)) ||
        (st = bl_net_gap(b->net, ox_layer_name(b, ln, sizeof ln), t, &y)))
        return st;
    const int64_t dims[4] = {OX_BATCH, x->dims[1], 1, 1};
    return ox_def_runtime(b, 0, y, 4, dims, 1);
}

/* y = x W^T + bias on (N, K) features: Gemm (transA 0) and MatMul by a constant */
static bl_status linear(ox_build *b, ox_value *x, ox_value *wt, int trans_b, float alpha,
                        ox_value *c, float beta)
{
    bl_status st = need_const(b, wt, "the weight");
    if (!st && c) st = need_const(b, c, "the bias");
    if (!st) st = check_name(b, wt->name);
    if (!st && c) st = check_name(b, c->name);
    if (st) return st;
    if (x->is_const || x->rank != 2 || wt->k.rank != 2)
        return ox_fail(b, BL_ERR_FORMAT, "a matrix product of '%s' (rank %d) and '%s' (rank %d): "
                       "bnlab multiplies (N, K) features by a (K, M) constant", x->name,
                       x->is_const ? x->k.rank : x->rank, wt->name, wt->k.rank);
    const int64_t K = x->dims[1], M = trans_b ? wt->k.dims[0] : wt->k.dims[1];
    if ((trans_b ? wt->k.dims[1] : wt->k.dims[0]) != K)
        return ox_fail(b, BL_ERR_FORMAT, "features of %lld into a weight of (%lld, %lld)",
                       (long long)K, (long long)wt->k.dims[0], (long long)wt->k.dims[1]);
    if (c && c->k.count != (size_t)M && c->k.count != 1)
        return ox_fail(b, BL_ERR_FORMAT, "C of %zu values for %lld outputs", c->k.count,
                       (long long)M);
    int t, y;
    char ln[96];
    if ((st = ox_flat(b, x, &t))) return st;
    if (c && c->k.count == 1 && M > 1) /* a scalar C: broadcast into a bias of its own */
        return ox_fail(b, BL_ERR_FORMAT, "a scalar C: not supported (give C of M values)");
    st = bl_net_linear_named(b->net, ox_layer_name(b, ln, sizeof ln), t, (int)M, wt->name,
                             c ? c->name : NULL, &y);
    if (!st) st = ox_load_add(b, wt->name, wt, !trans_b, alpha);
    if (!st && c) st = ox_load_add(b, c->name, c, 0, beta);
    if (st) return st;
    const int64_t dims[2] = {OX_BATCH, M};
    return ox_def_runtime(b, 0, y, 2, dims, 0);
}

static bl_status op_gemm(ox_build *b)
{
    ox_value *x, *wt, *c;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &wt);
    if (!st) st = ox_input(b, 2, 1, &c);
    if (st) return st;
    if (ox_attr_int(b->nd, "transA", 0))
        return ox_fail(b, BL_ERR_FORMAT, "transA=1: bnlab multiplies the batch's features on the "
                       "left");
    return linear(b, x, wt, (int)ox_attr_int(b->nd, "transB", 0), ox_attr_float(b->nd, "alpha", 1),
                  c, ox_attr_float(b->nd, "beta", 1));
}

static bl_status op_matmul(ox_build *b)
{
    ox_value *x, *wt;
    bl_status st = ox_input(b, 0, 0, &x);
    if (!st) st = ox_input(b, 1, 0, &wt);
    return st ? st : linear(b, x, wt, 0, 1.0f, NULL, 1.0f);
}

/* ---- the table ----------------------------------------------------------------------------------- */
static const struct {
    const char *op;
    ox_op_fn fn;
} ops[] = {
    {"Add", op_add},
    {"AveragePool", op_avgpool},
    {"BatchNormalization", op_batchnorm},
    {"Cast", op_cast},
    {"Clip", op_clip},
    {"Concat", op_concat},
    {"Constant", op_constant},
    {"Conv", op_conv},
    {"Div", op_div},
    {"Dropout", op_dropout},
    {"Flatten", op_flatten},
    {"Gather", op_gather},
    {"Gemm", op_gemm},
    {"GlobalAveragePool", op_gap},
    {"HardSigmoid", op_hardsigmoid},
    {"HardSwish", op_hardswish},
    {"Identity", op_identity},
    {"LeakyRelu", op_leakyrelu},
    {"MatMul", op_matmul},
    {"MaxPool", op_maxpool},
    {"Mul", op_mul},
    {"Relu", op_relu},
    {"Reshape", op_reshape},
    {"Shape", op_shape},
    {"Sigmoid", op_sigmoid},
    {"Slice", op_slice},
    {"Softmax", op_softmax},
    {"Squeeze", op_squeeze},
    {"Sub", op_sub},
    {"Transpose", op_transpose},
    {"Unsqueeze", op_unsqueeze},
};

ox_op_fn ox_op_find(const char *op)
{
    for (size_t k = 0; k < sizeof ops / sizeof *ops; k++)
        if (!strcmp(ops[k].op, op)) return ops[k].fn;
    return NULL;
}

const char *ox_op_list(void)
{
    static char list[640];
    if (!list[0]) {
        size_t o = 0;
        for (size_t k = 0; k < sizeof ops / sizeof *ops && o < sizeof list; k++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", k ? ", " : "", ops[k].op);
    }
    return list;
}
