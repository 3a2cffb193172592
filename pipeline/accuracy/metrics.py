"""Matting metrics exactly as the vendor measured its table (docs/model-card.md, "How the accuracy is measured").

Inputs are 8-bit: `gt` is the matte read as grey and resized to the model's W x H with cv2.INTER_AREA, `pred` is
`(alpha * 255).astype(uint8)` at the model's size. With `p = pred / 255` and `g = gt / 255` (float64), and no
trimap (every pixel counts):

- MSE  mean((p - g)^2)                      MAD  mean(|p - g|)                SAD  sum(|p - g|) / 1000
- Grad the Deep Image Matting evaluation code (compute_gradient_loss.m): p and g min-max normalised (mat2gray),
       gradients by Gaussian-derivative filters with sigma 1.4 (`gaussgradient`: 2-D kernel gauss(y) * dgauss(x),
       half size ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01))) = 4, scaled to unit L2 norm, its transpose for y,
       convolution with replicated borders), squared difference of the gradient magnitudes, summed, / 1000.
- Conn the Deep Image Matting compute_connectivity_error.m with step 0.1: for each threshold t = 0.1, ..., 1.0
       (exact decimals, as MATLAB's 0:0.1:1 gives them) the largest 4-connected component of (p >= t) & (g >= t);
       a pixel's level l is the last threshold before the one at which it leaves that component (1 if it never
       does); phi = 1 - d * (d >= 0.15) with d = alpha - l, so differences below 0.15 are ignored;
       sum |phi_p - phi_g| / 1000. Ties between equally large components go to the first in row-major order.
- mIoU binarise both at 128 (>= 128 is foreground); one 2x2 confusion matrix accumulated over the whole dataset;
       IoU of background and of foreground, then their mean (not a mean of per-image IoUs).

Every per-image figure is averaged over images for the dataset, except mIoU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

GRAD_SIGMA = 1.4
GRAD_EPSILON = 1e-2
CONN_STEP = 0.1
CONN_MIN_DIFF = 0.15
MIOU_THRESHOLD = 128
PER_IMAGE = ("mse", "mad", "sad", "grad", "conn")


def gt_from_matte(matte_grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """The vendor's ground truth: the grey matte resized to width x height with cv2.INTER_AREA (uint8)."""
    if matte_grey.ndim != 2 or matte_grey.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit grey matte, got {matte_grey.dtype} {matte_grey.shape}")
    return cv2.resize(matte_grey, (width, height), interpolation=cv2.INTER_AREA)


def pred_from_alpha(alpha: np.ndarray) -> np.ndarray:
    """The vendor's prediction: (alpha * 255).astype(uint8), a truncation, at the model's size.

    `alpha` is the model's output (1, 1, H, W) or (H, W) in its own dtype; values outside 0..1 (an fp16 or int8
    engine may overshoot by a rounding step) are clipped first so the cast cannot wrap around."""
    a = np.asarray(alpha)
    a = a.reshape(a.shape[-2:])
    return np.clip(a * 255, 0, 255).astype(np.uint8)


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean((_unit(pred) - _unit(gt)) ** 2))


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean(np.abs(_unit(pred) - _unit(gt))))


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.sum(np.abs(_unit(pred) - _unit(gt))) / 1000.0)


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))


