"""Stage `calib`: the deterministic calibration subset of a PPM-100-shaped folder, and its preprocessed tensors.

Draw rule (documented in calib/README.md): every candidate file name NAME (ROOT/image/*.SUFFIX) gets the key
sha256(f"{seed}:{NAME}") as hex; names are ranked by (key, name) and the first N (`get_data_num`) are taken, in
that order. The subset depends only on (seed, set of names, N): not on listing order, file times or contents, and
adding or removing files changes it only where a new name ranks in the first N (or a chosen one disappears).

The committed record `calib/<config name>.txt` (path from --list) fixes the subset once drawn: when it exists its
names are used instead of a new draw and every file is checked against its sha256. Its format:

    # calibration subset of official_modnet_int8 (python -m pipeline calib)
    # seed: 0
    # count: 50
    # rule: <the rule sentence>
    <sha256>  <file name>
    ...

i.e. `sha256sum` lines (two spaces) in draw order after `#` comment lines.

Output folder DIR (written atomically, nothing is left on failure):
    DIR/images/NAME       exactly the N chosen files (hard links, or copies across file systems)
    DIR/tensors.npy       float32 (N, 3, H, W): the config's process_ops applied to each image, in draw order
    DIR/manifest.json     config_name, seed, count, rule, suffix, source, images [{name, sha256}], tensors, ...
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .config import BuildConfig
from .dataset import image_dir, list_images
from .errors import PipelineError
from .fileio import atomic_dir, sha256_file, write_json, write_text
from .names import check_name
from .preprocess import load_input

RULE = ("rank every candidate file name NAME by the hex sha256 of \"{seed}:{NAME}\" (ties by name) and take the "
        "first N, in that order")
TENSORS = "tensors.npy"


def draw_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode("utf-8")).hexdigest()


def draw(names, seed: int, count: int) -> list[str]:
    """The first COUNT names ranked by seeded hash: independent of the order NAMES come in."""
    ranked = sorted(set(names), key=lambda n: (draw_key(seed, n), n))
    return ranked[:count]


def default_list_path(cfg: BuildConfig) -> Path:
    return Path("calib") / f"{cfg.name}.txt"


def format_list(cfg: BuildConfig, entries: list[tuple[str, str]]) -> str:
    lines = [f"# calibration subset of {cfg.name} (python -m pipeline calib); sha256sum format, draw order",
             f"# seed: {cfg.pipeline.seed}",
             f"# count: {len(entries)}",
             f"# rule: {RULE}"]
    lines += [f"{digest}  {name}" for name, digest in entries]
    return "\n".join(lines) + "\n"


def parse_list(path: Path) -> tuple[dict, list[tuple[str, str]]]:
    """(header fields, [(name, sha256)]) of a committed list; a malformed line is an error naming it."""
    header: dict = {}
    entries: list[tuple[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the calibration list: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise PipelineError(f"{path}:{number}: expected `<sha256>  <file name>`, got {line!r}")
        entries.append((check_name(name, f"{path}:{number}"), digest))
    if not entries:
        raise PipelineError(f"{path}: the calibration list names no files (delete it or use REDRAW=1 to draw anew)")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: a file is listed twice")
    return header, entries


def _from_list(cfg: BuildConfig, list_path: Path, folder: Path) -> list[tuple[str, str]]:
    header, entries = parse_list(list_path)
    count = cfg.dataset.get_data_num
    redo = "(REDRAW=1 / --redraw draws anew and rewrites it)"
    if len(entries) != count:
        raise PipelineError(f"{list_path}: lists {len(entries)} images but {cfg.source} asks for "
                            f"get_data_num={count} {redo}")
    if "seed" in header and header["seed"] != str(cfg.pipeline.seed):
        raise PipelineError(f"{list_path}: drawn with seed {header['seed']} but {cfg.source} has pipeline.seed="
                            f"{cfg.pipeline.seed} {redo}")
    for name, digest in entries:
        path = folder / name
        if not path.is_file():
            raise PipelineError(f"{path}: listed in {list_path} but missing from the data folder {redo}")
        actual = sha256_file(path)
        if actual != digest:
            raise PipelineError(f"{path}: sha256 {actual[:12]}... differs from {digest[:12]}... recorded in "
                                f"{list_path}: the file changed {redo}")
    return entries


def _new_draw(cfg: BuildConfig, root: Path) -> list[tuple[str, str]]:
    suffix, count = cfg.dataset.suffix, cfg.dataset.get_data_num
    files = list_images(root, suffix)
    if len(files) < count:
        raise PipelineError(f"{image_dir(root)}: {len(files)} *.{suffix} images, fewer than get_data_num={count} "
                            f"in {cfg.source}")
    folder = image_dir(root)
    return [(name, sha256_file(folder / name)) for name in draw((p.name for p in files), cfg.pipeline.seed, count)]


def _place(src: Path, dest: Path) -> str:
    """Hard link SRC at DEST (a copy across file systems); never a symlink out of the folder."""
    try:
        os.link(src, dest)
        return "hardlink"
    except OSError:
        shutil.copyfile(src, dest)
        return "copy"


def make_calibration_set(cfg: BuildConfig, data: str | Path, out: str | Path, list_path: str | Path | None = None,
                         redraw: bool = False, progress=None) -> dict:
    """Draw (or reuse) the subset, write DIR atomically, write the list on a new draw; returns the manifest."""
    root, out = Path(data), Path(out)
    list_path = Path(list_path) if list_path is not None else default_list_path(cfg)
    folder = image_dir(root)
    reused = list_path.is_file() and not redraw
    entries = _from_list(cfg, list_path, folder) if reused else _new_draw(cfg, root)
    _, _, height, width = cfg.input_shape
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        placed = set()
        items = progress(entries, total=len(entries)) if progress else entries
        # Written image by image with plain writes: a memory map's dirty pages would count in RSS and grow with N.
        with open(tmp / TENSORS, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                          "fortran_order": False,
                                                          "shape": (len(entries), 3, height, width)})
            for name, _ in items:
                src = folder / name
                load_input(cfg, src).tofile(handle)  # an undecodable file is an error naming it
                placed.add(_place(src, tmp / "images" / name))
        manifest = {
            "config_name": cfg.name,
            "config": str(cfg.source),
            "seed": cfg.pipeline.seed,
            "count": len(entries),
            "rule": RULE,
            "suffix": cfg.dataset.suffix,
            "source": str(root.resolve()),
            "list": {"path": str(list_path), "reused": reused},
            "images": [{"name": name, "sha256": digest} for name, digest in entries],
            "files": "hardlink" if placed == {"hardlink"} else "copy" if placed == {"copy"} else "hardlink+copy",
            "tensors": {"file": TENSORS, "dtype": "float32", "shape": [len(entries), 3, height, width],
                        "sha256": sha256_file(tmp / TENSORS),
                        "process_ops": [type(op).__name__ for op in cfg.dataset.process_ops]},
        }
        if not reused:  # before manifest.json, so Make sees the list older than the folder it produced
            write_text(list_path, format_list(cfg, entries))
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_calibration_folder(cfg: BuildConfig, calib: Path) -> dict:
    """CALIB's manifest, once its tensors file is checked whole against it and against CFG's input shape.

    A build reads these tensors (or these images) as they are: a truncated or stale folder would calibrate on
    garbage or end in a low-level error, so every mismatch is one line naming the file and `make calib`.
    """
    redo = "rerun `make calib`"
    path = calib / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        count, images, tensors = manifest["count"], manifest["images"], manifest["tensors"]
        names = [entry["name"] for entry in images]
        recorded = (tensors["file"], tuple(tensors["shape"]), tensors["sha256"])
    except FileNotFoundError:
        raise PipelineError(f"{calib}: not a calibration folder (no manifest.json; run `make calib`)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a calibration manifest ({type(exc).__name__}: {exc}); {redo}") from None
    for name in names:
        check_name(name, f"{path}: images")
    file, shape, digest = recorded
    check_name(file, f"{path}: tensors.file")
    expected = (count, *cfg.input_shape[1:])
    if shape != expected or len(names) != count:
        raise PipelineError(f"{path}: records {len(names)} images and tensors of shape {list(shape)}, but "
                            f"{cfg.source} needs {list(expected)}; {redo}")
    array = calib / file
    try:
        with open(array, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            header_shape, _, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{array}: not a readable .npy file ({exc}); {redo}") from None
    if tuple(header_shape) != expected or dtype != np.float32:
        raise PipelineError(f"{array}: holds {dtype} {list(header_shape)}, not float32 {list(expected)}; {redo}")
    size, needed = array.stat().st_size, offset + int(np.prod(expected)) * 4
    if size != needed:
        raise PipelineError(f"{array}: {size} bytes, but float32 {list(expected)} needs {needed} (truncated or "
                            f"padded); {redo}")
    if sha256_file(array) != digest:
        raise PipelineError(f"{array}: content differs from the sha256 in {path}; {redo}")
    return manifest
