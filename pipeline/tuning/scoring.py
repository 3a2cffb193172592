"""Scoring a candidate model on the validation images, against the ground truth and against fp32.

The figures are those of `evaluate` (metrics.py: MSE and MAD per image then averaged, mIoU from one confusion
matrix), restricted to the three the target is about, plus the candidate's deviation from fp32: the mean
|alpha - fp32 alpha| of the 8-bit predictions. The deviation bounds how far MAD can move
(|MAD - MAD_fp32| <= deviation) and, unlike the change of MAD, cannot improve by accident, so layers are ranked by
how much keeping them float reduces it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics, runtime
from ..config import BuildConfig
from ..dataset import image_dir, matte_path
from ..evaluate import load_gt
from ..preprocess import load_input

FIGURES = ("mse", "mad", "miou")


@dataclass
class Validation:
    """The preprocessed validation images and their ground truth, loaded once."""
    names: list[str]
    inputs: list[np.ndarray]
    gts: list[np.ndarray]


def load_validation(cfg: BuildConfig, data: str | Path, names: list[str]) -> Validation:
    folder = image_dir(data)
    return Validation(names, [load_input(cfg, folder / n) for n in names],
                      [load_gt(matte_path(folder / n), cfg) for n in names])


def predict(model: bytes | Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """8-bit predictions of MODEL (run as `evaluate` runs an ort engine) for every input."""
    session = runtime.session(model)
    return [metrics.pred_from_alpha(runtime.run(session, x)) for x in inputs]


def score(preds: list[np.ndarray], gts: list[np.ndarray], reference: list[np.ndarray] | None = None) -> dict:
    """MSE, MAD (means over images), mIoU (one confusion matrix) and, given fp32's predictions, the deviation."""
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for pred, gt in zip(preds, gts):
        for key, value in metrics.confusion(pred, gt).items():
            total[key] += value
    out = {"mse": float(np.mean([metrics.mse(p, g) for p, g in zip(preds, gts)])),
           "mad": float(np.mean([metrics.mad(p, g) for p, g in zip(preds, gts)])),
           "miou": metrics.miou(total)}
    if reference is not None:
        out["deviation"] = float(np.mean([np.abs(p.astype(np.int16) - r).mean() / 255.0
                                          for p, r in zip(preds, reference)]))
    return out


def changes(figures: dict, fp32: dict) -> dict:
    """Increase of MSE and MAD, drop of mIoU, against fp32 (positive = worse)."""
    return {"mse_increase": figures["mse"] - fp32["mse"], "mad_increase": figures["mad"] - fp32["mad"],
            "miou_drop": fp32["miou"] - figures["miou"]}


def _ratio(change: float, limit: float) -> float:
    if limit > 0:
        return change / limit
    return 0.0 if change <= 0 else float("inf")


def violation(change: dict, max_mad_increase: float, max_miou_drop: float) -> float:
    """The larger of the two changes as a share of its limit: at most 1 means the target is met."""
    return max(_ratio(change["mad_increase"], max_mad_increase), _ratio(change["miou_drop"], max_miou_drop))
