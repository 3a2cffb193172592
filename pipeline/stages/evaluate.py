"""Stage `evaluate`: one engine on a PPM-100-shaped folder, scored exactly as the vendor scored its table.

Every image of ROOT/image (the config's suffix) with its matte ROOT/matte/<same name>. A small thread pool decodes
and resizes the next images, and scores finished predictions, while the engine runs; only model-size arrays are
kept (the decoded full-resolution photo is dropped as soon as it is resized). Writes, atomically, REPORT_DIR/
metrics.json (dataset and per-image figures, the engine's identity: reproducible to the byte), run.json (paths and
timings of this run) and REPORT_DIR/preds/<stem>.png,
the 8-bit prediction of every image, from which the report measures each engine's agreement with fp32 and draws
its contact sheet (the first `sheet` images).
"""
from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..accuracy import metrics
from ..backends.runners import Runner, open_runner
from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import atomic_dir, check_out_dir, dumps_json, sha256_file
from ..core.progress import Progress, quiet
from ..data.dataset import list_images, matte_path
from ..data.preprocess import read_labelled

WORKERS = 2  # decode/resize/score threads; OpenCV and NumPy release the GIL while the engine runs
SHEET_IMAGES = 4


def photo_and_gt(image: Path, matte: Path, cfg: BuildConfig) -> tuple[np.ndarray, np.ndarray]:
    """IMAGE (BGR) and its ground truth from MATTE, once the matte is checked to be the photo's size."""
    bgr, matte_grey = read_labelled(image, matte)
    return bgr, metrics.gt_from_matte(matte_grey, cfg.height, cfg.width)


def load_gt(image: Path, cfg: BuildConfig) -> np.ndarray:
    """The ground truth of IMAGE, from its matte, once the matte is checked to be the photo's size."""
    return photo_and_gt(image, matte_path(image), cfg)[1]


def load_pair(cfg: BuildConfig, runner: Runner, image: Path, matte: Path) -> tuple[np.ndarray, np.ndarray]:
    """The engine's input and the ground truth."""
    bgr, gt = photo_and_gt(image, matte, cfg)
    return runner.prepare(cfg, bgr), gt


def pairs(cfg: BuildConfig, data: str | Path, limit: int | None) -> list[tuple[Path, Path]]:
    images = list_images(data, cfg.dataset.suffix)
    if limit is not None:
        if limit < 1:
            raise PipelineError(f"--limit must be at least 1, got {limit}")
        images = images[:limit]
    found = [(image, matte_path(image)) for image in images]
    missing = [m for _, m in found if not m.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PipelineError(f"{missing[0]}: missing matte{more}; every image needs ROOT/matte/<same name>")
    return found


def evaluate(cfg: BuildConfig, engine: str | Path, data: str | Path, out: str | Path, limit: int | None = None,
             sheet: int = SHEET_IMAGES, progress: Progress = quiet, runner: Runner | None = None) -> dict:
    check_out_dir(out, "evaluate")
    todo = pairs(cfg, data, limit)
    runner = runner or open_runner(engine)
    acc = metrics.Accumulator()
    infer_seconds = 0.0
    started = time.perf_counter()

    try:
        with atomic_dir(out, "evaluate") as tmp, ThreadPoolExecutor(WORKERS) as pool:
            (tmp / "preds").mkdir()
            ahead: collections.deque[Future] = collections.deque()
            upcoming = iter(todo)

            def top_up() -> None:
                while len(ahead) < 2 * WORKERS:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        return
                    ahead.append(pool.submit(load_pair, cfg, runner, *nxt))

            scored: list[tuple[str, Future]] = []
            saved: list[tuple[str, Future]] = []
            top_up()
            for index, (image, _) in enumerate(progress(todo, f"evaluate {Path(engine).name}", len(todo))):
                prepared, gt = ahead.popleft().result()
                top_up()
                t0 = time.perf_counter()
                alpha = runner.infer(prepared)
                infer_seconds += time.perf_counter() - t0
                pred = metrics.pred_from_alpha(alpha)
                if pred.shape != gt.shape:
                    raise PipelineError(f"{runner.info.path}: output {pred.shape} is not the model size "
                                        f"{gt.shape} of {cfg.source}")
                name = f"{image.stem}.png"
                saved.append((name, pool.submit(cv2.imwrite, str(tmp / "preds" / name), pred)))
                scored.append((image.name, pool.submit(metrics.image_metrics, pred, gt)))
            for name, future in scored:
                acc.add(name, future.result())
            for name, future in saved:
                if not future.result():
                    raise PipelineError(f"{out}: could not write the prediction preds/{name}")
            total_seconds = time.perf_counter() - started
            summary = acc.summary()
            # metrics.json holds only what the same engine on the same data reproduces exactly; where and how
            # fast this run happened goes to run.json
            report = {
                **summary,
                "confusion": acc.confusion(),
                "per_image": acc.per_image,
                "engine": runner.info.to_json(),
                "manifest_sha256": runner.info.sha256,
                "config": {"file": cfg.source.name, "sha256": sha256_file(cfg.source)},
                "input_shape": list(cfg.input_shape),
                "limit": limit,
                "predictions": [name for name, _ in saved],
                "sheet": [name for name, _ in saved[:sheet]],
            }
            run = {
                "engine_path": str(runner.info.path),
                "data": str(Path(data).resolve()),
                "config": str(cfg.source),
                "timing": {"seconds": total_seconds, "inference_seconds": infer_seconds,
                           "images_per_second": len(todo) / total_seconds if total_seconds else None,
                           "share_outside_inference": 1 - infer_seconds / total_seconds if total_seconds else None,
                           "workers": WORKERS},
            }
            layout.metrics(tmp).write_text(dumps_json(report), encoding="utf-8")
            (tmp / "run.json").write_text(dumps_json(run), encoding="utf-8")
    finally:
        runner.close()
    return {**report, **run}
