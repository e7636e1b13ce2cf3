#!/usr/bin/env python3
"""ResNet-50 (torchvision layout, 224², FP32, random weights exported by resnet-train) served
by resnet-serve against ONNX Runtime alone, in one run: cold start, memory, and throughput
and latency with preprocessed tensors (V2 gRPC; V2 REST at concurrency 1) and with JPEG photos
(REST).

    scripts/bench_resnet50.py [--profile debug|release] [--seconds 10] [--cpu-arena true|false]
                              [--target-p99-ms 1000]

Writes target/bench-resnet50/{summary-arena-BOOL.json, tensors/, tensors-v2-rest/, jpeg/} (resnet-bench reports and plots).
"""

import argparse
import json
import pathlib
import subprocess

from served import Server, binaries, chosen_batching

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target/bench-resnet50"


def request_path(bin_dir):
    """p50 at concurrency 1 of a 3x224x224 FP32 tensor (602 KB) through a model that costs
    next to nothing (global average pool, then 3 -> 1000): what a request costs besides
    inference, client and loopback included, over V2 gRPC and V2 REST."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    repository = OUT / "request-path"
    model = repository / "passthrough" / "1" / "model.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    weights = numpy_helper.from_array(
        np.random.default_rng(1).normal(size=(1000, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)],
        "passthrough",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], [weights])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    onnx.save(onnx_model, model)
    server = Server(bin_dir / "resnet-serve", repository)
    result = {}
    try:
        server.wait_ready()
        for protocol, target in (("v2-grpc", server.grpc), ("v2-rest", server.http)):
            output = OUT / f"request-path-{protocol}"
            subprocess.run([bin_dir / "resnet-bench", "--target", target, "--protocol", protocol,
                            "--model", "passthrough", "--concurrency", "1",
                            "--images", ROOT / "tests/fixtures/images", "--warmup-seconds", "1",
                            "--duration-seconds", "5", "--output", output], check=True)
            level = json.loads((output / "report.json").read_text())["levels"][0]
            result[protocol] = level["latency_ms"]["p50"]
    finally:
        server.stop()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="debug", choices=["debug", "release"])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--target-p99-ms", default="1000",
                        help="the load runs' server calibrates its batching to this target")
    parser.add_argument("--cpu-arena", default="false", choices=["true", "false"])
    parser.add_argument("--cold-start-only", action="store_true",
                        help="start the server, time it to READY, and stop")
    args = parser.parse_args()
    profile = ["--release"] if args.profile == "release" else []
    bin_dir = binaries(args.profile)
    repository = OUT / "repository"
    model_dir = repository / "resnet50"
    onnx = model_dir / "1/model.onnx"
    if not onnx.exists():
        subprocess.run(["cargo", "build", "--quiet", *profile, "--features", "train", "--bin",
                        "resnet-train"], check=True, cwd=ROOT)
        subprocess.run([bin_dir / "resnet-train", "export", "--init", "random", "--arch", "resnet50",
                        "--classes", "1000", "--input", "224", "--output", model_dir], check=True)

    # Cold start as configured (no calibration), then the load runs on a server that calibrated
    # its batching to --target-p99-ms: it picks the batch size with the most images/s.
    server = Server(bin_dir / "resnet-serve", repository, "--cpu-arena", args.cpu_arena)
    try:
        cold_start = server.wait_ready()
        rss_ready = server.rss_mib()
        events = dict(server.events)
    finally:
        server.stop()
    if args.cold_start_only:
        print(json.dumps({"cold_start_to_ready_s": cold_start, "rss_ready_mib": rss_ready,
                          "session_build_s": events.get("ONNX Runtime sessions built"),
                          "model_load_s": events.get("model ready")}))
        return

    server = Server(bin_dir / "resnet-serve", repository, "--cpu-arena", args.cpu_arena,
                    "--target-p99-ms", args.target_p99_ms)
    try:
        server.wait_ready()
        # A closed-loop client refused at admission waits one batch before it sends again, as
        # a client honouring the server's pushback would: resent at once, the refusals of
        # 602 KB tensors take the cores from inference, which makes batches slower and
        # refusals more frequent (one run of the twelfth session served 5.6/s of 22 at
        # concurrency 16 so).
        _, batch_ms, _ = chosen_batching(server, "resnet50")

        def bench(name, target, *extra):
            subprocess.run([bin_dir / "resnet-bench", "--target", target, "--model", "resnet50",
                            "--warmup-seconds", "3", "--duration-seconds", str(args.seconds),
                            "--backoff-ms", str(round(batch_ms)),
                            "--metrics", server.metrics, "--output", OUT / name, *extra],
                           check=True)
            return json.loads((OUT / name / "report.json").read_text())

        tensors = bench("tensors", server.grpc, "--protocol", "v2-grpc", "--concurrency",
                        args.concurrency, "--baseline", "raw-ort", "--onnx", onnx, "--threads", "2",
                        "--cpu-arena", args.cpu_arena,
                        "--images", ROOT / "tests/fixtures/images")
        tensors_rest = bench("tensors-v2-rest", server.http, "--protocol", "v2-rest",
                             "--concurrency", "1", "--baseline", "raw-ort", "--onnx", onnx,
                             "--threads", "2", "--cpu-arena", args.cpu_arena,
                             "--images", ROOT / "tests/fixtures/images")
        rss_loaded = server.rss_mib()
        jpeg = bench("jpeg", server.http, "--protocol", "rest", "--concurrency", "1,4",
                     "--baseline", "raw-ort", "--onnx", onnx, "--threads", "2",
                     "--cpu-arena", args.cpu_arena,
                     "--images", ROOT / "tests/fixtures/images/cat-451x300.jpg")
        calibration = server.events.get("batching calibrated")
    finally:
        server.stop()

    weights_mib = onnx.stat().st_size / 2**20
    summary = {
        "profile": args.profile,
        "cold_start_to_ready_s": cold_start,
        "session_build_s": events.get("ONNX Runtime sessions built"),
        "model_load_s": events.get("model ready"),
        "rss_mib": {"ready": rss_ready, "after_load": rss_loaded, "weights_file": weights_mib},
        "target_p99_ms": args.target_p99_ms,
        "calibration_s": calibration,
        "tensors": {"server_over_raw_ort": tensors["server_over_raw_ort"],
                    "inference_in_server_over_raw_ort": tensors["inference_in_server_over_raw_ort"],
                    "p50_overhead_at_concurrency_1_ms": tensors["p50_overhead_at_concurrency_1_ms"],
                    "paired": tensors["paired"],
                    "p50_outside_inference_at_concurrency_1_ms":
                        tensors["p50_outside_decode_and_inference_at_concurrency_1_ms"],
                    "raw_ort": tensors["raw_ort"],
                    "levels": [{k: level[k] for k in ("load", "throughput_per_second", "latency_ms",
                                                      "server", "stages")}
                               for level in tensors["levels"]]},
        "tensors_v2_rest_concurrency_1": {
            "p50_ms": tensors_rest["levels"][0]["latency_ms"]["p50"],
            "p50_minus_raw_ort_batch1_ms": tensors_rest["p50_overhead_at_concurrency_1_ms"],
            "paired": tensors_rest["paired"],
            "p50_outside_inference_ms":
                tensors_rest["p50_outside_decode_and_inference_at_concurrency_1_ms"]},
        "jpeg": {"p50_outside_decode_and_inference_at_concurrency_1_ms":
                     jpeg["p50_outside_decode_and_inference_at_concurrency_1_ms"],
                 # Target: p50 − raw ORT batch-1 p50 (alternating windows) ≤ decode + 1.0 ms.
                 "p50_minus_raw_ort_batch1_ms": jpeg["p50_overhead_at_concurrency_1_ms"],
                 "decode_p50_at_concurrency_1_ms":
                     jpeg["levels"][0]["stages"]["decode_ms"]["p50"],
                 "paired": jpeg["paired"],
                 "levels": [{k: level[k] for k in ("load", "throughput_per_second", "latency_ms",
                                                   "errors", "stages")}
                            for level in jpeg["levels"]]},
    }
    summary["request_path_p50_ms"] = request_path(bin_dir)
    summary["cpu_arena"] = args.cpu_arena
    (OUT / f"summary-arena-{args.cpu_arena}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
