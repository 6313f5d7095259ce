/* libFuzzer target: a .npy file through bl_npy_read and, as images, bl_dataset_from_npy.
 * Input: the file's bytes. */
#include "bnlab/bnlab.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[256];
    fuzz_path(path, sizeof path, "array.npy");
    if (fuzz_write(path, data, size)) return 0;
    bl_npy a;
    if (!bl_npy_read(path, &a)) {
        bl_dataset d;
        if (!bl_dataset_from_npy(&a, NULL, path, &d)) bl_dataset_free(&d);
        bl_npy_free(&a);
    }
    bl_error_clear();
    unlink(path);
    return 0;
}
