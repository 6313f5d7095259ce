/* RoIAlign with torchvision's semantics for roi_align(aligned=True, sampling_ratio=1): box corners
 * in map pixels (the map spans [0, W] x [0, H], pixel i covers [i, i + 1]), each of out x out
 * bins one bilinear sample at its centre, shifted by half a pixel into index space. Outside
 * [-1, size] a sample is 0; between -1 and 0 it clamps to the border, as torchvision does. The
 * plain kernel: boxes in order, channels innermost (NHWC), so the backward's accumulation order is
 * fixed. The crop head's sampling (docs to come) is this op. */
#include "bnlab/nn.h"

#include <math.h>

/* The four taps of a sample at (y, x) in index space, or 0 when it falls outside. */
static int taps(int h, int w, double y, double x, int idx[4], float wt[4])
{
    if (y < -1.0 || y > h || x < -1.0 || x > w) return 0;
    if (y <= 0) y = 0;
    if (x <= 0) x = 0;
    int y0 = (int)y, x0 = (int)x, y1, x1;
    if (y0 >= h - 1) y1 = y0 = h - 1, y = y0;
    else y1 = y0 + 1;
    if (x0 >= w - 1) x1 = x0 = w - 1, x = x0;
    else x1 = x0 + 1;
    const double ly = y - y0, lx = x - x0, hy = 1 - ly, hx = 1 - lx;
    idx[0] = y0 * w + x0, idx[1] = y0 * w + x1, idx[2] = y1 * w + x0, idx[3] = y1 * w + x1;
    wt[0] = (float)(hy * hx), wt[1] = (float)(hy * lx), wt[2] = (float)(ly * hx);
    wt[3] = (float)(ly * lx);
    return 1;
}

/* The taps of bin (py, px) of box b: its centre, shifted by half a pixel into index space. */
static int bin_taps(const bl_box *b, int h, int w, int out, int py, int px, int idx[4], float wt[4])
{
    const double bh = ((double)b->y1 - b->y0) / out, bw = ((double)b->x1 - b->x0) / out;
    return taps(h, w, b->y0 - 0.5 + (py + 0.5) * bh, b->x0 - 0.5 + (px + 0.5) * bw, idx, wt);
}

static bl_status check(int n, int h, int w, int c, const bl_box *boxes, const int *box_image,
                       int K, int out, const char *what)
{
    if (n < 0 || h < 1 || w < 1 || c < 1 || K < 0 || out < 1)
        return bl_fail(BL_ERR_ARG, "%s: bad sizes (n %d, map %dx%d, %d channels, %d boxes, %d "
                       "bins)", what, n, h, w, c, K, out);
    for (int k = 0; k < K; k++) {
        const bl_box *b = &boxes[k];
        if (box_image[k] < 0 || box_image[k] >= n)
            return bl_fail(BL_ERR_ARG, "%s: box %d belongs to image %d of %d", what, k,
                           box_image[k], n);
        if (!(isfinite(b->x0) && isfinite(b->y0) && isfinite(b->x1) && isfinite(b->y1)) ||
            b->x1 < b->x0 || b->y1 < b->y0)
            return bl_fail(BL_ERR_ARG, "%s: box %d (%g, %g, %g, %g) is not a box (x0 <= x1, "
                           "y0 <= y1, finite)", what, k, b->x0, b->y0, b->x1, b->y1);
    }
    return BL_OK;
}

bl_status bl_roi_align_forward(const float *x, int n, int h, int w, int c, const bl_box *boxes,
                               const int *box_image, int K, int out, float *y)
{
    bl_status st = check(n, h, w, c, boxes, box_image, K, out, "roi_align");
    if (st) return st;
    for (int k = 0; k < K; k++) {
        const float *xi = x + (size_t)box_image[k] * h * w * c;
        for (int py = 0; py < out; py++)
            for (int px = 0; px < out; px++) {
                float *o = y + (((size_t)k * out + py) * out + px) * c;
                int idx[4];
                float wt[4];
                if (!bin_taps(&boxes[k], h, w, out, py, px, idx, wt)) {
                    for (int ch = 0; ch < c; ch++) o[ch] = 0;
                    continue;
                }
                const float *p0 = xi + (size_t)idx[0] * c, *p1 = xi + (size_t)idx[1] * c;
                const float *p2 = xi + (size_t)idx[2] * c, *p3 = xi + (size_t)idx[3] * c;
                for (int ch = 0; ch < c; ch++)
                    o[ch] = wt[0] * p0[ch] + wt[1] * p1[ch] + wt[2] * p2[ch] + wt[3] * p3[ch];
            }
    }
    return BL_OK;
}

bl_status bl_roi_align_backward(const float *dy, int n, int h, int w, int c, const bl_box *boxes,
                                const int *box_image, int K, int out, float *dx)
{
    bl_status st = check(n, h, w, c, boxes, box_image, K, out, "roi_align backward");
    if (st) return st;
    for (int k = 0; k < K; k++) {
        float *di = dx + (size_t)box_image[k] * h * w * c;
        for (int py = 0; py < out; py++)
            for (int px = 0; px < out; px++) {
                const float *g = dy + (((size_t)k * out + py) * out + px) * c;
                int idx[4];
                float wt[4];
                if (!bin_taps(&boxes[k], h, w, out, py, px, idx, wt)) continue;
                for (int t = 0; t < 4; t++) {
                    float *d = di + (size_t)idx[t] * c;
                    for (int ch = 0; ch < c; ch++) d[ch] += wt[t] * g[ch];
                }
            }
    }
    return BL_OK;
}
