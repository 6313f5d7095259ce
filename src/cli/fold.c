/* bnlab fold model.onnx -o folded.onnx (or a checkpoint -o folded.safetensors, bl_fold_net): BN
 * folded into the Conv or Gemm before it, with the
 * statistics the model holds (run precise or adapt first to fold fresh ones), the layers that
 * cannot be folded named with the reason, and per folded layer the channels that a symmetric
 * per-tensor int8 scale would give fewer than 4 bits. With --tensors, the folded model's outputs
 * are checked against the unfolded one's on those images. */
#include "cli/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
/* the first output of every image, (n, K), with population statistics */
static bl_status outputs(bl_net *net, const bl_dataset *d, const bl_recipe *r, float **out, int *k)
{
    const int B = bl_net_max_batch(net), K = bl_net_tensor_at(net, bl_net_output(net, 0))->c;
    float *x = bl_alloc((size_t)B * bl_dataset_sample(d) * sizeof(float));
    int *ids = bl_malloc(sizeof(int) * (size_t)B);
    float *y = bl_malloc(sizeof(float) * (size_t)d->n * K);
    bl_status st = x && ids && y ? BL_OK : bl_fail(BL_ERR_NOMEM, "out of memory");
    for (int s = 0; s < d->n && !st; s += B) {
        const int n = d->n - s < B ? d->n - s : B;
        for (int i = 0; i < n; i++) ids[i] = s + i;
        if (!(st = bl_dataset_batch(d, r, ids, n, NULL, x, NULL)) && !(st = bl_net_infer(net, x, n)))
            memcpy(y + (size_t)s * K, bl_net_tensor_at(net, bl_net_output(net, 0))->data,
                   sizeof(float) * (size_t)n * K);
    }
    bl_free(x), free(ids);
    if (st) free(y), y = NULL;
    *out = y, *k = K;
    return st;
}

/* the largest |a - b| over the largest |a| */
static double worst_rel(const float *a, const float *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs(a[i]));
    return m > 0 ? d / m : d;
}

static void print_report(const char *model, const char *out, const bl_fold_report *r, int json,
                         double check)
{
    if (json) {
        printf("{\"model\":\"%s\",\"out\":\"%s\",\"folded\":%d,\"kept\":%d,\"channels\":%d,"
               "\"starved\":%d,\"check\":", model, out, r->folded, r->kept, r->channels, r->starved);
        if (check >= 0) printf("%.3g", check); /* -1: not checked; -2: a checkpoint's */
        else printf("null");
        printf(",\"layers\":[");
        for (int k = 0; k < r->folded && k < BL_FOLD_MAX; k++)
            printf("%s{\"bn\":\"%s\",\"into\":\"%s\",\"channels\":%d,\"starved\":%d,"
                   "\"min_ratio\":%.4g}", k ? "," : "", r->row[k].bn, r->row[k].into,
                   r->row[k].channels, r->row[k].starved, r->row[k].min_ratio);
        printf("],\"kept_layers\":[");
        for (int k = 0; k < r->kept && k < BL_FOLD_MAX; k++)
            printf("%s{\"bn\":\"%s\",\"why\":\"%s\"}", k ? "," : "", r->kept_name[k], r->kept_why[k]);
        printf("]}\n");
        return;
    }
    printf("%s: %d BN layers folded into the Conv or Gemm before them, %d kept\n", model,
           r->folded, r->kept);
    printf("%-44s %-40s %5s %8s %9s\n", "BN", "folded into", "C", "< 4 bits", "min range");
    for (int k = 0; k < r->folded && k < BL_FOLD_MAX; k++)
        printf("%-44s %-40s %5d %8d %9.4f\n", r->row[k].bn, r->row[k].into, r->row[k].channels,
               r->row[k].starved, r->row[k].min_ratio);
    for (int k = 0; k < r->kept && k < BL_FOLD_MAX; k++)
        printf("kept: %s: %s\n", r->kept_name[k], r->kept_why[k]);
    printf("< 4 bits: channels whose folded weights would take at most 15 levels under a symmetric "
           "per-tensor int8 scale (max |W_c| < 7.5/127 of the tensor's); min range: the smallest "
           "channel's max |W_c| over the tensor's\n");
    printf("int8 per tensor: %d of %d channels (%.1f%%) would get fewer than 4 bits%s\n",
           r->starved, r->channels, r->channels ? 100.0 * r->starved / r->channels : 0.0,
           r->starved ? ": quantize per channel, or equalize the channels' ranges first" : "");
    if (check >= 0)
        printf("check: the folded model's outputs within %.2g (of the largest |output|) of the "
               "unfolded model's\n", check);
    else if (check < -1)
        printf("the folded convolutions gain '<conv>.bias' and the folded BNs' tensors are gone: "
               "load it into the PyTorch model with those BN layers replaced by nn.Identity and "
               "bias=True on their convolutions\n");
    else
        printf("check: none (give --tensors or --images to compare the folded outputs on your "
               "images)\n");
    printf("wrote %s\n", out);
}

