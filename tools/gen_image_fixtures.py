#!/usr/bin/python3
"""Writes tests/fixtures/images/: JPEG and PNG images of every kind bnlab decodes, what PIL and
torchvision make of them, a tiny ImageFolder tree and broken files; the anchor of
tests/test_images.c (src/data/image_*.c).

Run with Debian's python3-pil (9.4), python3-torchvision and numpy:
    /usr/bin/python3 tools/gen_image_fixtures.py tests/fixtures/images
Writes
  *.jpg, *.png        the images: JPEG baseline and progressive, RGB (4:2:0, 4:2:2, 4:4:4) and
                      greyscale; PNG RGB, RGBA, L, LA, P (1/4/8-bit, with and without tRNS, an
                      index past the palette), 1-bit, 2-bit grey, 16-bit RGB, RGBA and grey,
                      Adam7-interlaced; sizes 37x23, 64x48, 300x200, 15x90 and a few others
  reference.safetensors
                      "<file>:<recipe>" -> uint8 (h, w, c): what
                      Compose([Resize(S), CenterCrop(C)]) gives on Image.open(f).convert('RGB')
                      (or 'L' for the g_ recipes), as np.asarray, before ToTensor; recipes in
                      RECIPES; metadata "mode:<file>" is the mode PIL opens the file in, and
                      "prefix:<file>" (for PREFIX_FILES) the shortest prefix of the file PIL
                      decodes (PIL decodes a PNG once its last row is there; a JPEG only whole)
  folder/             an ImageFolder tree (classes b_class, a_class; nested directories, a .txt,
                      a .webp, hidden files), and folder.txt: torchvision's ImageFolder(folder)
                      .samples as "label relative/path" lines, less what bnlab leaves out by
                      design: hidden files (torchvision would load b_class/.hidden.png) and
                      images other than JPEG and PNG (it would load a_class/photo.webp)
  bad/                files PIL refuses (checked here): empty, truncated JPEG (mid-scan,
                      baseline and progressive; in the headers; only the EOI marker missing),
                      truncated PNG, a bad IHDR checksum, headers
                      claiming 100000x100000 (PNG) and 40000x40000 (JPEG), not an image; and,
                      which PIL opens and bnlab refuses by name, a CMYK JPEG and a progressive
                      JPEG of 600 scans
Content: gradients, a sine pattern, a disc and a bar (sharp edges for the resampling), a little
seeded noise."""
import io
import os
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image, ImageFile
from torchvision import datasets, transforms

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bnlab_torch import save_safetensors  # noqa: E402

# name -> (Resize S or None, CenterCrop C or None, PIL mode)
RECIPES = {
    "r32c32": (32, 32, "RGB"),
    "r23c20": (23, 20, "RGB"),      # odd margins: CenterCrop's round() is half to even
    "r44c28": (44, 28, "RGB"),
    "c28": (None, 28, "RGB"),       # no resize: a window of the decoded pixels, or zero padding
    "r20": (20, None, "RGB"),       # Resize alone: the shorter side 20 (not for long thin images)
    "g_r32c32": (32, 32, "L"),
    "g_c28": (None, 28, "L"),
    "full": (None, None, "RGB"),    # the decoded image (small images only)
}
FULL_MAX_PIXELS = 40 * 40
PREFIX_FILES = ["png_rgb_37x23.png", "png_adam7_37x23.png", "png_p4_37x23.png",
                "jpeg_rgb444_64x48.jpg", "jpeg_prog444_15x90.jpg"]


def content(h, w, seed, noise=5.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                    128 + 100 * np.sin(x / 3.1 + y / 4.7)], -1)
    disc = (y - 0.4 * h) ** 2 + (x - 0.6 * w) ** 2 < (0.25 * min(h, w)) ** 2
    img[disc] = [250, 30, 60]
    img[int(0.6 * h):int(0.8 * h) + 1, int(0.1 * w):int(0.4 * w) + 1] = [20, 200, 40]
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def grey(h, w, seed):
    return np.asarray(Image.fromarray(content(h, w, seed)).convert("L"))


