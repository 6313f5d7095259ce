/* libFuzzer target: an image file through bl_img_probe and bl_img_decode (RGB or L, by the input's
 * length) and, when it decodes, bl_img_apply with a small Resize and CenterCrop (both also by the
 * length, the crop sometimes 0, sometimes larger than the image). Input: the file's bytes. */
#include "bnlab/bnlab.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[256];
    fuzz_path(path, sizeof path, "image");
    if (fuzz_write(path, data, size)) return 0;
    bl_img_format fmt;
    int h, w;
    /* images over 2^20 pixels are left to the tests: each would take seconds here */
    if (!bl_img_probe(path, &fmt, &h, &w) && (long)h * w <= 1 << 20) {
        const int gray = (int)(size & 1);
        bl_image im;
        if (!bl_img_decode(path, gray, &im)) {
            bl_img_recipe r = {1 + (int)(size % 13), (int)(size % 5) * 4, gray};
            bl_image o;
            if (!bl_img_apply(&im, &r, &o)) bl_image_free(&o);
            bl_image_free(&im);
        }
    }
    bl_error_clear();
    unlink(path);
    return 0;
}
