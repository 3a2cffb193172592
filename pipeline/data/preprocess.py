"""The config's `dataset.process_ops`, implemented once for calibration and evaluation.

With the official config this equals the vendor's inference preprocessing bit for bit: OpenCV decode, bilinear
resize to 288x480, BGR->RGB, (x - 127.5) / 127.5 computed in float64 and stored as float32, NCHW, batch 1.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.config import BuildConfig, CvtColor, DecodeImage, Normalize, Resize, ToTensor
from ..core.errors import PipelineError

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA}
CVT = {"COLOR_BGR2RGB": cv2.COLOR_BGR2RGB, "COLOR_RGB2BGR": cv2.COLOR_RGB2BGR}


def decode_bgr(path: str | Path) -> np.ndarray:
    """8-bit, 3-channel BGR, as cv2.imread gives it; an unreadable file is an error that names it."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise PipelineError(f"{path}: cannot decode this image (missing, empty or not an image file)")
    return image


def apply_ops(cfg: BuildConfig, bgr: np.ndarray) -> np.ndarray:
    """Decoded BGR uint8 HWC -> the model's input, float32 (1, 3, H, W)."""
    x: np.ndarray = bgr
    for op in cfg.dataset.process_ops:
        if isinstance(op, DecodeImage):
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)  # vamc's DecodeImage yields RGB
        elif isinstance(op, Resize):
            height, width = op.size
            x = cv2.resize(x, (width, height), interpolation=INTERPOLATION[op.interpolation])
        elif isinstance(op, CvtColor):
            x = cv2.cvtColor(x, CVT[op.code])
        elif isinstance(op, Normalize):
            scaled = x / 255.0 if op.div255 else x.astype(np.float64)
            x = ((scaled - np.asarray(op.mean)) / np.asarray(op.std)).astype(np.float32)
        elif isinstance(op, ToTensor):
            x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
    return x


def load_input(cfg: BuildConfig, path: str | Path) -> np.ndarray:
    return apply_ops(cfg, decode_bgr(path))
