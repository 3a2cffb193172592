"""Candidates: vamc-expressible quantization settings, the models they give, and the cache of their scores.

A candidate is (calibrate_mode, calibrate_range, skip_conv_layers, corrected); `quantize_per_channel` and the conv
numbering are the input config's. Its model is exactly what `make int8` builds from a config with those settings: the
thresholds come from one statistics collection of every quantizable tensor (stats.py; a tensor's threshold
depends only on its own statistics, so skipping a Conv changes no other tensor's) and the Q/DQ model is the
backend's own (ort/build.int8_model). A corrected candidate (`pipeline.bias_correction: empirical`) is built from the
bias-corrected model of its calibration (bias_correction.correct, minutes per calibration), with thresholds from a
statistics collection on that model, since vamc calibrates the ONNX it is given.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import onnx

from ..backends.ort import qdq, stats
from ..backends.ort.build import int8_model, skipped_convs, tensor_thresholds
from ..core.config import CALIBRATE_MODES, BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import dumps_json, sha256_bytes, write_json
from ..core.names import is_sha256
from ..stages.calibrate import TENSORS
from .scoring import FIDELITY, LABELLED

PERCENTILE_RANGES = (0.999, 0.9999, 0.99999, 0.999999)


@dataclass(frozen=True)
class Candidate:
    mode: str
    range: float | None  # calibrate_range, percentile only
    skip: tuple[int, ...] = ()  # skip_conv_layers, sorted
    corrected: bool = False  # built from the bias-corrected model (pipeline.bias_correction: empirical)

    # An uncorrected candidate's key and JSON are what they were before the field existed, so earlier caches stay valid.
    @property
    def key(self) -> str:
        key = f"{self.mode}|{'' if self.range is None else repr(self.range)}|{','.join(map(str, self.skip))}"
        return f"{key}|corrected" if self.corrected else key

    def label(self) -> str:
        mode = self.mode if self.range is None else f"{self.mode} {self.range:g}"
        text = f"{mode}, skip {list(self.skip)}" if self.skip else mode
        return f"{text} + bias correction" if self.corrected else text

    def to_json(self) -> dict:
        d = {"calibrate_mode": self.mode, "calibrate_range": self.range, "skip_conv_layers": list(self.skip)}
        return {**d, "corrected": True} if self.corrected else d

    @classmethod
    def from_json(cls, d: dict) -> "Candidate":
        return cls(d["calibrate_mode"], d["calibrate_range"], tuple(d["skip_conv_layers"]), d.get("corrected", False))


def calibrations(cfg: BuildConfig) -> list[Candidate]:
    """Every calibration tried, the input config's own first: the four modes, percentile at a few ranges."""
    q = cfg.backend.quantize
    own = Candidate(q.calibrate_mode, q.calibrate_range if q.calibrate_mode == "percentile" else None)
    every = [Candidate("kl_divergence", None), Candidate("max", None), Candidate("mse", None),
             *[Candidate("percentile", r) for r in PERCENTILE_RANGES]]
    return [own, *[c for c in every if c != own]]


