"""Thresholds from one tensor's pooled statistics: the four `calibrate_mode`s of vamc.

Input: M = max |x| over every calibration image and the 8001-bin signed histogram of all those values over
[-M, M] (stats.py). Output: a threshold T; the writer quantizes with scale T/128 and clips to +-127 (qdq.py).
Every mode is a pure function of (histogram, M), so one collection serves all four.

- kl_divergence: TVM's MinimizeKL (src/relay/quantize/calibrate.cc, itself MXNet's _get_optimal_threshold),
  reproduced as is, quirks included, since the point is to do what vamc does. `_divergence` is the literal
  per-candidate computation; `kl_divergence` evaluates all 3874 candidates at once with prefix sums (below).
- percentile: the `calibrate_range` quantile of |x|, to within one bin (the upper edge of its bin).
- max: M.
- mse: our definition (vamc's is unpublished), see `mse`.
"""
from __future__ import annotations

import numpy as np

BINS = 8001                # TVM: signed histogram over [-M, M]
ZERO_BIN = BINS // 2       # 4000: holds 0 and every exact zero of a ReLU
QUANTIZED_BINS = 255       # TVM: int8 levels -127..127
FIRST = QUANTIZED_BINS // 2  # smallest half-window tried (127 bins each side of the zero bin)
EPS = 1e-4                 # TVM's smoothing of empty bins
DEFAULT_PERCENTILE = 0.99999
TAYLOR_MAX_SHIFT = 0.5     # smoothing shifts up to this use the series below; larger ones the direct formula
TAYLOR_TERMS = 40          # series terms n = 2..40: remainder below 0.5**41 / 1640 (3e-16) per bin


def candidates(absmax: float) -> np.ndarray:
    """Thresholds KL tries: the upper edge of bin ZERO_BIN + i, (2i + 1) / 8001 * M, for i = 127 .. 4000."""
    i = np.arange(FIRST, ZERO_BIN + 1)
    return (2 * i + 1) / BINS * absmax


def _smooth(x: np.ndarray) -> np.ndarray | None:
    """TVM's SmoothDistribution: empty entries += EPS, the others pay for it; None where TVM gives up."""
    zero = x == 0
    n_zero, n_nonzero = int(zero.sum()), int((~zero).sum())
    if n_nonzero == 0:
        return None
    shift = EPS * n_zero / n_nonzero
    if shift >= 1.0:
        return None
    return np.where(zero, EPS, x - shift)


def _divergence(hist: np.ndarray, i: int) -> float:
    """KL(p || q) of the window of 2i+1 bins around the zero bin, exactly as TVM's loop computes it."""
    start, stop = ZERO_BIN - i, ZERO_BIN + i + 1
    sliced = hist[start:stop].astype(np.float64)
    sliced[0] = 0.0  # MXNet's quirk, kept by TVM: bin `start` is folded into p[0] but left out of q
    p = sliced.copy()
    p[0] = hist[:start + 1].sum()   # everything at or below the window's first bin
    p[-1] += hist[stop:].sum()      # everything above the window
    per_level = len(sliced) // QUANTIZED_BINS
    level = np.minimum(np.arange(len(sliced)) // per_level, QUANTIZED_BINS - 1)  # remainder -> last level
    sums = np.bincount(level, weights=sliced, minlength=QUANTIZED_BINS)
    norms = np.bincount(level, weights=sliced != 0, minlength=QUANTIZED_BINS)[level]
    q = np.where((p != 0) & (norms > 0), sums[level] / np.maximum(norms, 1), 0.0)
    p, q = _smooth(p), _smooth(q)
    if p is None or q is None:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0, x, 1.0))


