"""The reference backend's build: the fp16 model, or the int8 Q/DQ model quantized the way vamc does, and its
engine folder (the package docstring, ort/__init__.py, maps the modules this ties together)."""
from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import onnx

from ...core import layout
from ...core.config import BuildConfig
from ...core.errors import PipelineError
from ...core.fileio import atomic_dir, sha256_file, write_bytes, write_json
from ...stages.calibrate import TENSORS
from ..engine import base_manifest
from . import qdq, stats, thresholds
from .fp16 import convert_fp16
from .numbering import conv_order


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
        "conv_numbering": cfg.pipeline.conv_numbering,
        "dataset": {"suffix": cfg.dataset.suffix, "get_data_num": cfg.dataset.get_data_num,
                    "process_ops": [{"type": type(op).__name__, **asdict(op)} for op in cfg.dataset.process_ops]},
        "seed": cfg.pipeline.seed,
    }


def skipped_convs(model: onnx.ModelProto, skip: tuple[int, ...], numbering: str, source) -> list[str]:
    """Conv node names of skip_conv_layers under NUMBERING; an index past the last Conv is an error."""
    convs = conv_order(model, numbering)
    bad = [i for i in skip if i >= len(convs)]
    if bad:
        raise PipelineError(f"{source}: backend.quantize.skip_conv_layers index {bad[0]} is out of range: the "
                            f"simplified ONNX has {len(convs)} Conv nodes (0..{len(convs) - 1})")
    return [convs[i] for i in skip]


def tensor_thresholds(collected: stats.Collection, mode: str, calibrate_range: float | None) -> dict[str, float]:
    """Every collected tensor's threshold under MODE (the tuning stage derives all modes from one collection)."""
    names = list(collected.tensors)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # numpy releases the GIL: tensors run side by side
        found = pool.map(lambda n: thresholds.threshold(mode, collected.tensors[n].hist, collected.tensors[n].absmax,
                                                        calibrate_range), names)
        return dict(zip(names, found))


def calibration_statistics(cfg: BuildConfig, model: onnx.ModelProto, tensors: list[str], calib_tensors: Path,
                           progress, desc: str, observe=None) -> stats.Collection:
    """The statistics of TENSORS that CFG's calibrate_mode needs (max |x|, and the histograms unless it is max),
    collected as `make int8` collects them (stats.collect's DESC and OBSERVE)."""
    return stats.collect(model, tensors, calib_tensors, progress, desc,
                         histograms=cfg.backend.quantize.calibrate_mode != "max", observe=observe)


def config_thresholds(cfg: BuildConfig, collected: stats.Collection) -> dict[str, float]:
    quantize = cfg.backend.quantize
    return tensor_thresholds(collected, quantize.calibrate_mode, quantize.calibrate_range)


def int8_model(cfg: BuildConfig, model: onnx.ModelProto, chosen: dict[str, float], parts: str = "both") -> bytes:
    """The serialized Q/DQ model of MODEL under CFG's quantize settings (its skip_conv_layers in its conv numbering,
    per channel or not), given the threshold of each tensor it quantizes (CHOSEN, tensor_thresholds; others are
    ignored). The one path to the int8 model: `make int8` builds it, tune scores each candidate with it. PARTS
    (qdq.PARTS) quantizes only the weights or only the activations (analyze)."""
    quantize = cfg.backend.quantize
    skip = skipped_convs(model, quantize.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source)
    return qdq.write_qdq(model, chosen, set(skip), quantize.quantize_per_channel, parts)


def quantize_int8(cfg: BuildConfig, model: onnx.ModelProto, calib: Path, progress) -> tuple[bytes, dict]:
    quantize = cfg.backend.quantize
    mode, numbering = quantize.calibrate_mode, cfg.pipeline.conv_numbering
    skip = skipped_convs(model, quantize.skip_conv_layers, numbering, cfg.source)
    tensors = qdq.quantized_tensors(model, set(skip))
    start = time.perf_counter()
    collected = calibration_statistics(cfg, model, tensors, calib / TENSORS, progress, "calibration")
    collect_s = time.perf_counter() - start
    chosen = config_thresholds(cfg, collected)
    data = int8_model(cfg, model, chosen)
    per_tensor = {}
    for name, s in collected.tensors.items():
        row = {"threshold": chosen[name], "absmax": s.absmax}
        if s.hist is not None:
            row["clipped_share"] = thresholds.clipped_share(s.hist, s.absmax, chosen[name])
        per_tensor[name] = row
    summary = {
        "images": collected.images,
        "calibrate_mode": mode,
        "calibrate_range": quantize.calibrate_range if mode == "percentile" else None,
        "method": {"kl_divergence": "TVM's KL divergence (MinimizeKL): 8001-bin signed histogram, 255 levels",
                   "max": "max |x|",
                   "percentile": "quantile of |x| (to one bin of an 8001-bin histogram)",
                   "mse": "least expected squared error, clipping + rounding (docs/quantization.md)"}[mode],
        "streaming": "pass 1: max |x| per tensor" + ("" if mode == "max" else
                                                      "; pass 2: 8001-bin histogram over [-max, max]"),
        "conv_numbering": numbering,
        "skipped_conv_layers": {str(i): name for i, name in zip(quantize.skip_conv_layers, skip)},
        "scale": "threshold / 128, values clipped to +-127 (TVM)",
        "weights": "int8 symmetric, max |w|, " + ("per output channel" if quantize.quantize_per_channel
                                                   else "per tensor"),
        "activations": "int8 symmetric (zero point 0): every Conv's data input, both inputs of Add/Mul of "
                       "two activations; everything else float",
        "tensors": per_tensor,
        "collect_time_s": round(collect_s, 3),
        "time_s": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return data, summary


def build(cfg: BuildConfig, onnx_path: Path, calib: Path | None, out: Path, progress,
          correction: dict | None) -> dict:
    import onnxruntime

    manifest = base_manifest(cfg, "ort", onnx_path, calib, correction)
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
    with atomic_dir(out, "build") as tmp:
        write_bytes(tmp / layout.ORT_MODEL, data)
        manifest["model"] = {"file": layout.ORT_MODEL, "sha256": sha256_file(tmp / layout.ORT_MODEL),
                             "input": "float32", "output": "float32"}
        write_json(layout.manifest(tmp), manifest)
    return manifest
