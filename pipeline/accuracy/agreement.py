"""Agreement of one engine's 8-bit predictions with another's (fp32's) on the same images: how far the mattes are
apart, not how good either is (no ground truth). The one definition the report, hwcheck and tune use:

- mean |a - b| as alpha (levels / 255): per image, and over every pixel of every image (all predictions are at the
  model's size, so that is the mean of the per-image means too);
- max |a - b|, as alpha;
- flips: the share of pixels whose label (>= 128, as mIoU binarises) differs, per image and over every pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import MIOU_THRESHOLD


@dataclass(frozen=True)
class Agreement:
    images: int
    mean_abs: float  # mean |a - b| over every pixel
    max_abs: float
    flips: float  # share of every pixel whose label differs
    per_image: tuple[float, ...]  # mean |a - b| of each image
    per_image_flips: tuple[float, ...]  # share of each image's pixels whose label differs


def agreement(preds: list[np.ndarray], refs: list[np.ndarray]) -> Agreement:
    """PREDS against REFS (8-bit predictions, pairwise the same shape)."""
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need the same, non-zero number of predictions ({len(preds)}) and references ({len(refs)})")
    sums, flipped, sizes, worst = [], [], [], 0
    for a, b in zip(preds, refs):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        sums.append(int(diff.sum()))
        flipped.append(int(np.sum((a >= MIOU_THRESHOLD) != (b >= MIOU_THRESHOLD))))
        sizes.append(diff.size)
        worst = max(worst, int(diff.max()))
    pixels = sum(sizes)
    return Agreement(len(preds), sum(sums) / 255 / pixels, worst / 255, sum(flipped) / pixels,
                     tuple(s / n / 255 for s, n in zip(sums, sizes)), tuple(f / n for f, n in zip(flipped, sizes)))
