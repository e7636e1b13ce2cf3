#!/usr/bin/env python3
"""Accuracy effect of DCT-domain JPEG downscaling (`jpeg_dct_scaling`, DESIGN §7): serves the
default model twice, once decoding large JPEGs in full and once at 1/2–1/8 scale in the DCT
domain, and sends both the same Fashion-MNIST test images enlarged to SIZE×SIZE JPEGs.

    scripts/dct_accuracy.py [--size 1024] [--limit 2000]

Prints both accuracies (scripts/eval_server.py does the sending) and their difference.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys

from served import Server

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--model", default=str(ROOT / "models/fashion-resnet20"))
    args = parser.parse_args()

    repository = ROOT / "target/dct-study"
    shutil.rmtree(repository, ignore_errors=True)
    for name, dct in (("full", False), ("dct", True)):
        target = repository / name
        shutil.copytree(args.model, target)
        config = (target / "config.toml").read_text()
        config = config.replace("default = true", "default = false")
        config = config.replace("jpeg_dct_scaling = false", f"jpeg_dct_scaling = {str(dct).lower()}")
        (target / "config.toml").write_text(config)

    subprocess.run(["cargo", "build", "--quiet", "--bin", "resnet-serve"], check=True, cwd=ROOT)
    server = Server(ROOT / "target/debug/resnet-serve", repository, "--default-model", "full")
    address = server.http
    results = {}
    try:
        for name in ("full", "dct"):
            output = subprocess.run(
                [sys.executable, ROOT / "scripts/eval_server.py", "--url", f"http://{address}",
                 "--model", name, "--limit", str(args.limit), "--upscale-jpeg", str(args.size)],
                check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(output.strip().splitlines()[-1])
    finally:
        server.stop()
    difference = results["dct"]["accuracy"] - results["full"]["accuracy"]
    print(json.dumps({"size": args.size, "images": args.limit, "full_decode": results["full"],
                      "dct_scaling": results["dct"], "accuracy_difference": difference}, indent=1))


if __name__ == "__main__":
    main()