static int fold_run(const char *model, cli_onnx_data *o, const char *out, const cli_opt *opts,
                    int n)
{
    bl_onnx *m = NULL, *back = NULL;
    bl_dataset d = {0};
    bl_recipe rec;
    int rc;
    const int data = o->tensors[0] || o->images[0];
    if (data) {
        if ((rc = cli_onnx_open("fold", model, o, &m, &d, &rec)))
            return bl_onnx_free(m), bl_dataset_free(&d), rc;
    } else {
        if (bl_onnx_load(model, &m)) return fprintf(stderr, "bnlab fold: %s\n", bl_error()), 1;
        int c, h, w;
        if (o->shape[0] && (sscanf(o->shape, "%d,%d,%d", &c, &h, &w) != 3 ||
                            bl_onnx_set_input_shape(m, c, h, w))) {
            fprintf(stderr, "bnlab fold: --input-shape '%s': %s\n", o->shape,
                    bl_error()[0] ? bl_error() : "give C,H,W");
            return bl_onnx_free(m), 2;
        }
    }
    if (!bl_onnx_bn_count(m)) {
        rc = cli_onnx_no_bn("fold", model);
        bl_onnx_free(m), bl_dataset_free(&d);
        return rc;
    }
    static bl_fold_report r;
    bl_net net, net2;
    int built = 0, built2 = 0;
    float *y1 = NULL, *y2 = NULL;
    int k1 = 0, k2 = 0;
    double check = -1;
    bl_status st = bl_onnx_build(m, 64, &net);
    built = !st;
    if (!st) st = bl_onnx_fold(m, &net, out, "{\"fold\":true}", &r);
    if (!st && data) {
        /* the folded model read back and run on the same images */
        if (!(st = bl_onnx_load(out, &back)) &&
            !(st = bl_onnx_set_input_shape(back, bl_dataset_channels(&d), d.h, d.w)))
            st = bl_onnx_build(back, 64, &net2), built2 = !st;
        if (!st) st = outputs(&net, &d, &rec, &y1, &k1);
        if (!st) st = outputs(&net2, &d, &rec, &y2, &k2);
        if (!st && k1 != k2) st = bl_fail(BL_ERR_STATE, "the folded model has %d outputs, not %d", k2, k1);
        if (!st) check = worst_rel(y1, y2, (size_t)d.n * k1);
        if (!st && !(check <= 1e-4))
            st = bl_fail(BL_ERR_STATE, "the folded model's outputs differ by %.3g of the largest "
                         "|output| (more than 1e-4): report this model", check);
        if (st) remove(out);
    }
    cli_decode_done();
    if (st) {
        cli_error("fold", opts, n);
        rc = 1;
    } else {
        print_report(model, out, &r, o->json, check);
    }
    free(y1), free(y2);
    if (built) bl_net_free(&net);
    if (built2) bl_net_free(&net2);
    bl_onnx_free(m), bl_onnx_free(back), bl_dataset_free(&d);
    return rc;
}
#endif

int cmd_fold(int argc, char **argv)
{
#if defined(BL_HAVE_ZLIB) && defined(BL_HAVE_CJSON)
    cli_onnx_data o;
    cli_onnx_data_defaults(&o);
    char out[1024] = "";
    const cli_opt opts[] = {
        {"--out|-o", OPT_STR, out, sizeof out, 0, 0, NULL, "the folded model (.onnx)"},
        ONNX_DATA_OPTS(&o),
    };
    const int n = sizeof opts / sizeof *opts;
    const char *pos[1];
    int np;
    int rc = cli_parse("fold", "MODEL.onnx -o FOLDED.onnx [--images DIR | --tensors X.npy] [options], "
                       "or CKPT -o FOLDED.safetensors", argc, argv,
                       opts, n, pos, 1, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != 1 || !out[0]) {
        fprintf(stderr, "bnlab fold: %s; usage: bnlab fold MODEL.onnx -o FOLDED.onnx [--tensors "
                "X.npy], or bnlab fold CKPT -o FOLDED.safetensors\n",
                np != 1 ? "which model?" : "where to? (-o FOLDED.onnx)");
        return 2;
    }
    if (!strcmp(out, pos[0])) {
        fprintf(stderr, "bnlab fold: -o %s would overwrite the input: write to another file\n", out);
        return 2;
    }
    const size_t l = strlen(pos[0]), lo = strlen(out);
    bl_threads_set(o.threads);
    if (l > 5 && !strcmp(pos[0] + l - 5, ".onnx")) return fold_run(pos[0], &o, out, opts, n);
    /* a bnlab checkpoint: the folded weights as a PyTorch state_dict */
    if (lo < 12 || strcmp(out + lo - 12, ".safetensors")) {
        fprintf(stderr, "bnlab fold: %s is a checkpoint: its folded weights go to a "
                "-o FOLDED.safetensors (a state_dict in PyTorch's names and layouts)\n", pos[0]);
        return 2;
    }
    bl_net net;
    bl_ckpt_info info;
    if (bl_checkpoint_open(pos[0], 1, NULL, &net, &info)) {
        fprintf(stderr, "bnlab fold: %s\n", bl_error());
        return 1;
    }
    static bl_fold_report r;
    rc = bl_fold_net(&net, out, "{\"fold\":true}", &r) ? 1 : 0;
    if (rc) cli_error("fold", opts, n);
    else print_report(pos[0], out, &r, o.json, -2);
    bl_net_free(&net), bl_ckpt_info_free(&info);
    return rc;
#else
    (void)argc, (void)argv;
    fprintf(stderr, "bnlab fold: built without zlib or cJSON (scripts/install-deps.sh)\n");
    return 1;
#endif
}