def _divergences(hist: np.ndarray) -> np.ndarray:
    """`_divergence` for every candidate i = 127 .. 4000 at once.

    With P = sum p, Q = sum q, p' and q' the smoothed p and q, and Z the bins where p == 0 (there q == 0 too, so
    p' = q' = EPS and their terms cancel):
        KL = (1/P) * (sum_{p!=0} p' ln p' - sum_{p!=0} p' ln q') - ln P + ln Q
    q is constant over the p!=0 bins of a quantized level (level sum / nonzero bins), so the second sum is one
    term per level, from prefix sums. The first, sum (h - e) ln(h - e) over the window's nonempty bins with the
    smoothing shift e, is expanded around e = 0 (h >= 1 is an integer count):
        (h - e) ln(h - e) = h ln h - e (ln h + 1) + sum_{n >= 2} e^n / (n (n-1) h^(n-1))
    so it too comes from prefix sums of h ln h, ln h and h^-k. Candidates whose e exceeds TAYLOR_MAX_SHIFT (a
    window of mostly empty bins) use `_divergence` directly.
    """
    h = hist.astype(np.float64)
    nz = (h != 0).astype(np.float64)  # 1.0 on nonempty bins
    total = h.sum()
    i = np.arange(FIRST, ZERO_BIN + 1)
    start, last = ZERO_BIN - i, ZERO_BIN + i  # the window is bins start..last
    length = 2 * i + 1

    def prefix(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(values)])

    ch, cn = prefix(h), prefix(nz)
    safe = np.where(nz, h, 1.0)
    series = [prefix(np.where(nz, _xlogx(h), 0.0)), prefix(np.where(nz, np.log(safe), 0.0))]
    series += [prefix(np.where(nz, safe ** -(n - 1), 0.0)) for n in range(2, TAYLOR_TERMS + 1)]

    # p: the edge bins hold the folded outliers; inner bins are the histogram's.
    p_first = ch[start + 1]
    p_last = total - ch[last]
    nnz_inner = cn[last] - cn[start + 1]
    n_nonzero_p = nnz_inner + (p_first != 0) + (p_last != 0)
    shift_p = EPS * (length - n_nonzero_p) / n_nonzero_p

    # sum_{p != 0} p' ln p': inner bins by the series, the two edge bins directly.
    def window(c: np.ndarray) -> np.ndarray:
        return c[last] - c[start + 1]
    e = shift_p
    plogp = window(series[0]) - e * (window(series[1]) + nnz_inner)
    for n in range(2, TAYLOR_TERMS + 1):
        plogp += e ** n / (n * (n - 1)) * window(series[n])
    plogp += np.where(p_first != 0, _xlogx(np.maximum(p_first - e, 0.0)), 0.0)
    plogp += np.where(p_last != 0, _xlogx(np.maximum(p_last - e, 0.0)), 0.0)

    # Quantized levels: `per_level` bins each, the remainder in the last; bounds in histogram bin numbers.
    per_level = length // QUANTIZED_BINS
    bounds = start[:, None] + np.arange(QUANTIZED_BINS + 1)[None, :] * per_level[:, None]
    bounds[:, -1] = last + 1
    level_sum = np.diff(ch[bounds], axis=1)
    level_nnz = np.diff(cn[bounds], axis=1)
    level_sum[:, 0] -= h[start]  # sliced[0] = 0
    level_nnz[:, 0] -= nz[start]
    q_level = level_sum / np.maximum(level_nnz, 1.0)  # q where p != 0; 0 for a level of empty sliced bins

    # Inner levels: p is sliced there, so p != 0 exactly on the level's nonzero bins, all of which get q_level.
    # The first and last level hold p[0] and p[last] instead of sliced[0] and hist[last].
    inner = slice(1, -1)
    edges = [0, -1]
    edge_nnz = level_nnz[:, edges] + np.stack([p_first != 0, (p_last != 0) - nz[last]], axis=1).astype(np.float64)
    edge_sum = level_sum[:, edges] + np.stack([p_first, p_last - h[last]], axis=1)
    edge_has_q = level_nnz[:, edges] > 0
    n_nonzero_q = level_nnz[:, inner].sum(axis=1) + (edge_has_q * edge_nnz).sum(axis=1)
    q_total = level_sum[:, inner].sum(axis=1) + (edge_has_q * edge_nnz * q_level[:, edges]).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift_q = EPS * (length - n_nonzero_q) / n_nonzero_q
        # sum over levels of (sum of p' over the level's p != 0 bins) * ln q'
        log_q = np.log(np.where(level_nnz > 0, q_level - shift_q[:, None], EPS))
        plogq = ((level_sum[:, inner] - shift_p[:, None] * level_nnz[:, inner]) * log_q[:, inner]).sum(axis=1)
        plogq += ((edge_sum - shift_p[:, None] * edge_nnz) * log_q[:, edges]).sum(axis=1)
        kl = (plogp - plogq) / total - np.log(total) + np.log(q_total)
    kl = np.where((n_nonzero_q > 0) & (shift_q < 1.0) & (shift_p < 1.0), kl, np.inf)
    for k in np.nonzero(shift_p > TAYLOR_MAX_SHIFT)[0]:
        kl[k] = _divergence(hist, int(i[k]))
    return kl


