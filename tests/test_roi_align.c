/* RoIAlign (the crop head's sampling) against torchvision's roi_align(aligned=True,
 * sampling_ratio=1) - boxes inside the map, at its borders, partly outside, thin, one pixel
 * (fixture from tools/gen_roi_align_fixture.py) - and its backward against central differences
 * and the adjoint identity <dy, F(x)> = <B(dy), x> (the op is linear in x). Bad boxes refused. */
#include "bnlab/bnlab.h"
#include "check.h"
#include "st_fixture.h"

int main(int argc, char **argv)
{
    bl_safetensors st;
    if (st_fixture_open(argc, argv, "roi_align.safetensors", "test_roi_align", &st)) return 1;
    const bl_st_entry *eb = bl_st_find(&st, "boxes"), *ex = bl_st_find(&st, "x");
    CHECK(eb && ex && eb->ndim == 2 && eb->shape[1] == 5 && ex->ndim == 4, "fixture shapes");
    if (!eb || !ex) return check_done("test_roi_align");
    const int K = (int)eb->shape[0], n = (int)ex->shape[0], h = (int)ex->shape[1];
    const int w = (int)ex->shape[2], c = (int)ex->shape[3], out = 4;
    const size_t nx = (size_t)n * h * w * c, ny = (size_t)K * out * out * c;
    float *x = st_get(&st, "x", nx), *yref = st_get(&st, "y", ny), *dy = st_get(&st, "dy", ny);
    float *dxref = st_get(&st, "dx", nx), *b5 = st_get(&st, "boxes", (size_t)K * 5);
    bl_box *boxes = malloc(sizeof(bl_box) * K);
    int *img = malloc(sizeof(int) * K);
    for (int k = 0; k < K; k++) {
        img[k] = (int)b5[k * 5];
        boxes[k] = (bl_box){b5[k * 5 + 1], b5[k * 5 + 2], b5[k * 5 + 3], b5[k * 5 + 4]};
    }
    float *y = calloc(ny, sizeof(float)), *dx = calloc(nx, sizeof(float));
    CHECK(bl_roi_align_forward(x, n, h, w, c, boxes, img, K, out, y) == BL_OK, "forward: %s", bl_error());
    CHECK(worst_rel(y, yref, ny) <= 1e-6, "forward vs torchvision: %.3g", worst_rel(y, yref, ny));
    for (int k = 0; k < K; k++) { /* each box on its own, so a wrong border rule names its box */
        size_t o = (size_t)k * out * out * c, m = (size_t)out * out * c;
        CHECK(worst_rel(y + o, yref + o, m) <= 1e-6 || worst_rel(y + o, yref + o, m) == 0,
              "box %d (%g, %g, %g, %g): %.3g", k, boxes[k].x0, boxes[k].y0, boxes[k].x1,
              boxes[k].y1, worst_rel(y + o, yref + o, m));
    }
    CHECK(bl_roi_align_backward(dy, n, h, w, c, boxes, img, K, out, dx) == BL_OK, "backward: %s",
          bl_error());
    CHECK(worst_rel(dx, dxref, nx) <= 1e-6, "backward vs torchvision: %.3g", worst_rel(dx, dxref, nx));

    /* the adjoint identity, in double */
    double a = 0, b = 0;
    for (size_t i = 0; i < ny; i++) a += (double)dy[i] * y[i];
    for (size_t i = 0; i < nx; i++) b += (double)dx[i] * x[i];
    CHECK(fabs(a - b) <= 1e-5 * fabs(a) + 1e-6, "<dy, F(x)> %.9g vs <B(dy), x> %.9g", a, b);

    /* central differences of L = <dy, F(x)> at every input value */
    float *yp = malloc(ny * sizeof(float)), *ym = malloc(ny * sizeof(float));
    double worst = 0;
    for (size_t i = 0; i < nx; i++) {
        const float keep = x[i], e = 0.5f; /* linear in x: any step is exact up to rounding */
        x[i] = keep + e;
        bl_roi_align_forward(x, n, h, w, c, boxes, img, K, out, yp);
        x[i] = keep - e;
        bl_roi_align_forward(x, n, h, w, c, boxes, img, K, out, ym);
        x[i] = keep;
        double lp = 0, lm = 0;
        for (size_t j = 0; j < ny; j++) lp += (double)dy[j] * yp[j], lm += (double)dy[j] * ym[j];
        worst = fmax(worst, fabs((lp - lm) / (2 * e) - dx[i]));
    }
    CHECK(worst <= 1e-4, "central differences: %.3g", worst);

    /* bad input */
    bl_box bad = {2, 1, 1, 3};
    int zero = 0, three = 3;
    CHECK(bl_roi_align_forward(x, n, h, w, c, &bad, &zero, 1, out, y) == BL_ERR_ARG &&
              strstr(bl_error(), "is not a box"), "a box with x1 < x0: %s", bl_error());
    CHECK(bl_roi_align_forward(x, n, h, w, c, boxes, &three, 1, out, y) == BL_ERR_ARG &&
              strstr(bl_error(), "image 3 of 3"), "a box of a missing image: %s", bl_error());

    free(x), free(yref), free(dy), free(dxref), free(b5), free(boxes), free(img);
    free(y), free(dx), free(yp), free(ym);
    bl_st_free(&st);
    return check_done("test_roi_align");
}
