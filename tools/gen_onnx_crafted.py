#!/usr/bin/python3
"""Writes crafted ONNX graphs to tests/fixtures/onnx/: the operators and attributes no exported
fixture model has, with PyTorch-functional (float64) references, and malformed graphs that bnlab
must refuse by name.

Run with Debian's python3-onnx and python3-torch:
    /usr/bin/python3 tools/gen_onnx_crafted.py tests/fixtures/onnx
Good graphs (input "input", (N, 3, 32, 32), references on the shared inputs.npy normalized like
gen_onnx_fixtures.py, in crafted_*.ref.safetensors as "logits"; metadata precise=0):
  crafted_ops      opset 13: Conv with auto_pad SAME_LOWER (asymmetric pads) and a bias, BN eps
                   1e-3, LeakyRelu, AveragePool count_include_pad=1 ceil_mode=1, Sub and Div by
                   constants of ranks 4 and 3, HardSigmoid, Mul, MaxPool with dilations, a
                   depthwise Conv, Clip with inputs, Transpose, the shape chain Shape -> Gather ->
                   Unsqueeze -> Concat -> Reshape, MatMul, Add, Softmax(-1)
  crafted_opset7   opset 7, IR 3 (initializers listed as inputs): BN with spatial=1, Clip min/max
                   attributes, Dropout, GlobalAveragePool, Flatten, Gemm transB=0 alpha beta with
                   C (1, K), Softmax axis 1
  crafted_opset11  opset 11: auto_pad SAME_UPPER with stride 2, Squeeze/Unsqueeze by attribute,
                   Sigmoid, Concat of three, a Constant node, Reshape to (0, -1), Cast
  crafted_twoslot  opset 13: one BN reading one initializer as its scale, mean and variance (an
                   exporter's merge of equal tensors); its reference also holds the pooled
                   PreciseBN statistics (float64, the 64 inputs) as "pooled_mean" and "pooled_var",
                   and bnlab adapt's formulas on it with labels % 4 (Schneider et al.'s prior N =
                   32 on the pool, the first 32 images: "prior_mean", "prior_var"; the online mode
                   on the other 32 in batches of 8 with that prior: the final "online_mean",
                   "online_var" and the error after each batch, "online_err", %)
  crafted_fold     opset 13, for bnlab fold: Conv + BN with three channels whose gamma is tiny
                   (after folding they would get fewer than 4 bits under per-tensor int8), a
                   Conv whose output a BN and an Add both read (the BN must stay), Gemm transB=1
                   with C + BN on (N, C) with one such channel, Gemm transB=0 beta 0.5 without C
                   + BN; metadata fold_starved: the starved channels per foldable BN, counted in
                   numpy by the rule of docs/onnx.md (q = round(127 max|W'_c| / max|W'|) <= 7)
nanstats.onnx: smallcat (gen_onnx_fixtures.py) with NaN and Inf in one BN's running variance.
Bad graphs (bad_*.onnx): unsupported op, a cycle, a missing input, a weight of the wrong
channels, raw data shorter than its dims, external data, NaN in a weight."""
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bnlab_torch import save_safetensors  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
rng = np.random.default_rng(21)


