"""Empirical bias correction: the float model rewritten so that its int8 rounding errors cancel on average.

int8 shifts the mean of each Conv's output channel. Measured on the calibration images, in the reference
backend's int8 emulation (the same thresholds, Q/DQ placement, skipped Convs and per-channel setting as
`build --backend ort`), that shift is subtracted from the channel's bias. The result is still a float model:
vamc (or the reference backend) quantizes it as it quantizes any ONNX, and the errors it makes then cancel on
average, as far as the emulation is faithful to vamc (docs/quantization.md, "Bias correction").

Sequential, as the card runs it: a Conv's correction is measured with every Conv upstream of it already
corrected and quantized. Correcting all Convs at once by their accumulated error overcorrects (each Conv's
error already holds the upstream errors that the upstream corrections remove). The fp32 means do not depend on
the corrections, so one fp32 pass gives them all; the int8 means are measured generation by generation (Convs
with no corrected Conv between them share a pass), each pass running only the part of the network it adds, from
the int8 activations earlier passes kept (`plan`).

vamc calibrates the model it is given, so the thresholds are recomputed on the corrected model; correction and
calibration alternate until no threshold moves by more than THRESHOLD_MOVE, at most MAX_ROUNDS corrections.
The record's fp32 deviation of the corrected model costs no pass of its own: the first calibration's pass over the
float model keeps its output on disk, and each recalibration compares the corrected model's output with it (the
last recalibration's model is the result).
Everything is streamed image by image (stats.py's reader), summed in float64 in a fixed order: the same inputs
give the same bytes.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...core.config import BuildConfig
from ...core.errors import PipelineError
from . import qdq, stats
from .build import calibration_statistics, config_thresholds
from .numbering import conv_order, node_name

MAX_ROUNDS = 3
PROGRESS = "bias correction"  # the label of its passes on a progress bar, whichever stage runs them
THRESHOLD_MOVE = 0.01  # largest relative threshold move between two calibrations that counts as settled


@dataclass(frozen=True)
class Conv:
    index: int       # node index in the graph
    name: str        # node name (numbering.node_name)
    output: str      # its output tensor
    bias: str        # its bias initializer (added when the Conv had none)


def with_biases(model: onnx.ModelProto, skip: set[str]) -> tuple[onnx.ModelProto, list[Conv], set[str]]:
    """A copy of MODEL where every Conv to correct (all but SKIP) has a bias initializer, zero where it had none
    (the fp32 output is unchanged); those Convs in graph order, and the names of the Convs given a bias."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {init.name: init for init in out.graph.initializer}
    taken = set(initializers) | {o for n in out.graph.node for o in n.output}
    convs, added = [], set()
    for index, node in enumerate(out.graph.node):
        name = node_name(node, index)
        if node.op_type != "Conv" or name in skip:
            continue
        if len(node.input) < 3 or not node.input[2]:
            channels = initializers[node.input[1]].dims[0]
            bias = f"{name}/bias_correction"
            if bias in taken:
                raise PipelineError(f"{name}: the graph already has a tensor named {bias!r}; cannot add its bias")
            out.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), bias))
            del node.input[2:]
            node.input.append(bias)
            added.add(name)
        convs.append(Conv(index, name, node.output[0], node.input[2]))
    shared = [c.bias for c in convs]
    if len(set(shared)) != len(shared):
        raise PipelineError("two Convs share one bias initializer: their corrections could not be told apart")
    return out, convs, added


def depths(model: onnx.ModelProto, corrected: set[str]) -> list[int]:
    """Per node, the corrected Convs (named by their output tensor) on the longest path from the input up to and
    including it. ONNX stores nodes in topological order."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    found: list[int] = []
    for node in model.graph.node:
        upstream = max((found[producer[i]] for i in node.input if i in producer), default=0)
        found.append(upstream + (node.op_type == "Conv" and node.output[0] in corrected))
    return found


def generations(model: onnx.ModelProto, convs: list[Conv]) -> list[list[Conv]]:
    """CONVS grouped so that no Conv of a group has a Conv to correct upstream of it in the same or a later group:
    group k holds the Convs with k - 1 corrected Convs on their longest path from the input."""
    depth = depths(model, {c.output for c in convs})
    groups: dict[int, list[Conv]] = {}
    for conv in convs:
        groups.setdefault(depth[conv.index], []).append(conv)
    return [groups[k] for k in sorted(groups)]


def prune(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """MODEL computing OUTPUTS only: the nodes they depend on, nothing else (ONNX Runtime would run a node whose
    result nobody asked for whenever the graph lists it as an output)."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    needed, todo = set(), [producer[t] for t in outputs if t in producer]
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        todo += [producer[i] for i in model.graph.node[index].input if i in producer]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for i, n in enumerate(model.graph.node) if i in needed)
    used = {i for n in out.graph.node for i in n.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.graph.output[:]
    del out.graph.value_info[:]
    return out


def channel_means(model: onnx.ModelProto, tensors: list[str], calib_tensors, progress) -> dict[str, np.ndarray]:
    """Per output channel, the mean of each of TENSORS (N, C, H, W) over every calibration image and position,
    accumulated in float64 image by image in the calibration order."""
    from ...core import runtime

    data, shapes = stats._outputs(prune(model, tensors), tensors)
    session = runtime.session(data)
    input_name = model.graph.input[0].name
    input_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    sums = {t: np.zeros(shapes[t][1], np.float64) for t in tensors}

    def add(values: dict[str, np.ndarray]) -> None:
        for t in tensors:
            sums[t] += values[t].sum(axis=(0, 2, 3), dtype=np.float64)

    images = stats._stream(session, input_name, shapes, calib_tensors, input_shape, progress, PROGRESS, add)
    return {t: sums[t] / (images * shapes[t][2] * shapes[t][3]) for t in tensors}


def set_biases(model: onnx.ModelProto, biases: dict[str, np.ndarray]) -> None:
    for k, init in enumerate(model.graph.initializer):
        if init.name in biases:
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(biases[init.name].astype(np.float32),
                                                                        init.name))


