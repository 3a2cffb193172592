"""PPM-100-shaped folders: `ROOT/image/<name>` photos and `ROOT/matte/<name>` alpha mattes, and the lists that
record a subset of their images (the calibration list, tune's selection.txt).

An image list is `sha256sum` output: one `<sha256>  <file name>` line per image (two spaces), in the order the
subset was drawn, after optional `# key: value` comment lines; blank lines are ignored.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import PipelineError
from ..core.fileio import sha256_file
from ..core.names import check_name, is_sha256

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


def format_image_list(entries, comments: tuple[str, ...] = ()) -> str:
    """ENTRIES [(name, sha256)] as an image list, after one `# ` line per comment."""
    return "".join(f"# {c}\n" for c in comments) + "".join(f"{digest}  {name}\n" for name, digest in entries)


def read_image_list(path: Path, what: str) -> tuple[dict, list[tuple[str, str]]]:
    """(comment fields, [(name, sha256)]) of the image list at PATH, WHAT it is ("the calibration list"); an
    unreadable file, a malformed line or a name listed twice is one line naming the file (and the line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read {what}: {exc}") from None
    header: dict = {}
    entries: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not is_sha256(digest) or not name:
            raise PipelineError(f"{path}:{number}: expected `<sha256>  <file name>`, got {line!r}")
        entries.append((check_name(name, f"{path}:{number}"), digest))
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: a file is listed twice")
    return header, entries


def check_listed_images(root: str | Path, entries, path: Path, fix: str) -> None:
    """Each listed image that ROOT/image holds must be the file the list recorded (its sha256); FIX says what to do
    otherwise. Listed images absent from ROOT are the caller's to judge."""
    folder = Path(root) / "image"
    for name, digest in entries:
        image = folder / name
        if image.is_file() and (actual := sha256_file(image)) != digest:
            raise PipelineError(f"{image}: sha256 {actual[:12]}... differs from {digest[:12]}... recorded in {path}: "
                                f"the image changed since it was listed; {fix}")