def r(*shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def model(nodes, inits, out_dims, opset, ir=None, extra_inputs=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"] + list(out_dims))
    g = helper.make_graph(nodes, "crafted", [x] + list(extra_inputs), [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir or m.ir_version
    return m


def bn_arrays(c):
    return r(c, scale=0.2) + 1, r(c, scale=0.1), r(c, scale=0.3), np.abs(r(c)) + 0.5


def t(a):
    return torch.from_numpy(np.asarray(a)).double()


def crafted_ops():
    w1, b1 = r(8, 3, 3, 3, scale=0.3), r(8, scale=0.1)
    g1, be1, mu1, v1 = bn_arrays(8)
    sub = r(1, 8, 1, 1, scale=0.2)
    div = np.abs(r(8, 1, 1)) + 0.5
    wd = r(8, 1, 3, 3, scale=0.3)
    wm = r(8 * 7 * 7, 10, scale=0.05)
    bm = r(10, scale=0.1)
    inits = [init("w1", w1), init("b1", b1), init("g1", g1), init("be1", be1), init("mu1", mu1),
             init("v1", v1), init("sub", sub), init("div", div), init("wd", wd), init("wm", wm),
             init("bm", bm), init("lo", np.float32(-0.5)), init("hi", np.float32(2.0)),
             init("axes0", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64)),
             init("zero", np.array(0, np.int64))]
    n = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], auto_pad="SAME_LOWER",
                          strides=[2, 2], kernel_shape=[3, 3]),
         helper.make_node("BatchNormalization", ["c1", "g1", "be1", "mu1", "v1"], ["n1"],
                          epsilon=1e-3, momentum=0.8),
         helper.make_node("LeakyRelu", ["n1"], ["l1"], alpha=0.2),
         helper.make_node("AveragePool", ["l1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1),
         helper.make_node("Sub", ["p1", "sub"], ["s1"]),
         helper.make_node("Div", ["s1", "div"], ["d1"]),
         helper.make_node("HardSigmoid", ["d1"], ["h1"], alpha=0.3, beta=0.4),
         helper.make_node("Mul", ["d1", "h1"], ["m1"]),
         helper.make_node("MaxPool", ["m1"], ["q1"], kernel_shape=[2, 2], dilations=[2, 2]),
         helper.make_node("Conv", ["q1", "wd"], ["dw"], group=8, pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["dw", "lo", "hi"], ["cl"]),
         helper.make_node("Transpose", ["cl"], ["tr"], perm=[0, 2, 3, 1]),
         helper.make_node("Shape", ["tr"], ["sh"]),
         helper.make_node("Gather", ["sh", "zero"], ["n0"], axis=0),
         helper.make_node("Unsqueeze", ["n0", "axes0"], ["n0u"]),
         helper.make_node("Concat", ["n0u", "minus1"], ["tgt"], axis=0),
         helper.make_node("Reshape", ["tr", "tgt"], ["rs"]),
         helper.make_node("MatMul", ["rs", "wm"], ["mm"]),
         helper.make_node("Add", ["mm", "bm"], ["ad"]),
         helper.make_node("Softmax", ["ad"], ["logits"], axis=-1)]

    def ref(x):
        y = F.conv2d(F.pad(x, (1, 0, 1, 0)), t(w1), t(b1), stride=2)  # SAME_LOWER: extra first
        y = (y - t(mu1).view(1, -1, 1, 1)) / torch.sqrt(t(v1).view(1, -1, 1, 1) + 1e-3) * \
            t(g1).view(1, -1, 1, 1) + t(be1).view(1, -1, 1, 1)
        y = F.leaky_relu(y, 0.2)
        y = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=True)
        y = (y - t(sub)) / t(div)
        y = y * torch.clamp(0.3 * y + 0.4, 0, 1)
        y = F.max_pool2d(y, 2, 1, dilation=2)
        y = torch.clamp(F.conv2d(y, t(wd), padding=1, groups=8), -0.5, 2.0)
        y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)
        return torch.softmax(y @ t(wm) + t(bm), -1)
    return model(n, inits, [10], 13), ref


