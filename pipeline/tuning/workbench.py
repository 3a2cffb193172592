"""What analyze and tune share: the inputs loaded once, and `evaluate(candidate)`, cached.

Opening a workbench checks the ONNX, the calibration folder and skip_conv_layers as `build` does, draws the
validation images and fixes the context every cached figure depends on; the heavy parts (statistics, validation
images, fp32 predictions) load on first need, so a run whose every candidate is cached runs no model at all.
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

from ..backends.ort import resolved_config, skipped_convs
from ..calibrate import read_calibration_folder
from ..config import BuildConfig
from ..errors import PipelineError
from ..fileio import dumps_json, sha256_file
from ..release import code_digest
from ..report import DEMO_STAMPS, DEMO_WARNINGS
from ..runtime import read_onnx
from . import scoring
from .candidates import Cache, Candidate, Quantizer
from .split import validation_split


class Workbench:
    """DEMO: (the data is the generated demo set, the checkpoint is the demo one), as the report takes it: the
    outputs then carry the report's banner."""

    def __init__(self, cfg: BuildConfig, onnx_path: Path, calib: Path, data: Path, progress,
                 cache_path: Path | None = None, demo: tuple[bool, bool] = (False, False)):
        if cfg.backend.dtype != "int8":
            raise PipelineError(f"{cfg.source}: backend.dtype is {cfg.backend.dtype}; analyze and tune need an "
                                f"int8 config")
        if not onnx_path.is_file():
            raise PipelineError(f"{onnx_path}: no such ONNX file (run `make simplify CONFIG={cfg.source}` first)")
        self.cfg, self.onnx_path, self.calib, self.data, self.progress = cfg, onnx_path, calib, data, progress
        self.demo = demo
        # checked as `build` checks them: a stale or truncated tensors file is one line, never scored on
        self.model = read_onnx(onnx_path, f"rebuild it with `make simplify CONFIG={cfg.source}`")
        calib_manifest = read_calibration_folder(cfg, calib)
        skipped_convs(self.model, cfg.backend.quantize.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source)
        names = {entry["name"] for entry in calib_manifest["images"]}
        self.validation_entries = validation_split(cfg, data, names)
        self.quantizer = Quantizer(cfg, self.model, calib, lambda it, total=None: progress(it, "statistics", total))
        listing = "".join(f"{digest}  {name}\n" for name, digest in self.validation_entries)
        self.digests = {"onnx_sha256": sha256_file(onnx_path),
                        "calibration_manifest_sha256": sha256_file(calib / "manifest.json"),
                        "calibration_tensors_sha256": calib_manifest["tensors"]["sha256"],  # checked whole above
                        "calibration_images": calib_manifest.get("count"),
                        "validation_list_sha256": hashlib.sha256(listing.encode()).hexdigest()}
        resolved = resolved_config(cfg)
        context = {**self.digests, "validation": [{"name": n, "sha256": d} for n, d in self.validation_entries],
                   "quantize_per_channel": cfg.backend.quantize.quantize_per_channel,
                   "conv_numbering": cfg.pipeline.conv_numbering, "dataset": resolved["dataset"],
                   "input_shape": list(cfg.input_shape), "code": code_digest()}
        self.cache = Cache(cache_path, json.loads(dumps_json(context)))  # as it reads back from candidates.json
        self.built = 0  # candidates built and scored in this run (not from the cache)

    @property
    def demo_banner(self) -> str | None:
        return DEMO_WARNINGS.get(self.demo)

    @property
    def demo_stamp(self) -> str | None:
        return DEMO_STAMPS.get(self.demo)

    @cached_property
    def validation(self) -> scoring.Validation:
        return scoring.load_validation(self.cfg, self.data, [n for n, _ in self.validation_entries])

    @cached_property
    def fp32_preds(self) -> list:
        return scoring.predict(self.onnx_path, self.validation.inputs)

    @property
    def fp32(self) -> dict:
        if self.cache.fp32 is None:
            self.cache.fp32 = scoring.score(self.fp32_preds, self.validation.gts)
        return self.cache.fp32

    def evaluate(self, candidate: Candidate) -> dict:
        """Figures of CANDIDATE on the validation images, their change against fp32, its violation of the target."""
        hit = self.cache.get(candidate)
        if hit is None:
            preds = scoring.predict(self.quantizer.build(candidate), self.validation.inputs)
            self.cache.put(candidate, scoring.score(preds, self.validation.gts, self.fp32_preds))
            self.built += 1
        figures = self.cache.get(candidate)["figures"]
        change = scoring.changes(figures, self.fp32)
        tune = self.cfg.pipeline.tune
        return {**figures, **change, "violation": scoring.violation(change, tune.max_mad_increase, tune.max_miou_drop),
                "cached": hit is not None}
