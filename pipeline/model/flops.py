"""FLOPs and parameters of an ONNX model, counted from its graph (the model card asks a report to say how).

Counting rule (stated in the report too):
- MACs of Conv (N * Cout * Hout * Wout * Cin/group * kH * kW), MatMul (output elements * K) and Gemm (M * N * K),
  from the shapes given by onnx.shape_inference at the model's static input shape. Other ops (BatchNorm,
  InstanceNorm, activations, Resize, pooling, adds) are not counted. FLOPs = 2 x MACs.
- Params = number of elements of every floating-point initializer (weights, biases, and the scale/bias/running
  statistics of the BatchNorms that onnxsim could not fold into a convolution). Integer initializers (shapes,
  Slice indices) are not counted. A BatchNorm folded into the convolution before it contributes its C biases
  instead of its 2C affine parameters, so the total is a little below PyTorch's `parameters()` count; so are the
  layers used only in training (MODNet's semantic and detail prediction heads), which the exported inference
  graph does not contain.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

from ..core.errors import PipelineError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
COUNTING_RULE = ("MACs of Conv, MatMul and Gemm from the ONNX shapes at the static input shape (other ops not "
                 "counted), FLOPs = 2 x MACs; params = elements of all floating-point initializers of the "
                 "simplified ONNX (BatchNorms that follow a convolution are folded into it; the unfolded "
                 "IBNorm BatchNorms count their scale, bias, mean and variance; layers used only in training, "
                 "absent from the exported inference graph, are not counted)")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count(path: str | Path) -> dict:
    """{'macs', 'flops', 'params', 'by_op': {op: macs}} of the ONNX at PATH."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError...: report it as bad input
        raise PipelineError(f"{path}: cannot read this ONNX file ({type(exc).__name__})") from None
    shapes = _shapes(model)
    by_op: dict[str, int] = {}

    def need(name: str, node: onnx.NodeProto) -> list[int]:
        if name not in shapes:
            raise PipelineError(f"{path}: no static shape for {name!r} (input of {node.op_type} {node.name!r}); "
                                f"count FLOPs on the simplified, static-shape ONNX")
        return shapes[name]

    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = need(node.input[1], node)  # (Cout, Cin/group, kH, kW)
            out = need(node.output[0], node)  # (N, Cout, H, W)
            macs = int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "MatMul":
            a = need(node.input[0], node)
            out = need(node.output[0], node)
            macs = int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            a = need(node.input[0], node)
            out = need(node.output[0], node)
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            macs = int(np.prod(out)) * (a[0] if trans_a else a[1])
        else:
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    macs = sum(by_op.values())
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in FLOAT_TYPES)
    return {"macs": macs, "flops": 2 * macs, "params": params, "by_op": by_op, "rule": COUNTING_RULE}