def crafted_opset7():
    w1 = r(6, 3, 3, 3, scale=0.3)
    g1, be1, mu1, v1 = bn_arrays(6)
    wg, cg = r(6, 10, scale=0.3), r(1, 10, scale=0.1)
    arrays = [("w1", w1), ("g1", g1), ("be1", be1), ("mu1", mu1), ("v1", v1), ("wg", wg), ("cg", cg)]
    inits = [init(k, a) for k, a in arrays]
    ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, a.shape) for k, a in arrays]
    n = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("BatchNormalization", ["c1", "g1", "be1", "mu1", "v1"], ["n1"],
                          spatial=1),
         helper.make_node("Clip", ["n1"], ["cl"], min=0.0, max=6.0),
         helper.make_node("Dropout", ["cl"], ["dr"], ratio=0.5),
         helper.make_node("GlobalAveragePool", ["dr"], ["gp"]),
         helper.make_node("Flatten", ["gp"], ["fl"]),
         helper.make_node("Gemm", ["fl", "wg", "cg"], ["gm"], transB=0, alpha=0.5, beta=2.0),
         helper.make_node("Softmax", ["gm"], ["logits"], axis=1)]

    def ref(x):
        y = F.conv2d(x, t(w1), stride=2, padding=1)
        y = (y - t(mu1).view(1, -1, 1, 1)) / torch.sqrt(t(v1).view(1, -1, 1, 1) + 1e-5) * \
            t(g1).view(1, -1, 1, 1) + t(be1).view(1, -1, 1, 1)
        y = torch.clamp(y, 0, 6).mean((2, 3))
        return torch.softmax(0.5 * y @ t(wg) + 2.0 * t(cg), 1)
    return model(n, inits, [10], 7, ir=3, extra_inputs=ins), ref


def crafted_opset11():
    w1, w2, w3 = r(4, 3, 3, 3, scale=0.3), r(5, 3, 1, 1, scale=0.3), r(3, 3, 5, 5, scale=0.2)
    g1, be1, mu1, v1 = bn_arrays(12)
    wl = r(12, 12, 1, 1, scale=0.3)
    inits = [init(k, a) for k, a in [("w1", w1), ("w2", w2), ("w3", w3), ("g1", g1),
                                     ("be1", be1), ("mu1", mu1), ("v1", v1), ("wl", wl)]]
    shp = helper.make_tensor("shp", TensorProto.INT64, [2], [0, -1])
    n = [helper.make_node("Conv", ["input", "w1"], ["a"], auto_pad="SAME_UPPER", strides=[2, 2],
                          kernel_shape=[3, 3]),
         helper.make_node("Conv", ["input", "w2"], ["b"], strides=[2, 2]),
         helper.make_node("Conv", ["input", "w3"], ["c"], pads=[1, 2, 2, 1], strides=[2, 2]),
         helper.make_node("Concat", ["a", "b", "c"], ["abc"], axis=1),
         helper.make_node("BatchNormalization", ["abc", "g1", "be1", "mu1", "v1"], ["n1"]),
         helper.make_node("Sigmoid", ["n1"], ["sg"]),
         helper.make_node("GlobalAveragePool", ["sg"], ["gp"]),
         helper.make_node("Squeeze", ["gp"], ["sq"], axes=[2, 3]),
         helper.make_node("Unsqueeze", ["sq"], ["us"], axes=[2, 3]),
         helper.make_node("Conv", ["us", "wl"], ["lg"]),
         helper.make_node("Constant", [], ["shape"], value=shp),
         helper.make_node("Cast", ["lg"], ["lc"], to=TensorProto.FLOAT),
         helper.make_node("Reshape", ["lc", "shape"], ["logits"])]

    def ref(x):
        a = F.conv2d(F.pad(x, (0, 1, 0, 1)), t(w1), stride=2)  # SAME_UPPER: extra last
        b = F.conv2d(x, t(w2), stride=2)
        c = F.conv2d(F.pad(x, (2, 1, 1, 2)), t(w3), stride=2)
        y = torch.cat([a, b, c], 1)
        y = (y - t(mu1).view(1, -1, 1, 1)) / torch.sqrt(t(v1).view(1, -1, 1, 1) + 1e-5) * \
            t(g1).view(1, -1, 1, 1) + t(be1).view(1, -1, 1, 1)
        y = torch.sigmoid(y).mean((2, 3), keepdim=True)
        return F.conv2d(y, t(wl)).reshape(y.shape[0], -1)
    return model(n, inits, [12], 11), ref


