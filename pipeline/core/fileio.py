"""File helpers shared by every stage: atomic writes, output folders a stage may replace, and content hashes.

Every output goes to a temporary name in the destination folder and is renamed into place only when complete,
so an interrupted run never leaves a file that looks finished. A stage that writes a folder replaces it whole,
so it first makes sure the folder is its own (`check_out_dir`): nothing it did not write is ever deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import PipelineError
from .provenance import REPO


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside DEST; rename it onto DEST only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Every folder a stage replaces carries this file, naming the stage that wrote it. One small file for every stage
# rather than each stage's own manifest: calib and build both write a manifest.json, demo-data writes none, and
# a user's folder may hold a file of any name; a marker that names the stage tells all of them apart alike.
STAGE_MARKER = ".pipeline-stage"
# Folders written before the marker existed (an existing artifacts/) stay replaceable, so Make keeps rebuilding
# into them: each is recognised by the file only that stage writes there and, where two stages write a file of
# that name, a key only that stage's has. demo-data's is the `.complete` the Makefile touches inside its folder.
EARLIER_OUTPUTS = {"calib": ("manifest.json", "tensors"), "build": ("manifest.json", "backend"),
                   "evaluate": ("metrics.json", "per_image"), "analyze": ("analysis.json", "candidate"),
                   "demo-data": (".complete", None), "tune": ("candidates.json", "context")}
SHOWN_ENTRIES = 5
BUNDLE_MANIFEST = "MANIFEST.json"  # release.MANIFEST: what makes a folder a release bundle  # entries of a refused folder named in the error


def _written_by(folder: Path) -> str | None:
    """The stage named by FOLDER's marker, or None."""
    try:
        with open(folder / STAGE_MARKER, "rb") as handle:
            return handle.read(64).decode("utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _earlier_output(folder: Path, stage: str) -> bool:
    if stage not in EARLIER_OUTPUTS:
        return False
    name, key = EARLIER_OUTPUTS[stage]
    if key is None:
        return (folder / name).is_file()
    try:
        return key in json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def _listing(entries: list[Path]) -> str:
    names = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in entries)
    more = f", and {len(names) - SHOWN_ENTRIES} more" if len(names) > SHOWN_ENTRIES else ""
    return ", ".join(names[:SHOWN_ENTRIES]) + more


OWN_FOLDER = "name a new or empty folder of its own"


def out_place_problem(dest: str | os.PathLike) -> str | None:
    """Why no stage may write its outputs into the folder DEST, or None: the checkout, the current folder, a
    folder holding either or holding .git, or a file. Stages that only add files to their folder (tune, hwcheck)
    check this much; stages that replace their folder also check that it is theirs (out_dir_problem)."""
    dest, own = Path(dest), OWN_FOLDER
    where = dest.resolve()
    if where == REPO or where in REPO.parents:
        return f"is the checkout{'' if where == REPO else ' or holds it'} ({REPO}); {own}"
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        return f"is the current folder{'' if where == cwd else ' or holds it'}; {own}"
    if (where / ".git").exists():
        return f"holds .git (a repository); {own}"
    bundle = release_bundle_holding(where)
    if bundle is not None:
        return f"is inside the release bundle {bundle}, which is never rewritten; {own}"
    if not dest.exists():
        return None
    if not dest.is_dir():
        return f"is a file, not a folder; {own}"
    return None


def release_bundle_holding(path: Path) -> Path | None:
    """The release bundle PATH is in (or is), if any: a folder holding MANIFEST.json. A bundle's copied engine and
    evaluation folders look like their stages' own outputs, so without this a stage would replace them."""
    for folder in (path, *path.parents):
        if (folder / BUNDLE_MANIFEST).is_file():
            return folder
    return None


def out_dir_problem(dest: str | os.PathLike, stage: str) -> str | None:
    """Why STAGE may not replace the folder DEST, or None if it may: DEST is missing, empty, or STAGE's own."""
    dest = Path(dest)
    own = OWN_FOLDER
    if dest.is_symlink():
        return f"is a symbolic link; {own}"
    problem = out_place_problem(dest)
    if problem or not dest.exists():
        return problem
    entries = list(dest.iterdir())
    if not entries:
        return None
    writer = _written_by(dest)
    if writer == stage or (writer is None and _earlier_output(dest, stage)):
        return None
    if writer is not None:
        return f"was written by `{writer}`, not `{stage}` ({STAGE_MARKER}); {own}, or delete it yourself"
    return (f"holds files `{stage}` did not write ({_listing(entries)}); choose an empty or new folder, or delete "
            f"it yourself")


def check_out_dir(dest: str | os.PathLike, stage: str) -> Path:
    """DEST if STAGE may replace it; otherwise one line naming the folder and what is in it.
    Stages call it before their work starts; atomic_dir calls it again before it replaces anything."""
    problem = out_dir_problem(dest, stage)
    if problem:
        raise PipelineError(f"{dest}: {problem}")
    return Path(dest)


def mark_stage(folder: Path, stage: str) -> None:
    (folder / STAGE_MARKER).write_text(f"{stage}\n", encoding="utf-8")


def claim_dir(dest: str | os.PathLike, stage: str) -> Path:
    """DEST, made and marked as STAGE's, for a stage that writes files into its folder instead of replacing it
    whole (tune, hwcheck): the same rule as check_out_dir, so it never writes among files that are not its own."""
    dest = check_out_dir(dest, stage)
    dest.mkdir(parents=True, exist_ok=True)
    mark_stage(dest, stage)
    return dest


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, stage: str) -> Iterator[Path]:
    """Yield a temporary folder beside DEST, marked as STAGE's; it replaces DEST only if the block succeeds, and
    only if DEST is STAGE's to replace (check_out_dir)."""
    dest = check_out_dir(dest, stage)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        mark_stage(tmp, stage)  # first, so a stage that lists or hashes its folder (release) counts it too
        yield tmp
        os.chmod(tmp, 0o755)
        check_out_dir(dest, stage)  # the folder may have been filled while the stage ran
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def _finite(obj):
    """OBJ with every infinite or NaN float as None: JSON has neither (Python would write `Infinity`, which strict
    readers such as jq refuse), and an unbounded figure, a bound on too few images, is "no bound": null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps_json(obj) -> str:
    """Stable, strict JSON: sorted keys, so the same content always gives the same bytes; no Infinity or NaN."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(dest: str | os.PathLike, obj) -> None:
    write_text(dest, dumps_json(obj))


def remove_tree(root: str | os.PathLike) -> None:
    """Delete ROOT even where it holds read-only folders (a release bundle): make each writable first."""
    root = Path(root)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.chmod(folder, 0o755)
    shutil.rmtree(root)
