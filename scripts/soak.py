#!/usr/bin/env python3
"""Soak test: runs resnet-serve at a fraction of its measured capacity for a while and
reports its memory over time and every error. Fails (exit 1) on any error, or when memory
grows between the first and the last fifth of the run by more than --max-growth-mb.

    scripts/soak.py --seconds 600 --load 0.7 --profile release   # the documented run
    scripts/soak.py --seconds 20                                 # CI-sized

Writes OUTPUT/soak.json (capacity, offered rate, RSS samples, the load report) and
OUTPUT/soak-rss.svg. Loopback only; the load is bounded by --seconds.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

from served import Server

ROOT = pathlib.Path(__file__).resolve().parent.parent


def bench(binary, address, output, *args):
    subprocess.run([binary, "--target", address, "--images", str(ROOT / "tests/fixtures/images"),
                    "--output", str(output), *args], check=True)
    return json.loads((output / "report.json").read_text())


def svg(samples, path):
    """A small line chart of RSS (MiB) over time (s)."""
    width, height, pad = 720, 300, 50
    t_max = max(t for t, _ in samples) or 1
    low = min(m for _, m in samples)
    high = max(m for _, m in samples)
    span = max(high - low, 1.0)
    low, high = low - span * 0.5, high + span * 0.5
    points = " ".join(
        f"{pad + (width - 2 * pad) * t / t_max:.1f},"
        f"{height - pad - (height - 2 * pad) * (m - low) / (high - low):.1f}"
        for t, m in samples)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<polyline fill="none" stroke="steelblue" stroke-width="2" points="{points}"/>'
        f'<text x="{pad}" y="20" font-family="sans-serif" font-size="14">'
        f'resnet-serve RSS during the soak ({low:.0f}-{high:.0f} MiB, 0-{t_max:.0f} s)</text>'
        f'<text x="{pad}" y="{height - 15}" font-family="sans-serif" font-size="12">seconds</text>'
        f'<text x="5" y="{height / 2}" font-family="sans-serif" font-size="12">MiB</text>'
        "</svg>\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    parser.add_argument("--profile", default="debug", choices=["debug", "release"])
    parser.add_argument("--repository", default=str(ROOT / "models"))
    parser.add_argument("--max-growth-mb", type=float, default=16)
    parser.add_argument("--output", default=str(ROOT / "target/soak"))
    parser.add_argument("--features", default="",
                        help="cargo features to build with (scripts/test.sh passes the test "
                             "suite's, so that the build reuses its binaries)")
    args = parser.parse_args()

    profile = ["--release"] if args.profile == "release" else []
    features = ["--features", args.features] if args.features else []
    subprocess.run(["cargo", "build", "--quiet", *profile, *features, "--bin", "resnet-serve",
                    "--bin", "resnet-bench"], check=True, cwd=ROOT)
    target = ROOT / "target" / args.profile
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    server = Server(target / "resnet-serve", args.repository)
    address = server.http
    try:
        capacity_report = bench(target / "resnet-bench", address, output / "capacity",
                                "--concurrency", "8", "--warmup-seconds", "2",
                                "--duration-seconds", str(min(10.0, max(3.0, args.seconds / 10))))
        capacity = capacity_report["levels"][0]["throughput_per_second"]
        rate = args.load * capacity
        print(f"capacity {capacity:.1f} req/s; soaking at {rate:.1f} req/s for {args.seconds:.0f} s",
              flush=True)

        samples, stop = [], threading.Event()
        started = time.monotonic()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic() - started, server.rss_mib()))
                stop.wait(max(0.5, args.seconds / 300))

        sampler = threading.Thread(target=sample)
        sampler.start()
        load_report = bench(target / "resnet-bench", address, output / "load", "--rate", f"{rate:.3f}",
                            "--warmup-seconds", "0", "--duration-seconds", str(args.seconds))
        stop.set()
        sampler.join()
    finally:
        server.process.terminate()
        exit_code = server.process.wait(timeout=60)

    level = load_report["levels"][0]
    fifth = max(1, len(samples) // 5)
    first, last = [m for _, m in samples[:fifth]], [m for _, m in samples[-fifth:]]
    growth = max(last) - max(first)
    result = {
        "seconds": args.seconds,
        "profile": args.profile,
        "capacity_per_second": capacity,
        "offered_per_second": rate,
        "served_per_second": level["throughput_per_second"],
        "requests": level["requests"],
        "errors": level["errors"],
        "latency_ms": level["latency_ms"],
        "rss_mib": {"first_fifth_max": max(first), "last_fifth_max": max(last),
                    "min": min(m for _, m in samples), "max": max(m for _, m in samples),
                    "growth": growth},
        "rss_samples": samples,
        "server_exit_code": exit_code,
        "cores": os.cpu_count(),
    }
    (output / "soak.json").write_text(json.dumps(result, indent=1))
    svg(samples, output / "soak-rss.svg")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=1))

    failures = []
    if level["errors"]:
        failures.append(f"errors: {level['errors']}")
    if level["requests"] == 0:
        failures.append("no request was sent")
    if growth > args.max_growth_mb:
        failures.append(f"RSS grew {growth:.1f} MiB (limit {args.max_growth_mb})")
    if exit_code != 0:
        failures.append(f"the server exited {exit_code} after SIGTERM")
    if failures:
        print("soak failed: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"soak passed: {level['requests']} requests, 0 errors, RSS growth {growth:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