def kl_divergence(hist: np.ndarray, absmax: float) -> float:
    """TVM's threshold: the candidate of smallest divergence, the first one on ties."""
    if absmax <= 0 or not hist.any():
        return 0.0
    return float(candidates(absmax)[int(np.argmin(_divergences(hist)))])


def abs_histogram(hist: np.ndarray) -> np.ndarray:
    """Fold the signed histogram onto |x|: bin j holds |x| within the edges (2j -+ 1) / 8001 * M (j = 0: from 0)."""
    folded = hist[ZERO_BIN:].astype(np.int64)
    folded[1:] += hist[ZERO_BIN - 1::-1]
    return folded


def upper_edges(absmax: float) -> np.ndarray:
    """Upper edge of every |x| bin: (2j + 1) / 8001 * M, j = 0 .. 4000 (the last is M)."""
    return (2 * np.arange(ZERO_BIN + 1) + 1) / BINS * absmax


def percentile(hist: np.ndarray, absmax: float, fraction: float | None = None) -> float:
    """The FRACTION quantile of |x| (default 0.99999), as the upper edge of the |x| bin that holds it."""
    fraction = DEFAULT_PERCENTILE if fraction is None else fraction
    folded = abs_histogram(hist)
    if absmax <= 0 or folded.sum() == 0:
        return 0.0
    cdf = np.cumsum(folded)
    index = int(np.searchsorted(cdf, fraction * cdf[-1], side="left"))
    return float(upper_edges(absmax)[min(index, ZERO_BIN)])


def expected_squared_error(hist: np.ndarray, absmax: float, thresholds: np.ndarray) -> np.ndarray:
    """Our model of the error of quantizing the pooled values with each threshold T (scale s = T/128, +-127s).

    Each value is taken at the centre of its |x| bin (j * 2M/8001). A value within +-127s costs the rounding
    noise of a uniform error, s^2/12, except those of the zero bin, which hold the exact zeros of ReLUs and
    quantize without error; a value beyond it is clipped and costs (|x| - 127s)^2. Summed over all values.
    """
    folded = abs_histogram(hist).astype(np.float64)
    centre = np.arange(ZERO_BIN + 1) * (2.0 * absmax / BINS)
    scale = np.asarray(thresholds, dtype=np.float64) / 128.0
    limit = 127.0 * scale
    # bins 1..cut-1 are within the range, cut.. are clipped (centres ascending)
    cut = np.searchsorted(centre, limit, side="right")
    def suffix(values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])
    n_above, c1_above, c2_above = suffix(folded), suffix(folded * centre), suffix(folded * centre ** 2)
    inside = n_above[1] - n_above[np.maximum(cut, 1)]
    clipped = c2_above[cut] - 2 * limit * c1_above[cut] + limit ** 2 * n_above[cut]
    return inside * scale ** 2 / 12.0 + clipped


def mse(hist: np.ndarray, absmax: float) -> float:
    """The threshold of smallest `expected_squared_error` among the bin edges (2i + 1)/8001 * M, i = 0 .. 4000."""
    if absmax <= 0 or not hist.any():
        return 0.0
    edges = upper_edges(absmax)
    return float(edges[int(np.argmin(expected_squared_error(hist, absmax, edges)))])


def clipped_share(hist: np.ndarray, absmax: float, threshold: float) -> float:
    """Share of the pooled values beyond +-127 * T/128 (by |x| bin centre): what the threshold clips."""
    folded = abs_histogram(hist)
    if folded.sum() == 0 or threshold <= 0:
        return 0.0
    centre = np.arange(ZERO_BIN + 1) * (2.0 * absmax / BINS)
    return float(folded[centre > 127.0 * threshold / 128.0].sum() / folded.sum())


def threshold(mode: str, hist: np.ndarray | None, absmax: float, calibrate_range: float | None = None) -> float:
    """T for one tensor under MODE (`max` needs no histogram)."""
    if mode == "max":
        return float(absmax)
    if hist is None:
        raise ValueError(f"calibrate_mode {mode} needs the histograms (collect with histograms=True)")
    if mode == "kl_divergence":
        return kl_divergence(hist, absmax)
    if mode == "percentile":
        return percentile(hist, absmax, calibrate_range)
    if mode == "mse":
        return mse(hist, absmax)
    raise ValueError(f"unknown calibrate_mode {mode!r}")
