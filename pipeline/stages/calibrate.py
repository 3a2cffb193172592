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
    # data: <the data folder as given>
    # data names sha256: <sha256 of the sorted candidate names, one per line> (<number> images)
    <sha256>  <file name>
    ...

i.e. `sha256sum` lines (two spaces) in draw order after `#` comment lines. The two `data` lines (absent from
lists written before they existed) say where the subset was drawn from, so that a run on another folder is told
so instead of meeting a missing file.

Output folder DIR (written atomically, nothing is left on failure):
    DIR/images/NAME       exactly the N chosen files (hard links, or copies across file systems)
    DIR/tensors.npy       float32 (N, 3, H, W): the config's process_ops applied to each image, in draw order
    DIR/manifest.json     config_name, seed, count, rule, suffix, source, images [{name, sha256}], tensors, ...
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import atomic_dir, check_out_dir, sha256_bytes, sha256_file, write_json, write_text
from ..core.names import check_name
from ..core.progress import Progress, quiet
from ..data.dataset import format_image_list, image_dir, list_images, read_image_list
from ..data.preprocess import load_input

RULE = ("rank every candidate file name NAME by the hex sha256 of \"{seed}:{NAME}\" (ties by name) and take the "
        "first N, in that order")
TENSORS = "tensors.npy"


def draw_key(seed: int, name: str) -> str:
    return sha256_bytes(f"{seed}:{name}".encode("utf-8"))


def draw(names, seed: int, count: int) -> list[str]:
    """The first COUNT names ranked by seeded hash: independent of the order NAMES come in."""
    ranked = sorted(set(names), key=lambda n: (draw_key(seed, n), n))
    return ranked[:count]


def default_list_path(cfg: BuildConfig) -> Path:
    return Path("calib") / f"{cfg.name}.txt"


def names_digest(names) -> str:
    """Identifies a data folder by the set of its candidate image names (not their contents: that is per file)."""
    return sha256_bytes("".join(f"{n}\n" for n in sorted(names)).encode("utf-8"))


def format_list(cfg: BuildConfig, entries: list[tuple[str, str]], origin: tuple[str, list[str]] | None = None) -> str:
    """ORIGIN: (the data folder as given, its candidate names), recorded in two header lines."""
    comments = [f"calibration subset of {cfg.name} (python -m pipeline calib); sha256sum format, draw order",
                f"seed: {cfg.pipeline.seed}", f"count: {len(entries)}", f"rule: {RULE}"]
    if origin is not None:
        folder, names = origin
        comments += [f"data: {folder}", f"data names sha256: {names_digest(names)} ({len(names)} images)"]
    return format_image_list(entries, tuple(comments))


def parse_list(path: Path) -> tuple[dict, list[tuple[str, str]]]:
    """(header fields, [(name, sha256)]) of a committed list; a malformed line is an error naming it."""
    header, entries = read_image_list(path, "the calibration list")
    if not entries:
        raise PipelineError(f"{path}: the calibration list names no files (delete it or use REDRAW=1 to draw anew)")
    return header, entries


def _from_list(cfg: BuildConfig, list_path: Path, root: Path) -> list[tuple[str, str]]:
    header, entries = parse_list(list_path)
    folder = image_dir(root)
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
            _check_origin(cfg, header, list_path, root, f"{name} is not in it")
            raise PipelineError(f"{path}: listed in {list_path} but missing from the data folder {redo}")
        actual = sha256_file(path)
        if actual != digest:
            _check_origin(cfg, header, list_path, root, f"its {name} differs")
            raise PipelineError(f"{path}: sha256 {actual[:12]}... differs from {digest[:12]}... recorded in "
                                f"{list_path}: the file changed {redo}")
    return entries


def _check_origin(cfg: BuildConfig, header: dict, list_path: Path, root: Path, mismatch: str) -> None:
    """A listed file is missing or changed: if the list was drawn from another folder (another path as given and
    other image names), that is the cause to name, with the two ways out."""
    recorded, digest = header.get("data"), header.get("data names sha256", "").split(" ")[0]
    if recorded is None or recorded == str(root):
        return
    if digest == names_digest(p.name for p in list_images(root, cfg.dataset.suffix)):
        return
    raise PipelineError(f"{list_path} was drawn from {recorded}, not from {root} ({mismatch}): to calibrate on "
                        f"{root}, draw anew with REDRAW=1 (--redraw, rewrites {list_path}) or keep a separate "
                        f"list with CALIB_LIST=FILE (--list FILE)")