# ---- a PNG writer for what PIL cannot write (16-bit RGB, 2-bit grey, Adam7, bad palettes) ----
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def png_bytes(w, h, depth, ctype, rows, extra=b"", interlace=0):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def adam7_rows(px):
    """The rows of the seven Adam7 passes of an 8-bit (h, w, c) image, in file order."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    rows = []
    for x0, y0, dx, dy in passes:
        sub = px[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            rows += [r.tobytes() for r in sub]
    return rows


def pack_bits(v, bits):
    """A row of small integers packed MSB first, bits per value."""
    per = 8 // bits
    v = list(v) + [0] * (-len(v) % per)
    out = bytearray()
    for i in range(0, len(v), per):
        b = 0
        for k in range(per):
            b |= v[i + k] << (8 - bits * (k + 1))
        out.append(b)
    return bytes(out)


def make_images(d):
    """Writes the images; returns their file names."""
    names = []

    def pil(name, im, **kw):
        im.save(os.path.join(d, name), **kw)
        names.append(name)

    def raw(name, data):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        names.append(name)

    # JPEG: baseline/progressive, subsampling 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    pil("jpeg_rgb420_300x200.jpg", Image.fromarray(content(200, 300, 1)), quality=90, subsampling=2)
    pil("jpeg_prog420_300x200.jpg", Image.fromarray(content(200, 300, 2)), quality=85,
        subsampling=2, progressive=True)
    pil("jpeg_rgb444_64x48.jpg", Image.fromarray(content(48, 64, 3)), quality=95, subsampling=0)
    pil("jpeg_rgb422_37x23.jpg", Image.fromarray(content(23, 37, 4)), quality=90, subsampling=1)
    pil("jpeg_prog444_15x90.jpg", Image.fromarray(content(90, 15, 5)), quality=90, subsampling=0,
        progressive=True)
    pil("jpeg_rgb420_15x90.jpg", Image.fromarray(content(90, 15, 6)), quality=75, subsampling=2)
    pil("jpeg_gray_64x48.jpg", Image.fromarray(grey(48, 64, 7)), quality=90)
    pil("jpeg_proggray_37x23.jpg", Image.fromarray(grey(23, 37, 8)), quality=90, progressive=True)

    # PNG through PIL
    pil("png_rgb_37x23.png", Image.fromarray(content(23, 37, 10)))
    pil("png_rgb_300x200.png", Image.fromarray(content(200, 300, 11, noise=1.5)))
    rgba = np.concatenate([content(48, 64, 12), content(48, 64, 13)[..., :1]], -1)
    pil("png_rgba_64x48.png", Image.fromarray(rgba, "RGBA"))
    pil("png_l_15x90.png", Image.fromarray(grey(90, 15, 14)))
    la = np.stack([grey(23, 37, 15), grey(23, 37, 16)[::-1]], -1)
    pil("png_la_37x23.png", Image.fromarray(la, "LA"))
    p = Image.fromarray(content(48, 64, 17)).quantize(64)
    pil("png_p_64x48.png", p)
    p = Image.fromarray(content(23, 37, 18)).quantize(16)
    pil("png_p4_37x23.png", p, bits=4)
    p = Image.fromarray(content(23, 37, 19)).quantize(32)
    pil("png_ptrns_37x23.png", p, transparency=bytes(range(0, 256, 8)))
    pil("png_ltrns_64x48.png", Image.fromarray(grey(48, 64, 20)), transparency=0)
    pil("png_rgbtrns_15x90.png", Image.fromarray(content(90, 15, 21)), transparency=(0, 0, 0))
    pil("png_1bit_64x48.png", Image.fromarray(grey(48, 64, 22) > 128).convert("1"))
    # 16-bit grey: mostly below 256 (PIL clips, it does not scale), some above
    g16 = (grey(48, 64, 23).astype(np.uint16) * 2).astype(np.uint16)
    g16[:8] = np.linspace(0, 65535, 64).astype(np.uint16)
    pil("png_gray16_64x48.png", Image.fromarray(g16))
    # the rest with the writer above
    c16 = content(23, 37, 24).astype(np.uint16) * 257 + np.arange(37, dtype=np.uint16)[:, None]
    raw("png_rgb16_37x23.png", png_bytes(37, 23, 16, 2, [r.astype(">u2").tobytes() for r in c16]))
    a16 = np.concatenate([content(90, 15, 25).astype(np.uint16) * 257 + 100,
                          np.full((90, 15, 1), 40000, np.uint16)], -1)
    raw("png_rgba16_15x90.png", png_bytes(15, 90, 16, 6, [r.astype(">u2").tobytes() for r in a16]))
    la16 = np.stack([grey(23, 37, 26).astype(np.uint16) * 256 + 255,
                     np.full((23, 37), 1234, np.uint16)], -1)
    raw("png_la16_37x23.png", png_bytes(37, 23, 16, 4, [r.astype(">u2").tobytes() for r in la16]))
    g2 = grey(90, 15, 27) // 64
    raw("png_gray2_15x90.png", png_bytes(15, 90, 2, 0, [pack_bits(r, 2) for r in g2]))
    raw("png_adam7_37x23.png", png_bytes(37, 23, 8, 2, adam7_rows(content(23, 37, 28)),
                                         interlace=1))
    # tiny interlaced images: Adam7 passes without columns or rows are left out of the file
    for w, h in [(1, 1), (2, 3), (5, 1), (1, 9), (9, 2)]:
        raw(f"png_adam7_{w}x{h}.png", png_bytes(w, h, 8, 2, adam7_rows(content(h, w, 50 + w * h)),
                                               interlace=1))
    # palette of 4 entries, indices up to 200: PIL maps the missing entries to grey (i, i, i)
    idx = (grey(23, 37, 29).astype(np.int64) * 201 // 256).astype(np.uint8)
    idx[idx > 100] = idx[idx > 100] % 4
    plte = chunk(b"PLTE", bytes([10, 20, 30, 200, 100, 50, 0, 255, 0, 255, 255, 255]))
    raw("png_poob_37x23.png", png_bytes(37, 23, 8, 3, [r.tobytes() for r in idx], plte))
    # a bad IDAT checksum: PIL does not check it, so the image is good
    b = bytearray(png_bytes(37, 23, 8, 2, [r.tobytes() for r in content(23, 37, 32)]))
    b[-13] ^= 0xFF  # the last byte of the IDAT CRC (IEND's 12 bytes follow)
    raw("png_idatcrc_37x23.png", bytes(b))
    # extreme shapes
    pil("png_rgb_1x1.png", Image.fromarray(np.array([[[200, 100, 50]]], np.uint8)))
    pil("png_rgb_3x120.png", Image.fromarray(content(120, 3, 30)))
    pil("jpeg_rgb420_250x7.jpg", Image.fromarray(content(7, 250, 31)), quality=90)
    return names


def shortest_prefix(path):
    """The shortest prefix PIL decodes; every longer one decodes to the same pixels (checked)."""
    with open(path, "rb") as f:
        b = f.read()
    whole = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    first = None
    for n in range(len(b) + 1):
        try:
            px = np.asarray(Image.open(io.BytesIO(b[:n])).convert("RGB"))
        except Exception:  # noqa: BLE001
            assert first is None, f"{path}: prefix {n} fails after {first} decoded"
            continue
        assert np.array_equal(px, whole), f"{path}: prefix {n} decodes to other pixels"
        first = n if first is None else first
    return first


def reference(path, resize, crop, mode):
    im = Image.open(path).convert(mode)
    t = []
    if resize:
        t.append(transforms.Resize(resize))
    if crop:
        t.append(transforms.CenterCrop(crop))
    out = np.asarray(transforms.Compose(t)(im) if t else im)
    return out.reshape(out.shape[0], out.shape[1], -1)


def make_folder(d, src):
    """The ImageFolder tree from copies of small images; returns torchvision's samples."""
    def put(rel, from_name=None, data=None):
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if from_name:
            with open(os.path.join(src, from_name), "rb") as f:
                data = f.read()
        with open(p, "wb") as f:
            f.write(data)

    # a_class: three image kinds, a .txt, a .webp (skipped: bnlab reads JPEG and PNG), hidden
    put("a_class/one.jpg", "jpeg_rgb422_37x23.jpg")
    put("a_class/two.jpeg", "jpeg_proggray_37x23.jpg")
    put("a_class/Three.png", "png_la_37x23.png")
    put("a_class/readme.txt", data=b"not an image\n")
    put("a_class/photo.webp", data=b"RIFF\x10\x00\x00\x00WEBPVP8 ")
    put("a_class/.DS_Store", data=b"\x00\x00\x00\x01Bud1")
    # b_class: an upper-case extension, nested directories in os.walk's sorted order
    # (b_class, b_class/sub, b_class/sub-x, b_class/sub/inner: '-' sorts before '/')
    put("b_class/Z.JPG", "jpeg_rgb420_15x90.jpg")
    put("b_class/a.png", "png_p4_37x23.png")
    put("b_class/notes.txt", data=b"notes\n")
    put("b_class/.hidden.png", "png_rgb_37x23.png")
    put("b_class/sub/b.png", "png_rgb16_37x23.png")
    put("b_class/sub/inner/c.png", "png_1bit_64x48.png")
    put("b_class/sub-x/d.png", "png_ptrns_37x23.png")
    put("b_class/sub-x/e.PNG", "png_rgb_1x1.png")
    ds = datasets.ImageFolder(d)
    out = []
    for p, label in ds.samples:
        rel = os.path.relpath(p, d)
        if any(part.startswith(".") for part in rel.split(os.sep)):
            continue
        if not rel.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        out.append((label, rel))
    assert ds.classes == ["a_class", "b_class"], ds.classes
    return out


