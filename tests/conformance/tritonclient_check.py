#!/usr/bin/env python3
"""Conformance check: NVIDIA's own `tritonclient` (HTTP and gRPC) against a running resnet-serve.

Run by tests/kserve_conformance.rs; by hand:
    python3 tests/conformance/tritonclient_check.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 \
        --model slow --image tests/fixtures/images/fashion-0-label9.png --max-batch-size 4
Exits non-zero with the failed check on the first mismatch.
"""

import argparse
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_error(call, needle, what):
    try:
        call()
    except InferenceServerException as error:
        check(needle in str(error), f"{what}: error {error!s} lacks {needle!r}")
        return
    raise AssertionError(f"{what}: no error")


def tensor_input(module, name, array, **kwargs):
    tensor = module.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, **kwargs)
    return tensor


def image_input(module, name, images, **kwargs):
    array = np.array(images, dtype=np.object_)
    tensor = module.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(array, **kwargs)
    return tensor


def check_metadata(client, model, is_http):
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready(model), "model ready")
    check(client.is_model_ready(model, "1"), "model version ready")
    server = client.get_server_metadata()
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model)
    stats = client.get_inference_statistics(model)
    index = client.get_model_repository_index()
    if not is_http:
        from google.protobuf import json_format

        to_dict = lambda message: json_format.MessageToDict(message, preserving_proto_field_name=True)
        server, metadata, stats = to_dict(server), to_dict(metadata), to_dict(stats)
        config = to_dict(config)["config"]
        index = to_dict(index)["models"]
    check(server["name"] == "resnet-serve", f"server metadata {server}")
    check("binary_tensor_data" in server["extensions"], f"extensions {server}")
    check(metadata["platform"] == "onnxruntime_onnx", f"metadata {metadata}")
    check([int(d) for d in metadata["inputs"][0]["shape"]] == [-1, 1, 28, 28], f"input shape {metadata}")
    check(config["input"][0]["data_type"] == "TYPE_FP32", f"config {config}")
    check([int(d) for d in config["input"][0]["dims"]] == [1, 28, 28], f"config dims {config}")
    check("dynamic_batching" in config, f"config {config}")
    check(stats["model_stats"][0]["name"] == model, f"stats {stats}")
    check(any(entry["name"] == model and entry["state"] == "READY" for entry in index), f"index {index}")
    return config, metadata


def check_inference(module, client, model, args, is_http):
    name, output = "input", "logits"
    png = open(args.image, "rb").read()
    batch = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)

    binary = client.infer(model, [tensor_input(module, name, batch)], request_id="c1")
    logits = binary.as_numpy(output)
    check(logits.shape == (2, 10), f"logits shape {logits.shape}")
    response_id = binary.get_response()["id"] if is_http else binary.get_response().id
    check(response_id == "c1", f"id echoed: {response_id!r}")

    outputs = [module.InferRequestedOutput(output, binary_data=False)] if is_http else [module.InferRequestedOutput(output)]
    kwargs = {"binary_data": False} if is_http else {}
    plain = client.infer(model, [tensor_input(module, name, batch, **kwargs)], outputs=outputs, priority=1, timeout=10_000_000)
    check(np.allclose(plain.as_numpy(output), logits, atol=1e-5), "JSON vs binary logits")

    if is_http:
        for algorithm in ("gzip", "deflate"):
            compressed = client.infer(
                model,
                [tensor_input(module, name, batch)],
                request_compression_algorithm=algorithm,
                response_compression_algorithm=algorithm,
            )
            check(np.allclose(compressed.as_numpy(output), logits, atol=1e-5), f"{algorithm} logits")
    else:
        compressed = client.infer(model, [tensor_input(module, name, batch)], compression_algorithm="gzip")
        check(np.allclose(compressed.as_numpy(output), logits, atol=1e-5), "gzip logits")

    classified = client.infer(
        model,
        [image_input(module, name, [png, png])],
        outputs=[module.InferRequestedOutput(output, class_count=3)],
    )
    strings = classified.as_numpy(output)
    check(strings.shape == (2, 3), f"classification shape {strings.shape}")
    value, index, label = strings[0][0].decode().split(":", 2)
    check(label, f"classification label in {strings[0][0]!r}")
    image_logits = client.infer(model, [image_input(module, name, [png])]).as_numpy(output)
    check(int(index) == int(np.argmax(image_logits[0])), f"top class {strings[0][0]!r} vs {image_logits}")
    check(abs(float(value) - float(np.max(image_logits[0]))) < 1e-4, "classification value is the logit")

    too_many = np.zeros((args.max_batch_size + 1, 1, 28, 28), dtype=np.float32)
    expect_error(lambda: client.infer(model, [tensor_input(module, name, too_many)]), "max_batch_size", "N > max_batch_size")
    expect_error(lambda: client.infer("no-such-model", [tensor_input(module, name, batch)]), "unknown model", "unknown model")
    wrong = np.zeros((1, 3, 28, 28), dtype=np.float32)
    expect_error(lambda: client.infer(model, [tensor_input(module, name, wrong)]), "must have shape", "wrong shape")
    return logits


def check_stream(client, model):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    tensor = np.ones((1, 1, 28, 28), dtype=np.float32)
    for number in range(3):
        inputs = [tensor_input(grpcclient, "input", tensor)]
        client.async_stream_infer("no-such-model" if number == 1 else model, inputs, request_id=f"s{number}")
    results = [answers.get(timeout=60) for _ in range(3)]
    client.stop_stream()
    check(results[0][1] is None and results[2][1] is None, f"stream errors {results}")
    check(results[1][1] is not None and "unknown model" in str(results[1][1]), f"stream error {results[1]}")
    check(results[0][0].get_response().id == "s0", "stream id")
    check(np.allclose(results[0][0].as_numpy("logits"), results[2][0].as_numpy("logits")), "stream logits")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--image", required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()

    http = httpclient.InferenceServerClient(args.http)
    check_metadata(http, args.model, True)
    http_logits = check_inference(httpclient, http, args.model, args, True)
    print("tritonclient.http: ok")

    grpc = grpcclient.InferenceServerClient(args.grpc)
    check_metadata(grpc, args.model, False)
    grpc_logits = check_inference(grpcclient, grpc, args.model, args, False)
    check(np.allclose(http_logits, grpc_logits, atol=1e-5), "HTTP and gRPC logits agree")
    check_stream(grpc, args.model)
    print("tritonclient.grpc: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
