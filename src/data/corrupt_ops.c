/* Image operations the corruptions share: gaussian and disk kernels, 2-d convolution with
 * reflected borders, bilinear sampling, area resampling. Images are double, (h, w), values in
 * [0, 1] (ImageNet-C works in x / 255 too). */
#include "data/corrupt_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int bl_reflect101(int i, int n)
{
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}

int bl_clampi(int i, int n) { return i < 0 ? 0 : i >= n ? n - 1 : i; }

int bl_gauss_kernel(double sigma, double truncate, double *k, int max_half)
{
    int half = (int)(truncate * sigma + 0.5); /* scipy's radius: 0 for sigma < 0.125 at 4 */
    if (half > max_half) half = max_half;
    double s = 0;
    for (int i = -half; i <= half; i++) s += k[i + half] = exp(-0.5 * i * i / (sigma * sigma));
    for (int i = 0; i <= 2 * half; i++) k[i] /= s;
    return half;
}

void bl_conv2d(const double *in, int h, int w, const double *k, int kh, int kw, int clamp,
               double *out)
{
    const int ry = kh / 2, rx = kw / 2;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double acc = 0;
            for (int a = 0; a < kh; a++) {
                int yy = clamp ? bl_clampi(y + a - ry, h) : bl_reflect101(y + a - ry, h);
                for (int b = 0; b < kw; b++) {
                    int xx = clamp ? bl_clampi(x + b - rx, w) : bl_reflect101(x + b - rx, w);
                    acc += k[a * kw + b] * in[yy * w + xx];
                }
            }
            out[y * w + x] = acc;
        }
}

void bl_gauss_blur(double *img, int h, int w, double sigma, int clamp, double *tmp)
{
    double k[2 * BL_KMAX + 1];
    const int half = bl_gauss_kernel(sigma, 4.0, k, BL_KMAX), n = 2 * half + 1;
    bl_conv2d(img, h, w, k, 1, n, clamp, tmp);
    bl_conv2d(tmp, h, w, k, n, 1, clamp, img);
}

void bl_gauss_blur3(double *img, int h, int w, double sigma, double *tmp)
{
    double k[2 * BL_KMAX + 1];
    const int half = bl_gauss_kernel(sigma, 3.0, k, BL_KMAX), n = 2 * half + 1;
    bl_conv2d(img, h, w, k, 1, n, 0, tmp);
    bl_conv2d(tmp, h, w, k, n, 1, 0, img);
}

double bl_bilinear(const double *img, int h, int w, double y, double x, int clamp)
{
    const int y0 = (int)floor(y), x0 = (int)floor(x);
    const double fy = y - y0, fx = x - x0;
    double v = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            const double wt = (a ? fy : 1 - fy) * (b ? fx : 1 - fx);
            if (wt == 0) continue;
            int yy = y0 + a, xx = x0 + b;
            yy = clamp ? bl_clampi(yy, h) : bl_reflect101(yy, h);
            xx = clamp ? bl_clampi(xx, w) : bl_reflect101(xx, w);
            v += wt * img[yy * w + xx];
        }
    return v;
}

/* PIL's BOX resampling along one axis: output pixel o averages the input pixels whose centres
 * fall in (c - s/2, c + s/2], c = (o + 0.5) * scale, s = max(scale, 1): a plain average when
 * shrinking, the nearest pixel when enlarging. */
static void box_taps(int n, int on, int o, int *lo, int *hi)
{
    const double scale = (double)n / on, s = scale > 1 ? scale : 1, c = (o + 0.5) * scale;
    int a = n, b = -1;
    for (int i = (int)floor(c - s) - 1; i <= (int)ceil(c + s) + 1; i++) {
        const double u = (i + 0.5 - c) / s;
        if (i >= 0 && i < n && u > -0.5 && u <= 0.5) a = i < a ? i : a, b = i > b ? i : b;
    }
    if (b < a) a = b = o * n / on; /* cannot happen for on, n >= 1; a safe fallback */
    *lo = a, *hi = b;
}

void bl_resize_box(const double *in, int h, int w, double *out, int oh, int ow)
{
    for (int y = 0; y < oh; y++) {
        int y0, y1;
        box_taps(h, oh, y, &y0, &y1);
        for (int x = 0; x < ow; x++) {
            int x0, x1;
            box_taps(w, ow, x, &x0, &x1);
            double acc = 0;
            for (int yy = y0; yy <= y1; yy++)
                for (int xx = x0; xx <= x1; xx++) acc += in[yy * w + xx];
            out[y * ow + x] = acc / ((y1 - y0 + 1) * (x1 - x0 + 1));
        }
    }
}
