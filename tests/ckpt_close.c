/* ckpt_close A B TOL [PREFIX]: the float tensors of two checkpoints (optionally only names
 * starting with PREFIX, or with !PREFIX all but those) within TOL relative, as ||a - b|| / ||a|| over all of them (a bias that
 * starts at 0 makes a per-tensor max-relative measure report rounding as large); prints that, the
 * worst tensor by max |a - b| / max |a|, and whether they are bit-identical. Exit 0 when close, 1
 * when not, 2 on error. */
#include "bnlab/bnlab.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: ckpt_close A B TOL [PREFIX]\n");
        return 2;
    }
    bl_safetensors a, b;
    if (bl_st_read(argv[1], &a) || bl_st_read(argv[2], &b)) {
        fprintf(stderr, "ckpt_close: %s\n", bl_error());
        return 2;
    }
    const double tol = atof(argv[3]);
    const char *prefix = argc > 4 ? argv[4] : "";
    const int exclude = prefix[0] == '!';
    if (exclude) prefix++;
    double worst = 0, d2 = 0, a2 = 0;
    int compared = 0, identical = 1;
    char worst_name[128] = "";
    for (int i = 0; i < a.n; i++) {
        const bl_st_entry *ea = &a.e[i], *eb = bl_st_find(&b, ea->name);
        if ((strncmp(ea->name, prefix, strlen(prefix)) == 0) == exclude || ea->dtype != BL_F32) continue;
        size_t n = bl_st_numel(ea);
        if (!eb || bl_st_numel(eb) != n) {
            fprintf(stderr, "ckpt_close: %s: missing or of another size in %s\n", ea->name, argv[2]);
            return 1;
        }
        float *x = malloc(n * sizeof(float) + 4), *y = malloc(n * sizeof(float) + 4);
        if (!x || !y || bl_st_get_f32(&a, ea->name, x, n) || bl_st_get_f32(&b, ea->name, y, n)) {
            fprintf(stderr, "ckpt_close: %s\n", bl_error());
            return 2;
        }
        double d = 0, m = 0;
        for (size_t k = 0; k < n; k++) {
            d = fmax(d, fabs((double)x[k] - y[k]));
            d2 += ((double)x[k] - y[k]) * ((double)x[k] - y[k]), a2 += (double)x[k] * x[k];
            m = fmax(m, fabs((double)x[k]));
            if (memcmp(&x[k], &y[k], sizeof(float))) identical = 0;
            if (!isfinite(x[k]) || !isfinite(y[k])) d = INFINITY;
        }
        double r = m > 0 ? d / m : d;
        if (r > worst || !compared) worst = r, snprintf(worst_name, sizeof worst_name, "%s", ea->name);
        compared++;
        free(x), free(y);
    }
    const double rel = a2 > 0 ? sqrt(d2 / a2) : sqrt(d2);
    printf("ckpt_close: %d tensors, relative %.3g (tolerance %g); worst tensor %s %.3g%s\n",
           compared, rel, tol, worst_name, worst, identical ? "; bit-identical" : "");
    bl_st_free(&a), bl_st_free(&b);
    return compared > 0 && isfinite(rel) && rel <= tol ? 0 : 1;
}
