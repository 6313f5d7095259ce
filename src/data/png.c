/* A minimal PNG writer: 8-bit grayscale, one IDAT compressed with zlib, for previews (bnlab
 * corrupt). Chunks: IHDR, IDAT, IEND, each with its CRC-32 (zlib's crc32 is the PNG CRC). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static void be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8), b[3] = (uint8_t)v;
}

static bl_status chunk(bl_afile *f, const char *type, const uint8_t *data, uint32_t len)
{
    uint8_t b[4];
    be32(b, len);
    uLong crc = crc32(0, (const Bytef *)type, 4);
    if (len) crc = crc32(crc, data, len);
    bl_status st = bl_afile_write(f, b, 4);
    if (!st) st = bl_afile_write(f, type, 4);
    if (!st && len) st = bl_afile_write(f, data, len);
    be32(b, (uint32_t)crc);
    return st ? st : bl_afile_write(f, b, 4);
}

bl_status bl_png_save_gray(const char *path, int w, int h, const uint8_t *pixels)
{
    if (w < 1 || h < 1 || w > 1 << 16 || h > 1 << 16)
        return bl_fail(BL_ERR_ARG, "png: size %dx%d", w, h);
    /* each row starts with its filter type, 0 (none) */
    const size_t raw_len = (size_t)h * (w + 1);
    uLongf z_len = compressBound((uLong)raw_len);
    uint8_t *raw = bl_malloc(raw_len), *z = bl_malloc(z_len);
    if (!raw || !z) {
        free(raw), free(z);
        return bl_fail(BL_ERR_NOMEM, "png: out of memory for %dx%d", w, h);
    }
    for (int y = 0; y < h; y++) {
        raw[(size_t)y * (w + 1)] = 0;
        memcpy(raw + (size_t)y * (w + 1) + 1, pixels + (size_t)y * w, (size_t)w);
    }
    int zr = compress2(z, &z_len, raw, (uLong)raw_len, 9);
    free(raw);
    if (zr != Z_OK) {
        free(z);
        return bl_fail(BL_ERR_NOMEM, "png: zlib failed (%d)", zr);
    }
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t ihdr[13];
    be32(ihdr, (uint32_t)w), be32(ihdr + 4, (uint32_t)h);
    ihdr[8] = 8, ihdr[9] = 0, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0; /* 8-bit gray */
    bl_afile f;
    bl_status st = bl_afile_open(&f, path);
    if (!st) st = bl_afile_write(&f, sig, 8);
    if (!st) st = chunk(&f, "IHDR", ihdr, 13);
    if (!st) st = chunk(&f, "IDAT", z, (uint32_t)z_len);
    if (!st) st = chunk(&f, "IEND", NULL, 0);
    free(z);
    return st ? (bl_afile_abort(&f), st) : bl_afile_commit(&f);
}
