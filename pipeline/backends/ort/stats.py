"""Calibration statistics of the activations to be quantized, streamed one image at a time.

TVM pools every value of a tensor over all calibration images, takes M = max |x| of the pool and its 8001-bin
histogram over [-M, M]. The histogram of the pool is the sum of the per-image histograms over the same range,
so two passes give exactly that with memory independent of the number of images: pass 1 finds M per tensor,
pass 2 adds up the histograms. `max` mode needs only pass 1. The result (`TensorStats` per tensor) serves every
calibrate mode (thresholds.py), so one collection can be scored under all four.

Each pass runs the ONNX model once per image with the collected tensors as extra outputs, written into two
sets of buffers bound once (IO binding): while a worker thread reads one image's activations, ONNX Runtime
computes the next into the other set. The worker takes images in order, so the result is that of a serial pass.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import PipelineError
from ...core.progress import Progress
from .thresholds import BINS, ZERO_BIN


@dataclass
class TensorStats:
    absmax: float              # max |x| over all images
    hist: np.ndarray | None    # int64[8001] over [-absmax, absmax]; None when collected for `max` only


@dataclass
class Collection:
    images: int
    tensors: dict[str, TensorStats]


class Histogrammer:
    """8001-bin histograms over [-M, M] with the bin rule of numpy.histogram (the last bin includes M).

    The bin is floor(x * BINS/2M + BINS/2): the product in float32 (the activations' type; NumPy keeps a Python
    float scale at float32), the shift in float64. numpy.histogram, which TVM calls, computes its first guess in
    float32 too, then corrects it against float32 bin edges; that correction is skipped here, so a value within
    float32 rounding of an edge may land one bin off (474 of the 40 M values of a MODNet image at 480x288).
    The values go through in chunks small enough for the scratch buffers to stay in the CPU cache: one pass over
    a whole tensor per step (scale, shift, truncate, count) took twice as long."""

    CHUNK = 1 << 16

    def __init__(self):
        self._f = np.empty(self.CHUNK, np.float64)
        self._i = np.empty(self.CHUNK, np.intp)

    def __call__(self, x: np.ndarray, absmax: float) -> np.ndarray:
        counts = np.zeros(BINS + 1, np.int64)
        if absmax <= 0.0:  # an all-zero tensor: every value in the zero bin
            counts[ZERO_BIN] = x.size
            return counts[:BINS]
        flat = x.reshape(-1)
        for start in range(0, flat.size, self.CHUNK):
            part = flat[start:start + self.CHUNK]
            scaled, index = self._f[:part.size], self._i[:part.size]
            # bin of x = floor((x + M) * BINS / 2M) = floor(x * BINS / 2M + BINS / 2)
            np.multiply(part, BINS / (2.0 * absmax), out=scaled)
            scaled += BINS / 2.0
            np.copyto(index, scaled, casting="unsafe")  # truncation == floor: scaled >= 0 (up to rounding)
            counts += np.bincount(index, minlength=BINS + 1)
        counts[BINS - 1] += counts[BINS:].sum()  # x == M
        return counts[:BINS]


def _outputs(model: onnx.ModelProto, tensors: list[str]) -> tuple[bytes, dict[str, list[int]]]:
    """The model with TENSORS as extra outputs (serialized), and every collected output's static shape."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    inputs = {i.name for i in model.graph.input}
    shapes = {}
    for name in tensors:
        if name in inputs:
            continue  # read from the batch itself
        info = infos.get(name)
        dims = info.type.tensor_type.shape.dim if info is not None else []
        if info is None or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            raise PipelineError(f"{name}: no static shape in the simplified ONNX; calibration needs one")
        shapes[name] = [d.dim_value for d in dims]
        if name not in existing:
            augmented.graph.output.append(info)
    for output in augmented.graph.output:
        if output.name not in shapes:
            shapes[output.name] = [d.dim_value for d in infos[output.name].type.tensor_type.shape.dim]
    return augmented.SerializeToString(), shapes


