"""What analyze and tune share: the inputs loaded once, and `evaluate(candidate)`, cached.

Opening a workbench checks the ONNX, the calibration folder and skip_conv_layers as `build` does, splits the
images (split.py) and fixes the context every cached figure depends on; the heavy parts (statistics, images, fp32
predictions) load on first need, so a run whose every candidate is cached runs no model at all.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..backends.ort.build import resolved_config, skipped_convs
from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import dumps_json, sha256_bytes, sha256_file
from ..core.runtime import read_onnx
from ..stages.calibrate import read_calibration_folder
from ..stages.release import code_digest
from ..stages.report import DEMO_STAMPS, DEMO_WARNINGS
from . import scoring
from .candidates import Cache, Candidate, Quantizer
from .split import extra_images, split


class Workbench:
    """DEMO: (the data is the generated demo set, the checkpoint is the demo one), as the report takes it: the
    outputs then carry the report's banner. EXTRA: a folder of unlabelled images (--extra-images) whose deviation
    from fp32 joins the selection figures."""

    def __init__(self, cfg: BuildConfig, onnx_path: Path, calib: Path, data: Path, progress,
                 cache_path: Path | None = None, demo: tuple[bool, bool] = (False, False),
                 extra: Path | None = None):
        if cfg.backend.dtype != "int8":
            raise PipelineError(f"{cfg.source}: backend.dtype is {cfg.backend.dtype}; analyze and tune need an "
                                f"int8 config")
        if not onnx_path.is_file():
            raise PipelineError(f"{onnx_path}: no such ONNX file (run `make simplify CONFIG={cfg.source}` first)")
        self.cfg, self.onnx_path, self.calib, self.data, self.progress = cfg, onnx_path, calib, data, progress
        self.demo, self.extra_dir = demo, extra
        # checked as `build` checks them: a stale or truncated tensors file is one line, never scored on
        self.model = read_onnx(onnx_path, f"rebuild it with `make simplify CONFIG={cfg.source}`")
        calib_manifest = read_calibration_folder(cfg, calib)
        skipped_convs(self.model, cfg.backend.quantize.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source)
        names = {entry["name"] for entry in calib_manifest["images"]}
        self.selection_entries, self.confirmation_entries = split(cfg, data, names)
        held_out = {**{d: f"the selection image {n}" for n, d in self.selection_entries},
                    **{d: f"the confirmation image {n}" for n, d in self.confirmation_entries},
                    **{e["sha256"]: f"the calibration image {e['name']}" for e in calib_manifest["images"]}}
        self.extra_entries = extra_images(cfg, extra, held_out) if extra is not None else []
        self.quantizer = Quantizer(cfg, self.model, calib, progress)
        self.digests = {"onnx_sha256": sha256_file(onnx_path),
                        "calibration_manifest_sha256": sha256_file(layout.manifest(calib)),
                        "calibration_tensors_sha256": calib_manifest["tensors"]["sha256"],  # checked whole above
                        "calibration_images": calib_manifest.get("count"),
                        **{f"{name}_list_sha256": sha256_bytes(listing(entries).encode())
                           for name, entries in self.sets.items()}}
        resolved = resolved_config(cfg)
        context = {**self.digests, **{name: [{"name": n, "sha256": d} for n, d in entries]
                                      for name, entries in self.sets.items()},
                   "quantize_per_channel": cfg.backend.quantize.quantize_per_channel,
                   "conv_numbering": cfg.pipeline.conv_numbering, "dataset": resolved["dataset"],
                   "input_shape": list(cfg.input_shape), "code": code_digest()}
        self.cache = Cache(cache_path, json.loads(dumps_json(context)))  # as it reads back from candidates.json
        self.notices = [n for n in (self.cache.notice, self.resplit_notice()) if n]
        self.built = 0  # candidates a model scored in this run (on an image set the cache did not hold)
        self.passes = 0  # int8 and fp32 forward passes run in this run
        self._images: dict[str, scoring.Images] = {}
        self._fp32_preds: dict[str, list] = {}

    def resplit_notice(self) -> str | None:
        """A line when this run confirms on images an earlier search in this folder scored candidates on (the
        cache's `searched`): a changed split (selection_images, confirmation_images, pipeline.seed, the calibration
        subset, DATA) moves images between the sets, and a confirmation on images a search has seen is not fresh."""
        reused = [n for n, d in self.confirmation_entries if d in self.cache.searched]
        if not reused:
            return None
        return (f"{self.cache.path}: {len(reused)} of this run's {len(self.confirmation_entries)} confirmation images "
                f"({', '.join(reused[:3])}{', ...' if len(reused) > 3 else ''}) were searched on by an earlier tune in "
                f"this folder (selection or extra images then): the confirmation is not on fresh images; judge the "
                f"tuned config on images no tune has seen")

    @property
    def sets(self) -> dict[str, list[tuple[str, str]]]:
        return {"selection": self.selection_entries, "extra": self.extra_entries,
                "confirmation": self.confirmation_entries}

    @property
    def demo_banner(self) -> str | None:
        return DEMO_WARNINGS.get(self.demo)

    @property
    def demo_stamp(self) -> str | None:
        return DEMO_STAMPS.get(self.demo)

    def images(self, image_set: str) -> scoring.Images:
        """The preprocessed images of IMAGE_SET (and their ground truth, but for extra), loaded on first need."""
        if image_set not in self._images:
            names = [n for n, _ in self.sets[image_set]]
            self._images[image_set] = scoring.load_unlabelled(self.cfg, self.extra_dir, names) \
                if image_set == "extra" else scoring.load_labelled(self.cfg, self.data, names)
        return self._images[image_set]

    def preload(self, *image_sets: str) -> None:
        """Read IMAGE_SETS now, every photo and matte checked as `evaluate` checks them: a bad matte is refused
        before the minutes of statistics and builds that would otherwise come first, not after them."""
        for image_set in image_sets:
            self.images(image_set)

    def _predict(self, model, image_set: str) -> list:
        inputs = self.images(image_set).inputs
        self.passes += len(inputs)
        return scoring.predict(model, inputs) if inputs else []

    def fp32_preds(self, image_set: str) -> list:
        if image_set not in self._fp32_preds:
            self._fp32_preds[image_set] = self._predict(self.onnx_path, image_set)
        return self._fp32_preds[image_set]

    def fp32(self, image_set: str = "selection") -> dict:
        """fp32's per-image ground-truth figures on a labelled IMAGE_SET."""
        if self.cache.fp32 is None:
            self.cache.fp32 = {}
        if image_set not in self.cache.fp32:
            self.cache.fp32[image_set] = scoring.ground_truth_figures(self.fp32_preds(image_set),
                                                                      self.images(image_set).gts)
        return self.cache.fp32[image_set]

    def figures(self, candidate: Candidate, image_sets: tuple[str, ...]) -> tuple[dict, bool]:
        """(CANDIDATE's per-image figures by image set, whether all came from the cache); scores what is missing."""
        hit = self.cache.get(candidate)
        missing = [s for s in image_sets if hit is None or s not in hit["figures"]]
        if missing:
            model = self.quantizer.build(candidate)
            for image_set in missing:
                self.cache.put(candidate, image_set, self._image_figures(model, image_set))
            self.built += 1
        return self.cache.get(candidate)["figures"], not missing

    def _image_figures(self, model: bytes, image_set: str) -> dict:
        return scoring.image_figures(self._predict(model, image_set), self.fp32_preds(image_set),
                                     self.images(image_set).gts)

    def score(self, model: bytes) -> dict:
        """MODEL (a serialized ONNX) on the selection images and the extra ones, scored as a candidate is, uncached:
        its per-image figures by image set, as figures() gives a candidate's."""
        return {image_set: self._image_figures(model, image_set) for image_set in ("selection", "extra")}

    def summary(self, figures: dict, image_set: str) -> dict:
        """Means, bounds and the target check of a candidate's FIGURES on IMAGE_SET (selection: with the extra
        images' deviation)."""
        own = figures[image_set]
        fidelity = {k: own[k] + (figures["extra"][k] if image_set == "selection" else []) for k in scoring.FIDELITY}
        return scoring.summary(fidelity, own, self.fp32(image_set), self.cfg.pipeline.tune, self.cfg.pipeline.seed)

    def deviations(self, candidate: Candidate, image_set: str = "selection") -> list[float]:
        """CANDIDATE's per-image deviation on IMAGE_SET (selection: with the extra images), as its summary uses."""
        return joined_deviations(self.cache.get(candidate)["figures"], image_set)

    def evaluate(self, candidate: Candidate) -> dict:
        """CANDIDATE on the selection images (and the extra ones): summary() and whether it came from the cache."""
        figures, cached = self.figures(candidate, ("selection", "extra"))
        return {**self.summary(figures, "selection"), "cached": cached}

    def confirm(self, candidate: Candidate) -> dict:
        """CANDIDATE on the confirmation images, scored once."""
        figures, cached = self.figures(candidate, ("selection", "extra", "confirmation"))
        return {**self.summary(figures, "confirmation"), "cached": cached}


def joined_deviations(figures: dict, image_set: str = "selection") -> list[float]:
    """The per-image deviation of FIGURES (by image set) on IMAGE_SET, selection with the extra images."""
    return figures[image_set]["deviation"] + (figures["extra"]["deviation"] if image_set == "selection" else [])


def listing(entries: list[tuple[str, str]]) -> str:
    """The `sha256  name` lines of an image list (selection.txt, confirmation.txt; sha256sum's format)."""
    return "".join(f"{digest}  {name}\n" for name, digest in entries)