def biases_of(model: onnx.ModelProto, convs: list[Conv]) -> dict[str, np.ndarray]:
    wanted = {c.bias for c in convs}
    return {init.name: numpy_helper.to_array(init).astype(np.float32) for init in model.graph.initializer
            if init.name in wanted}


@dataclass(frozen=True)
class Step:
    """One pass of the sequential correction: the nodes it runs (the previous group's Convs, now corrected, and
    what follows them up to the next group), the group it measures, what it reads and what it keeps."""
    nodes: list[int]      # node indices, graph order (constant nodes they read included)
    measured: list[str]   # output tensors of the Convs this step measures
    reads: list[str]      # activations from earlier steps (the graph input among them)
    keeps: list[str]      # activations later steps read
    last_read: dict[str, int]  # kept tensor -> the last step that reads it


def plan(model: onnx.ModelProto, corrected: set[str]) -> list[Step]:
    """The steps of a sequential correction of the Convs whose outputs are CORRECTED, in MODEL (the Q/DQ model).

    Step k (1-based) runs every node k - 1 corrected Convs deep (the group k - 1 Convs included, with the
    correction step k - 1 measured) and the group k Convs, whose outputs it measures. Whatever a later step reads
    is kept between steps, so every node runs once per round (a measured Conv twice) and memory does not depend
    on the depth: ONNX Runtime runs the whole graph whatever outputs are asked for, so one model per prefix would
    recompute the network from the input at every step. An activation's DequantizeLinear runs in every step that
    reads it, from the int8 tensor kept: ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into an
    integer Conv, as it does in the whole model, only when the three are in one model."""
    nodes = model.graph.node
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    live: list[bool] = []  # computed from the input (not a weight's DequantizeLinear, not a Constant)
    for node in nodes:
        live.append(any(i in graph_inputs or (i in producer and live[producer[i]]) for i in node.input))
    copied = {i for i, n in enumerate(nodes) if not live[i] or n.op_type == "DequantizeLinear"}  # run where read
    depth = depths(model, corrected)
    measures = {i for i, n in enumerate(nodes) if n.op_type == "Conv" and n.output[0] in corrected}
    last = max(depth[i] for i in measures)

    members: dict[int, set[int]] = {k: set() for k in range(1, last + 1)}
    for i in range(len(nodes)):
        if i not in copied and depth[i] + 1 <= last:
            members[depth[i] + 1].add(i)  # the step that runs node I for real
        if i in measures:
            members[depth[i]].add(i)
    for k, own in members.items():
        todo = [producer[t] for i in own for t in nodes[i].input if t in producer and producer[t] in copied]
        while todo:
            j = todo.pop()
            if j not in own:
                own.add(j)
                todo += [producer[t] for t in nodes[j].input if t in producer and producer[t] in copied]
    reads: dict[int, set[str]] = {}
    readers: dict[str, list[int]] = {}  # kept activation -> steps that read it
    for k, own in members.items():
        reads[k] = {t for i in own for t in nodes[i].input
                    if t in graph_inputs or (t in producer and producer[t] not in own and producer[t] not in copied)}
        for t in reads[k]:
            readers.setdefault(t, []).append(k)
    steps = []
    for k, own in members.items():
        measured = [nodes[i].output[0] for i in sorted(own) if i in measures and depth[i] == k]
        keeps = sorted(t for i in own if i not in copied and not (i in measures and depth[i] == k)
                       for t in nodes[i].output if any(r > k for r in readers.get(t, [])))
        steps.append(Step(nodes=sorted(own), measured=measured, reads=sorted(reads[k]), keeps=keeps,
                          last_read={t: max(readers[t]) for t in keeps}))
    return steps


