#!/usr/bin/env python3
"""Compute reference crop windows with Pillow and torchvision's Resize/CenterCrop rules.

For each image under tests/fixtures/images and each spec below, writes the u8 pixels of the
centre-crop window (HWC, before normalisation) to tests/fixtures/preprocess/<image>.<spec>.u8
and a manifest.json; the Rust test `preprocess_matches_pillow` compares against them with the
tolerances of DESIGN §7. torchvision is not installed here, so its two rules are written out:
Resize(shorter) keeps the aspect ratio with long = int(shorter * long / short), and
CenterCrop's offsets are int(round((size - crop) / 2)) (Python's round, half to even).

Deliberate difference: Pillow's convert() clips 16-bit grayscale to 255 (a white image); we
scale 16-bit to 8-bit (v / 257, rounded), so the reference does the same for I;16 images.
"""

import json
import os

import numpy
from PIL import Image, ImageOps

SPECS = {
    "rgb56": ("RGB", 64, (56, 56)),
    "gray28": ("L", 28, (28, 28)),
    "rgb224": ("RGB", 256, (224, 224)),
}


def load(path, mode):
    image = Image.open(path)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I"):
        wide = numpy.asarray(image, dtype=numpy.float64)
        image = Image.fromarray(numpy.round(wide / 257).astype(numpy.uint8))
    return image.convert(mode)


def torchvision_resize_crop(image, shorter, crop):
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)
    size = (shorter, new_long) if width <= height else (new_long, shorter)
    resized = image.resize(size, Image.BILINEAR)
    crop_h, crop_w = crop
    top = int(round((size[1] - crop_h) / 2.0))
    left = int(round((size[0] - crop_w) / 2.0))
    return resized.crop((left, top, left + crop_w, top + crop_h))


def main():
    images = "tests/fixtures/images"
    out = "tests/fixtures/preprocess"
    os.makedirs(out, exist_ok=True)
    manifest = []
    for name in sorted(os.listdir(images)):
        for spec, (mode, shorter, crop) in SPECS.items():
            # The 224 spec is for the photo whose geometry matters; keep fixtures small.
            if spec == "rgb224" and not name.startswith("cat-451"):
                continue
            window = torchvision_resize_crop(load(os.path.join(images, name), mode), shorter, crop)
            target = f"{name}.{spec}.u8"
            with open(os.path.join(out, target), "wb") as file:
                file.write(window.tobytes())
            manifest.append({"image": name, "spec": spec, "expected": target,
                             "lossy": name.endswith(".jpg")})
    with open(os.path.join(out, "manifest.json"), "w") as file:
        json.dump(manifest, file, indent=1)


if __name__ == "__main__":
    main()
