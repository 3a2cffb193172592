"""Scoring a candidate model image by image, against fp32 and against the ground truth, and its summary.

Per image (`image_figures`, what candidates.json keeps, so every statistic can be recomputed without a model):
- `deviation`, the figure tuning optimises: mean |alpha - fp32 alpha| of the 8-bit predictions. It needs no
  ground truth and is paired: two candidates' per-image deviations differ by their own errors only. Reported
  beside it, never added to it: `flips`, the share of pixels whose label (8-bit alpha >= 128, as mIoU binarises)
  differs from fp32's. Added, one flipped pixel one level off would weigh as much as 255 levels of error
  everywhere else, and the ranking would follow the pixels that sit on the threshold.
- against the ground truth, as `evaluate` computes them (metrics.py): MSE, MAD and the four confusion counts (mIoU
  is pooled over images from them). These are the target's constraints, never what is ranked.
Unlabelled images (--extra-images) have a deviation and flips only.

`summary` turns the per-image figures into means with one-sided 95% bounds (statistics.py) and the target check:
met when the upper bound of each change (MSE, MAD increase, mIoU drop) is within its limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..accuracy import metrics
from ..accuracy.agreement import agreement
from ..core import runtime
from ..core.config import BuildConfig, Tune
from ..data.dataset import image_dir, matte_path
from ..data.preprocess import apply_ops, load_input
from ..stages.evaluate import photo_and_gt
from . import statistics

FIDELITY = ("deviation", "flips")                          # every image
LABELLED = ("mse", "mad", *statistics.COUNTS)              # images with a matte
CHANGES = ("mse_increase", "mad_increase", "miou_drop")    # against fp32, positive = worse


@dataclass
class Images:
    """Preprocessed images and, for labelled ones, their ground truth, loaded once."""
    names: list[str]
    inputs: list[np.ndarray]
    gts: list[np.ndarray] | None


def _labelled(cfg: BuildConfig, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """IMAGE's input and ground truth, checked as `evaluate` checks them."""
    bgr, gt = photo_and_gt(image, matte_path(image), cfg)
    return apply_ops(cfg, bgr), gt


def load_labelled(cfg: BuildConfig, data: str | Path, names: list[str]) -> Images:
    folder = image_dir(data)
    loaded = [_labelled(cfg, folder / n) for n in names]
    return Images(names, [x for x, _ in loaded], [gt for _, gt in loaded])


def load_unlabelled(cfg: BuildConfig, folder: Path, names: list[str]) -> Images:
    return Images(names, [load_input(cfg, folder / n) for n in names], None)


def predict(model: bytes | Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """8-bit predictions of MODEL (run as `evaluate` runs an ort engine) for every input."""
    session = runtime.session(model)
    return [metrics.pred_from_alpha(runtime.run(session, x)) for x in inputs]


def ground_truth_figures(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, list]:
    """Per image: MSE, MAD and the confusion counts against the ground truth (fp32's figures)."""
    out: dict[str, list] = {key: [] for key in LABELLED}
    for pred, gt in zip(preds, gts):
        out["mse"].append(metrics.mse(pred, gt))
        out["mad"].append(metrics.mad(pred, gt))
        for key, value in metrics.confusion(pred, gt).items():
            out[key].append(value)
    return out


def fidelity_figures(preds: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, list]:
    """Per image: deviation and flips against REFERENCE (fp32's predictions)."""
    if not preds:
        return {key: [] for key in FIDELITY}
    found = agreement(preds, reference)
    return {"deviation": list(found.per_image), "flips": list(found.per_image_flips)}


def image_figures(preds, reference, gts=None) -> dict[str, list]:
    """Every per-image figure of a candidate (deviation and flips; with GTS, the ground-truth ones too)."""
    return {**fidelity_figures(preds, reference), **(ground_truth_figures(preds, gts) if gts is not None else {})}


def counts(figures: dict) -> np.ndarray:
    """[n images, 4] confusion counts (tp, fp, fn, tn)."""
    return np.stack([np.asarray(figures[k], dtype=np.int64) for k in statistics.COUNTS], axis=1)


def labelled_means(figures: dict) -> dict:
    """MSE, MAD (means over images) and mIoU (pooled counts) of per-image ground-truth FIGURES, fp32's or a
    candidate's, as `evaluate` sums them up."""
    rows = [{"mse": mse, "mad": mad, "confusion": dict(zip(statistics.COUNTS, map(int, cm)))}
            for mse, mad, cm in zip(figures["mse"], figures["mad"], counts(figures))]
    found = metrics.Accumulator(rows, keys=("mse", "mad")).summary()
    return {key: found[key] for key in ("mse", "mad", "miou")}


def _ratio(change: float, limit: float) -> float:
    if limit > 0:
        return change / limit
    return 0.0 if change <= 0 else float("inf")


def violation(upper: dict, tune: Tune) -> float:
    """The largest upper bound of a change as a share of its limit: at most 1 means the target is met."""
    return max(_ratio(upper["mse_increase"], tune.max_mse_increase),
               _ratio(upper["mad_increase"], tune.max_mad_increase),
               _ratio(upper["miou_drop"], tune.max_miou_drop))


def summary(fidelity: dict, labelled: dict, fp32: dict, tune: Tune, seed: int) -> dict:
    """Means and one-sided 95% bounds of a candidate on one image set, and the target check.

    FIDELITY: per-image deviation and flips of every image of the set (unlabelled ones included); LABELLED and FP32:
    per-image ground-truth figures of the candidate and of fp32 on the labelled images. Bounds are [lower, upper]."""
    every = statistics.draws(len(fidelity["deviation"]), seed)
    labels = statistics.draws(len(labelled["mse"]), seed)
    estimates = {key: statistics.mean(fidelity[key], every) for key in FIDELITY}
    for key in ("mse", "mad"):
        estimates[f"{key}_increase"] = statistics.mean(np.asarray(labelled[key]) - np.asarray(fp32[key]), labels)
    estimates["miou_drop"] = statistics.miou_drop(counts(fp32), counts(labelled), labels)
    means = {key: float(np.mean(fidelity[key])) for key in FIDELITY}
    means.update(labelled_means(labelled))
    reference = labelled_means(fp32)
    means.update(mse_increase=means["mse"] - reference["mse"], mad_increase=means["mad"] - reference["mad"],
                 miou_drop=reference["miou"] - means["miou"])
    bounds = {key: [statistics.lower(e), statistics.upper(e)] for key, e in estimates.items()}
    out = {**means, "bounds": bounds, "images": len(fidelity["deviation"]), "labelled": len(labelled["mse"])}
    out["violation"] = violation({key: bounds[key][1] for key in CHANGES}, tune)
    return out


def interval(r: dict, key: str, sign: str = "+") -> str:
    """A summary's KEY as `mean [lower, upper]` (SIGN "+": signed, for a change)."""
    lo, hi = r["bounds"][key]
    return f"{r[key]:{sign}.5f} [{lo:{sign}.5f}, {hi:{sign}.5f}]"


def gain(incumbent: list, candidate: list, seed: int) -> statistics.Estimate:
    """The paired per-image improvement of deviation, incumbent minus candidate: positive is closer to fp32."""
    diff = np.asarray(incumbent, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    return statistics.mean(diff, statistics.draws(len(diff), seed))