def _new_draw(cfg: BuildConfig, root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(the drawn (name, sha256) entries, every candidate name)."""
    suffix, count = cfg.dataset.suffix, cfg.dataset.get_data_num
    files = list_images(root, suffix)
    if len(files) < count:
        raise PipelineError(f"{image_dir(root)}: {len(files)} *.{suffix} images, fewer than get_data_num={count} "
                            f"in {cfg.source}: add images to the folder, or calibrate on fewer with a copy of the "
                            f"config whose dataset.sampler.get_data_num is at most {len(files)} (CONFIG_INT8=COPY)")
    folder = image_dir(root)
    names = [p.name for p in files]
    return [(name, sha256_file(folder / name)) for name in draw(names, cfg.pipeline.seed, count)], names


def _place(src: Path, dest: Path) -> str:
    """Hard link SRC at DEST (a copy across file systems); never a symlink out of the folder."""
    try:
        os.link(src, dest)
        return "hardlink"
    except OSError:
        shutil.copyfile(src, dest)
        return "copy"


def make_calibration_set(cfg: BuildConfig, data: str | Path, out: str | Path, list_path: str | Path | None = None,
                         redraw: bool = False, progress: Progress = quiet) -> dict:
    """Draw (or reuse) the subset, write DIR atomically, write the list on a new draw; returns the manifest."""
    root, out = Path(data), check_out_dir(out, "calib")
    list_path = Path(list_path) if list_path is not None else default_list_path(cfg)
    folder = image_dir(root)
    reused = list_path.is_file() and not redraw
    if reused:
        entries, candidates = _from_list(cfg, list_path, root), None
    else:
        entries, candidates = _new_draw(cfg, root)
    _, _, height, width = cfg.input_shape
    with atomic_dir(out, "calib") as tmp:
        (tmp / "images").mkdir()
        placed = set()
        # Written image by image with plain writes: a memory map's dirty pages would count in RSS and grow with N.
        with open(tmp / TENSORS, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                          "fortran_order": False,
                                                          "shape": (len(entries), 3, height, width)})
            for name, _ in progress(entries, "calibration set", len(entries)):
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
            write_text(list_path, format_list(cfg, entries, (str(root), candidates)))
        write_json(layout.manifest(tmp), manifest)
    return manifest


def read_calibration_manifest(calib: Path) -> dict:
    """CALIB's manifest.json, with the names of its images checked as data: plain file names, each once (which images
    an engine was calibrated on: the report leaves them out of its held-out figures)."""
    path = layout.manifest(calib)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        names = [entry["name"] for entry in manifest["images"]]
    except FileNotFoundError:
        raise PipelineError(f"{calib}: not a calibration folder (no {layout.MANIFEST}; run `make calib`)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a calibration manifest ({type(exc).__name__}: {exc}); rerun `make calib`") \
            from None
    for name in names:
        check_name(name, f"{path}: images")
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: an image is listed twice; rerun `make calib`")
    return manifest


def read_calibration_folder(cfg: BuildConfig, calib: Path) -> dict:
    """CALIB's manifest, once its tensors file is checked whole against it and against CFG's input shape.

    A build reads these tensors (or these images) as they are: a truncated or stale folder would calibrate on
    garbage or end in a low-level error, so every mismatch is one line naming the file and `make calib`.
    """
    redo = "rerun `make calib`"
    path = layout.manifest(calib)
    manifest = read_calibration_manifest(calib)
    try:
        count, tensors = manifest["count"], manifest["tensors"]
        names = [entry["name"] for entry in manifest["images"]]
        recorded = (tensors["file"], tuple(tensors["shape"]), tensors["sha256"])
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a calibration manifest ({type(exc).__name__}: {exc}); {redo}") from None
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
