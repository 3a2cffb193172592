"""Decoding photos and mattes, and the config's `dataset.process_ops`, implemented once for calibration,
evaluation and tuning.

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


def decode(path: str | Path, flags: int) -> np.ndarray | None:
    """PATH decoded as cv2.imread(path, FLAGS) decodes it; None when it is missing, empty or not an image file."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    return cv2.imdecode(data, flags) if data is not None and data.size else None


def decode_bgr(path: str | Path) -> np.ndarray:
    """8-bit, 3-channel BGR, as cv2.imread gives it; an unreadable file is an error that names it."""
    image = decode(path, cv2.IMREAD_COLOR)
    if image is None:
        raise PipelineError(f"{path}: cannot decode this image (missing, empty or not an image file)")
    return image


def read_matte(path: Path) -> np.ndarray:
    """The matte as 8-bit grey (as cv2.imread(path, IMREAD_GRAYSCALE)); missing or unreadable is an error."""
    matte = decode(path, cv2.IMREAD_GRAYSCALE)
    if matte is None:
        raise PipelineError(f"{path}: cannot read this matte (missing, empty or not an image file); every image "
                            f"needs its matte under matte/ with the same name")
    return matte


def read_labelled(image: Path, matte: Path) -> tuple[np.ndarray, np.ndarray]:
    """The photo (BGR) and its matte (grey), for every stage that scores against mattes; a matte whose size differs
    from its photo's is an error, since both would be resized to the model size and silently scored against each
    other."""
    bgr, matte_grey = decode_bgr(image), read_matte(matte)
    if bgr.shape[:2] != matte_grey.shape:
        raise PipelineError(f"{matte}: {matte_grey.shape[1]}x{matte_grey.shape[0]} does not match its image "
                            f"{image.name} ({bgr.shape[1]}x{bgr.shape[0]}); a matte must be the same size as its photo")
    return bgr, matte_grey


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