def step_model(model: onnx.ModelProto, step: Step, types: dict[str, onnx.TypeProto]) -> bytes:
    """MODEL's nodes of STEP as a model of their own: its reads as inputs, its keeps and measured tensors as
    outputs (TYPES: every tensor's inferred type)."""
    nodes = [model.graph.node[i] for i in step.nodes]
    used = {t for n in nodes for t in n.input}

    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_value_info(name, types[name])
    graph = helper.make_graph(nodes, "step", [info(t) for t in step.reads],
                              [info(t) for t in step.keeps + step.measured],
                              [init for init in model.graph.initializer if init.name in used])
    out = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return out.SerializeToString()


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every tensor's type (element type and static shape), from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {vi.name: vi.type for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}


def correct_once(model: onnx.ModelProto, convs: list[Conv], fp32_means: dict[str, np.ndarray],
                 thresholds: dict[str, float], skip: set[str], per_channel: bool, calib_tensors,
                 progress) -> dict[str, np.ndarray]:
    """The biases of CONVS corrected sequentially against FP32_MEANS, in MODEL quantized with THRESHOLDS."""
    from ...core import runtime

    quantized = onnx.load_from_string(qdq.write_qdq(model, thresholds, skip, per_channel))
    types = tensor_types(quantized)
    shapes = {t: [d.dim_value for d in ty.tensor_type.shape.dim] for t, ty in types.items()}
    dtypes = {t: helper.tensor_dtype_to_np_dtype(ty.tensor_type.elem_type) for t, ty in types.items()}
    bias_of = {c.output: c.bias for c in convs}
    biases = biases_of(model, convs)
    input_name = model.graph.input[0].name
    tensors = np.load(calib_tensors, mmap_mode="r")
    offset, count = tensors.offset, tensors.shape[0]
    del tensors  # read image by image with plain reads: mapped pages would count in RSS and grow with N
    size = {t: int(np.prod(s)) * dtypes[t].itemsize for t, s in shapes.items()}  # bytes per image
    with tempfile.TemporaryDirectory(prefix="bias-correction-") as scratch:
        kept: dict[str, Path] = {input_name: Path(calib_tensors)}
        expires: dict[str, int] = {}
        for k, step in enumerate(plan(quantized, set(bias_of)), start=1):
            set_biases(quantized, biases)  # every earlier group's correction, as the card will run it
            session = runtime.session(step_model(quantized, step, types))
            sums = {t: np.zeros(shapes[t][1], np.float64) for t in step.measured}
            files = {t: Path(scratch) / f"{k}-{j}.bin" for j, t in enumerate(step.keeps)}
            readers = {t: open(kept[t], "rb") for t in step.reads}
            writers = {t: open(files[t], "wb") for t in step.keeps}
            try:
                for image in progress(range(count), PROGRESS, count):
                    feeds = {}
                    for t, handle in readers.items():
                        handle.seek((offset if t == input_name else 0) + image * size[t])
                        feeds[t] = np.fromfile(handle, dtypes[t], size[t] // dtypes[t].itemsize).reshape(shapes[t])
                    outputs = session.run(step.keeps + step.measured, feeds)
                    for t, value in zip(step.keeps, outputs):
                        value.tofile(writers[t])
                    for t, value in zip(step.measured, outputs[len(step.keeps):]):
                        sums[t] += value.sum(axis=(0, 2, 3), dtype=np.float64)
            finally:
                for handle in (*readers.values(), *writers.values()):
                    handle.close()
            kept.update(files)
            expires.update(step.last_read)
            for t in [t for t, last in expires.items() if last == k]:  # no later step reads it
                kept.pop(t).unlink()
                del expires[t]
            for t in step.measured:
                error = sums[t] / (count * shapes[t][2] * shapes[t][3]) - fp32_means[t]
                biases[bias_of[t]] = (biases[bias_of[t]].astype(np.float64) - error).astype(np.float32)
    return biases


def calibrate(model: onnx.ModelProto, tensors: list[str], cfg: BuildConfig, calib_tensors, progress,
              observe=None) -> tuple[dict[str, float], stats.Collection]:
    """The thresholds `build --backend ort` would give MODEL, and the statistics it would collect for them (OBSERVE:
    stats.collect's)."""
    collected = calibration_statistics(cfg, model, tensors, calib_tensors, progress, PROGRESS, observe)
    return config_thresholds(cfg, collected), collected


def largest_move(before: dict[str, float], after: dict[str, float]) -> tuple[float, str]:
    """The largest relative change of a threshold, and its tensor (the first in graph order on ties)."""
    def move(t: str) -> float:
        if before[t] == after[t]:
            return 0.0
        return abs(after[t] - before[t]) / max(abs(before[t]), np.finfo(np.float32).tiny)
    moves = [(move(t), t) for t in before]
    best = max(m for m, _ in moves)
    return float(best), next(t for m, t in moves if m == best)


class Deviation:
    """Mean and largest |alpha_corrected - alpha_original| of the float models on the calibration images, taken from
    a calibration pass of the corrected model (stats.collect's OBSERVE, images in order) against the original's
    outputs, which the first calibration wrote to ORIGINAL image by image: no forward pass of its own."""

    def __init__(self, original: BinaryIO, output: str):
        self.original, self.output = original, output
        self.images, self.total, self.largest = 0, 0.0, 0.0

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        alpha = values[self.output]
        base = np.fromfile(self.original, np.float32, alpha.size).reshape(alpha.shape).astype(np.float64)
        diff = np.abs(alpha.astype(np.float64) - base)
        self.images += 1
        self.total += float(diff.mean())
        self.largest = max(self.largest, float(diff.max()))

    def record(self) -> dict:
        return {"images": self.images, "mean_abs_alpha_diff": self.total / self.images,
                "max_abs_alpha_diff": self.largest}


def correct(cfg: BuildConfig, model: onnx.ModelProto, calib_tensors, progress, skipped: list[str]
            ) -> tuple[bytes, dict, stats.Collection]:
    """MODEL bias-corrected for CFG's quantization (SKIPPED: the Conv names skip_conv_layers keeps float),
    serialized; what was done: rounds, threshold moves, per-Conv correction norms, fp32 deviation; and the
    statistics of the last recalibration, which ran on the result: those `build --backend ort` collects from it,
    so a caller building it in this process (tune) need not collect them again."""
    quantize = cfg.backend.quantize
    skip = set(skipped)
    tensors = qdq.quantized_tensors(model, skip)
    current, convs, added = with_biases(model, skip)
    original = biases_of(current, convs)
    fp32_means = channel_means(current, [c.output for c in convs], calib_tensors, progress)
    output = model.graph.output[0].name
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bias-correction-") as scratch:
        # The zero biases with_biases added leave the output as it was: this is the original's fp32 output.
        original_output = Path(scratch) / "fp32-output.bin"
        with open(original_output, "wb") as handle:
            thresholds, _ = calibrate(current, tensors, cfg, calib_tensors, progress,
                                      observe=lambda values: values[output].tofile(handle))
        for round_ in range(1, MAX_ROUNDS + 1):
            set_biases(current, correct_once(current, convs, fp32_means, thresholds, skip,
                                             quantize.quantize_per_channel, calib_tensors, progress))
            # Every recalibration measures the deviation: the last one's model is the result.
            with open(original_output, "rb") as handle:
                deviation = Deviation(handle, output)
                recalibrated, collected = calibrate(current, tensors, cfg, calib_tensors, progress,
                                                    observe=deviation)
            move, tensor = largest_move(thresholds, recalibrated)
            rounds.append({"round": round_, "largest_threshold_move": move, "tensor": tensor})
            thresholds = recalibrated
            if move <= THRESHOLD_MOVE:
                break
    final = biases_of(current, convs)
    vamc_index = {name: i for i, name in enumerate(conv_order(model, cfg.pipeline.conv_numbering))}
    depth = {c.name: k for k, group in enumerate(generations(current, convs)) for c in group}
    rows = []
    for conv in convs:
        delta = final[conv.bias].astype(np.float64) - original[conv.bias].astype(np.float64)
        rows.append({"onnx_node": conv.name, "index": vamc_index[conv.name], "generation": depth[conv.name],
                     "bias_added": conv.name in added, "channels": int(delta.size),
                     "correction_l2": float(np.linalg.norm(delta)), "correction_max_abs": float(np.abs(delta).max()),
                     "bias_l2": float(np.linalg.norm(original[conv.bias].astype(np.float64)))})
    record = {
        "method": "empirical bias correction, sequential (each Conv measured with every Conv upstream corrected and "
                  "quantized), in the reference backend's int8 emulation",
        "quantize": {**asdict(quantize), "skip_conv_layers": list(quantize.skip_conv_layers)},
        "conv_numbering": cfg.pipeline.conv_numbering,
        "skipped_convs": sorted(skip),
        "rounds": rounds,
        "rounds_run": len(rounds),
        "settled": rounds[-1]["largest_threshold_move"] <= THRESHOLD_MOVE,
        "threshold_move_limit": THRESHOLD_MOVE,
        "max_rounds": MAX_ROUNDS,
        "passes_per_round": len(generations(current, convs)),
        "convs": rows,
        "fp32_deviation": deviation.record(),
    }
    return current.SerializeToString(), record, collected
