#!/usr/bin/env python3
"""Build the hostile and unusual input corpus under tests/fixtures/hostile/.

Each case is a file plus a manifest entry giving how to send it (raw body with a content
type, or as base64 JSON), and the status and message fragment the server must answer with.
tests/hostile.rs sends every case over REST and the image cases over gRPC, then checks the
server is still healthy. Valid but unusual images must be served (200); everything else gets
the right 4xx. Sources: the committed fixture photos (see make_image_fixtures.py).

Usage: python3 scripts/make_hostile_corpus.py
"""

import io
import json
import os
import struct
import zlib

from PIL import Image

ROOT = "tests/fixtures"
OUT = os.path.join(ROOT, "hostile")
cases = []


def photo():
    return Image.open(os.path.join(ROOT, "images", "coffee-300x200.png")).convert("RGB").resize((96, 64))


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def add(name, data, status, fragment="", content_type="application/octet-stream", query="", send="raw"):
    with open(os.path.join(OUT, name), "wb") as file:
        file.write(data)
    cases.append({"file": name, "content_type": content_type, "query": query, "send": send,
                  "status": status, "fragment": fragment})


def chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header(width, height):
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def interlaced_png(image):
    """Adam7-interlaced 8-bit RGB PNG (Pillow cannot write interlaced PNGs)."""
    width, height = image.size
    pixels = image.tobytes()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        for y in range(y0, height, dy):
            row = b"".join(pixels[(y * width + x) * 3:(y * width + x) * 3 + 3] for x in range(x0, width, dx))
            if row:
                raw += b"\x00" + row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def with_exif(image, orientation=None, raw_exif=None):
    buffer = io.BytesIO()
    if raw_exif is not None:
        image.save(buffer, "JPEG", quality=90, exif=raw_exif)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    image = photo()
    jpeg = encode(image, "JPEG", quality=90)
    png = encode(image, "PNG")

    # Valid but unusual: served.
    add("progressive.jpg", encode(image, "JPEG", quality=80, progressive=True), 200)
    add("cmyk.jpg", encode(image.convert("CMYK"), "JPEG"), 200)
    add("gray.jpg", encode(image.convert("L"), "JPEG"), 200)
    add("subsampling-444.jpg", encode(image, "JPEG", subsampling=0), 200)
    add("optimized.jpg", encode(image, "JPEG", optimize=True), 200)
    for orientation in range(1, 9):
        add(f"exif-orientation-{orientation}.jpg", with_exif(image, orientation), 200)
    add("exif-garbage.jpg", with_exif(image, raw_exif=b"Exif\x00\x00" + os.urandom(64)), 200)
    add("exif-truncated.jpg", with_exif(image, raw_exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00"), 200)
    add("rgba.png", encode(image.convert("RGBA"), "PNG"), 200)
    add("gray-alpha.png", encode(image.convert("LA"), "PNG"), 200)
    add("palette.png", encode(image.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"), 200)
    add("bilevel.png", encode(image.convert("1"), "PNG"), 200)
    add("sixteen-bit.png", encode(Image.frombytes("I;16", image.size, bytes(image.convert("L").tobytes()) * 2), "PNG"), 200)
    add("interlaced.png", interlaced_png(image), 200)
    frames = [image, image.rotate(90), image.rotate(180)]
    add("animated.png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), 200)
    add("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), 200)
    add("animated.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), 200)
    add("lossy.webp", encode(image, "WEBP", quality=70), 200)
    add("alpha.webp", encode(image.convert("RGBA"), "WEBP", lossless=True), 200)
    add("one-pixel.png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), 200)
    add("one-pixel.jpg", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG"), 200)
    add("bmp-24.bmp", encode(image, "BMP"), 200)
    add("bmp-8.bmp", encode(image.convert("P"), "BMP"), 200)
    add("tiff-lzw.tiff", encode(image, "TIFF", compression="tiff_lzw"), 200)
    add("tiff-gray.tiff", encode(image.convert("L"), "TIFF"), 200)
    add("tiff-cmyk.tiff", encode(image.convert("CMYK"), "TIFF"), 200)
    add("jpeg-labelled-png.jpg", jpeg, 200, content_type="image/png")
    add("png-labelled-jpeg.png", png, 200, content_type="image/jpeg")
    add("png-octet-stream.png", png, 200, content_type="application/octet-stream")
    add("no-content-type.png", png, 200, content_type="")
    add("tall-but-allowed.png", encode(Image.new("L", (4, 120), 128), "PNG"), 200)
    add("black-6000x6000.png", encode(Image.new("L", (6000, 6000), 0), "PNG", optimize=True), 200)
    add("base64-json.png", png, 200, content_type="application/json", send="json")

    # Bad input: the right 4xx and a message naming the problem.
    add("empty.bin", b"", 400, "empty")
    add("one-byte.bin", b"\xff", 415, "supported")
    add("text.txt", b"hello, world\n", 415, "text/plain", content_type="text/plain")
    add("html.html", b"<!doctype html><title>x</title>", 415, "text/html", content_type="text/html")
    add("form.bin", b"a=1&b=2", 415, "x-www-form-urlencoded", content_type="application/x-www-form-urlencoded")
    add("svg.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415, "svg", content_type="image/svg+xml")
    add("pdf.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "pdf", content_type="application/pdf")
    add("heic.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), 415, "heic", content_type="image/heic")
    add("avif.avif", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), 415, "avif", content_type="image/avif")
    add("jxl.jxl", b"\xff\x0a" + bytes(32), 415, "jpeg xl", content_type="image/jxl")
    add("random.bin", os.urandom(2048), 415, "supported")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], 422, "jpeg", content_type="image/jpeg")
    add("header-only.jpg", jpeg[:200], 422, "jpeg", content_type="image/jpeg")
    huffman = bytearray(jpeg)
    start = jpeg.index(b"\xff\xda") + 20
    for offset in range(start, len(huffman) - 10, 7):
        huffman[offset] = 0xFF if huffman[offset] != 0xFF else 0x00
    add("corrupt-huffman.jpg", bytes(huffman), 422, "jpeg", content_type="image/jpeg")
    wrong_marker = bytearray(jpeg)
    sof = jpeg.index(b"\xff\xc0")
    wrong_marker[sof + 1] = 0xC8  # JPG extension marker: not a frame type
    add("wrong-marker.jpg", bytes(wrong_marker), 422, "jpeg", content_type="image/jpeg")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR CRC
    add("bad-crc.png", bytes(bad_crc), 422, "png", content_type="image/png")
    add("truncated.png", png[: len(png) // 2], 422, "png", content_type="image/png")
    add("bomb-50000.png", png_header(50000, 50000) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)), 413, "pixels", content_type="image/png")
    add("bomb-65535.gif", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b";", 413, "pixels", content_type="image/gif")
    add("bomb.bmp", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0, 0, 0), 413, "pixels", content_type="image/bmp")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    add("bomb.webp", b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x, 413, "pixels", content_type="image/webp")
    add("zip-bomb-7000.png", encode(Image.new("L", (7000, 7000), 0), "PNG", optimize=True), 413, "pixels", content_type="image/png")
    add("line-1x100000.png", png_header(1, 100000) + chunk(b"IDAT", zlib.compress(b"\x00\x00" * 100000)) + chunk(b"IEND", b""), 422, "aspect ratio", content_type="image/png")
    add("line-100000x1.png", png_header(100000, 1) + chunk(b"IDAT", zlib.compress(b"\x00" * 100001)) + chunk(b"IEND", b""), 422, "aspect ratio", content_type="image/png")
    add("zero-width.png", png_header(0, 10) + chunk(b"IEND", b""), 422, "no pixels", content_type="image/png")
    add("top-k-zero.png", png, 400, "top_k", query="?top_k=0", content_type="image/png")
    add("top-k-huge.png", png, 400, "top_k", query="?top_k=1000000000", content_type="image/png")
    add("top-k-negative.png", png, 400, "top_k", query="?top_k=-1", content_type="image/png")
    add("unknown-model.png", png, 404, "nope", query="?model=nope", content_type="image/png")
    add("unknown-version.png", png, 404, "version", query="?version=99", content_type="image/png")
    add("base64-of-text.txt", b"just text", 415, "supported", content_type="application/json", send="json")
    add("json-wrong-shape.json", b'{"pictures": ["aGk="]}', 400, "pictures", content_type="application/json")
    add("json-not-json.json", b"{'image': 1}", 400, "JSON", content_type="application/json")
    add("json-bad-base64.json", b'{"image": "!!!not base64!!!"}', 400, "base64", content_type="application/json")
    add("json-number.json", b'{"image": 42}', 400, "JSON", content_type="application/json")
    add("multipart-no-boundary.bin", b"--x\r\n\r\n--x--\r\n", 400, "multipart", content_type="multipart/form-data")
    add("multipart-no-file.bin", b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--b--\r\n", 400, "no file", content_type="multipart/form-data; boundary=b")
    boundary = "x" * 70
    add("multipart-huge-boundary.bin", f"--{boundary}\r\n".encode() + b"garbage", 400, "multipart", content_type=f"multipart/form-data; boundary={boundary}")

    with open(os.path.join(OUT, "manifest.json"), "w") as file:
        json.dump(cases, file, indent=1)
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
