/* A fuzz target without libFuzzer: runs LLVMFuzzerTestOneInput once on each file named (or each
 * file of each directory named), so the seed corpus and every input that once crashed replay as
 * an ordinary test in every build (gcc, Release, ASan). Exits non-zero if a file cannot be read;
 * a crash in the target is the test failing. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return fprintf(stderr, "replay: cannot open %s\n", path), 1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) return fprintf(stderr, "replay: out of memory reading %s\n", path), 1;
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0, files = 0;
    for (int i = 1; i < argc; i++) {
        struct stat s;
        if (stat(argv[i], &s)) return fprintf(stderr, "replay: cannot open %s\n", argv[i]), 1;
        if (!S_ISDIR(s.st_mode)) {
            bad |= run_file(argv[i]), files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) return fprintf(stderr, "replay: cannot open %s\n", argv[i]), 1;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
            bad |= run_file(p), files++;
        }
        closedir(d);
    }
    printf("replay: %d input%s\n", files, files == 1 ? "" : "s");
    return bad || files == 0;
}
