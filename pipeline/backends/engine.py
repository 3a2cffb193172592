"""Engine backends behind `python -m pipeline build`: `ort` (reference, ONNX Runtime) and `vamc` (vendor compiler).

Each backend module exposes `build(cfg, onnx, calib, out, progress, correction) -> dict` that writes ENGINE_DIR
atomically (nothing is left in OUT on failure), including `manifest.json`, which starts from `base_manifest` below so
every engine records the same provenance, and returns that manifest. CORRECTION is what `check_inputs` found of the
ONNX's bias correction, passed on so the ONNX is checked and hashed for it once.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import check_out_dir, sha256_file
from ..core.provenance import git_state, versions
from ..core.runtime import check_model_input, read_onnx
from ..stages.calibrate import read_calibration_folder
from ..stages.correct import build_correction
from ..tuning import tuned_yaml

BACKENDS = ("ort", "vamc")


def check_inputs(cfg: BuildConfig, onnx: Path, calib: Path | None) -> dict | None:
    """Refuse, before any backend runs, an ONNX file or a calibration folder that is missing, truncated or stale.
    Returns the bias correction the ONNX carries for an int8 build of CFG (stages.correct.build_correction)."""
    if not onnx.is_file():
        raise PipelineError(f"{onnx}: no such ONNX file (run `make simplify CONFIG={cfg.source}` first)")
    check_model_input(cfg, read_onnx(onnx, f"rebuild it with `make simplify CONFIG={cfg.source}`"), onnx)
    if cfg.backend.dtype == "int8":
        if calib is None:
            raise PipelineError(f"{cfg.source} builds int8: --calib DIR is required (run `make calib`)")
        read_calibration_folder(cfg, calib)
    return build_correction(cfg, onnx)


# Why a tuned config of each verdict `make tune` does not promote is not vouched for (tuned_yaml.VERDICTS)
UNVOUCHED = {"not confirmed": "chosen on the selection images, it did not hold on the confirmation images: not "
                              "significantly closer to fp32 than the input config there, or outside the target",
             "target not met": "no candidate, this one included, met pipeline.tune's target"}


def tuned_config_warnings(cfg: BuildConfig, onnx: Path) -> list[str]:
    """For a config `make tune` wrote (tuned_yaml's header): one line for each way the build departs from what was
    tuned (a body edited since, another model) or from what tune vouched for (a verdict it would not promote);
    nothing for any other config."""
    try:
        header, body = tuned_yaml.split(cfg.source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return []  # load_config read it a moment ago; nothing to add about a file that vanished since
    if header is None:
        return []
    warnings = []
    if header.body_sha256 is None:
        warnings.append(f"{cfg.source}: tuned before tuned configs recorded the sha256 of their body, so an edit since "
                        f"cannot be told; tune again (make tune) to be sure the figures in its header describe it")
    elif tuned_yaml.edited(header, body):
        warnings.append(f"{cfg.source}: edited since `make tune` wrote it (its body no longer matches the sha256 in "
                        f"its header), so the figures in its header do not describe it")
    verdict = tuned_yaml.verdict(header)
    if verdict is not None and verdict not in tuned_yaml.PROMOTABLE:
        warnings.append(f"{cfg.source}: tune's verdict on it is '{verdict}' ({UNVOUCHED[verdict]}), not one `make tune` "
                        f"promotes ({' or '.join(tuned_yaml.PROMOTABLE)}); its header has the figures (docs/tuning.md)")
    actual = sha256_file(onnx)
    if header.onnx_sha256 is not None and header.onnx_sha256 != actual:
        warnings.append(f"{cfg.source}: tuned for the ONNX with sha256 {header.onnx_sha256[:12]}..., built against "
                        f"{onnx} ({actual[:12]}...): its skip_conv_layers and figures were chosen for another model; "
                        f"tune again on this one (make tune)")
    return warnings


def base_manifest(cfg: BuildConfig, backend: str, onnx: Path, calib: Path | None, correction: dict | None) -> dict:
    """Provenance shared by every engine: which config, ONNX (CORRECTION: check_inputs' record of its bias
    correction) and calibration set built it, and with what."""
    manifest = {
        "backend": backend,
        "dtype": cfg.backend.dtype,
        "config_name": cfg.name,
        "config": {"path": str(cfg.source), "sha256": sha256_file(cfg.source)},
        # a corrected ONNX was hashed by check_inputs already: a large model is read once
        "onnx": {"path": str(onnx.resolve()), "sha256": correction["onnx_sha256"] if correction else sha256_file(onnx)},
        "versions": versions(),
        "repository": git_state(),
    }
    if cfg.backend.dtype == "int8" and calib is not None:
        manifest["calibration"] = {"path": str(calib.resolve()),
                                   "manifest_sha256": sha256_file(layout.manifest(calib))}
    if correction is not None:  # only then: the manifests of builds without correction stay as they were
        manifest["bias_correction"] = correction
    return manifest


def build_engine(backend: str, cfg: BuildConfig, onnx: Path, calib: Path | None, out: Path, progress) -> dict:
    if backend not in BACKENDS:
        raise PipelineError(f"unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    check_out_dir(out, "build")
    correction = check_inputs(cfg, onnx, calib)
    module = importlib.import_module(f"{__package__}.{backend}.build")
    return module.build(cfg, onnx, calib, out, progress, correction)
