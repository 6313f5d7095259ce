/* Internal: image operations shared by the corruptions (src/data/corrupt.c). Images are double,
 * row-major (h, w). */
#ifndef BNLAB_DATA_CORRUPT_OPS_H
#define BNLAB_DATA_CORRUPT_OPS_H

#define BL_KMAX 16 /* largest kernel half-width */

/* Border indices: reflect without repeating the edge (OpenCV's BORDER_REFLECT_101), or clamp. */
int bl_reflect101(int i, int n);
int bl_clampi(int i, int n);
/* k[0..2*half]: a normalized gaussian, half = round(truncate * sigma) clipped to [1, max_half];
 * returns half. */
int bl_gauss_kernel(double sigma, double truncate, double *k, int max_half);
/* out = in correlated with k (kh x kw, centred), borders reflected (clamp = 0) or clamped. */
void bl_conv2d(const double *in, int h, int w, const double *k, int kh, int kw, int clamp,
               double *out);
/* In place, separable; tmp holds h * w. */
void bl_gauss_blur(double *img, int h, int w, double sigma, int clamp, double *tmp);
/* The same with the kernel truncated at 3 sigma and reflected borders (elastic's fields). */
void bl_gauss_blur3(double *img, int h, int w, double sigma, double *tmp);
double bl_bilinear(const double *img, int h, int w, double y, double x, int clamp);
/* Resampling to (oh, ow) with PIL's BOX filter: averages when shrinking, nearest when enlarging. */
void bl_resize_box(const double *in, int h, int w, double *out, int oh, int ow);

#endif
