/* The decoding entry points of a build made without libjpeg or libpng: each says how to get them
 * (CMakeLists.txt compiles this file instead of image_decode.c). Resizing and folder scanning
 * need neither and are always built; fetching a batch fails here, at its first decode. */
#include "bnlab/images.h"

#include <string.h>

static bl_status absent(const char *what)
{
    return bl_fail(BL_ERR_STATE, "%s: this bnlab was built without libjpeg or libpng: install "
                   "libjpeg-dev and libpng-dev (scripts/install-deps.sh) and rebuild",
                   what ? what : "image");
}

bl_status bl_img_probe(const char *path, bl_img_format *fmt, int *h, int *w)
{
    *fmt = 0, *h = *w = 0;
    return absent(path);
}

bl_status bl_img_decode(const char *path, int gray, bl_image *out)
{
    (void)gray;
    memset(out, 0, sizeof *out);
    return absent(path);
}

bl_status bl_img_decode_mem(const void *data, size_t len, const char *name, int gray,
                            bl_image *out)
{
    (void)data, (void)len, (void)gray;
    memset(out, 0, sizeof *out);
    return absent(name);
}
