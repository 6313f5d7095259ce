/* The protobuf wire format: fields, varints, and the nesting depth of ONNX's recursive messages. */
#include "onnx/wire.h"

static int varint(const uint8_t *p, size_t end, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int s = 0; s < 64 && *i < end; s += 7) {
        const uint8_t b = p[(*i)++];
        *v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return 1;
    }
    return 0;
}

int ox_wire_next(const uint8_t *p, size_t end, size_t *i, ox_wire_field *f)
{
    uint64_t key, v;
    f->start = *i;
    if (!varint(p, end, i, &key) || key >> 3 == 0 || key >> 3 > UINT32_MAX) return 0;
    f->num = (uint32_t)(key >> 3), f->wt = (int)(key & 7);
    f->pay = f->plen = 0;
    switch (f->wt) {
    case 0:
        if (!varint(p, end, i, &v)) return 0;
        break;
    case 1:
    case 5: {
        const size_t w = f->wt == 1 ? 8 : 4;
        if (end - *i < w) return 0;
        *i += w;
        break;
    }
    case 2:
        if (!varint(p, end, i, &v) || v > end - *i) return 0;
        f->pay = *i, f->plen = (size_t)v;
        *i += (size_t)v;
        break;
    default:
        return 0;
    }
    f->end = *i;
    return 1;
}

size_t ox_wire_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

uint8_t *ox_wire_put_varint(uint8_t *o, uint64_t v)
{
    while (v >= 0x80) *o++ = (uint8_t)(v | 0x80), v >>= 7;
    *o++ = (uint8_t)v;
    return o;
}

/* The messages of onnx.proto on a path that can lead back to themselves, and which of their
 * fields hold one of them (all others - tensors, shapes, strings - nest boundedly). */
enum { M_NONE = -1, M_MODEL, M_GRAPH, M_NODE, M_ATTR, M_VALUE, M_TYPE, M_TYPE_ELEM, M_TYPE_MAP,
       M_TRAINING, M_FUNCTION };

static int child(int m, uint32_t field)
{
    switch (m) {
    case M_MODEL: return field == 7 ? M_GRAPH : field == 20 ? M_TRAINING : field == 25 ? M_FUNCTION : M_NONE;
    case M_GRAPH: return field == 1 ? M_NODE : field >= 11 && field <= 13 ? M_VALUE : M_NONE;
    case M_NODE: return field == 5 ? M_ATTR : M_NONE;
    case M_ATTR: return field == 6 || field == 11 ? M_GRAPH : field == 14 || field == 15 ? M_TYPE : M_NONE;
    case M_VALUE: return field == 2 ? M_TYPE : M_NONE;
    /* TypeProto: sequence_type 4 and optional_type 9 hold an element type in field 1, map_type 5
     * a value type in field 2 */
    case M_TYPE: return field == 4 || field == 9 ? M_TYPE_ELEM : field == 5 ? M_TYPE_MAP : M_NONE;
    case M_TYPE_ELEM: return field == 1 ? M_TYPE : M_NONE;
    case M_TYPE_MAP: return field == 2 ? M_TYPE : M_NONE;
    case M_TRAINING: return field == 1 || field == 2 ? M_GRAPH : M_NONE;
    case M_FUNCTION: return field == 7 ? M_NODE : field == 11 ? M_ATTR : M_NONE;
    }
    return M_NONE;
}

/* the depth below message m in p[from, to), counting m as 1; at most limit + 1 */
static int depth(const uint8_t *p, size_t from, size_t to, int m, int level, int limit)
{
    if (level > limit) return 1;
    int deepest = 1;
    size_t i = from;
    ox_wire_field f;
    while (i < to) {
        if (!ox_wire_next(p, to, &i, &f)) return -1;
        const int c = f.wt == 2 ? child(m, f.num) : M_NONE;
        if (c == M_NONE) continue;
        const int d = depth(p, f.pay, f.pay + f.plen, c, level + 1, limit);
        if (d < 0) return -1;
        if (d + 1 > deepest) deepest = d + 1;
        if (level + deepest > limit + 1) return deepest;
    }
    return deepest;
}

int ox_wire_depth(const uint8_t *p, size_t n, int limit)
{
    return depth(p, 0, n, M_MODEL, 1, limit);
}
