#!/usr/bin/env python3
"""Latency-aware batching under load: serves ResNet-50 (scripts/bench_resnet50.py's export)
with --target-p99-ms, reads the batching the server chose, measures its peak throughput, then
offers Poisson load at 80 % and 200 % of that peak and reports, for each, the p99 of what was
served against 2 x the chosen batch's latency, and how much was refused at admission.

    scripts/bench_latency_target.py [--target-p99-ms 250] [--seconds 20] [--deadline-ms 500]

Writes target/bench-latency-target/{summary.json, peak/, load/}, and batches.json: every batch's
time against its calibrated time, from the server's debug log, for scripts/admission_replay.py.
"""

import argparse
import json
import pathlib
import subprocess
import urllib.request

from served import Server, binaries, chosen_batching, resnet50_repository

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target/bench-latency-target"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-p99-ms", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--deadline-ms", type=int, default=500)
    args = parser.parse_args()
    bin_dir = binaries()
    repository = resnet50_repository()
    server = Server(bin_dir / "resnet-serve", repository, "--target-p99-ms", args.target_p99_ms,
                    log="info,ort=warn,resnet_serve::batcher=debug")
    try:
        server.wait_ready()
        batch, batch_ms, measured = chosen_batching(server, "resnet50")

        def bench(name, *load):
            subprocess.run(
                [bin_dir / "resnet-bench", "--target", server.grpc, "--protocol", "v2-grpc",
                 "--model", "resnet50", "--images", ROOT / "tests/fixtures/images",
                 "--warmup-seconds", "3", "--duration-seconds", str(args.seconds),
                 "--deadline-ms", str(args.deadline_ms), "--metrics", server.metrics,
                 "--output", OUT / name, *load], check=True)
            return json.loads((OUT / name / "report.json").read_text())["levels"]

        # Two batches' worth of clients keeps the model busy without queueing past the target;
        # a client refused at admission waits one batch before it tries again (sent at once,
        # refusals of 602 KB tensors take the cores that inference needs).
        peak = bench("peak", "--concurrency", str(2 * batch),
                     "--backoff-ms", str(round(batch_ms)))[0]["throughput_per_second"]
        rates = [round(0.8 * peak, 1), round(2.0 * peak, 1)]
        levels = bench("load", "--rate", ",".join(map(str, rates)))
        with urllib.request.urlopen(f"http://{server.metrics}/metrics") as response:
            margin = next((float(line.rsplit(" ", 1)[1]) for line in response.read().decode()
                           .splitlines()
                           if line.startswith('resnet_serve_admission_margin{model="resnet50",')),
                          None)
    finally:
        server.stop()
    rows = []
    for rate, level in zip(rates, levels):
        refused = sum(count for outcome, count in level["errors"].items()
                      if outcome == "ResourceExhausted")
        rows.append({
            "offered_per_second": rate,
            "served_per_second": round(level["throughput_per_second"], 1),
            "p50_ms": round(level["latency_ms"]["p50"], 1),
            "p99_ms": round(level["latency_ms"]["p99"], 1),
            # The server's own p99 (arrival to answer, from Server-Timing): without the load
            # generator's time, which shares the cores.
            "server_p99_ms": (round(level["stages"]["server_total_ms"]["p99"], 1)
                              if level["stages"] else None),
            "p99_over_2x_batch": round(level["latency_ms"]["p99"] / (2 * batch_ms), 2),
            "refused_share": round(refused / max(1, level["requests"]), 3),
            "errors": level["errors"],
        })
    summary = {"target_p99_ms": args.target_p99_ms, "deadline_ms": args.deadline_ms,
               "chosen_max_batch_size": batch, "batch_latency_ms": batch_ms,
               "measured_batch_latency_ms": measured, "peak_per_second": peak,
               "admission_margin_at_end": margin, "levels": rows}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    (OUT / "batches.json").write_text(json.dumps([
        [round(at, 6), fields["images"], fields["infer_ms"], fields["calibrated_ms"]]
        for at, fields in server.batches]))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
