"""PPM-100-shaped folders: `ROOT/image/<name>` photos and `ROOT/matte/<name>` alpha mattes."""
from __future__ import annotations

from pathlib import Path

from .errors import PipelineError

SOURCE = ("PPM-100 comes from its official repository, github.com/ZHKKKe/PPM (a download link in its README): unpack "
          "it into datasets/PPM-100/ or pass DATA=/path/to/PPM-100")


def image_dir(root: str | Path) -> Path:
    folder = Path(root) / "image"
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such folder; DATA must be a PPM-100-shaped folder holding image/ and "
                            f"matte/. {SOURCE}; or run `make demo` to try the pipeline on generated data")
    return folder


def list_images(root: str | Path, suffix: str) -> list[Path]:
    """Images of ROOT/image whose names end in `.SUFFIX` (case-sensitive, as vamc's sampler), sorted by name."""
    folder = image_dir(root)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(f".{suffix}"))
    if not files:
        present = sorted({p.suffix for p in folder.iterdir() if p.is_file()})
        raise PipelineError(f"{folder}: no *.{suffix} files (the config's dataset.sampler.suffix; found "
                            f"{', '.join(present) or 'no files'})")
    return files


def matte_path(image: Path) -> Path:
    """The matte of ROOT/image/NAME is ROOT/matte/NAME."""
    return image.parent.parent / "matte" / image.name
