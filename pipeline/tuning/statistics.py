"""The paired statistics of tuning (docs/tuning.md, "When a candidate wins"): pure numpy, no files, no models.

Every figure is a mean over images, or a smooth function of means (mIoU of the pooled confusion counts), and every
comparison is paired: two configs are scored on the same images, so the per-image differences carry the
comparison and the image-to-image spread cancels.

Bounds and tests come from a seeded studentized bootstrap (bootstrap-t) over images: `RESAMPLES` draws of n images
with replacement, the same draws for every quantity of one image set (a rerun on the same figures gives the same
bounds, and the same choice). Each resample's estimate is studentized by that resample's own standard error,
t* = (estimate* - estimate) / se*, and the observed t = estimate / se is read against those t*. The standard
error of a mean is sd / sqrt(n); of mIoU, the delta method's (its gradient against the covariance of the counts).

Why studentized and not the percentile bootstrap (this module's first version): Holm tests the best candidate at
0.05 / m, and on 25 images the percentile bootstrap's p-values were far too small there: 2.8x the nominal rate on
normal differences at 0.05 / 40, 10-37x on left-skewed ones (a few images much worse, many a little better, the
case that must not pass). The studentized form corrects the skewness to the next order; `bench/statistics.py`
prints the rates measured for both. It is not exact: on strongly left-skewed differences it still rejects more
often than nominal at Holm's smallest levels (docs/tuning.md gives the figures), which is why a choice must then
hold again on the confirmation images, tested once at 0.05.

A p-value is (k + 1) / (RESAMPLES + 1), k the resamples with t* at or beyond the observed t: never 0, and able to
reject at any level above 1 / (RESAMPLES + 1); `pipeline.tune.max_builds` is capped so that Holm's smallest level
stays well above that. A bound at level a and the test at a never disagree: `lower(e, a) > 0` exactly when
`p_value(e) < a` (and `upper(e, a) < 0` exactly when the mirrored test rejects).

Many candidates are compared with one incumbent: Holm's step-down keeps the chance of taking any candidate that is
not really better at most `LEVEL` (family-wise), without assuming the comparisons independent (they are not: the
candidates share images and most of their settings); it rejects everything Bonferroni does, and more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from ..accuracy.metrics import pooled_miou

LEVEL = 0.05        # one-sided: "95% bounds"
RESAMPLES = 9999  # with config.TUNE_MAX_BUILDS = 100 candidates, Holm's smallest level 0.05 / 100 leaves 5 beyond
COUNTS = ("tp", "fp", "fn", "tn")


@dataclass(frozen=True)
class Estimate:
    """A figure on the images themselves, its standard error and its studentized resamples."""
    value: float
    se: float
    t: np.ndarray  # per resample: (value* - value) / se*


@lru_cache(maxsize=8)
def draws(n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, n): how many times each image is drawn in each resample of N images with replacement,
    reproducible from SEED and N. Counts, not indices, so resampled moments are matrix products."""
    if n < 1:
        raise ValueError("no images to resample")
    picks = np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))
    counts = np.bincount((picks + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    counts = counts.reshape(resamples, n).astype(np.float64)
    counts.flags.writeable = False  # shared by every caller through the cache
    return counts


def _studentize(shift: np.ndarray, se: np.ndarray) -> np.ndarray:
    """shift / se, where a resample of one repeated value (se 0) is infinitely far on its side, or 0 on none."""
    safe = np.where(se > 0, se, 1.0)
    return np.where(se > 0, shift / safe, np.where(shift == 0, 0.0, np.copysign(np.inf, shift)))


def smooth(values, f: Callable[[np.ndarray], np.ndarray], gradient: Callable[[np.ndarray], np.ndarray],
           counts: np.ndarray) -> Estimate:
    """The estimate F(mean of VALUES) ([n images, k] or [n]) with its delta-method standard error, from the
    covariance of VALUES and F's GRADIENT (both vectorised over leading axes), and its studentized resamples."""
    z = np.asarray(values, dtype=np.float64)
    z = z.reshape(len(z), -1)
    n, k = z.shape
    # a column of equal values keeps its value exactly (a float mean of n equal floats may miss it by an ulp), so
    # its centred values, its se and its resamples' se* are exactly 0, not 1e-17 with t* at +-inf
    mean = np.where((z == z[:1]).all(axis=0), z[0], z.mean(axis=0))
    value = float(f(mean))
    if n < 2:  # one image says nothing about the spread: no bound excludes anything
        return Estimate(value, math.inf, np.zeros(counts.shape[0]))
    y = z - mean  # centred first: resampled moments without cancellation
    g = gradient(mean)
    se = math.sqrt(max(float(g @ (y.T @ y) @ g), 0.0) / (n - 1) / n)
    shift = counts @ y / n                                                  # [resamples, k]
    second = (counts @ (y[:, :, None] * y[:, None, :]).reshape(n, k * k) / n).reshape(-1, k, k)
    cov = (second - shift[:, :, None] * shift[:, None, :]) * (n / (n - 1))
    g_star = gradient(mean + shift)
    var = np.einsum("ri,rij,rj->r", g_star, cov, g_star) / n
    se_star = np.sqrt(np.maximum(var, 0.0))
    return Estimate(value, se, _studentize(f(mean + shift) - value, se_star))


def _identity(m: np.ndarray) -> np.ndarray:
    return m[..., 0]


def _ones(m: np.ndarray) -> np.ndarray:
    return np.ones_like(m)


def mean(values, counts: np.ndarray) -> Estimate:
    """The mean of VALUES (one per image) over the images of COUNTS (draws); its standard error sd / sqrt(n)."""
    return smooth(np.asarray(values, dtype=np.float64).reshape(-1, 1), _identity, _ones, counts)


def miou_gradient(counts: np.ndarray) -> np.ndarray:
    """d mIoU / d (tp, fp, fn, tn), [..., 4]: IoU = hit / (hit + fp + fn) per class, constant 1 where absent."""
    tp, fp, fn, tn = (counts[..., k].astype(np.float64) for k in range(4))
    miss = fp + fn

    def parts(hit):
        total2 = (hit + miss) ** 2
        ok = total2 > 0
        safe = np.where(ok, total2, 1.0)
        return np.where(ok, miss / safe, 0.0), np.where(ok, -hit / safe, 0.0)  # d/d hit, d/d fp (= d/d fn)
    d_tp, m_fg = parts(tp)
    d_tn, m_bg = parts(tn)
    return np.stack([d_tp, m_fg + m_bg, m_fg + m_bg, d_tn], axis=-1) / 2


def miou_drop(reference, confusion, counts: np.ndarray) -> Estimate:
    """mIoU of REFERENCE's pooled counts minus CONFUSION's (each [n images, 4]), paired over the same images."""
    z = np.concatenate([np.asarray(reference, dtype=np.float64), np.asarray(confusion, dtype=np.float64)], axis=1)
    return smooth(z, lambda m: pooled_miou(m[..., :4]) - pooled_miou(m[..., 4:]),
                  lambda m: np.concatenate([miou_gradient(m[..., :4]), -miou_gradient(m[..., 4:])], axis=-1), counts)


def _rank(level: float, resamples: int) -> int:
    """The largest k (resamples at or beyond the observed t) with p = (k + 1) / (resamples + 1) below LEVEL: the
    0-based rank of the critical value among the t* sorted outward; -1 when no k is. Counted with p_value's own
    division and holm's comparison, so a bound and its test agree at every level, to the last bit."""
    return int(np.sum(np.arange(1, resamples + 2) / (resamples + 1) < level)) - 1


def _bound(e: Estimate, level: float, side: int) -> float:
    """e.value - se * c, c the critical t*: the (rank)-th largest (side 1, lower bound) or smallest (side -1)."""
    j = _rank(level, len(e.t))
    if j < 0 or not math.isfinite(e.se):
        return -side * math.inf
    if e.se == 0:  # every image the same: every resample too
        return e.value
    critical = float(np.sort(side * e.t)[::-1][j]) * side
    return e.value - e.se * critical  # se > 0: an infinite critical t* gives the unbounded side its sign


def lower(e: Estimate, level: float = LEVEL) -> float:
    """One-sided lower confidence bound at LEVEL."""
    return _bound(e, level, 1)


def upper(e: Estimate, level: float = LEVEL) -> float:
    """One-sided upper confidence bound at LEVEL."""
    return _bound(e, level, -1)


def p_value(e: Estimate) -> float:
    """One-sided p of "the quantity is not positive": (k + 1) / (resamples + 1), k the t* >= the observed t."""
    if not math.isfinite(e.se):
        return 1.0
    observed = float(_studentize(np.array(e.value), np.array(e.se)))
    return (int(np.sum(e.t >= observed)) + 1) / (len(e.t) + 1)


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
