"""Reference backend on ONNX Runtime (any CPU): an fp16 model, or a QDQ int8 model calibrated by streaming.

fp16: onnxruntime.transformers.float16 converts every float tensor and op to float16 and keeps the graph's input
and output float32 (a Cast at each end); every op of MODNet has a float16 CPU kernel in this ONNX Runtime, so
nothing is kept in float32 (the manifest lists any op type that would be).

int8: activation ranges are computed here, one calibration image at a time (`ActivationStats`): running min/max
and a 2048-bin histogram of |x| whose range doubles (adjacent bins merged, exactly) when a larger value arrives.
Memory is one image's activations plus fixed-size statistics, whatever the number of images. The ranges then go
to ONNX Runtime's `quantize_static` through its calibration cache (so its own calibrators never run): QDQ format,
symmetric int8 weights (per output channel when `quantize_per_channel`), symmetric int8 activations (zero point
0, as VACC and TensorRT quantize), and the Conv nodes of `skip_conv_layers` excluded.
"""
from __future__ import annotations

import logging
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from ...config import BuildConfig
from ...errors import PipelineError
from ...fileio import atomic_dir, sha256_file, write_bytes, write_json
from .. import base_manifest
from .numbering import conv_order

BINS = 2048          # histogram bins of |x| per tensor
QUANT_LEVELS = 128   # quantized bins of the KL search (TensorRT's choice for int8)
MAX_CANDIDATES = 256  # KL thresholds tried per tensor (evenly strided over the used bins)
SUPPORTED_MODES = ("kl_divergence", "max", "percentile")