def _bound(session, shapes: dict[str, list[int]]):
    """An IO binding whose every output is written into a numpy buffer of its own."""
    binding = session.io_binding()
    buffers = {}
    for out in session.get_outputs():
        buffers[out.name] = np.empty(shapes[out.name], np.float32)
        binding.bind_output(out.name, "cpu", 0, np.float32, shapes[out.name], buffers[out.name].ctypes.data)
    return binding, buffers


def _stream(session, input_name: str, shapes, calib_tensors: Path, input_shape, progress: Progress, desc: str,
            visit) -> int:
    """Run every image of tensors.npy, calling visit({tensor: activation}) on the worker thread, in order; DESC
    labels the pass on PROGRESS."""
    tensors = np.load(calib_tensors, mmap_mode="r")
    if tuple(tensors.shape[1:]) != tuple(input_shape[1:]) or tensors.dtype != np.float32:
        raise PipelineError(f"{calib_tensors} holds {list(tensors.shape[1:])} inputs but the model expects "
                            f"{list(input_shape[1:])} (rerun `make calib`)")
    offset, count = tensors.offset, tensors.shape[0]
    del tensors  # read image by image with plain reads: mapped pages would count in RSS and grow with N
    per_image = int(np.prod(input_shape[1:]))
    slots = [_bound(session, shapes), _bound(session, shapes)]
    with open(calib_tensors, "rb") as handle, ThreadPoolExecutor(1) as worker:
        pending = None
        for index in progress(range(count), desc, count):
            handle.seek(offset + index * per_image * 4)
            batch = np.fromfile(handle, dtype=np.float32, count=per_image).reshape(1, *input_shape[1:])
            binding, buffers = slots[index % 2]
            binding.bind_cpu_input(input_name, batch)
            session.run_with_iobinding(binding)
            if pending is not None:
                pending.result()  # the previous image is done, its slot free; re-raises the worker's error
            pending = worker.submit(visit, {input_name: batch, **buffers})
        if pending is not None:
            pending.result()
    return count


def collect(model: onnx.ModelProto, tensors: list[str], calib_tensors: Path, progress: Progress, desc: str,
            histograms: bool = True, observe=None) -> Collection:
    """Statistics of TENSORS over every image of CALIB_TENSORS (a calibration folder's tensors.npy); DESC labels
    its passes on PROGRESS (the stage it serves: calibration, bias correction, tune's statistics).

    OBSERVE, when given, also sees pass 1's {tensor: activation} of every image (the model's outputs among them),
    on the worker thread, in image order: a caller that needs something else of the same forward pass (bias
    correction's fp32 deviation) gets it without a pass of its own. It must not keep the arrays (buffers reused)."""
    from ...core import runtime

    data, shapes = _outputs(model, tensors)
    session = runtime.session(data)
    input_name = session.get_inputs()[0].name
    input_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    low = {name: np.inf for name in tensors}
    high = {name: -np.inf for name in tensors}

    def extremes(values: dict[str, np.ndarray]) -> None:
        for name in tensors:
            x = values[name]
            low[name], high[name] = min(low[name], float(x.min())), max(high[name], float(x.max()))
        if observe is not None:
            observe(values)

    images = _stream(session, input_name, shapes, calib_tensors, input_shape, progress, desc, extremes)
    bad = next((n for n in tensors if not (np.isfinite(low[n]) and np.isfinite(high[n]))), None)
    if bad is not None:
        raise PipelineError(f"{bad}: a calibration activation is not finite (NaN or inf): check the model and inputs")
    absmax = {n: max(-low[n], high[n], 0.0) for n in tensors}
    hist = {n: None for n in tensors}
    if histograms:
        hist = {n: np.zeros(BINS, np.int64) for n in tensors}
        histogram = Histogrammer()

        def add(values: dict[str, np.ndarray]) -> None:
            for name in tensors:
                hist[name] += histogram(values[name], absmax[name])

        _stream(session, input_name, shapes, calib_tensors, input_shape, progress, desc, add)
    return Collection(images, {n: TensorStats(absmax=absmax[n], hist=hist[n]) for n in tensors})
