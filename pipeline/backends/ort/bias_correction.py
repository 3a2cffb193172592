"""Empirical bias correction: the float model rewritten so that its int8 rounding errors cancel on average.

int8 shifts the mean of each Conv's output channel. Measured on the calibration images, in the reference
backend's int8 emulation (the same thresholds, Q/DQ placement, skipped Convs and per-channel setting as
`build --backend ort`), that shift is subtracted from the channel's bias. The result is still a float model:
vamc (or the reference backend) quantizes it as it quantizes any ONNX, and the errors it makes then cancel on
average, as far as the emulation is faithful to vamc (docs/quantization.md, "Bias correction").

Sequential, as the card runs it: a Conv's correction is measured with every Conv upstream of it already
corrected and quantized. Correcting all Convs at once by their accumulated error overcorrects (each Conv's
error already holds the upstream errors that the upstream corrections remove). The fp32 means do not depend on
the corrections, so one fp32 pass gives them all; the int8 means are measured generation by generation: Convs
with no corrected Conv between them and the input share a pass, each pass running only the nodes its Convs
need (`prune`).

vamc calibrates the model it is given, so the thresholds are recomputed on the corrected model; correction and
calibration alternate until no threshold moves by more than THRESHOLD_MOVE, at most MAX_ROUNDS corrections.
Everything is streamed image by image (stats.py's reader), summed in float64 in a fixed order: the same inputs
give the same bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...config import BuildConfig
from ...errors import PipelineError
from . import qdq, stats, tensor_thresholds
from .numbering import conv_order, node_name

MAX_ROUNDS = 3
THRESHOLD_MOVE = 0.01  # largest relative threshold move between two calibrations that counts as settled


@dataclass(frozen=True)
class Conv:
    index: int       # node index in the graph
    name: str        # node name (numbering.node_name)
    output: str      # its output tensor
    bias: str        # its bias initializer (added when the Conv had none)


def check_model_input(cfg: BuildConfig, model: onnx.ModelProto, source) -> None:
    """MODEL takes the config's one input, by name and static shape (the simplified ONNX of CFG's model)."""
    found = [(i.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    expected = [(cfg.frontend.input_name, list(cfg.input_shape))]
    if found != expected:
        raise PipelineError(f"{source}: takes {found[0][0] if found else 'no input'!r} "
                            f"{found[0][1] if found else []}, but {cfg.source} builds "
                            f"{expected[0][0]!r} {expected[0][1]}: not the simplified ONNX of this config "
                            f"(`make simplify CONFIG={cfg.source}` writes it)")


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


def generations(model: onnx.ModelProto, convs: list[Conv]) -> list[list[Conv]]:
    """CONVS grouped so that no Conv of a group has a Conv to correct upstream of it in the same or a later group:
    group k holds the Convs whose longest chain of corrected Convs from the input has k Convs before them."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    corrected = {c.index for c in convs}
    depth: dict[int, int] = {}  # node index -> corrected Convs on the longest path up to and including it
    for index, node in enumerate(model.graph.node):  # ONNX stores nodes in topological order
        upstream = max((depth[producer[i]] for i in node.input if i in producer), default=0)
        depth[index] = upstream + (index in corrected)
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
    from ... import runtime

    data, shapes = stats._outputs(prune(model, tensors), tensors)
    session = runtime.session(data)
    input_name = model.graph.input[0].name
    input_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    sums = {t: np.zeros(shapes[t][1], np.float64) for t in tensors}

    def add(values: dict[str, np.ndarray]) -> None:
        for t in tensors:
            sums[t] += values[t].sum(axis=(0, 2, 3), dtype=np.float64)

    images = stats._stream(session, input_name, shapes, calib_tensors, input_shape, progress, add)
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


