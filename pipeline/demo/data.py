"""A synthetic PPM-100-shaped folder: `image/*.jpg` portraits and `matte/*.jpg` alpha mattes of the same names.

PPM-100 itself cannot be downloaded here. These images have what matters to the pipeline: photo sizes (1080p and
larger, portrait and landscape), a person-like foreground with soft edges and fine hair-like strands over a
textured background, and 8-bit grey mattes stored as JPEG, as PPM-100's are. Everything follows from the seed.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import cv2
import numpy as np

from ..core.errors import PipelineError
from ..core.fileio import atomic_dir, check_out_dir
from ..core.progress import Progress, quiet

# (width, height) of the photos: landscape and portrait, 1080p and larger
PHOTO_SIZES = ((1920, 1080), (1080, 1920), (2048, 1365), (1365, 2048), (2560, 1440), (1440, 2560))
JPEG_QUALITY = 95
THREADS = 2  # portraits generated side by side: NumPy and OpenCV release the GIL for the whole-photo work

T = TypeVar("T")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (max(h // 64, 2), max(w // 64, 2), 3)).astype(np.float32)
    bg = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(6, 14))):  # furniture-like blocks and round shapes
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (x0, y0), (x0 + int(rng.integers(w // 10, w // 3)), y0 + int(rng.integers(h // 10, h // 3))),
                          colour, -1)
        else:
            cv2.circle(bg, (x0, y0), int(rng.integers(min(h, w) // 20, min(h, w) // 6)), colour, -1, cv2.LINE_AA)
    bg = cv2.GaussianBlur(bg, (0, 0), float(rng.uniform(1.0, 6.0)))  # depth of field
    bg += rng.normal(0, 6, (h, w, 1)).astype(np.float32)  # sensor grain
    return bg


def _person(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Alpha (float32 0..1) and foreground colour of a head-and-shoulders figure with hair strands."""
    unit = min(h, w)
    cx = int(w * rng.uniform(0.35, 0.65))
    head_r = int(unit * rng.uniform(0.11, 0.17))
    head_cy = int(h * rng.uniform(0.25, 0.4))
    body = np.zeros((h, w), np.float32)
    cv2.ellipse(body, (cx, head_cy), (int(head_r * 0.85), head_r), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    neck_w = int(head_r * 0.45)
    cv2.rectangle(body, (cx - neck_w, head_cy), (cx + neck_w, head_cy + int(head_r * 1.6)), 1.0, -1)
    shoulder_y = head_cy + int(head_r * 1.5)
    torso = np.array([[cx - int(head_r * 2.6), h], [cx - int(head_r * 2.2), shoulder_y + head_r // 2],
                      [cx - head_r, shoulder_y], [cx + head_r, shoulder_y],
                      [cx + int(head_r * 2.2), shoulder_y + head_r // 2], [cx + int(head_r * 2.6), h]], np.int32)
    cv2.fillPoly(body, [torso], 1.0, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(body, (0, 0), float(rng.uniform(1.0, 3.5)))  # soft, slightly defocused edge

    hair = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(150, 300))):  # strands leaving the crown, thin and semi-transparent
        angle = rng.uniform(np.pi * 0.95, np.pi * 2.05)
        r0 = head_r * rng.uniform(0.7, 0.95)
        length = head_r * rng.uniform(0.2, 0.9)
        bend = rng.normal(0, 0.35)
        points = []
        for t in np.linspace(0, 1, 8):
            a = angle + bend * t
            r = r0 + length * t
            points.append((cx + r * np.cos(a), head_cy + r * np.sin(a) * 1.1))
        cv2.polylines(hair, [np.round(np.array(points)).astype(np.int32)], False, float(rng.uniform(0.35, 1.0)),
                      1, cv2.LINE_AA)
    hair = np.maximum(hair, 0)
    alpha = np.clip(np.maximum(alpha, hair), 0.0, 1.0)

    skin = rng.uniform([60, 90, 140], [140, 170, 230])  # BGR
    cloth = rng.uniform(0, 255, 3)
    hair_colour = rng.uniform(10, 90, 3)
    fg = np.empty((h, w, 3), np.float32)
    fg[:] = cloth
    fg[(np.arange(h) // max(unit // 60, 2)) % 2 == 0] *= 0.8  # horizontal stripes
    # The face ellipse and the neck are evaluated only inside their bounding boxes: outside them the tests are
    # false anyway, and a whole-photo float64 grid was most of the generator's time.
    half_w = max(head_r * 0.85, 1)
    top, left = max(head_cy - head_r - 1, 0), max(cx - int(half_w) - 2, 0)
    yy, xx = np.ogrid[top:min(head_cy + head_r + 2, h), left:min(cx + int(half_w) + 3, w)]
    face = ((xx - cx) / half_w) ** 2 + ((yy - head_cy) / head_r) ** 2 <= 1.0
    fg[top:top + face.shape[0], left:left + face.shape[1]][face] = skin
    fg[max(head_cy, 0):shoulder_y + 1, max(cx - neck_w, 0):cx + neck_w + 1] = skin
    fg[hair > 0.05] = hair_colour
    fg += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    return alpha, fg


def make_pair(seed: int, index: int, scale: float = 1.0, stream: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """(file name, BGR uint8 photo, uint8 matte) of image INDEX of STREAM.

    Stream 0 is the demo data set; the demo checkpoint trains on another stream, so it never sees those images.
    (NumPy pads a short seed with zeros, so [seed, index, 0] draws exactly what [seed, index] always drew.)"""
    rng = np.random.default_rng([seed, index, stream])
    w, h = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
    w, h = max(int(w * scale), 32), max(int(h * scale), 32)
    # Flickr-style names like PPM-100's, so name-based ordering is exercised as it would be on the real set
    name = f"{int(rng.integers(10**9, 10**11))}_{int(rng.integers(16**9, 16**10)):010x}_o.jpg"
    alpha, fg = _person(rng, h, w)
    bg = _background(rng, h, w)
    image = np.clip(alpha[..., None] * fg + (1.0 - alpha[..., None]) * bg, 0, 255).astype(np.uint8)
    matte = np.round(alpha * 255.0).astype(np.uint8)
    return name, image, matte


def _encode(array: np.ndarray, name: str) -> bytes:
    ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise PipelineError(f"could not encode {name} as JPEG")
    return buf.tobytes()


def in_order(job: Callable[[int], T], count: int) -> Iterator[T]:
    """JOB(0) ... JOB(COUNT - 1), yielded in order while THREADS of them run at once. Each portrait depends only on
    its seed, index and stream, so the result is exactly the serial one."""
    pool = ThreadPoolExecutor(THREADS)
    try:
        yield from pool.map(job, range(count))
    finally:
        pool.shutdown(cancel_futures=True)  # closed early (an error, Ctrl-C): the queued jobs never start


def write_demo_data(out: str | Path, count: int, seed: int, scale: float = 1.0,
                    progress: Progress = quiet) -> list[str]:
    if count < 1:
        raise PipelineError(f"--count must be at least 1, got {count}")
    if not 0 < scale <= 1:  # also refuses NaN, which no comparison holds for
        raise PipelineError(f"--scale must be in (0, 1] (1: the photo sizes of PPM-100; less shrinks them), "
                            f"got {scale}")
    check_out_dir(out, "demo-data")

    def encoded(index: int) -> tuple[str, bytes, bytes]:
        name, image, matte = make_pair(seed, index, scale)
        return name, _encode(image, name), _encode(matte, name)

    names = []
    # closing(): if a write fails, the generator is closed at once, which cancels the portraits not yet started
    with atomic_dir(out, "demo-data") as tmp, contextlib.closing(in_order(encoded, count)) as pairs:
        (tmp / "image").mkdir()
        (tmp / "matte").mkdir()
        for name, image, matte in progress(pairs, "demo images", count):
            (tmp / "image" / name).write_bytes(image)
            (tmp / "matte" / name).write_bytes(matte)
            names.append(name)
    return sorted(names)