class Quantizer:
    """Writes the Q/DQ model of any candidate; the statistics are collected on first need: once for the simplified
    model, and by the correction itself for each bias-corrected one. PROGRESS (core.progress), the workbench's."""

    def __init__(self, cfg: BuildConfig, model: onnx.ModelProto, calib: Path, progress):
        self.cfg, self.model, self.calib, self.progress = cfg, model, calib, progress
        self.per_channel = cfg.backend.quantize.quantize_per_channel
        self._thresholds: dict[tuple, dict[str, float]] = {}
        self._corrected: dict[tuple, tuple[onnx.ModelProto, stats.Collection]] = {}

    @cached_property
    def collection(self) -> stats.Collection:
        """The simplified model's statistics, every tensor and the histograms: each calibration's thresholds and
        any skip list's come from this one collection."""
        tensors = qdq.quantized_tensors(self.model, set())
        return stats.collect(self.model, tensors, self.calib / TENSORS, self.progress, "statistics")

    def corrected(self, mode: str, calibrate_range: float | None, skip: tuple[int, ...] = ()
                  ) -> tuple[onnx.ModelProto, stats.Collection]:
        """The bias-corrected model a config of this calibration and SKIP builds from (`make int8` corrects for the
        config's skip_conv_layers: skipped Convs are not corrected), as read back from its file, and the statistics
        `make int8` collects on it for this calibration (the correction's last recalibration collected them). The
        search corrects with nothing skipped; an input config's own skip list is its own."""
        from ..backends.ort.bias_correction import correct

        if (mode, calibrate_range, skip) not in self._corrected:
            cfg = self.config(Candidate(mode, calibrate_range, skip))
            data, _, collected = correct(cfg, self.model, self.calib / TENSORS, self.progress,
                                         sorted(self.skipped(skip)))
            self._corrected[mode, calibrate_range, skip] = onnx.load_from_string(data), collected
        return self._corrected[mode, calibrate_range, skip]

    def thresholds(self, mode: str, calibrate_range: float | None, corrected: tuple[int, ...] | None = None
                   ) -> dict[str, float]:
        """The thresholds of MODE from the simplified model's statistics, or (CORRECTED: the skip list the model was
        corrected for) from the corrected model's."""
        key = (mode, calibrate_range, corrected)
        if key not in self._thresholds:
            collection = self.collection if corrected is None else self.corrected(mode, calibrate_range, corrected)[1]
            self._thresholds[key] = tensor_thresholds(collection, mode, calibrate_range)
        return self._thresholds[key]

    def config(self, candidate: Candidate) -> BuildConfig:
        """The input config with CANDIDATE's calibration and skip list, as its tuned config reads back."""
        q = self.cfg.backend.quantize
        quantize = replace(q, calibrate_mode=candidate.mode, skip_conv_layers=candidate.skip,
                           calibrate_range=q.calibrate_range if candidate.range is None else candidate.range)
        return replace(self.cfg, backend=replace(self.cfg.backend, quantize=quantize))

    def skipped(self, skip: tuple[int, ...]) -> set[str]:
        return set(skipped_convs(self.model, skip, self.cfg.pipeline.conv_numbering, self.cfg.source))

    def build(self, candidate: Candidate, parts: str = "both") -> bytes:
        """CANDIDATE's Q/DQ model; PARTS (qdq.PARTS) quantizes only its weights or only its activations."""
        if candidate.corrected:
            model = self.corrected(candidate.mode, candidate.range, candidate.skip)[0]
            thresholds = self.thresholds(candidate.mode, candidate.range, candidate.skip)
        else:
            model, thresholds = self.model, self.thresholds(candidate.mode, candidate.range)
        return int8_model(self.config(candidate), model, thresholds, parts)


SETS = ("selection", "extra", "confirmation")  # image sets of the context, each a list of {name, sha256}
SAVED = {"context", "fp32", "extra", "cache", "digest"}  # what record() writes, then save()'s fields of the run
RUN_FIELDS = {"search", "chosen", "verdict"}
# sha256 of every image a search in this folder has scored candidates on (selection and extra images, this run's
# and every earlier one's): a later split that confirms on one of them is not confirming on fresh images. Optional
# (caches written before it have none), kept when the context changes.
SEARCHED = "searched"


def _number(value, where: str, high: float = 1.0) -> None:
    # a mean of alphas in [0, 1], a share of pixels, or (deviation) the sum of the two: anything else was not
    # written by scoring
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ValueError(f"{where} is {value!r}, not a number within [0, {high:g}]")


def _column(value, n: int, where: str) -> list:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{where} is not a list of {n} per-image figures (one per image of the context)")
    return value


def _per_image(value, keys: tuple[str, ...], n: int, pixels: int, where: str) -> None:
    """VALUE: {figure: [one number per image]} of exactly KEYS, each figure in its range, counts summing to PIXELS."""
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ValueError(f"{where} is not an object of exactly {list(keys)}")
    for key in keys:
        column = _column(value[key], n, f"{where}.{key}")
        for k, v in enumerate(column):
            if key in ("tp", "fp", "fn", "tn"):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= pixels:
                    raise ValueError(f"{where}.{key}[{k}] is {v!r}, not a pixel count within [0, {pixels}]")
            else:
                _number(v, f"{where}.{key}[{k}]", 1.0)
    if "tp" in keys:
        for k in range(n):
            if sum(value[c][k] for c in ("tp", "fp", "fn", "tn")) != pixels:
                raise ValueError(f"{where}: the confusion counts of image {k} do not sum to its {pixels} pixels")