def bad_graphs(out):
    w = r(4, 3, 3, 3)
    ok = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
          helper.make_node("Relu", ["c"], ["logits"])]

    def save(name, nodes, inits, opset=13):
        onnx.save(model(nodes, inits, [4, 32, 32], opset), f"{out}/bad_{name}.onnx")
    save("unsupported", [ok[0], helper.make_node("Resize", ["c"], ["logits"])], [init("w", w)])
    save("cycle", [helper.make_node("Conv", ["input", "w"], ["c"]),
                   helper.make_node("Add", ["c", "d"], ["e"]),
                   helper.make_node("Relu", ["e"], ["d"]),
                   helper.make_node("Relu", ["d"], ["logits"])], [init("w", w)])
    save("missing", [helper.make_node("Conv", ["input", "w2"], ["c"]), ok[1]], [init("w", w)])
    save("shape", ok, [init("w", r(4, 5, 3, 3))])
    short = init("w", w)
    short.raw_data = short.raw_data[:100]
    save("truncated", ok, [short])
    ext = init("w", w)
    ext.ClearField("raw_data")
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value="weights.bin")
    save("external", ok, [ext])
    wn = w.copy()
    wn[1, 2, 0, 0] = np.nan
    save("nan", ok, [init("w", wn)])
    # shape arithmetic on constants past the limits (the review's findings)
    one8 = np.ones([1] * 8, np.float32)
    save("gather_rank", [helper.make_node("Gather", ["g8", "i8"], ["gg"]), ok[0],
                         helper.make_node("Relu", ["c"], ["logits"])],
         [init("w", w), init("g8", one8), init("i8", np.zeros([1] * 8, np.int64))])
    save("concat_dims", [helper.make_node("Concat", ["k1", "k2"], ["kk"], axis=1), ok[0],
                         helper.make_node("Relu", ["c"], ["logits"])],
         [init("w", w), init("k1", r(2, 3)), init("k2", r(1, 10))])
    save("reshape_neg", [helper.make_node("Reshape", ["k6", "neg"], ["kr"]), ok[0],
                         helper.make_node("Relu", ["c"], ["logits"])],
         [init("w", w), init("k6", r(6)), init("neg", np.array([-2, -3], np.int64))])


def main(out):
    raw = np.load(f"{out}/inputs.npy")
    x = (torch.from_numpy(raw).double() / 255 - t(MEAN).view(1, 3, 1, 1)) / t(STD).view(1, 3, 1, 1)
    for name, make in [("crafted_ops", crafted_ops), ("crafted_opset7", crafted_opset7),
                       ("crafted_opset11", crafted_opset11)]:
        m, ref = make()
        onnx.checker.check_model(m)
        onnx.save(m, f"{out}/{name}.onnx")
        with torch.no_grad():
            y = ref(x)
        save_safetensors(f"{out}/{name}.ref.safetensors", {"logits": y.float()},
                         {"mean": ",".join(map(str, MEAN)), "std": ",".join(map(str, STD)),
                          "precise": "0"})
    bad_graphs(out)
    # the mixed-precision failure: smallcat with non-finite running statistics in one BN
    m = onnx.load(f"{out}/smallcat.onnx")
    for t_ in m.graph.initializer:
        if t_.name.endswith("running_var"):
            v = numpy_helper.to_array(t_).copy()
            v[0], v[1] = np.nan, np.inf
            t_.CopyFrom(numpy_helper.from_array(v, t_.name))
            break
    onnx.save(m, f"{out}/nanstats.onnx")
    crafted_twoslot(out, x)
    crafted_fold(out, x)


