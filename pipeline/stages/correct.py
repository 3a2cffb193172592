"""Stage `correct`: the simplified ONNX -> the bias-corrected ONNX an int8 config with
`pipeline.bias_correction: empirical` builds from, and its record (OUT.json, as `simplify` writes one).

The algorithm is pipeline/backends/ort/bias_correction.py; this module reads and checks the inputs, writes the
outputs, and tells a build whether the ONNX it is given is the one its config asks for (`build_correction`).
The record holds nothing that depends on where or how fast it ran, so the same inputs give the same bytes
(`make verify` compares them); the time and peak memory are printed instead.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import sha256_bytes, sha256_file, write_bytes, write_json
from ..core.runtime import check_model_input, read_onnx
from .calibrate import read_calibration_folder

MODE = "empirical"


def record_path(onnx: Path) -> Path:
    return Path(f"{onnx}.json")


def correct_onnx(cfg: BuildConfig, onnx: Path, calib: Path, out: Path, progress) -> tuple[dict, float, float]:
    """Write OUT and OUT.json; returns the record, the seconds it took and the peak RSS in MB."""
    from ..backends.ort.bias_correction import correct
    from ..backends.ort.build import peak_rss_mb, skipped_convs

    start = time.perf_counter()
    if cfg.backend.dtype != "int8":
        raise PipelineError(f"{cfg.source}: builds {cfg.backend.dtype}; bias correction is for int8 configs")
    if cfg.pipeline.bias_correction != MODE:
        raise PipelineError(f"{cfg.source}: pipeline.bias_correction is false; set it to {MODE} to build from a "
                            f"bias-corrected ONNX")
    if not onnx.is_file():
        raise PipelineError(f"{onnx}: no such ONNX file (run `make simplify CONFIG={cfg.source}` first)")
    if out.suffix != ".onnx" or out.resolve() == onnx.resolve():
        raise PipelineError(f"--out {out}: name a new .onnx file (the corrected model), not the input")
    model = read_onnx(onnx, f"rebuild it with `make simplify CONFIG={cfg.source}`")
    check_model_input(cfg, model, onnx)
    calibration = read_calibration_folder(cfg, calib)
    skipped = skipped_convs(model, cfg.backend.quantize.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source)
    data, record, _ = correct(cfg, model, calib / calibration["tensors"]["file"], progress, skipped)
    record.update({
        "bias_correction": MODE,
        "config_name": cfg.name,
        "input_onnx": {"file": onnx.name, "sha256": sha256_file(onnx)},
        "calibration": {"images": calibration["count"], "manifest_sha256": sha256_file(layout.manifest(calib)),
                        "tensors_sha256": calibration["tensors"]["sha256"]},
        "output_onnx": {"file": out.name, "sha256": sha256_bytes(data)},
    })
    # The record first: OUT is the target Make checks, so a kill in between leaves no finished-looking model.
    write_json(record_path(out), record)
    write_bytes(out, data)
    return record, time.perf_counter() - start, peak_rss_mb()


def _correction_record(onnx: Path) -> dict | None:
    """ONNX's correction record, or None when the file beside it is none (the simplified ONNX's parity record)."""
    path = record_path(onnx)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable record ({type(exc).__name__}); rebuild {onnx}") from None
    return doc if isinstance(doc, dict) and doc.get("bias_correction") == MODE else None


def build_correction(cfg: BuildConfig, onnx: Path) -> dict | None:
    """For an int8 build: which corrected ONNX it builds from (sha256 and record), or None for a config without
    bias correction. The ONNX must be what the config asks for: corrected (its record describing these very
    bytes) exactly when the config says `bias_correction: empirical`."""
    if cfg.backend.dtype != "int8":
        return None
    record = _correction_record(onnx)
    path = record_path(onnx)
    if cfg.pipeline.bias_correction != MODE:
        if record is not None:
            raise PipelineError(f"{onnx}: a bias-corrected ONNX ({path}), but {cfg.source} has "
                                f"pipeline.bias_correction: false; build from the simplified ONNX, or set it to {MODE}")
        return None
    actual = sha256_file(onnx)
    if record is None:
        raise PipelineError(f"{onnx}: not a bias-corrected ONNX (no correction record {path}), but {cfg.source} has "
                            f"pipeline.bias_correction: {MODE}; `make int8` makes one (python -m pipeline correct)")
    output, source = record.get("output_onnx"), record.get("input_onnx")
    recorded = output.get("sha256") if isinstance(output, dict) else None
    if recorded != actual:
        raise PipelineError(f"{onnx}: sha256 {actual[:12]}... is not the {str(recorded)[:12]}... its record {path} "
                            f"describes; rerun `python -m pipeline correct` (make int8 does)")
    return {"mode": MODE, "onnx_sha256": actual, "record": {"file": path.name, "sha256": sha256_file(path)},
            "input_onnx_sha256": source.get("sha256") if isinstance(source, dict) else None}
