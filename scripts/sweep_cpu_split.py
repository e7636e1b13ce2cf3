#!/usr/bin/env python3
"""How to split a small machine's cores between decoding/preprocessing and inference: runs
resnet-serve with each combination of model instances, ONNX Runtime intra-op threads and
preprocessing threads, under saturating closed-loop load, and reports throughput and
latency for each workload:

- ResNet-50 (scripts/bench_resnet50.py's export, batching calibrated with --target-p99-ms)
  with a 500x375 JPEG photo over REST: inference dominates, decoding is ~4 % of the work;
- ResNet-50 with preprocessed tensors over V2 gRPC: no decoding at all;
- the default Fashion-MNIST ResNet-20 with 28x28 PNGs over REST: a light model, where
  decoding and request handling are a large share.

    scripts/sweep_cpu_split.py [--seconds 8] [--concurrency 16]

Run scripts/bench_resnet50.py first (it exports the model). Writes target/cpu-split/sweep.json.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess

from PIL import Image

from served import Server, binaries, resnet50_repository

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target/cpu-split"


def repository(source, name, instances):
    """A one-model repository copied from `source` with `instances` instances."""
    path = OUT / f"repo-{name}-{instances}"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(source, path / name)
    config = path / name / "config.toml"
    text = config.read_text()
    text = "\n".join(f"count = {instances}" if line.startswith("count =") else line
                     for line in text.splitlines()) + "\n"
    if "[instances]" not in text:
        text += f"\n[instances]\ncount = {instances}\n"
    config.write_text(text)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", default="16")
    args = parser.parse_args()
    bin_dir = binaries()
    resnet50 = resnet50_repository() / "resnet50"
    OUT.mkdir(parents=True, exist_ok=True)
    jpegs = OUT / "jpeg"
    jpegs.mkdir(exist_ok=True)
    Image.open(ROOT / "tests/fixtures/images/cat-451x300.jpg").convert("RGB").resize(
        (500, 375), Image.LANCZOS).save(jpegs / "photo-500x375.jpg", quality=90)
    pngs = OUT / "png"
    pngs.mkdir(exist_ok=True)
    for png in (ROOT / "tests/fixtures/images").glob("fashion-*.png"):
        shutil.copy(png, pngs)

    workloads = [
        ("resnet50-jpeg", resnet50, "resnet50", "rest", jpegs, ["--target-p99-ms", "2000"]),
        ("resnet50-tensors", resnet50, "resnet50", "v2-grpc", jpegs, ["--target-p99-ms", "2000"]),
        ("fashion-png", ROOT / "models/fashion-resnet20", "fashion-resnet20", "rest", pngs, []),
    ]
    cores = os.cpu_count()
    # (instances, intra-op threads per instance, preprocessing threads)
    splits = sorted({(1, cores, cores), (1, cores, 1), (1, max(1, cores // 2), cores),
                     (2, max(1, cores // 2), cores), (2, max(1, cores // 2), 1),
                     (2, cores, cores)})
    results = []
    for workload, source, name, protocol, images, extra in workloads:
        for instances, intra, preprocess in splits:
            repo = repository(source, name, instances)
            server = Server(bin_dir / "resnet-serve", repo, "--intra-op-threads", intra,
                            "--preprocess-threads", preprocess, *extra)
            try:
                server.wait_ready()
                output = OUT / f"{workload}-{instances}x{intra}-p{preprocess}"
                target = server.grpc if protocol.endswith("grpc") else server.http
                subprocess.run(
                    [bin_dir / "resnet-bench", "--target", target, "--protocol", protocol,
                     "--model", name, "--concurrency", args.concurrency, "--images", images,
                     "--warmup-seconds", "2", "--duration-seconds", str(args.seconds),
                     "--metrics", server.metrics, "--output", output],
                    check=True, capture_output=True)
                level = json.loads((output / "report.json").read_text())["levels"][0]
            finally:
                server.stop()
            row = {"workload": workload, "instances": instances, "intra_op_threads": intra,
                   "preprocess_threads": preprocess,
                   "throughput_per_second": round(level["throughput_per_second"], 1),
                   "p50_ms": round(level["latency_ms"]["p50"], 1),
                   "p99_ms": round(level["latency_ms"]["p99"], 1),
                   "errors": level["errors"],
                   "mean_batch_size": round(level["server"]["mean_batch_size"], 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
    (OUT / "sweep.json").write_text(json.dumps({"cores": cores, "results": results}, indent=1))


if __name__ == "__main__":
    main()
