/* Checkpoints: an exact round trip (parameters, BN statistics and counts, momentum buffers,
 * metadata), and clear errors that change nothing for truncated, corrupt, foreign and
 * other-architecture files. */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/bnlab.h"
#include "check.h"

#include <unistd.h>

static void fill(bl_net *net, uint64_t seed)
{
    bl_net_init_params(net, seed);
    bl_rng r;
    bl_rng_seed(&r, seed + 1);
    for (size_t k = 0; k < bl_net_floats(net, BL_BLOCK_PARAMS); k++)
        bl_net_block(net, BL_BLOCK_OPTIM, NULL)[k] = (float)bl_rng_normal(&r);
    for (size_t k = 0; k < bl_net_floats(net, BL_BLOCK_BUFFERS); k++)
        bl_net_block(net, BL_BLOCK_BUFFERS, NULL)[k] = (float)bl_rng_uniform(&r);
    for (int i = 0; i < bl_net_bn_count(net); i++) bl_net_bn_at(net, i)->num_batches_tracked[0] = 7 + i;
}

static int same(const bl_net *a, const bl_net *b)
{
    int ok = 1;
    for (int i = 0; i < bl_net_param_count(a); i++) {
        const bl_param *p = bl_net_param_at(a, i), *q = bl_net_param_at(b, i);
        if (p->kind == BL_P_COUNT) {
            ok &= *p->i64 == *q->i64;
            continue;
        }
        ok &= !memcmp(p->data, q->data, p->count * sizeof(float));
        if (p->kind != BL_P_BUFFER)
            ok &= !memcmp(bl_net_block(a, BL_BLOCK_OPTIM, NULL) + p->offset,
                          bl_net_block(b, BL_BLOCK_OPTIM, NULL) + q->offset,
                          p->count * sizeof(float));
    }
    return ok;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

int main(int argc, char **argv)
{
    char dir[] = "/tmp/bnlab_ckpt_XXXXXX", path[256], bad[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    bl_net a, b;
    CHECK(bl_resnet(&a, 8, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    CHECK(bl_resnet(&b, 8, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    fill(&a, 1);
    fill(&b, 2);
    bl_ckpt_info info = {.epoch = 3, .step = 1234, .seed = 99, .ep_loss = 0.25, .ep_wrong = 3,
                         .ep_seen = 64, .config = "{\"model\":\"resnet8\"}"},
                 got;
    CHECK(bl_checkpoint_save(&a, path, &info) == BL_OK, "save: %s", bl_error());
    CHECK(access(path, F_OK) == 0, "checkpoint written");
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0, "temporary file left behind");
    CHECK(bl_checkpoint_load(&b, path, 1, &got) == BL_OK, "load: %s", bl_error());
    CHECK(same(&a, &b), "round trip is not exact");
    CHECK(got.epoch == 3 && got.step == 1234 && got.seed == 99 && !strcmp(got.config, info.config) &&
              got.ep_loss == 0.25 && got.ep_wrong == 3 && got.ep_seen == 64,
          "metadata round trip: epoch %d step %ld seed %llu", got.epoch, got.step,
          (unsigned long long)got.seed);
    bl_ckpt_info_free(&got);
    /* opened from its metadata alone */
    bl_net c;
    CHECK(bl_checkpoint_open(path, 4, NULL, &c, NULL) == BL_OK, "open: %s", bl_error());
    CHECK(!memcmp(bl_net_block(&a, BL_BLOCK_PARAMS, NULL), bl_net_block(&c, BL_BLOCK_PARAMS, NULL),
                  bl_net_floats(&a, BL_BLOCK_PARAMS) * sizeof(float)),
          "open: params");
    bl_net_free(&c);

    /* truncated at several points, and corrupt bytes: an error naming the file, b unchanged */
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *blob = malloc(size);
    CHECK(fread(blob, 1, size, f) == (size_t)size, "read back");
    fclose(f);
    fill(&b, 5);
    bl_net keep;
    CHECK(bl_resnet(&keep, 8, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    fill(&keep, 5);
    long cuts[] = {0, 5, 8, 100, size / 2, size - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof *cuts; k++) {
        write_bytes(bad, blob, (size_t)cuts[k]);
        bl_status st = bl_checkpoint_load(&b, bad, 1, NULL);
        CHECK(st == BL_ERR_FORMAT && strstr(bl_error(), bad), "truncated at %ld: status %d, '%s'",
              cuts[k], st, bl_error());
        CHECK(same(&b, &keep), "a failed load changed the net (cut %ld)", cuts[k]);
    }
    char *junk = malloc(size);
    memcpy(junk, blob, size);
    memset(junk + 8, '#', 40); /* the header's JSON */
    write_bytes(bad, junk, size);
    CHECK(bl_checkpoint_load(&b, bad, 1, NULL) == BL_ERR_FORMAT && strstr(bl_error(), "JSON"),
          "corrupt header: %s", bl_error());
    CHECK(bl_checkpoint_load(&b, "/nonexistent/x.safetensors", 1, NULL) == BL_ERR_IO,
          "missing file: %s", bl_error());

    /* forged headers: numbers outside int64's range (converted only after the range check:
     * UBSan flagged the old order), a shape whose product wraps around to the span's 0 bytes
     * (it passed the size check), offsets before the data */
    static const char *forged[][2] = {
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1e30],\"data_offsets\":[0,4]}}", "bad shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}",
         "overflows"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-1e300,4]}}", "outside the file"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", "outside the file"},
    };
    for (size_t k = 0; k < sizeof forged / sizeof *forged; k++) {
        char buf[256];
        const size_t hl = strlen(forged[k][0]);
        for (int i = 0; i < 8; i++) buf[i] = (char)((uint64_t)hl >> (8 * i));
        memcpy(buf + 8, forged[k][0], hl);
        memset(buf + 8 + hl, 0, 4); /* 4 data bytes */
        write_bytes(bad, buf, 8 + hl + 4);
        bl_safetensors fs;
        bl_status st = bl_st_read(bad, &fs);
        CHECK(st == BL_ERR_FORMAT && strstr(bl_error(), forged[k][1]), "forged header %zu: %d '%s'",
              k, st, bl_error());
        if (!st) bl_st_free(&fs);
    }

    /* malformed metadata in an otherwise good checkpoint: the recipe, the head, the architecture */
    static const char *meta_bad[][3] = {
        {"recipe", "{\"name\":\"x\",\"channels\":0}", "the 'recipe' metadata is malformed"},
        {"recipe", "not json", "the 'recipe' metadata is malformed"},
        /* (the head's options: test_levels, on a model that has them) */
        {"plan", "{\"norm_batch\":-3}", "the 'plan' metadata's norm_batch is malformed"},
        {"plan", "[1]", "the 'plan' metadata is malformed"},
        {"epoch", "12x", "the 'epoch' metadata '12x' is not an integer"},
        {"epoch_progress", "1.5,3", "the 'epoch_progress' metadata '1.5,3' is malformed"},
        /* an architecture the tensors do not hold: refused while it is declared, before anything
         * of its size is allocated (a forged width or depth would otherwise allocate that network
         * first) */
        {"width", "100000", "needs tensor 'conv1.weight' of shape [100000, 1, 3, 3]"},
        {"arch", "resnet20000", "has a tensor 'layer1.1.conv1.weight' that the file lacks"},
        {"arch", "resnet14", "has a tensor 'layer1.1.conv1.weight' that the file lacks"},
        {"classes", "200000000", "needs tensor 'fc.weight' of shape [200000000, 16]"},
        {"input", "100000,28,1", "at most 1024x1024"},
    };
    for (size_t k = 0; k < sizeof meta_bad / sizeof *meta_bad; k++) {
        bl_safetensors src;
        bl_st_writer w = {0};
        CHECK(bl_st_read(path, &src) == BL_OK, "%s", bl_error());
        for (int i = 0; i < src.n; i++)
            bl_st_add(&w, src.e[i].name, src.e[i].dtype, src.e[i].ndim, src.e[i].shape,
                      src.data + src.e[i].begin);
        for (int i = 0; i < src.n_meta; i++) bl_st_set_meta(&w, src.meta_key[i], src.meta_val[i]);
        bl_st_set_meta(&w, meta_bad[k][0], meta_bad[k][1]);
        CHECK(bl_st_write(&w, bad) == BL_OK, "%s", bl_error());
        bl_st_writer_free(&w);
        bl_st_free(&src);
        bl_net o;
        bl_ckpt_info oi;
        bl_status st = bl_checkpoint_open(bad, 2, NULL, &o, &oi);
        CHECK(st == BL_ERR_FORMAT && strstr(bl_error(), meta_bad[k][2]), "malformed %s '%s': %d '%s'",
              meta_bad[k][0], meta_bad[k][1], st, bl_error());
        if (!st) bl_net_free(&o), bl_ckpt_info_free(&oi);
    }

    /* foreign: a safetensors file without bnlab metadata (the PyTorch fixture) */
    char fx[1024];
    snprintf(fx, sizeof fx, "%s/resnet8_w4.safetensors", argc > 1 ? argv[1] : "tests/fixtures");
    CHECK(bl_checkpoint_load(&b, fx, 0, NULL) == BL_ERR_FORMAT &&
              strstr(bl_error(), "not a bnlab checkpoint"), "foreign: %s", bl_error());
    CHECK(same(&b, &keep), "a foreign file changed the net");
    /* another architecture: width, and depth */
    bl_net w8;
    CHECK(bl_resnet(&w8, 8, 8, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    CHECK(bl_checkpoint_load(&w8, path, 0, NULL) == BL_ERR_FORMAT &&
              strstr(bl_error(), "another architecture") && strstr(bl_error(), "conv1.weight"),
          "width mismatch: %s", bl_error());
    bl_net_free(&w8);
    bl_net r14;
    CHECK(bl_resnet(&r14, 14, 4, 10, 28, 28, 1, 2) == BL_OK, "%s", bl_error());
    CHECK(bl_checkpoint_load(&r14, path, 0, NULL) == BL_ERR_FORMAT &&
              strstr(bl_error(), "resnet8") && strstr(bl_error(), "resnet14"),
          "depth mismatch: %s", bl_error());
    bl_net_free(&r14);
    /* writing where it cannot: an error, the existing checkpoint untouched */
    CHECK(bl_checkpoint_save(&a, "/nonexistent/dir/x.safetensors", &info) == BL_ERR_IO,
          "unwritable: %s", bl_error());
    CHECK(bl_checkpoint_load(&b, path, 1, NULL) == BL_OK && same(&a, &b), "checkpoint intact");

    free(blob);
    free(junk);
    unlink(path);
    unlink(bad);
    rmdir(dir);
    bl_net_free(&a);
    bl_net_free(&b);
    bl_net_free(&keep);
    return check_done("test_checkpoint");
}
