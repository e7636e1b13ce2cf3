#!/usr/bin/env python3
"""Per-image CPU cost of decode + preprocess (shorter side 256, centre crop 224, ImageNet
normalisation, CHW float32): resnet-serve's Rust path (criterion, `benches/preprocess.rs`)
against Pillow + numpy doing the same, on the same JPEG files, in one run on one machine.

    scripts/bench_preprocess.py            # runs `cargo bench --bench preprocess`, then Pillow

Prints a markdown table and writes target/bench-preprocess.json. Pillow's `draft()` is its
DCT-domain downscaling, compared with our opt-in `jpeg_dct_scaling`.
"""

import io
import json
import pathlib
import subprocess
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def pillow_preprocess(data, draft):
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft("RGB", (256, 256))
    image = image.convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray((array - MEAN) / STD)


def per_image_ms(function, seconds=3.0):
    function()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 5:
        function()
        runs += 1
    return (time.perf_counter() - started) / runs * 1000


def criterion_estimates():
    """Mean time in ms of every benchmark criterion recorded, by its full id."""
    found = {}
    for path in (ROOT / "target/criterion").glob("**/new/benchmark.json"):
        full_id = json.loads(path.read_text())["full_id"]
        estimates = json.loads((path.parent / "estimates.json").read_text())
        found[full_id] = estimates["mean"]["point_estimate"] / 1e6
    return found


def main():
    subprocess.run(["cargo", "bench", "--bench", "preprocess"], check=True, cwd=ROOT)
    rust = criterion_estimates()
    images = ROOT / "target/bench-images"
    rows = []
    for name, file, rust_id, draft in [
        ("500×375 JPEG", "500x375-420.jpg", "preprocess/500x375", False),
        ("4000×3000 JPEG, full decode", "4000x3000-420.jpg", "large/preprocess/4000x3000", False),
        ("4000×3000 JPEG, DCT scaling", "4000x3000-420.jpg", "large/preprocess/4000x3000-dct",
         True),
        ("4000×3000 JPEG 4:4:4, DCT scaling", "4000x3000-444.jpg",
         "large/preprocess/4000x3000-444-dct", True),
    ]:
        data = (images / file).read_bytes()
        pillow = per_image_ms(lambda: pillow_preprocess(data, draft))
        rows.append({"image": name, "rust_ms": rust[rust_id], "pillow_numpy_ms": pillow,
                     "speedup": pillow / rust[rust_id]})
    decode = per_image_ms(lambda: Image.open(io.BytesIO((images / "500x375-420.jpg").read_bytes()))
                          .convert("RGB"))
    result = {"rows": rows, "rust_all_ms": rust, "pillow_decode_500x375_ms": decode}
    (ROOT / "target/bench-preprocess.json").write_text(json.dumps(result, indent=1))
    print("| decode + preprocess to 3×224×224 | resnet-serve | Pillow + numpy | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['image']} | {row['rust_ms']:.2f} ms | {row['pillow_numpy_ms']:.2f} ms "
              f"| {row['speedup']:.1f}× |")
    print(f"| 500×375 JPEG, decode only | {rust['decode/500x375']:.2f} ms | {decode:.2f} ms "
          f"| {decode / rust['decode/500x375']:.1f}× |")
    for key in ("resize_crop_normalise/500x375", "batch_assembly/32x3x224x224",
                "policy/256_jobs_in_32_batches"):
        print(f"| {key} | {rust[key]:.3f} ms | | |")


if __name__ == "__main__":
    main()
