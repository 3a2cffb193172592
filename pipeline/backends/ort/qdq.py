"""The int8 model: QuantizeLinear/DequantizeLinear where TVM's relay quantize puts its simulated quantization.

Quantized (symmetric int8, zero point 0), as in TVM's annotate pass:
- every Conv's data input and weight (the weight per output channel when `quantize_per_channel`, else per
  tensor), unless the Conv is in skip_conv_layers: then both stay float;
- both inputs of an Add or a Mul of two activations (MobileNetV2's residual adds, the SE block's multiply).
Everything else computes in float: Sigmoid, Resize, InstanceNormalization, BatchNormalization, Concat, the SE
block's fully connected layers, and the graph output (so the matte reaches 1.0 wherever fp32's does). A Conv's
output is not quantized (TVM keeps it as a 32-bit accumulator, requantized only by its consumer); its bias stays
float.

Scale: TVM turns a threshold T into scale T/128 and clips to +-127 (reference note, section 2), for activations
and weights alike (a weight's T is its max |w|, TVM's weight_scale `max`). ONNX's QuantizeLinear saturates at
-128, so each activation goes through Clip(-127 s, 127 s) before it. One Clip/Q/DQ chain per quantized tensor,
read by every quantized consumer; other consumers keep reading the float tensor.

`parts` quantizes only the weights (every activation float) or only the activations (every weight float): the two
halves of the int8 model, which analyze scores apart to say where its error comes from. Skipped Convs stay float
in both.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .numbering import node_name

QMAX = 127
PARTS = ("both", "weights", "activations")  # what write_qdq quantizes


def scale_of(threshold: float | np.ndarray) -> np.ndarray:
    """TVM's scale for threshold T: T / 128 (clipping at +-127), floored so an all-zero tensor gets a valid one."""
    return np.maximum(np.asarray(threshold, np.float64) / 128.0, np.finfo(np.float32).tiny).astype(np.float32)


def quantize_weight(weight: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale) with T = max |w| per output channel (axis 0) or per tensor."""
    axes = tuple(range(1, weight.ndim)) if per_channel else None
    scale = scale_of(np.abs(weight).max(axis=axes))
    shaped = scale.reshape(-1, *([1] * (weight.ndim - 1))) if per_channel else scale
    values = np.clip(np.round(weight.astype(np.float64) / shaped), -QMAX, QMAX).astype(np.int8)
    return values, scale


def _activations(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the graph's input (not initializers, not Constant outputs)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return {i.name for i in model.graph.input} | {o for n in model.graph.node if n.op_type != "Constant"
                                                   for o in n.output if o not in constants}


def quantized_inputs(model: onnx.ModelProto, skip: set[str]) -> list[tuple[int, int]]:
    """(node index, input index) of every activation input that is quantized; SKIP holds Conv node names."""
    activations = _activations(model)
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Conv" and node_name(node, index) not in skip:
            found.append((index, 0))
        elif node.op_type in ("Add", "Mul") and len(node.input) == 2 and all(i in activations for i in node.input):
            found += [(index, 0), (index, 1)]
    return found


def quantized_tensors(model: onnx.ModelProto, skip: set[str]) -> list[str]:
    """The activations that get a threshold, in graph order, each once: what calibration must collect."""
    names = [model.graph.node[n].input[k] for n, k in quantized_inputs(model, skip)]
    return list(dict.fromkeys(names))


def _activation_chain(tensor: str, threshold: float) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Clip(+-127 s) -> QuantizeLinear -> DequantizeLinear of TENSOR (s = T/128), output `TENSOR/dequantized`."""
    s = scale_of(threshold)
    constants = [numpy_helper.from_array(s, f"{tensor}/scale"),
                 numpy_helper.from_array(np.array(0, np.int8), f"{tensor}/zero_point"),
                 numpy_helper.from_array((-QMAX * s).astype(np.float32), f"{tensor}/clip_min"),
                 numpy_helper.from_array((QMAX * s).astype(np.float32), f"{tensor}/clip_max")]
    nodes = [
        helper.make_node("Clip", [tensor, f"{tensor}/clip_min", f"{tensor}/clip_max"], [f"{tensor}/clipped"],
                         name=f"{tensor}/Clip"),
        helper.make_node("QuantizeLinear", [f"{tensor}/clipped", f"{tensor}/scale", f"{tensor}/zero_point"],
                         [f"{tensor}/int8"], name=f"{tensor}/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{tensor}/int8", f"{tensor}/scale", f"{tensor}/zero_point"],
                         [f"{tensor}/dequantized"], name=f"{tensor}/DequantizeLinear"),
    ]
    return nodes, constants


def _weight_chain(weight: TensorProto, per_channel: bool) -> tuple[onnx.NodeProto, list[TensorProto]]:
    """WEIGHT as an int8 initializer and its DequantizeLinear, output `NAME/dequantized`."""
    name = weight.name
    values, s = quantize_weight(numpy_helper.to_array(weight), per_channel)
    constants = [numpy_helper.from_array(values, f"{name}/int8"), numpy_helper.from_array(s, f"{name}/scale"),
                 numpy_helper.from_array(np.zeros(s.shape, np.int8), f"{name}/zero_point")]
    axis = {"axis": 0} if per_channel else {}
    node = helper.make_node("DequantizeLinear", [f"{name}/int8", f"{name}/scale", f"{name}/zero_point"],
                            [f"{name}/dequantized"], name=f"{name}/DequantizeLinear", **axis)
    return node, constants


def write_qdq(model: onnx.ModelProto, thresholds: dict[str, float], skip: set[str], per_channel: bool,
              parts: str = "both") -> bytes:
    """MODEL with Q/DQ on the quantized inputs (THRESHOLDS per activation) and int8 weights; serialized. PARTS
    (one of PARTS): "weights" or "activations" leaves the other part float."""
    if parts not in PARTS:
        raise ValueError(f"parts is {parts!r}, not one of {', '.join(PARTS)}")
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    rewired = {}  # (node index, input index) -> new input name
    chains: dict[str, list[onnx.NodeProto]] = {}  # tensor -> its Clip/Q/DQ nodes, placed after its producer
    weight_nodes: dict[str, onnx.NodeProto] = {}
    added: list[TensorProto] = []
    for n, k in quantized_inputs(model, skip) if parts != "weights" else []:
        tensor = graph.node[n].input[k]
        if tensor not in chains:
            chains[tensor], constants = _activation_chain(tensor, thresholds[tensor])
            added += constants
        rewired[n, k] = f"{tensor}/dequantized"
    for index, node in enumerate(graph.node):
        if parts == "activations" or node.op_type != "Conv" or node_name(node, index) in skip:
            continue
        weight = node.input[1]
        if weight not in weight_nodes:
            weight_nodes[weight], constants = _weight_chain(weights[weight], per_channel)
            added += constants
        rewired[index, 1] = f"{weight}/dequantized"

    nodes = list(weight_nodes.values())
    for name in (i.name for i in graph.input):
        nodes += chains.get(name, [])
    for index, node in enumerate(graph.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k in range(len(new.input)):
            new.input[k] = rewired.get((index, k), new.input[k])
        nodes.append(new)
        for output in node.output:
            nodes += chains.get(output, [])

    used = {i for node in nodes for i in node.input}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend([init for init in graph.initializer if init.name in used] + added)
    return out.SerializeToString()