def crafted_fold(out, x):
    g = np.random.default_rng(23)

    def rr(*shape, scale=1.0):
        return (scale * g.standard_normal(shape)).astype(np.float32)

    def bn(c, gamma=None):
        ga = np.ones(c, np.float32) if gamma is None else np.asarray(gamma, np.float32)
        return ga, rr(c, scale=0.1), rr(c, scale=0.3), (np.abs(rr(c)) + 0.5).astype(np.float32)
    wa, ba = rr(8, 3, 3, 3, scale=0.3), rr(8, scale=0.1)
    bn1 = bn(8, [1, 1.2, 0.9, 1.1, 1, 0.02, 0.03, 0.01])
    wb = rr(8, 8, 1, 1, scale=0.3)
    bn2 = bn(8)
    wg1, cg1 = rr(6, 8, scale=0.3), rr(6, scale=0.1)
    bn3 = bn(6, [1, 1, 0.9, 1, 0.005, 1.1])
    wg2 = rr(6, 4, scale=0.3)
    bn4 = bn(4)
    inits = [init("wa", wa), init("ba", ba), init("wb", wb), init("wg1", wg1), init("cg1", cg1),
             init("wg2", wg2)]
    for k, arrs in enumerate([bn1, bn2, bn3, bn4]):
        inits += [init(f"bn{k + 1}.{nm}", a) for nm, a in zip(["g", "b", "m", "v"], arrs)]

    def bnn(k, i, o):
        return helper.make_node("BatchNormalization", [i] + [f"bn{k}.{nm}" for nm in "gbmv"], [o])
    n = [helper.make_node("Conv", ["input", "wa", "ba"], ["ca"], pads=[1, 1, 1, 1], strides=[2, 2]),
         bnn(1, "ca", "n1"), helper.make_node("Relu", ["n1"], ["r1"]),
         helper.make_node("Conv", ["r1", "wb"], ["cb"]), bnn(2, "cb", "n2"),
         helper.make_node("Add", ["cb", "n2"], ["s2"]),
         helper.make_node("GlobalAveragePool", ["s2"], ["gp"]),
         helper.make_node("Flatten", ["gp"], ["fl"]),
         helper.make_node("Gemm", ["fl", "wg1", "cg1"], ["g1"], transB=1), bnn(3, "g1", "n3"),
         helper.make_node("Relu", ["n3"], ["r3"]),
         helper.make_node("Gemm", ["r3", "wg2"], ["g2"], beta=0.5), bnn(4, "g2", "logits")]
    m = model(n, inits, [4], 13)
    onnx.checker.check_model(m)
    onnx.save(m, f"{out}/crafted_fold.onnx")

    def bnf(y, arrs):
        ga, be, mu, v = (t(a) for a in arrs)
        sh = (1, -1, 1, 1) if y.dim() == 4 else (1, -1)
        return (y - mu.view(sh)) / torch.sqrt(v.view(sh) + 1e-5) * ga.view(sh) + be.view(sh)
    with torch.no_grad():
        ca = F.conv2d(x, t(wa), t(ba), stride=2, padding=1)
        cb = F.conv2d(torch.relu(bnf(ca, bn1)), t(wb))
        fl = (cb + bnf(cb, bn2)).mean((2, 3))
        g1 = fl @ t(wg1).T + t(cg1)
        logits = bnf(torch.relu(bnf(g1, bn3)) @ t(wg2), bn4)

    def starved(w, arrs, axis):  # the folded weight's channels along `axis` (numpy, float64)
        ga, _, _, v = arrs
        k = ga.astype(np.float64) / np.sqrt(v.astype(np.float64) + 1e-5)
        shape = [1] * w.ndim
        shape[axis] = -1
        wf = np.abs(w.astype(np.float64) * k.reshape(shape))
        cmax = wf.max(axis=tuple(d for d in range(w.ndim) if d != axis))
        return int((np.rint(127 * cmax / wf.max()) <= 7).sum())
    counts = [starved(wa, bn1, 0), starved(wg1, bn3, 0), starved(wg2, bn4, 1)]
    save_safetensors(f"{out}/crafted_fold.ref.safetensors", {"logits": logits.float()},
                     {"mean": ",".join(map(str, MEAN)), "std": ",".join(map(str, STD)),
                      "precise": "0", "fold_starved": ",".join(map(str, counts))})
    print("crafted_fold: starved per foldable BN", counts)