def make_bad(d, src):
    os.makedirs(d, exist_ok=True)

    def put(name, data):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    with open(os.path.join(src, "jpeg_rgb444_64x48.jpg"), "rb") as f:
        jb = f.read()
    with open(os.path.join(src, "jpeg_prog420_300x200.jpg"), "rb") as f:
        jp = f.read()
    with open(os.path.join(src, "png_rgb_37x23.png"), "rb") as f:
        pb = f.read()
    put("empty.png", b"")
    put("trunc_scan.jpg", jb[:len(jb) * 6 // 10])
    put("trunc_prog.jpg", jp[:len(jp) // 2])
    put("trunc.png", pb[:len(pb) // 2])
    bad_crc = bytearray(pb)
    bad_crc[29] ^= 0xFF  # the IHDR checksum
    put("bad_crc.png", bytes(bad_crc))
    # a tEXt chunk before the image with a bad checksum: PIL refuses it, ancillary or not
    text = bytearray(chunk(b"tEXt", b"Comment\x00hello"))
    text[-1] ^= 0xFF
    put("bad_text_crc.png", pb[:33] + bytes(text) + pb[33:])
    # 100000 x 100000 in a valid IHDR, followed by one tiny IDAT
    put("huge.png", png_bytes(100000, 100000, 8, 2, [b"\x00\x00\x00"])[:-12] + chunk(b"IEND", b""))
    # the SOF0 of a small JPEG patched to 40000 x 40000
    j = bytearray(jb)
    i = j.find(b"\xff\xc0")
    j[i + 5:i + 9] = struct.pack(">HH", 40000, 40000)
    put("huge.jpg", bytes(j))
    put("not_image.png", b"hello, this is text\n" * 4)
    put("gif_named.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    # a JPEG that ends inside its headers
    put("trunc_header.jpg", jb[:100])
    # every row there, only the EOI marker missing: PIL still says "image file is truncated"
    assert jb.endswith(b"\xff\xd9")
    put("no_eoi.jpg", jb[:-2])
    b = io.BytesIO()
    Image.fromarray(content(16, 16, 40)).convert("CMYK").save(b, format="JPEG")
    put("cmyk.jpg", b.getvalue())
    # a progressive JPEG whose first scan is repeated 600 times: libjpeg warns and goes on (PIL
    # decodes it), bnlab stops at 500 scans, a guard against files that take minutes
    with open(os.path.join(src, "jpeg_proggray_37x23.jpg"), "rb") as f:
        pj = f.read()
    sos = pj.find(b"\xff\xda")
    end = sos + 2
    while not (pj[end] == 0xFF and pj[end + 1] not in (0x00, *range(0xD0, 0xD8))):
        end += 1
    put("many_scans.jpg", pj[:end] + pj[sos:end] * 599 + pj[end:])

    # PIL refuses every one of them but the CMYK JPEG and the many scans (LOAD_TRUNCATED_IMAGES
    # is False)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    for name in sorted(os.listdir(d)):
        try:
            Image.open(os.path.join(d, name)).convert("RGB")
            ok = True
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"bad/{name}: PIL: {type(e).__name__}: {e}")
        assert ok == (name in ("cmyk.jpg", "many_scans.jpg")), name


def main(out):
    os.makedirs(out, exist_ok=True)
    names = make_images(out)
    tensors, meta = {}, {}
    for n in names:
        path = os.path.join(out, n)
        im = Image.open(path)
        meta[f"mode:{n}"] = im.mode
        for r, (s, c, mode) in RECIPES.items():
            if r == "full" and im.size[0] * im.size[1] > FULL_MAX_PIXELS:
                continue
            if r == "r20" and max(im.size) > 8 * min(im.size):
                continue
            tensors[f"{n}:{r}"] = torch.from_numpy(reference(path, s, c, mode).copy())
    for n in PREFIX_FILES:
        meta[f"prefix:{n}"] = str(shortest_prefix(os.path.join(out, n)))
    save_safetensors(os.path.join(out, "reference.safetensors"), tensors, meta)
    samples = make_folder(os.path.join(out, "folder"), out)
    with open(os.path.join(out, "folder.txt"), "w") as f:
        f.write("# torchvision.datasets.ImageFolder(folder).samples, hidden files and images other "
                "than JPEG and PNG left out\n")
        for label, rel in samples:
            f.write(f"{label} {rel}\n")
    make_bad(os.path.join(out, "bad"), out)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"{len(names)} images, {len(tensors)} references, {total} bytes in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/images")
