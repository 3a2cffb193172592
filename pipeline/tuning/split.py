"""The validation images of tuning: images of DATA outside the calibration subset, never scored on what was
calibrated on.

They follow the calibration subset's own rule (calibrate.draw): every image name ranked by sha256("SEED:NAME"),
the calibration names skipped, the first `pipeline.tune.validation_images` taken. So the split depends only on
the seed, the set of names and the two counts, and the calibration subset plus the validation images are a prefix
of one ranking: the images after them are held out from both.
"""
from __future__ import annotations

from pathlib import Path

from ..calibrate import draw
from ..config import BuildConfig
from ..dataset import image_dir, list_images
from ..errors import PipelineError
from ..fileio import sha256_file


def ranked_outside(names, seed: int, exclude: set[str]) -> list[str]:
    """NAMES not in EXCLUDE, in the calibration subset's seeded order."""
    names = set(names)
    return [n for n in draw(names, seed, len(names)) if n not in exclude]


def validation_split(cfg: BuildConfig, data: str | Path, calib_names: set[str]) -> list[tuple[str, str]]:
    """[(name, sha256)] of the validation images, in rank order."""
    count = cfg.pipeline.tune.validation_images
    names = [p.name for p in list_images(data, cfg.dataset.suffix)]
    chosen = ranked_outside(names, cfg.pipeline.seed, calib_names)[:count]
    if len(chosen) < count:
        raise PipelineError(f"{image_dir(data)}: {len(chosen)} *.{cfg.dataset.suffix} images outside the "
                            f"calibration subset, fewer than pipeline.tune.validation_images={count} in "
                            f"{cfg.source}")
    folder = image_dir(data)
    return [(name, sha256_file(folder / name)) for name in chosen]
