/* The protobuf wire format, read directly where protobuf-c's parsed messages are not enough:
 * splicing statistics into the file's own bytes (splice.c), and bounding how deeply messages nest
 * before protobuf-c, which recurses without a limit, unpacks them (load.c). */
#ifndef BNLAB_ONNX_WIRE_H
#define BNLAB_ONNX_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* one field of a message: its number, wire type, where it starts and ends, and for a
 * length-delimited one where its payload starts and how long it is */
typedef struct {
    uint32_t num;
    int wt;
    size_t start, end, pay, plen;
} ox_wire_field;

/* The field at *i (before end), *i moved past it; 0 on anything malformed or a group. */
int ox_wire_next(const uint8_t *p, size_t end, size_t *i, ox_wire_field *f);
size_t ox_wire_varint_len(uint64_t v);
uint8_t *ox_wire_put_varint(uint8_t *o, uint64_t v);

/* How deeply the messages that can hold themselves nest in a serialized ModelProto (a graph in a
 * node's attribute, a type in a sequence type, ...), counting the model as 1; stops counting past
 * limit + 1. -1 when the bytes are not well-formed wire format. */
int ox_wire_depth(const uint8_t *p, size_t n, int limit);

#endif