def gauss_kernels(sigma: float = GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray, float]:
    """The separable factors of gaussgradient's kernel hx[i, j] = gauss(i - h) * dgauss(j - h), and its L2 norm."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * GRAD_EPSILON)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = _gauss(u, sigma)
    d = -u * g / sigma ** 2
    norm = math.sqrt(float(np.sum(np.outer(g, d) ** 2)))
    return g, d, norm


def _convolve1d(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """True convolution along AXIS with replicated borders (MATLAB imfilter 'replicate', 'conv')."""
    half = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    out = np.zeros_like(x, dtype=np.float64)
    for k, weight in enumerate(kernel):
        start = 2 * half - k
        out += weight * (padded[start:start + n] if axis == 0 else padded[:, start:start + n])
    return out


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)  # a flat image has no gradient either way


def gradient_magnitude(x: np.ndarray, sigma: float = GRAD_SIGMA) -> np.ndarray:
    g, d, norm = gauss_kernels(sigma)
    gx = _convolve1d(_convolve1d(x, g, 0), d, 1) / norm  # hx = gauss down the rows, dgauss along them
    gy = _convolve1d(_convolve1d(x, d, 0), g, 1) / norm  # hy = hx'
    return np.sqrt(gx ** 2 + gy ** 2)


def grad(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = _minmax(_unit(pred)), _minmax(_unit(gt))
    return float(np.sum((gradient_magnitude(p) - gradient_magnitude(g)) ** 2) / 1000.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # argmax: the first of equals
    return labels == largest


def conn(pred: np.ndarray, gt: np.ndarray, step: float = CONN_STEP) -> float:
    p, g = _unit(pred), _unit(gt)
    steps = round(1 / step)
    thresholds = np.arange(steps + 1) / steps  # 0, 0.1, ..., 1.0 as exact decimals
    level = np.full(p.shape, -1.0)
    for i in range(1, len(thresholds)):
        omega = _largest_component((p >= thresholds[i]) & (g >= thresholds[i]))
        level[(level == -1) & ~omega] = thresholds[i - 1]
    level[level == -1] = 1.0
    d_p, d_g = p - level, g - level
    phi_p = 1 - d_p * (d_p >= CONN_MIN_DIFF)
    phi_g = 1 - d_g * (d_g >= CONN_MIN_DIFF)
    return float(np.sum(np.abs(phi_p - phi_g)) / 1000.0)


def confusion(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Pixel counts of the 2x2 confusion matrix, foreground = value >= 128."""
    p, g = pred >= MIOU_THRESHOLD, gt >= MIOU_THRESHOLD
    return {"tp": int(np.sum(p & g)), "fp": int(np.sum(p & ~g)), "fn": int(np.sum(~p & g)),
            "tn": int(np.sum(~p & ~g))}


def miou(cm: dict[str, int]) -> float:
    """Mean of background and foreground IoU of an (accumulated) confusion matrix. A class absent from both
    prediction and ground truth has IoU 1 (nothing to get wrong)."""
    return float(pooled_miou(np.array([cm["tp"], cm["fp"], cm["fn"], cm["tn"]])))


def pooled_miou(counts: np.ndarray) -> np.ndarray:
    """miou of confusion counts [..., 4] (tp, fp, fn, tn) -> [...]: many pooled matrices at once (tuning's resamples)."""
    tp, fp, fn, tn = (counts[..., k].astype(np.float64) for k in range(4))
    miss = fp + fn

    def iou(hit):
        total = hit + miss
        return np.where(total > 0, hit / np.where(total > 0, total, 1), 1.0)
    return (iou(tp) + iou(tn)) / 2


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Every per-image figure of one prediction against its ground truth (both uint8, same shape)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return {"mse": mse(pred, gt), "mad": mad(pred, gt), "sad": sad(pred, gt), "grad": grad(pred, gt),
            "conn": conn(pred, gt), "confusion": confusion(pred, gt)}


@dataclass
class Accumulator:
    """Dataset figures: means of the per-image metrics (KEYS of them: tune scores MSE and MAD only), mIoU of the
    summed confusion matrix."""
    per_image: list[dict] = field(default_factory=list)
    keys: tuple[str, ...] = PER_IMAGE

    def add(self, name: str, metrics: dict) -> None:
        self.per_image.append({"name": name, **metrics})

    def confusion(self) -> dict[str, int]:
        total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for row in self.per_image:
            for key in total:
                total[key] += row["confusion"][key]
        return total

    def summary(self) -> dict:
        if not self.per_image:
            raise ValueError("no images were evaluated")
        out = {key: float(np.mean([row[key] for row in self.per_image])) for key in self.keys}
        out["miou"] = miou(self.confusion())
        out["images"] = len(self.per_image)
        return out
