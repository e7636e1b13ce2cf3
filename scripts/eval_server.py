#!/usr/bin/env python3
"""Sends the Fashion-MNIST test set through a running resnet-serve and prints its accuracy.

    eval_server.py [--url http://127.0.0.1:8000] [--model fashion-resnet20] [--data DIR]
                   [--limit N] [--concurrency 8] [--min-accuracy 0.93] [--upscale-jpeg SIZE]

Each test image is encoded as a lossless 8-bit grayscale PNG and POSTed as the raw body to
`/classify` (or `/classify?model=NAME`); the top prediction's `index` is compared with the label.
With --upscale-jpeg SIZE it is instead enlarged to SIZE×SIZE (bicubic) and sent as a
quality-90 JPEG: large photos' decode path, e.g. to measure DCT-domain scaling's effect.
Exits non-zero when accuracy is below --min-accuracy or any request fails.
"""
import argparse
import concurrent.futures
import gzip
import io
import itertools
import json
import os
import sys
import time
import urllib.request

from PIL import Image

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def load_test_set(directory: str):
    images_path = os.path.join(directory, "t10k-images-idx3-ubyte.gz")
    labels_path = os.path.join(directory, "t10k-labels-idx1-ubyte.gz")
    if not os.path.exists(images_path):
        raise SystemExit(f"{images_path} not found: apt-get install dataset-fashion-mnist or pass --data")
    images = gzip.open(images_path).read()
    labels = gzip.open(labels_path).read()
    count = int.from_bytes(images[4:8], "big")
    rows, cols = int.from_bytes(images[8:12], "big"), int.from_bytes(images[12:16], "big")
    size = rows * cols
    for index in range(count):
        pixels = images[16 + index * size: 16 + (index + 1) * size]
        yield Image.frombytes("L", (cols, rows), pixels), labels[8 + index]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image, size: int) -> bytes:
    buffer = io.BytesIO()
    image.resize((size, size), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def classify(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as response:
        predictions = json.load(response)["predictions"]
    return int(predictions[0]["index"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--data", default=DEBIAN_DIR)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--min-accuracy", type=float, default=0.0)
    parser.add_argument("--upscale-jpeg", type=int, metavar="SIZE")
    args = parser.parse_args()

    url = args.url.rstrip("/") + "/classify" + (f"?model={args.model}" if args.model else "")
    encode = (lambda image: jpeg(image, args.upscale_jpeg)) if args.upscale_jpeg else png
    cases = [(encode(image), label)
             for image, label in itertools.islice(load_test_set(args.data), args.limit)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        predicted = list(pool.map(lambda case: classify(url, case[0]), cases))
    seconds = time.monotonic() - started
    correct = sum(int(p == label) for p, (_, label) in zip(predicted, cases))
    accuracy = correct / len(cases)
    print(json.dumps({"images": len(cases), "correct": correct, "accuracy": accuracy,
                      "seconds": round(seconds, 2), "images_per_second": round(len(cases) / seconds, 1)}))
    return 0 if accuracy >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
