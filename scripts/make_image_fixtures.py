#!/usr/bin/env python3
"""Build the committed test images under tests/fixtures/images/.

Sources (all public domain or CC0, as documented by scikit-image's `skimage.data`):
  chelsea.png (Stefan van der Walt's cat, CC0), coffee.png (Rachel Michetti, CC0),
  rocket.jpg (NASA, public domain), taken from the scikit-image 0.26.0 wheel;
  Fashion-MNIST test images (MIT licence) from Debian's dataset-fashion-mnist.

Usage: python3 scripts/make_image_fixtures.py SKIMAGE_DATA_DIR [OUT_DIR]
"""

import gzip
import io
import os
import struct
import sys

import numpy

from PIL import Image

FASHION = "/usr/share/datasets/fashion-mnist"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
          "Sneaker", "Bag", "Ankle boot"]


def fashion_images(count):
    with gzip.open(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")) as images, \
            gzip.open(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")) as labels:
        _, n, rows, cols = struct.unpack(">IIII", images.read(16))
        labels.read(8)
        for index in range(count):
            pixels = images.read(rows * cols)
            yield index, labels.read(1)[0], Image.frombytes("L", (cols, rows), pixels)


def with_exif_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def main():
    source = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/images"
    os.makedirs(out, exist_ok=True)

    def save(name, image, fmt, **options):
        image.save(os.path.join(out, name), fmt, **options)

    # Fashion-MNIST: the default model's domain, with known labels.
    for index, label, image in fashion_images(10):
        save(f"fashion-{index}-label{label}.png", image, "PNG")
    index, label, shoe = next((i, l, im) for i, l, im in fashion_images(10) if l == 9)
    # The same item as an upscaled RGB JPEG: exercises colour conversion and resizing.
    save("fashion-ankle-boot-rgb-112.jpg", shoe.resize((112, 112), Image.BICUBIC).convert("RGB"),
         "JPEG", quality=95)

    # Photos of varied sizes and encodings.
    cat = Image.open(os.path.join(source, "chelsea.png")).convert("RGB")  # 451x300
    coffee = Image.open(os.path.join(source, "coffee.png")).convert("RGB").resize((300, 200))
    rocket = Image.open(os.path.join(source, "rocket.jpg")).convert("RGB").resize((213, 320))
    save("cat-451x300.jpg", cat, "JPEG", quality=90)
    save("cat-progressive.jpg", cat, "JPEG", quality=85, progressive=True)
    save("cat-gray.jpg", cat.convert("L"), "JPEG", quality=90)
    save("cat-cmyk.jpg", cat.resize((225, 150)).convert("CMYK"), "JPEG", quality=90)
    save("coffee-300x200.png", coffee, "PNG")
    save("coffee-rgba.png", coffee.convert("RGBA"), "PNG")
    save("coffee-palette.png", coffee.convert("P", palette=Image.ADAPTIVE, colors=64), "PNG")
    save("coffee.webp", coffee, "WEBP", lossless=True)
    small = coffee.resize((150, 100))
    save("coffee.bmp", small, "BMP")
    save("coffee.tiff", small, "TIFF")
    save("coffee.gif", coffee.convert("P", palette=Image.ADAPTIVE), "GIF")
    gray16 = Image.open(os.path.join(source, "chelsea.png")).convert("L").resize((150, 100))
    wide = numpy.asarray(gray16, dtype=numpy.uint16) * 257
    save("cat-gray16.png", Image.fromarray(wide), "PNG")
    save("rocket-213x320.jpg", rocket, "JPEG", quality=90)
    with open(os.path.join(out, "rocket-exif-rotated.jpg"), "wb") as file:
        # Stored rotated 90° counter-clockwise; orientation 6 tells viewers to turn it back.
        file.write(with_exif_orientation(rocket.transpose(Image.ROTATE_90), 6))


if __name__ == "__main__":
    main()