def correct_once(model: onnx.ModelProto, convs: list[Conv], fp32_means: dict[str, np.ndarray],
                 thresholds: dict[str, float], skip: set[str], per_channel: bool, calib_tensors,
                 progress) -> dict[str, np.ndarray]:
    """The biases of CONVS corrected sequentially against FP32_MEANS, in MODEL quantized with THRESHOLDS."""
    quantized = onnx.load_from_string(qdq.write_qdq(model, thresholds, skip, per_channel))
    biases = biases_of(model, convs)
    for group in generations(model, convs):
        set_biases(quantized, biases)  # every earlier group's correction, as the card will run it
        means = channel_means(quantized, [c.output for c in group], calib_tensors, progress)
        for conv in group:
            error = means[conv.output] - fp32_means[conv.output]
            biases[conv.bias] = (biases[conv.bias].astype(np.float64) - error).astype(np.float32)
    return biases


def calibrate(model: onnx.ModelProto, tensors: list[str], cfg: BuildConfig, calib_tensors, progress
              ) -> dict[str, float]:
    """The thresholds `build --backend ort` would give MODEL: the same statistics and mode."""
    quantize = cfg.backend.quantize
    collected = stats.collect(model, tensors, calib_tensors, progress, histograms=quantize.calibrate_mode != "max")
    return tensor_thresholds(collected, quantize.calibrate_mode, quantize.calibrate_range)


def largest_move(before: dict[str, float], after: dict[str, float]) -> tuple[float, str]:
    """The largest relative change of a threshold, and its tensor (the first in graph order on ties)."""
    def move(t: str) -> float:
        if before[t] == after[t]:
            return 0.0
        return abs(after[t] - before[t]) / max(abs(before[t]), np.finfo(np.float32).tiny)
    moves = [(move(t), t) for t in before]
    best = max(m for m, _ in moves)
    return float(best), next(t for m, t in moves if m == best)


def fp32_deviation(original: onnx.ModelProto, corrected: onnx.ModelProto, calib_tensors, progress) -> dict:
    """Mean and largest |alpha_corrected - alpha_original| of the float models on the calibration images."""
    from ... import runtime

    output = original.graph.output[0].name
    data, shapes = stats._outputs(corrected, [])
    session, reference = runtime.session(data), runtime.session(original.SerializeToString())
    input_name = original.graph.input[0].name
    input_shape = [d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim]
    total, largest = [0.0], [0.0]

    def compare(values: dict[str, np.ndarray]) -> None:
        base = reference.run([output], {input_name: values[input_name]})[0].astype(np.float64)
        diff = np.abs(values[output].astype(np.float64) - base)
        total[0] += float(diff.mean())
        largest[0] = max(largest[0], float(diff.max()))

    images = stats._stream(session, input_name, shapes, calib_tensors, input_shape, progress, compare)
    return {"images": images, "mean_abs_alpha_diff": total[0] / images, "max_abs_alpha_diff": largest[0]}


def correct(cfg: BuildConfig, model: onnx.ModelProto, calib_tensors, progress, skipped: list[str]) -> tuple[bytes, dict]:
    """MODEL bias-corrected for CFG's quantization (SKIPPED: the Conv names skip_conv_layers keeps float),
    serialized, and what was done: rounds, threshold moves, per-Conv correction norms, fp32 deviation."""
    quantize = cfg.backend.quantize
    skip = set(skipped)
    tensors = qdq.quantized_tensors(model, skip)
    current, convs, added = with_biases(model, skip)
    original = biases_of(current, convs)
    fp32_means = channel_means(current, [c.output for c in convs], calib_tensors, progress)
    thresholds = calibrate(current, tensors, cfg, calib_tensors, progress)
    rounds = []
    for round_ in range(1, MAX_ROUNDS + 1):
        set_biases(current, correct_once(current, convs, fp32_means, thresholds, skip,
                                         quantize.quantize_per_channel, calib_tensors, progress))
        recalibrated = calibrate(current, tensors, cfg, calib_tensors, progress)
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
        "fp32_deviation": fp32_deviation(model, current, calib_tensors, progress),
    }
    return current.SerializeToString(), record
