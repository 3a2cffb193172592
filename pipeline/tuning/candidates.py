"""Candidates: vamc-expressible quantization settings, the models they give, and the cache of their scores.

A candidate is (calibrate_mode, calibrate_range, skip_conv_layers); `quantize_per_channel` and the conv numbering
are the input config's. Its model is exactly what `make int8` builds from a config with those settings: the
thresholds come from one statistics collection of every quantizable tensor (stats.py; a tensor's threshold
depends only on its own statistics, so skipping a Conv changes no other tensor's) and the Q/DQ writer is the
backend's own (qdq.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import onnx

from ..backends.ort import qdq, skipped_convs, stats, tensor_thresholds
from ..config import BuildConfig
from ..errors import PipelineError
from ..calibrate import TENSORS
from ..fileio import write_json

PERCENTILE_RANGES = (0.999, 0.9999, 0.99999, 0.999999)


@dataclass(frozen=True)
class Candidate:
    mode: str
    range: float | None  # calibrate_range, percentile only
    skip: tuple[int, ...] = ()  # skip_conv_layers, sorted

    @property
    def key(self) -> str:
        return f"{self.mode}|{'' if self.range is None else repr(self.range)}|{','.join(map(str, self.skip))}"

    def label(self) -> str:
        mode = self.mode if self.range is None else f"{self.mode} {self.range:g}"
        return f"{mode}, skip {list(self.skip)}" if self.skip else mode

    def to_json(self) -> dict:
        return {"calibrate_mode": self.mode, "calibrate_range": self.range, "skip_conv_layers": list(self.skip)}

    @classmethod
    def from_json(cls, d: dict) -> "Candidate":
        return cls(d["calibrate_mode"], d["calibrate_range"], tuple(d["skip_conv_layers"]))


def calibrations(cfg: BuildConfig) -> list[Candidate]:
    """Every calibration tried, the input config's own first: the four modes, percentile at a few ranges."""
    q = cfg.backend.quantize
    own = Candidate(q.calibrate_mode, q.calibrate_range if q.calibrate_mode == "percentile" else None)
    every = [Candidate("kl_divergence", None), Candidate("max", None), Candidate("mse", None),
             *[Candidate("percentile", r) for r in PERCENTILE_RANGES]]
    return [own, *[c for c in every if c != own]]


class Quantizer:
    """Writes the Q/DQ model of any candidate; the statistics are collected on first need, once."""

    def __init__(self, cfg: BuildConfig, model: onnx.ModelProto, calib: Path, progress):
        self.cfg, self.model, self.calib, self.progress = cfg, model, calib, progress
        self.per_channel = cfg.backend.quantize.quantize_per_channel
        self._thresholds: dict[tuple, dict[str, float]] = {}

    @cached_property
    def collection(self) -> stats.Collection:
        tensors = qdq.quantized_tensors(self.model, set())
        return stats.collect(self.model, tensors, self.calib / TENSORS, self.progress)

    def thresholds(self, mode: str, calibrate_range: float | None) -> dict[str, float]:
        if (mode, calibrate_range) not in self._thresholds:
            self._thresholds[mode, calibrate_range] = tensor_thresholds(self.collection, mode, calibrate_range)
        return self._thresholds[mode, calibrate_range]

    def skipped(self, skip: tuple[int, ...]) -> set[str]:
        return set(skipped_convs(self.model, skip, self.cfg.pipeline.conv_numbering, self.cfg.source))

    def build(self, candidate: Candidate) -> bytes:
        return qdq.write_qdq(self.model, self.thresholds(candidate.mode, candidate.range),
                             self.skipped(candidate.skip), self.per_channel)


class Cache:
    """Scored candidates of one context (model, calibration set, validation images, per-channel, numbering, code),
    kept in candidates.json so that a rerun, or a run with another target, builds only what it has not seen."""

    def __init__(self, path: Path | None, context: dict):
        self.path, self.context = path, context
        self.entries: dict[str, dict] = {}
        self.fp32: dict | None = None
        self.extra: dict = {}
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PipelineError(f"{path}: unreadable candidate cache ({type(exc).__name__}); delete it") from None
            if saved.get("context") == context:
                self.entries = {Candidate.from_json(e["candidate"]).key: e for e in saved.get("cache", [])}
                self.fp32 = saved.get("fp32")
                self.extra = saved.get("extra", {})

    def get(self, candidate: Candidate) -> dict | None:
        return self.entries.get(candidate.key)

    def put(self, candidate: Candidate, figures: dict) -> None:
        self.entries[candidate.key] = {"candidate": candidate.to_json(), "figures": figures}

    def record(self, **fields) -> dict:
        return {"context": self.context, "fp32": self.fp32, "extra": self.extra,
                "cache": [self.entries[k] for k in sorted(self.entries)], **fields}

    def save(self, **fields) -> None:
        if self.path is not None:
            write_json(self.path, self.record(**fields))