def _sizes(context) -> tuple[dict[str, int], int]:
    """(images per set, pixels per image) of a saved context."""
    if not isinstance(context, dict):
        raise ValueError("context is not an object")
    sizes = {}
    for name in SETS:
        entries = context.get(name)
        if not isinstance(entries, list) or not all(isinstance(e, dict) and set(e) == {"name", "sha256"}
                                                    for e in entries):
            raise ValueError(f"context.{name} is not a list of images (name, sha256)")
        sizes[name] = len(entries)
    shape = context.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int)
                                                             or v < 1 for v in shape):
        raise ValueError("context.input_shape is not a list of 4 positive integers")
    return sizes, shape[2] * shape[3]


def _figures(value, sizes: dict[str, int], pixels: int, where: str, labelled_only: bool = False) -> None:
    """A candidate's (or, LABELLED_ONLY, fp32's) figures: selection and extra always, confirmation once scored."""
    required = ("selection",) if labelled_only else ("selection", "extra")
    if not isinstance(value, dict) or not set(required) <= set(value) <= {*required, "confirmation"}:
        raise ValueError(f"{where} is not an object of {', '.join(required)} (and confirmation)")
    for name in value:
        keys = LABELLED if labelled_only else FIDELITY if name == "extra" else FIDELITY + LABELLED
        _per_image(value[name], keys, sizes[name], pixels, f"{where}.{name}")


def _candidate(value, where: str) -> Candidate:
    keys = {"calibrate_mode", "calibrate_range", "skip_conv_layers"}
    if not isinstance(value, dict) or set(value) - {"corrected"} != keys:
        raise ValueError(f"{where} is not an object of calibrate_mode, calibrate_range, skip_conv_layers (and "
                         f"corrected)")
    if "corrected" in value and value["corrected"] is not True:
        # written only when true, so that an uncorrected candidate's entry is what it was before the field existed
        raise ValueError(f"{where}.corrected is {value['corrected']!r}, not true (an uncorrected candidate has none)")
    mode, calibrate_range, skip = value["calibrate_mode"], value["calibrate_range"], value["skip_conv_layers"]
    if mode not in CALIBRATE_MODES:
        raise ValueError(f"{where}.calibrate_mode is {mode!r}, not one of {', '.join(CALIBRATE_MODES)}")
    if mode == "percentile":
        if isinstance(calibrate_range, bool) or not isinstance(calibrate_range, float) \
                or not 0.5 <= calibrate_range <= 1.0:
            raise ValueError(f"{where}.calibrate_range is {calibrate_range!r}, not a number within [0.5, 1]")
    elif calibrate_range is not None:
        raise ValueError(f"{where}.calibrate_range is {calibrate_range!r} for {mode}, which reads none")
    _indices(skip, f"{where}.skip_conv_layers")
    if skip != sorted(set(skip)):
        raise ValueError(f"{where}.skip_conv_layers is {skip!r}, not sorted without repeats")
    return Candidate.from_json(value)


def _indices(value, where: str) -> None:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ValueError(f"{where} is not a list of Conv indices")


def content_digest(saved: dict) -> str:
    return sha256_bytes(dumps_json({k: v for k, v in saved.items() if k != "digest"}).encode())


