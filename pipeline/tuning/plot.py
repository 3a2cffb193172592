"""Scatter charts drawn with OpenCV (the project's only imaging dependency): axes with ticks, coloured points,
an optional reference line, marked points, and a legend."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..core.errors import PipelineError

WIDTH, HEIGHT = 960, 540
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 50, 60
STAMP_H = 30  # the DEMO stamp's band, above the chart
FONT = cv2.FONT_HERSHEY_SIMPLEX
COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]  # BGR


def _ticks(low: float, high: float, count: int = 6, integer: bool = False) -> list[float]:
    """Round values in [LOW, HIGH], about COUNT of them; whole numbers >= 0 only when INTEGER (a count of Convs,
    an index)."""
    step = 10 ** math.floor(math.log10((high - low) / count)) if high > low else 1.0
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    if integer:
        step, low = max(step, 1), max(low, 0)
    return [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]


def scatter(series: list[tuple[str, list[tuple[float, float]], int, bool]], title: str, xlabel: str, ylabel: str,
            hline: tuple[float, str] | None = None, marked: list[tuple[float, float, str]] = (),
            integer_x: bool = False, stamp: str | None = None) -> bytes:
    """PNG bytes of SERIES = [(label, points, colour number, filled)] (legend at the right), HLINE = (y, label)
    dashed, its label inside the plot above it, MARKED = [(x, y, label)] ringed; INTEGER_X: x counts something,
    so its ticks are whole numbers; STAMP: a red line above the chart (the report's DEMO stamp). Points that are
    not finite (an SQNR of inf) are left out."""
    points = [p for _, pts, _, _ in series for p in pts if all(map(math.isfinite, p))]
    ys = [y for _, y in points] + ([hline[0]] if hline else [])
    if not points:
        raise PipelineError(f"{title}: nothing to plot")
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.05 or 1.0, (y1 - y0) * 0.08 or abs(y0) * 0.1 or 1.0
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[int, int]:
        return (round(LEFT + (x - x0) / (x1 - x0) * plot_w), round(TOP + (y1 - y) / (y1 - y0) * plot_h))

    cv2.rectangle(image, (LEFT, TOP), (LEFT + plot_w, TOP + plot_h), (0, 0, 0), 1)
    for x in _ticks(x0, x1, integer=integer_x):
        px, _ = at(x, y0)
        cv2.line(image, (px, TOP + plot_h), (px, TOP + plot_h + 5), (0, 0, 0), 1)
        (label_w, _), _ = cv2.getTextSize(f"{x:g}", FONT, 0.4, 1)
        cv2.putText(image, f"{x:g}", (px - label_w // 2, TOP + plot_h + 20), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for y in _ticks(y0, y1):
        _, py = at(x0, y)
        cv2.line(image, (LEFT - 5, py), (LEFT, py), (0, 0, 0), 1)
        cv2.line(image, (LEFT, py), (LEFT + plot_w, py), (235, 235, 235), 1)
        cv2.putText(image, f"{y:.4g}", (4, py + 4), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, title, (LEFT, 20), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, xlabel, (LEFT + plot_w // 2 - 60, HEIGHT - 15), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, ylabel, (4, TOP - 8), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if hline:
        _, py = at(x0, hline[0])
        for px in range(LEFT, LEFT + plot_w, 12):
            cv2.line(image, (px, py), (min(px + 6, LEFT + plot_w), py), (0, 0, 200), 1)
        (text_w, text_h), _ = cv2.getTextSize(hline[1], FONT, 0.4, 1)
        tx, ty = LEFT + plot_w - text_w - 6, py - 6 if py - 6 - text_h > TOP else py + text_h + 6
        cv2.rectangle(image, (tx - 3, ty - text_h - 3), (tx + text_w + 3, ty + 4), (255, 255, 255), -1)
        cv2.putText(image, hline[1], (tx, ty), FONT, 0.4, (0, 0, 200), 1, cv2.LINE_AA)
    for k, (label, pts, colour_number, filled) in enumerate(series):
        colour, thickness = COLOURS[colour_number % len(COLOURS)], -1 if filled else 1
        for p in pts:
            if all(map(math.isfinite, p)):
                cv2.circle(image, at(*p), 4, colour, thickness, cv2.LINE_AA)
        cv2.circle(image, (LEFT + plot_w + 16, TOP + 14 + 20 * k), 5, colour, thickness, cv2.LINE_AA)
        cv2.putText(image, label, (LEFT + plot_w + 26, TOP + 18 + 20 * k), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for x, y, label in marked:
        cv2.circle(image, at(x, y), 10, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(image, label, (at(x, y)[0] + 12, at(x, y)[1] - 8), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if stamp:
        band = np.full((STAMP_H, WIDTH, 3), 255, np.uint8)
        cv2.putText(band, stamp, (LEFT, STAMP_H - 9), FONT, 0.6, (0, 0, 220), 2, cv2.LINE_AA)
        image = np.vstack([band, image])
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise PipelineError(f"{title}: could not encode the chart")
    return buf.tobytes()