def crafted_twoslot(out, x):
    # a generator of its own, so the graphs above keep their bytes
    g = np.random.default_rng(22)
    w = (0.3 * g.standard_normal((6, 3, 3, 3))).astype(np.float32)
    s = (np.abs(g.standard_normal(6)) + 0.5).astype(np.float32)
    b = (0.1 * g.standard_normal(6)).astype(np.float32)
    wl = (0.3 * g.standard_normal((4, 6, 1, 1))).astype(np.float32)
    n = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "s", "b", "s", "s"], ["y"], epsilon=1e-3),
         helper.make_node("Relu", ["y"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Conv", ["p", "wl"], ["l"]),
         helper.make_node("Flatten", ["l"], ["logits"])]
    m = model(n, [init("w", w), init("s", s), init("b", b), init("wl", wl)], [4], 13)
    onnx.checker.check_model(m)
    onnx.save(m, f"{out}/crafted_twoslot.onnx")
    with torch.no_grad():
        c = F.conv2d(x, t(w), padding=1)
        sv = t(s).view(1, -1, 1, 1)
        y = torch.relu((c - sv) / torch.sqrt(sv + 1e-3) * sv + t(b).view(1, -1, 1, 1))
        logits = F.conv2d(y.mean((2, 3), keepdim=True), t(wl)).flatten(1)
        mean, var = c.mean((0, 2, 3)), c.var((0, 2, 3), unbiased=False)

        def head(cb, mu, v):  # the model after the conv, with BN statistics mu, v
            y = torch.relu((cb - mu.view(1, -1, 1, 1)) / torch.sqrt(v.view(1, -1, 1, 1) + 1e-3) *
                           sv + t(b).view(1, -1, 1, 1))
            return F.conv2d(y.mean((2, 3), keepdim=True), t(wl)).flatten(1)
        # adapt's formulas: mu = (N mu_s + n mu_t) / (N + n), variances alike
        prior, src = 32.0, t(s)
        labels = torch.from_numpy(np.load(f"{out}/labels.npy") % 4)
        cp = c[:32]
        n = 32.0
        prior_mean = (prior * src + n * cp.mean((0, 2, 3))) / (prior + n)
        prior_var = (prior * src + n * cp.var((0, 2, 3), unbiased=False)) / (prior + n)
        s1 = torch.zeros(6, dtype=torch.float64)
        s2 = torch.zeros(6, dtype=torch.float64)
        cnt, seen, wrong, errs = 0, 0, 0, []
        for i in range(32, 64, 8):
            cb = c[i:i + 8]
            s1 += cb.sum((0, 2, 3))
            s2 += (cb * cb).sum((0, 2, 3))
            cnt += cb.shape[0] * cb.shape[2] * cb.shape[3]
            seen += cb.shape[0]
            mu_t, v_t = s1 / cnt, s2 / cnt - (s1 / cnt) ** 2
            mu = (prior * src + seen * mu_t) / (prior + seen)
            v = (prior * src + seen * v_t) / (prior + seen)
            wrong += int((head(cb, mu, v).argmax(1) != labels[i:i + 8]).sum())
            errs.append(100.0 * wrong / seen)
    save_safetensors(f"{out}/crafted_twoslot.ref.safetensors",
                     {"logits": logits.float(), "pooled_mean": mean, "pooled_var": var,
                      "prior_mean": prior_mean, "prior_var": prior_var, "online_mean": mu,
                      "online_var": v, "online_err": torch.tensor(errs, dtype=torch.float64)},
                     {"mean": ",".join(map(str, MEAN)), "std": ",".join(map(str, STD)),
                      "precise": "0"})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/onnx")
