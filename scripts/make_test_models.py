#!/usr/bin/env python3
"""Build the small ONNX fixtures the integration tests use (committed under tests/fixtures/).

- `slow`: a 1x28x28 -> 10 class residual conv stack whose weights are generated inside the
  graph (ConstantOfShape), so the file is tiny but each image costs ~1 GFLOP. Tests use it
  to fill queues and pass deadlines without sleeping.
- `poison`: a 1x28x28 -> 10 class linear classifier whose graph fails inside ONNX Runtime
  (a Reshape to an impossible shape) when any image of the batch has a mean pixel value
  above 0.9 after preprocessing (an almost white image, with scale 255, mean 0, std 1):
  tests use it to check that after a failed batch only the request that fails alone gets
  an error, and the next batch works. Zeros (the warm-up input) pass.

The served default model is exported by resnet-train; these only exercise batching limits.
Usage: python3 scripts/make_test_models.py tests/fixtures/models
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 128
BLOCKS = 48


def constant_weight(name, shape, value, nodes):
    shape_name = f"{name}_shape"
    nodes.append(helper.make_node(
        "Constant", [], [shape_name],
        value=numpy_helper.from_array(np.array(shape, dtype=np.int64))))
    nodes.append(helper.make_node(
        "ConstantOfShape", [shape_name], [name],
        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value])))


def slow_model():
    nodes = []
    constant_weight("stem_w", [CHANNELS, 1, 3, 3], 0.05, nodes)
    nodes.append(helper.make_node("Conv", ["input", "stem_w"], ["x0"], pads=[1, 1, 1, 1]))
    current = "x0"
    for block in range(BLOCKS):
        weight = f"w{block}"
        constant_weight(weight, [CHANNELS, CHANNELS, 3, 3], 1.0 / (CHANNELS * 9), nodes)
        nodes.append(helper.make_node("Conv", [current, weight], [f"c{block}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{block}"], [f"r{block}"]))
        nodes.append(helper.make_node("Add", [f"r{block}", current], [f"x{block + 1}"]))
        current = f"x{block + 1}"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    rng = np.random.default_rng(7)
    head = numpy_helper.from_array(rng.normal(size=(10, CHANNELS)).astype(np.float32), "head_w")
    nodes.append(helper.make_node("Gemm", ["flat", "head_w"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def poison_model():
    rng = np.random.default_rng(11)
    weights = numpy_helper.from_array(rng.normal(size=(10, 784)).astype(np.float32), "w")
    threshold = numpy_helper.from_array(np.array(0.9, dtype=np.float32), "threshold")
    bad_shape = numpy_helper.from_array(np.array([3, 3], dtype=np.int64), "bad_shape")
    good_shape = numpy_helper.from_array(np.array([-1, 10], dtype=np.int64), "good_shape")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["raw"], transB=1),
        helper.make_node("ReduceMean", ["flat"], ["means"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["means"], ["brightest"], keepdims=0),
        helper.make_node("Greater", ["brightest", "threshold"], ["poisoned"]),
        helper.make_node("Where", ["poisoned", "bad_shape", "good_shape"], ["shape"]),
        helper.make_node("Reshape", ["raw", "shape"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "poison",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weights, threshold, bad_shape, good_shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/models"
    os.makedirs(os.path.join(root, "slow", "1"), exist_ok=True)
    onnx.save(slow_model(), os.path.join(root, "slow", "1", "model.onnx"))
    os.makedirs(os.path.join(root, "poison", "1"), exist_ok=True)
    onnx.save(poison_model(), os.path.join(root, "poison", "1", "model.onnx"))


if __name__ == "__main__":
    main()