def peak_rss_mb() -> float:
    """Peak resident set size of this process's own memory so far.

    VmHWM, where /proc has it: ru_maxrss also counts the parent's memory at the moment it spawned us (Python
    spawns with vfork, and exec keeps the old high-water mark), so a build started from a large process would
    be charged for it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resolved_config(cfg: BuildConfig) -> dict:
    q = cfg.backend.quantize
    return {
        "name": cfg.name,
        "input": {"name": cfg.frontend.input_name, "shape": list(cfg.input_shape)},
        "dtype": cfg.backend.dtype,
        "quantize": None if q is None else {**asdict(q), "skip_conv_layers": list(q.skip_conv_layers)},
        "dataset": {"suffix": cfg.dataset.suffix, "get_data_num": cfg.dataset.get_data_num,
                    "process_ops": [{"type": type(op).__name__, **asdict(op)} for op in cfg.dataset.process_ops]},
        "seed": cfg.pipeline.seed,
    }


# ---------------------------------------------------------------------------------------------------------- fp16

def convert_fp16(model: onnx.ModelProto) -> tuple[bytes, dict]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ... import runtime
    blocked: list[str] = []
    while True:
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked or None,
                                             disable_shape_infer=False)
        data = converted.SerializeToString()
        try:
            runtime.session(data)
            break
        except Exception as exc:  # an op without a float16 CPU kernel: keep that op type in float32
            op = next((n.op_type for n in converted.graph.node if f"({n.op_type})" in str(exc) or
                       f"'{n.op_type}'" in str(exc)), None)
            if op is None or op in blocked:
                raise PipelineError(f"ONNX Runtime cannot run the float16 model: {str(exc).splitlines()[0]}") from None
            blocked.append(op)
    return data, {"io_dtype": "float32", "kept_float32_op_types": blocked,
                  "note": "all ops float16; Cast to/from float32 at the graph input and output" if not blocked
                  else f"op types without a float16 CPU kernel stay float32: {', '.join(blocked)}"}


# ---------------------------------------------------------------------------------------------------------- int8

_SCRATCH: dict[str, np.ndarray] = {}


def _scratch(size: int) -> tuple[np.ndarray, np.ndarray]:
    if _SCRATCH.get("f", np.empty(0)).size < size:
        _SCRATCH["f"], _SCRATCH["i"] = np.empty(size, np.float32), np.empty(size, np.intp)
    return _SCRATCH["f"][:size], _SCRATCH["i"][:size]


class ActivationStats:
    """Streaming statistics of one tensor: min, max and a histogram of |x| over [0, top) with BINS bins."""

    __slots__ = ("lo", "hi", "top", "hist")

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf
        self.top = 0.0
        self.hist = np.zeros(BINS, dtype=np.int64)

    def add(self, x: np.ndarray, histogram: bool) -> None:
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise PipelineError("a calibration activation is not finite (NaN or inf): check the model and inputs")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if not histogram:
            return
        amax = max(-lo, hi)
        if amax <= 0.0:
            self.hist[0] += x.size
            return
        if self.top == 0.0:
            self.top = amax
        while amax > self.top:  # double the range: merge adjacent bin pairs, exact
            merged = self.hist.reshape(BINS // 2, 2).sum(axis=1)
            self.hist = np.concatenate([merged, np.zeros(BINS // 2, dtype=np.int64)])
            self.top *= 2.0
        scaled, index = _scratch(x.size)  # reused buffers: no fresh pages per tensor and image
        np.abs(x.reshape(-1), out=scaled)
        scaled *= np.float32(BINS / self.top)
        np.copyto(index, scaled, casting="unsafe")  # floor of a non-negative value
        counts = np.bincount(index, minlength=BINS + 1)
        counts[BINS - 1] += counts[BINS:].sum()  # |x| == top (or float rounding up to it) goes in the last bin
        self.hist += counts[:BINS]

    @property
    def absmax(self) -> float:
        return max(-self.lo, self.hi, 0.0)


def kl_threshold(hist: np.ndarray, top: float, absmax: float) -> float:
    """TensorRT's entropy calibration on a histogram of |x|: the clip value minimising KL(P || Q)."""
    nonzero = np.nonzero(hist)[0]
    if nonzero.size == 0:
        return absmax
    used = int(nonzero[-1]) + 1
    if used <= QUANT_LEVELS:
        return absmax
    hist = hist.astype(np.float64)
    # The exact zeros of ReLU / ReLU6 outputs (often half the tensor) pile up in bin 0; left there, that spike
    # dominates the divergence and drives the threshold far down. NVIDIA's entropy calibrator levels it with
    # bin 1 before the search (pytorch-quantization's _compute_amax_entropy); so do we.
    hist[0] = hist[1]
    stride = max(1, (used - QUANT_LEVELS) // MAX_CANDIDATES)
    best_i, best_kl = used, np.inf
    for i in range(QUANT_LEVELS, used + 1, stride):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += hist[i:].sum()                      # outliers clipped into the last bin
        chunk = (np.arange(i) * QUANT_LEVELS) // i    # bin -> quantized level
        sums = np.bincount(chunk, weights=sliced, minlength=QUANT_LEVELS)
        nz = p != 0
        counts = np.bincount(chunk, weights=nz, minlength=QUANT_LEVELS)
        q = np.where(nz, (sums / np.maximum(counts, 1))[chunk], 0.0)
        if np.any(nz & (q == 0)):
            continue                                 # Q cannot represent P: infinite divergence
        p_sum, q_sum = p.sum(), q.sum()
        m = nz
        kl = float(np.sum(p[m] / p_sum * np.log((p[m] / p_sum) / (q[m] / q_sum))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return min(top * best_i / BINS, absmax)


def percentile_threshold(hist: np.ndarray, top: float, absmax: float, fraction: float) -> float:
    cdf = np.cumsum(hist, dtype=np.float64)
    if cdf[-1] == 0:
        return absmax
    index = int(np.searchsorted(cdf / cdf[-1], fraction))
    return min(top * (index + 1) / BINS, absmax)


def float_tensors(model: onnx.ModelProto) -> tuple[list[str], dict]:
    """Float activations read or written by some node (ONNX Runtime's own rule), in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    initializers = {init.name for init in inferred.graph.initializer}
    names: list[str] = []
    seen = set()
    for node in inferred.graph.node:
        for name in (*node.input, *node.output):
            vi = infos.get(name)
            if (name and name not in seen and name not in initializers and vi is not None
                    and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT):
                seen.add(name)
                names.append(name)
    return names, infos


def _bound_outputs(session, infos: dict):
    """An IO binding whose every output is written into a numpy buffer of its own."""
    binding = session.io_binding()
    buffers: dict[str, np.ndarray] = {}
    for out in session.get_outputs():
        dims = infos[out.name].type.tensor_type.shape.dim
        shape = [d.dim_value for d in dims]  # [] for a scalar
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            raise PipelineError(f"{out.name}: no static shape in the simplified ONNX; calibration needs one")
        buffers[out.name] = np.empty(shape, np.float32)
        binding.bind_output(out.name, "cpu", 0, np.float32, shape, buffers[out.name].ctypes.data)
    return binding, buffers


def collect_ranges(cfg: BuildConfig, model: onnx.ModelProto, calib: Path, progress) -> tuple[dict, dict]:
    """{tensor: (low, high)} from streaming statistics over DIR/tensors.npy, and a summary for the manifest."""
    import onnxruntime as ort

    quantize = cfg.backend.quantize
    mode = quantize.calibrate_mode
    names, infos = float_tensors(model)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    outputs = {o.name for o in augmented.graph.output}
    input_name = model.graph.input[0].name  # its statistics come from the batch itself, not from an output
    augmented.graph.output.extend(infos[n] for n in names if n not in outputs and n != input_name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # Two sets of output buffers, allocated once (not ~0.5 GB of fresh outputs per image): while one worker thread
    # histograms an image's activations from one set, ONNX Runtime computes the next image's into the other. The
    # worker takes images in order, so the statistics are exactly those of a serial pass.
    slots = [_bound_outputs(session, infos), _bound_outputs(session, infos)]

    tensors = np.load(calib / "tensors.npy", mmap_mode="r")
    if tuple(tensors.shape[1:]) != tuple(cfg.input_shape[1:]) or tensors.dtype != np.float32:
        raise PipelineError(f"{calib}/tensors.npy holds {list(tensors.shape[1:])} inputs but {cfg.source} expects "
                            f"{list(cfg.input_shape[1:])} (rerun `make calib`)")
    offset, count = tensors.offset, tensors.shape[0]
    del tensors  # read image by image with plain reads: mapped pages would count in RSS and grow with N
    per_image = int(np.prod(cfg.input_shape[1:]))
    stats = {n: ActivationStats() for n in names}
    histogram = mode != "max"
    start = time.perf_counter()

    def accumulate(batch: np.ndarray, buffers: dict[str, np.ndarray]) -> None:
        if input_name in stats:
            stats[input_name].add(batch, histogram)
        for name, value in buffers.items():
            if name in stats:
                stats[name].add(value, histogram)

    with open(calib / "tensors.npy", "rb") as handle, ThreadPoolExecutor(1) as worker:
        pending = None
        for index in progress(range(count), total=count):
            handle.seek(offset + index * per_image * 4)
            batch = np.fromfile(handle, dtype=np.float32, count=per_image).reshape(1, *cfg.input_shape[1:])
            binding, buffers = slots[index % 2]
            binding.bind_cpu_input(input_name, batch)
            session.run_with_iobinding(binding)
            if pending is not None:
                pending.result()  # the previous image is counted, its slot free; re-raises the worker's error
            pending = worker.submit(accumulate, batch, buffers)
        if pending is not None:
            pending.result()
    collect_s = time.perf_counter() - start
    del session, slots
    _SCRATCH.clear()

    ranges = {}
    for name, s in stats.items():
        if mode == "max":
            t = s.absmax
        elif mode == "kl_divergence":
            t = kl_threshold(s.hist, s.top, s.absmax)
        else:
            t = percentile_threshold(s.hist, s.top, s.absmax, quantize.calibrate_range)
        t = float(np.float32(t)) if t > 0 else float(np.float32(1e-8))
        ranges[name] = (-t, t)
    summary = {
        "images": int(count),
        "method": {"kl_divergence": "entropy (KL divergence, TensorRT-style, on a streaming |x| histogram)",
                   "max": "max |x| (streaming min/max)",
                   "percentile": f"percentile {quantize.calibrate_range} of |x| (streaming histogram)"}[mode],
        "calibrate_mode": mode,
        "streaming": "one image per forward pass; statistics per tensor: min, max, "
                     f"{BINS if histogram else 0}-bin |x| histogram whose range doubles as needed",
        "histogram_bins": BINS if histogram else None,
        "kl_quantized_levels": QUANT_LEVELS if mode == "kl_divergence" else None,
        "tensors": len(names),
        "collect_time_s": round(collect_s, 3),
        "time_s": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return ranges, summary


def conv_names_to_skip(model: onnx.ModelProto, skip: tuple[int, ...], numbering: str, source) -> list[str]:
    convs = conv_order(model, numbering)
    bad = [i for i in skip if i >= len(convs)]
    if bad:
        raise PipelineError(f"{source}: backend.quantize.skip_conv_layers index {bad[0]} is out of range: the "
                            f"simplified ONNX has {len(convs)} Conv nodes (0..{len(convs) - 1})")
    return [convs[i] for i in skip]


def quantize_int8(cfg: BuildConfig, model: onnx.ModelProto, calib: Path, progress) -> tuple[bytes, dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    quantize = cfg.backend.quantize
    if quantize.calibrate_mode not in SUPPORTED_MODES:
        raise PipelineError(f"{cfg.source}: calibrate_mode {quantize.calibrate_mode!r} is not supported by the ort "
                            f"backend (use {', '.join(SUPPORTED_MODES)}; vamc supports it)")
    for index, node in enumerate(model.graph.node):  # quantize_static needs node names; onnxsim keeps them
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    skip = conv_names_to_skip(model, quantize.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source)
    ranges, summary = collect_ranges(cfg, model, calib, progress)
    data = TensorsData(CalibrationMethod.MinMax,
                       {n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                        for n, (lo, hi) in ranges.items()})
    start = time.perf_counter()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing" warnings
    with tempfile.TemporaryDirectory(prefix="ort-int8.") as tmp:
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "model.onnx"
        save_tensors_data(data, cache)
        quantize_static(model, str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=quantize.quantize_per_channel, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8, nodes_to_exclude=skip,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        result = out.read_bytes()
    summary["quantize_time_s"] = round(time.perf_counter() - start, 3)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary.update({
        "weights": "int8 symmetric, " + ("per output channel" if quantize.quantize_per_channel else "per tensor"),
        "activations": "int8 symmetric (zero point 0)",
        "format": "QDQ (QuantizeLinear/DequantizeLinear pairs around float ops; ORT fuses them on CPU)",
        "skipped_conv_layers": {str(i): name for i, name in zip(quantize.skip_conv_layers, skip)},
    })
    return result, summary


# --------------------------------------------------------------------------------------------------------- build

def build(cfg: BuildConfig, onnx_path: Path, calib: Path | None, out: Path, progress) -> dict:
    import onnxruntime

    manifest = base_manifest(cfg, "ort", onnx_path, calib)
    manifest["resolved_config"] = resolved_config(cfg)
    model = onnx.load(str(onnx_path))
    start = time.perf_counter()
    if cfg.backend.dtype == "fp16":
        data, manifest["fp16"] = convert_fp16(model)
    else:
        data, summary = quantize_int8(cfg, model, calib, progress)
        manifest.setdefault("calibration", {}).update(summary)
    manifest["build_time_s"] = round(time.perf_counter() - start, 3)
    manifest["onnxruntime"] = onnxruntime.__version__
    with atomic_dir(out) as tmp:
        write_bytes(tmp / "model.onnx", data)
        manifest["model"] = {"file": "model.onnx", "sha256": sha256_file(tmp / "model.onnx"),
                             "input": "float32", "output": "float32"}
        write_json(tmp / "manifest.json", manifest)
    return manifest
