/* Shared by the fuzz targets: the input written to a file of this process (the loaders take
 * paths), so each run reads exactly the bytes libFuzzer chose. */
#ifndef BNLAB_FUZZ_UTIL_H
#define BNLAB_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void fuzz_path(char *buf, size_t len, const char *name)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, len, "%s/bnlab-fuzz-%ld-%s", dir && *dir ? dir : "/tmp", (long)getpid(), name);
}

/* 0, or -1 when the file cannot be written (not the code under test: the run is skipped) */
static int fuzz_write(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) || w != size ? -1 : 0;
}

#endif
