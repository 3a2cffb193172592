"""The paired statistics of tuning (docs/tuning.md, "When a candidate wins"): pure numpy, no files, no models.

Every figure is a mean over images, and every comparison is paired: two configs are scored on the same images, so
the per-image differences carry the comparison and the image-to-image spread cancels. Bounds come from a seeded
percentile bootstrap over images: `RESAMPLES` draws of n images with replacement, the same draws for every
quantity of one image set (so a rerun on the same figures gives the same bounds, and the same choice). A one-sided
bound at level a is the a-quantile (lower) or the (1 - a)-quantile (upper) of the resampled statistic, taken as
the inverted CDF: `lower(x, a) > 0` holds exactly when the share of resampled values <= 0 (`p_value`) is below a,
so a bound and its test never disagree.

mIoU is not a mean over images (one confusion matrix pooled over the data set, as `evaluate` computes it), so its
resamples pool the resampled images' four counts.

Many candidates are compared with one incumbent: Holm's step-down keeps the chance of taking any candidate that is
not really better at most `LEVEL` (family-wise), without assuming the comparisons independent (they are not: the
candidates share images and most of their settings); it rejects everything Bonferroni does, and more.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

LEVEL = 0.05       # one-sided: "95% bounds"
RESAMPLES = 2000
COUNTS = ("tp", "fp", "fn", "tn")


@lru_cache(maxsize=8)
def draws(n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, n): how many times each image is drawn in each resample of N images with replacement,
    reproducible from SEED and N. Counts, not indices, so a resampled mean is one matrix product."""
    if n < 1:
        raise ValueError("no images to resample")
    picks = np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))
    counts = np.bincount((picks + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    counts = counts.reshape(resamples, n).astype(np.float64)
    counts.flags.writeable = False  # shared by every caller through the cache
    return counts


def resampled_means(values, counts: np.ndarray) -> np.ndarray:
    """The mean of VALUES (one per image, or [n images, k] for k quantities at once) over each resample of COUNTS
    (draws): [resamples] or [resamples, k]."""
    return counts @ np.asarray(values, dtype=np.float64) / counts.shape[1]


def miou(counts: np.ndarray) -> np.ndarray:
    """mIoU of pooled confusion counts, [..., 4] (tp, fp, fn, tn) -> [...]; as metrics.miou: an absent class is 1."""
    tp, fp, fn, tn = (counts[..., k].astype(np.float64) for k in range(4))
    miss = fp + fn

    def iou(hit):
        total = hit + miss
        return np.where(total > 0, hit / np.where(total > 0, total, 1), 1.0)
    return (iou(tp) + iou(tn)) / 2


def resampled_miou(confusion, counts: np.ndarray) -> np.ndarray:
    """mIoU of the confusion counts ([n images, 4]) pooled over each resample of COUNTS (draws)."""
    return miou(counts @ np.asarray(confusion, dtype=np.float64))


def lower(resampled: np.ndarray, level: float = LEVEL) -> float:
    return float(np.quantile(resampled, level, method="inverted_cdf"))


def upper(resampled: np.ndarray, level: float = LEVEL) -> float:
    return float(np.quantile(resampled, 1 - level, method="inverted_cdf"))


def p_value(resampled: np.ndarray) -> float:
    """Share of resampled values at or below 0: the one-sided evidence that the quantity is not positive."""
    return float(np.mean(np.asarray(resampled) <= 0))


def holm(p_values: list[float], level: float = LEVEL) -> list[float | None]:
    """Holm's step-down over P_VALUES: for each, the level it was tested at when rejected (significant), else None.

    Sorted ascending, the k-th smallest (k = 0, 1, ...) is rejected at level / (m - k) while every smaller one was;
    the first that is not stops the procedure. Ties are taken in input order, so the result is deterministic."""
    m = len(p_values)
    out: list[float | None] = [None] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: (p_values[i], i))):
        at = level / (m - k)
        if not p_values[i] < at:
            break
        out[i] = at
    return out
