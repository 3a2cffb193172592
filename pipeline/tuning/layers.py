"""Per-Conv analysis of an int8 configuration: where the quantization error comes from.

For every Conv (vamc order, `numbering.conv_table`):
- its input's threshold, max |x| and share of values clipped (from the calibration statistics);
- weight SQNR: the weight against its int8 version (per channel or per tensor, as configured);
- single SQNR: this Conv alone quantized (input and weight), its output against fp32's. It is measured on a
  "conv bank": a model holding a copy of every Conv, each fed with the fp32 input it gets in the network, passed
  through the backend's own Q/DQ writer, so one run gives every Conv's single error;
- entire SQNR: the fully quantized model (every Conv and Add/Mul as configured), at this Conv's output, against
  fp32: the error accumulated up to there.
SQNR = 10 log10(sum x^2 / sum (x - x_q)^2) in dB, pooled over the images given (higher is better).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..backends.ort import qdq
from ..backends.ort.numbering import node_name
from ..core import runtime


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _sqnr_of(x: np.ndarray, quantized: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return sqnr_db(float(np.sum(x64 ** 2)), float(np.sum((x64 - quantized) ** 2)))


def convs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node_name(n, i): n for i, n in enumerate(model.graph.node) if n.op_type == "Conv"}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """MODEL with NAMES added to its graph outputs (shapes from ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    out.graph.output.extend(infos[n] for n in dict.fromkeys(names) if n not in present)
    return out


BANK_INPUT = "bank/"  # prefix of the conv bank's inputs: a Conv's input may be another Conv's output


def conv_bank(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Conv of MODEL side by side, Conv X reading graph input `bank/X` (a copy of X), writing its own output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    nodes = []
    for node in convs(model).values():
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[0] = BANK_INPUT + node.input[0]
        nodes.append(copy)
    inputs = []
    for name in dict.fromkeys(node.input[0] for node in convs(model).values()):
        info = onnx.ValueInfoProto()
        info.CopyFrom(infos[name])
        info.name = BANK_INPUT + name
        inputs.append(info)
    initializers = {init.name: init for init in model.graph.initializer}
    used = {name for n in nodes for name in n.input[1:] if name}
    graph = helper.make_graph(nodes, "conv_bank", inputs, [infos[n.output[0]] for n in nodes],
                              [initializers[name] for name in sorted(used)])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def weight_sqnr(model: onnx.ModelProto, per_channel: bool) -> dict[str, float]:
    """Conv name -> SQNR of its weight quantized as the writer quantizes it."""
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    out = {}
    for name, node in convs(model).items():
        w = weights[node.input[1]]
        values, scale = qdq.quantize_weight(w, per_channel)
        shaped = scale.reshape(-1, *([1] * (w.ndim - 1))) if per_channel else scale
        out[name] = _sqnr_of(w, values.astype(np.float64) * shaped)
    return out


def activation_sqnr(model: onnx.ModelProto, thresholds: dict[str, float], per_channel: bool,
                    inputs: list[np.ndarray], skip: set[str] = frozenset()) -> dict[str, dict[str, float]]:
    """Conv name -> {"single": dB, "entire": dB} over INPUTS (preprocessed images); the entire model keeps the
    Convs of SKIP float (single is what quantizing each would do, skipped or not)."""
    nodes = convs(model)
    outputs = [n.output[0] for n in nodes.values()]
    conv_inputs = list(dict.fromkeys(n.input[0] for n in nodes.values()))
    graph_input = model.graph.input[0].name
    fp32 = runtime.session(with_outputs(model, conv_inputs + outputs).SerializeToString())
    banked = {BANK_INPUT + name: t for name, t in thresholds.items()}
    bank = runtime.session(qdq.write_qdq(conv_bank(model), banked, set(), per_channel))
    entire = runtime.session(qdq.write_qdq(with_outputs(model, outputs), thresholds, skip, per_channel))
    signal = dict.fromkeys(nodes, 0.0)
    noise = {kind: dict.fromkeys(nodes, 0.0) for kind in ("single", "entire")}
    for x in inputs:
        ref = dict(zip((o.name for o in fp32.get_outputs()), fp32.run(None, {graph_input: x})))
        ref[graph_input] = x
        single = dict(zip((o.name for o in bank.get_outputs()),
                          bank.run(None, {i.name: ref[i.name[len(BANK_INPUT):]] for i in bank.get_inputs()})))
        whole = dict(zip((o.name for o in entire.get_outputs()), entire.run(None, {graph_input: x})))
        for name, node in nodes.items():
            r = ref[node.output[0]].astype(np.float64)
            signal[name] += float(np.sum(r ** 2))
            noise["single"][name] += float(np.sum((r - single[node.output[0]]) ** 2))
            noise["entire"][name] += float(np.sum((r - whole[node.output[0]]) ** 2))
    return {name: {kind: sqnr_db(signal[name], noise[kind][name]) for kind in noise} for name in nodes}