def check_saved(saved) -> dict[str, dict]:
    """SAVED (candidates.json, parsed) checked whole: its entries by candidate key; ValueError says what is wrong."""
    if not isinstance(saved, dict):
        raise ValueError(f"the top level is a {type(saved).__name__}, not an object")
    unknown, missing = set(saved) - SAVED - RUN_FIELDS - {SEARCHED}, SAVED - set(saved)
    if unknown or missing:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}" if unknown else f"no {sorted(missing)[0]!r}")
    sizes, pixels = _sizes(saved["context"])
    if saved["fp32"] is not None:
        _figures(saved["fp32"], sizes, pixels, "fp32", labelled_only=True)
    extra = saved["extra"]
    if not isinstance(extra, dict) or set(extra) - {"worst_first"}:
        raise ValueError("extra is not an object of worst_first")
    ranks = extra.get("worst_first", {})
    if not isinstance(ranks, dict):
        raise ValueError("extra.worst_first is not an object")
    for key, order in ranks.items():
        _indices(order, f"extra.worst_first[{key!r}]")
    if not isinstance(saved["cache"], list):
        raise ValueError("cache is not a list")
    entries: dict[str, dict] = {}
    for k, entry in enumerate(saved["cache"]):
        where = f"cache[{k}]"
        if not isinstance(entry, dict) or set(entry) != {"candidate", "figures"}:
            raise ValueError(f"{where} is not an object of candidate and figures")
        key = _candidate(entry["candidate"], f"{where}.candidate").key
        _figures(entry["figures"], sizes, pixels, f"{where}.figures")
        if key in entries:
            raise ValueError(f"{where} repeats the candidate {key}")
        entries[key] = entry
    searched = saved.get(SEARCHED, [])
    if not isinstance(searched, list) or not all(is_sha256(d) for d in searched):
        raise ValueError(f"{SEARCHED} is not a list of sha256")
    if saved["digest"] != content_digest(saved):
        raise ValueError("its content does not match its digest (edited since the tune that wrote it)")
    return entries


def _searched(context: dict) -> set[str]:
    return {e["sha256"] for name in ("selection", "extra") for e in context[name]}


class Cache:
    """Scored candidates of one context (model, calibration set, image sets, per-channel, numbering, code), with
    their per-image figures on each image set (scoring.image_figures),
    kept in candidates.json so that a rerun, or a run with another target, builds only what it has not seen.

    The file is an input: read back only if every entry checks (check_saved) and its content matches the digest it
    was saved with; otherwise it is set aside as candidates.json.invalid-N (NOTICE says so) and rebuilt. The
    digest catches a hand edit or a damaged file, not a deliberate forgery: whoever can write the folder can
    recompute it (and could as well write tuned.yaml), so an entry planted with a recomputed digest is trusted."""

    def __init__(self, path: Path | None, context: dict):
        self.path, self.context = path, context
        self.entries: dict[str, dict] = {}
        self.fp32: dict | None = None
        self.extra: dict = {}
        self.notice: str | None = None
        self.searched: set[str] = set()  # SEARCHED as saved: every earlier run's, before this one's
        if path is not None and path.is_file():
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise PipelineError(f"{path}: cannot read the candidate cache ({exc.strerror}); delete it") from None
            try:
                saved = json.loads(data.decode("utf-8"))
                entries = check_saved(saved)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                self.notice = f"{path}: not a valid candidate cache ({exc}); set aside as {self._set_aside().name}, " \
                              f"rebuilt from scratch"
                return
            self.searched = set(saved.get(SEARCHED, [])) | _searched(saved["context"])
            if saved["context"] == context:
                self.entries, self.fp32, self.extra = entries, saved["fp32"], saved["extra"]

    def _set_aside(self) -> Path:
        n = 1
        while self.path.with_name(f"{self.path.name}.invalid-{n}").exists():
            n += 1
        aside = self.path.with_name(f"{self.path.name}.invalid-{n}")
        self.path.rename(aside)
        return aside

    def get(self, candidate: Candidate) -> dict | None:
        return self.entries.get(candidate.key)

    def put(self, candidate: Candidate, image_set: str, figures: dict) -> None:
        """Per-image FIGURES of CANDIDATE on IMAGE_SET (selection, extra, confirmation)."""
        entry = self.entries.setdefault(candidate.key, {"candidate": candidate.to_json(), "figures": {}})
        entry["figures"][image_set] = figures

    def record(self, **fields) -> dict:
        saved = {"context": self.context, "fp32": self.fp32, "extra": self.extra,
                 "cache": [self.entries[k] for k in sorted(self.entries)],
                 SEARCHED: sorted(self.searched | _searched(self.context)), **fields}
        return {**saved, "digest": content_digest(saved)}

    def save(self, **fields) -> None:
        if self.path is not None:
            write_json(self.path, self.record(**fields))
