#!/usr/bin/env python3
"""Checks an exported model: onnx.checker full_check, then ONNX Runtime logits vs reference.

    check_onnx.py MODEL.onnx [--input X.npy --expected Y.npy] [--atol 1e-4] [--rtol 0]
    check_onnx.py MODEL_DIR [--atol A --rtol R]   # MODEL_DIR/1/model.onnx + golden.json

With a model directory, each golden PNG is preprocessed from config.toml (centre crop, /scale,
mean/std; golden images are stored at the resize size) and ORT's logits are compared with the
trainer's; tolerances default to golden.json's.

Passes when max |ort - ref| <= atol + rtol * |ref| elementwise; prints the largest difference.
Also checks the graph's input/output names and that the batch dimension is dynamic.
"""
import argparse
import json
import os
import sys
import tomllib

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--input", help=".npy float32 [N, C, H, W]")
    parser.add_argument("--expected", help=".npy float32 [N, classes] reference logits")
    parser.add_argument("--atol", type=float)
    parser.add_argument("--rtol", type=float)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--output-name", default="logits")
    args = parser.parse_args()

    golden = None
    if os.path.isdir(args.model):
        directory = args.model
        args.model = os.path.join(directory, "1", "model.onnx")
        with open(os.path.join(directory, "config.toml"), "rb") as file:
            config = tomllib.load(file)
        with open(os.path.join(directory, "golden.json")) as file:
            golden = json.load(file)
        args.atol = golden["atol"] if args.atol is None else args.atol
        args.rtol = golden["rtol"] if args.rtol is None else args.rtol
        args.input_name = config["input"]["name"]
        args.output_name = config["output"]["name"]
        labels = open(os.path.join(directory, "labels.txt")).read().splitlines()
        if len(labels) != len(golden["cases"][0]["logits"]):
            print(f"FAIL: {len(labels)} labels for {len(golden['cases'][0]['logits'])} logits", file=sys.stderr)
            return 1
    args.atol = 1e-4 if args.atol is None else args.atol
    args.rtol = 0.0 if args.rtol is None else args.rtol
    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    inputs = [value.name for value in graph.input if value.name not in {i.name for i in graph.initializer}]
    outputs = [value.name for value in graph.output]
    if inputs != [args.input_name] or outputs != [args.output_name]:
        print(f"FAIL: inputs {inputs}, outputs {outputs}", file=sys.stderr)
        return 1
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        print(f"FAIL: batch dimension is not dynamic: {batch}", file=sys.stderr)
        return 1
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    print(f"checker ok: opset {opset}, {len(graph.node)} nodes, "
          f"{sum(n.op_type == 'Conv' for n in graph.node)} Conv")
    if golden is not None:
        x = np.stack([preprocess(os.path.join(directory, case["file"]), config) for case in golden["cases"]])
        expected = np.array([case["logits"] for case in golden["cases"]], dtype=np.float32)
    elif args.input:
        x = np.load(args.input).astype(np.float32)
        expected = np.load(args.expected).astype(np.float32)
    else:
        return 0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (logits,) = session.run([args.output_name], {args.input_name: x})
    if logits.shape != expected.shape:
        print(f"FAIL: shape {logits.shape} != {expected.shape}", file=sys.stderr)
        return 1
    difference = np.abs(logits - expected)
    allowed = args.atol + args.rtol * np.abs(expected)
    worst = float(difference.max())
    excess = float((difference - allowed).max())
    same_top1 = bool((logits.argmax(1) == expected.argmax(1)).all())
    print(f"ort vs reference: max |d| = {worst:.3g}, max |ref| = {float(np.abs(expected).max()):.3g}, "
          f"excess over tolerance = {excess:.3g}, same top-1 = {same_top1}")
    if excess > 0:
        print("FAIL: logits differ beyond tolerance", file=sys.stderr)
        return 1
    return 0


def preprocess(path: str, config: dict) -> np.ndarray:
    """The server's preprocessing for images already at the resize size: crop, scale, normalise."""
    from PIL import Image

    pre = config["preprocess"]
    image = Image.open(path).convert("L" if config["input"]["color"] == "gray" else "RGB")
    width, height = image.size
    if min(width, height) != pre["resize_shorter"]:
        raise SystemExit(f"FAIL: golden image {path} is {width}x{height}, not at resize_shorter")
    crop_h, crop_w = pre["crop"]
    top, left = int(round((height - crop_h) / 2)), int(round((width - crop_w) / 2))
    pixels = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.float32)
    pixels = pixels.reshape(crop_h, crop_w, -1).transpose(2, 0, 1) / pre["scale"]
    mean = np.array(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.array(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
