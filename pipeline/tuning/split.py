"""The images of tuning: images of DATA outside the calibration subset, split into selection and confirmation
images, and the release engineer's unlabelled extra images.

The split follows the calibration subset's own rule (calibrate.draw): every image name ranked by
sha256("SEED:NAME"), the calibration names skipped; the first `selection_images` are the selection images (the
search scores on them), the next `confirmation_images` the confirmation images (scored once, at the end, for the
chosen and the input config). Unset, the two share what is left half and half (the selection the larger half).
So the split depends only on the seed, the set of names and the counts, and is recorded by name and sha256.
"""
from __future__ import annotations

from pathlib import Path

from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import sha256_file
from ..core.names import check_name
from ..data.dataset import image_dir, list_images
from ..stages.calibrate import draw


def ranked_outside(names, seed: int, exclude: set[str]) -> list[str]:
    """NAMES not in EXCLUDE, in the calibration subset's seeded order."""
    names = set(names)
    return [n for n in draw(names, seed, len(names)) if n not in exclude]


def counts(cfg: BuildConfig, left: int) -> tuple[int, int]:
    """(selection, confirmation) image counts out of LEFT images outside the calibration subset."""
    tune = cfg.pipeline.tune
    selection, confirmation = tune.selection_images, tune.confirmation_images
    if selection is None:
        selection = left - (left // 2 if confirmation is None else confirmation)
    if confirmation is None:
        confirmation = left - selection
    if selection < 1 or confirmation < 1 or selection + confirmation > left:
        raise PipelineError(f"{cfg.source}: {left} images outside the calibration subset cannot give "
                            f"{selection} selection and {confirmation} confirmation images "
                            f"(pipeline.tune.selection_images / confirmation_images); both need at least 1: lower "
                            f"them or add images to DATA")
    return selection, confirmation


def split(cfg: BuildConfig, data: str | Path, calib_names: set[str]) -> tuple[list[tuple[str, str]],
                                                                               list[tuple[str, str]]]:
    """([(name, sha256)] of the selection images, [...] of the confirmation images), each in rank order."""
    names = [p.name for p in list_images(data, cfg.dataset.suffix)]
    ranked = ranked_outside(names, cfg.pipeline.seed, calib_names)
    selection, confirmation = counts(cfg, len(ranked))
    folder = image_dir(data)
    entries = [(name, sha256_file(folder / name)) for name in ranked[:selection + confirmation]]
    return entries[:selection], entries[selection:]


def extra_images(cfg: BuildConfig, folder: Path, held_out: dict[str, str]) -> list[tuple[str, str]]:
    """[(name, sha256)] of the unlabelled images in FOLDER (by name), none of them one of HELD_OUT (sha256 -> what it
    is: a calibration or confirmation image, which must not steer the search, or a selection image, already scored)
    and none twice (a copy would weigh twice in every mean)."""
    if not folder.is_dir():
        raise PipelineError(f"--extra-images {folder}: no such folder; give a folder of *.{cfg.dataset.suffix} photos "
                            f"(TUNE_EXTRA=DIR)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(f".{cfg.dataset.suffix}"))
    if not files:
        raise PipelineError(f"--extra-images {folder}: no *.{cfg.dataset.suffix} files (the config's "
                            f"dataset.sampler.suffix)")
    entries = []
    for path in files:
        check_name(path.name, f"--extra-images {folder}")
        digest = sha256_file(path)
        if digest in held_out:
            raise PipelineError(f"--extra-images {folder}: {path.name} is {held_out[digest]} (same sha256); extra "
                                f"images must be other photos: remove it from the folder")
        held_out[digest] = f"a copy of {path.name} in the same folder"
        entries.append((path.name, digest))
    return entries
