"""Stage `release`: one folder to ship, named by its inputs; and `verify`: rebuild it and compare file by file.

A bundle is `RELEASE_ROOT/<name>-<short hash>/`, where the short hash is the start of the inputs digest: sha256
over everything that can change what it ships: the checkpoint, both configs, the calibration list, the pipeline's
own code, the backend, the evaluation data (name and sha256 of every image and matte scored), LIMIT, and for vamc
the compiler (its --version line and sha256) and VAMC_COMMAND, and for a tuned config the selection list the
report read. The same inputs give the same name, so an existing
bundle is never overwritten and a changed input always gets a new folder.

A bundle ships only what this run produced (the eval folders of fp32 and of this backend's fp16 and int8) and the
code that produced it (source/, see source.py), and is assembled only when the engine manifests, the metrics and the report refer, by sha256, to the very files it
ships. Its files and folders are read-only.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core import layout
from ..core.errors import PipelineError
from ..core.fileio import BUNDLE_MANIFEST, STAGE_MARKER, atomic_dir, dumps_json, sha256_bytes, sha256_file, write_text
from ..core.names import check_name, check_path
from ..core.provenance import REPO, committed, environment, git_state, meant_to_be_committed, versions
from ..data.dataset import matte_path
from ..tuning.tuned_yaml import TUNED_SUFFIX
from .source import code_digest, source_name, write_source_tar

MANIFEST = BUNDLE_MANIFEST
SHORT_HASH = 12
SELECTION = "tune/selection.txt"  # where a bundle keeps its tuned config's selection list
# Files a rebuild is not expected to reproduce byte for byte, why, and (for JSON) the only keys allowed to differ;
# None means the whole file may differ. Every other file must come back identical.
EXPECTED_DIFFERENCES = {
    "engines/*/*/manifest.json": ("records the build's wall time, peak memory and absolute input paths", None),
    "engines/*/vamc/vamc.log": ("vamc's own console log (timings, progress), not an input to the engine", None),
    "report/eval/*/run.json": ("paths and wall-clock timings of the evaluation run", None),
    "onnx/*.corrected.onnx.json": ("the bias correction's record names the calibration folder's manifest by hash (which "
                                   "records paths); the corrected ONNX beside it must be identical, and every other "
                                   "field of the record equal", ("calibration.manifest_sha256",)),
    "report/eval/*/metrics.json": ("names the engine's manifest.json by hash (which records build times); all "
                                   "other fields, every metric included, are equal", ("manifest_sha256", "engine.sha256")),
}


@dataclass(frozen=True)
class ReleaseInputs:
    name: str
    ckpt: Path
    data: Path
    backend: str
    config_fp16: Path
    config_int8: Path
    calib_list: Path
    calib_dir: Path
    onnx_fp16: Path
    onnx_int8: Path
    engine_fp16: Path
    engine_int8: Path
    report: tuple[Path, ...]
    eval_dir: Path
    limit: int | None = None
    selection: Path | None = None  # a tuned config's selection list (tune's selection.txt): the report read it


def release_name(fp16: str, int8: str) -> str:
    """A bundle's name before its hash: the leading `_`-separated words the two config names share, whole words
    only (modnet_fp16 and modnet_fine_int8 give modnet, not modnet_f); "modnet" when they share none."""
    shared = []
    for a, b in zip(fp16.split("_"), int8.split("_")):
        if a != b:
            break
        shared.append(a)
    return "_".join(shared).rstrip("_-.") or "modnet"


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; `make release` needs the outputs of `make fp16 int8 eval`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable {what} ({type(exc).__name__}); rebuild it") from None
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: not a {what} (expected a JSON object)")
    return doc


def scored_names(inputs: ReleaseInputs) -> list[str]:
    """Names of the images every evaluation of this run scored (the same ones, or the release is refused)."""
    found = {}
    for label, folder in layout.eval_folders(inputs.backend).items():
        path = layout.metrics(inputs.eval_dir / folder)
        metrics = _read_json(path, "metrics file")
        try:
            names = [check_name(row["name"], f"{path}: per_image") for row in metrics["per_image"]]
            limit = metrics["limit"]
        except (KeyError, TypeError) as exc:
            raise PipelineError(f"{path}: not a metrics file (missing {exc}); rerun `make eval`") from None
        if limit != inputs.limit:
            raise PipelineError(f"{path}: evaluated with LIMIT={limit or ''} but this release has "
                                f"LIMIT={inputs.limit or ''}; rerun `make eval` with the same LIMIT")
        found[label] = names
    if len({tuple(names) for names in found.values()}) != 1:
        raise PipelineError(f"{inputs.eval_dir}: fp32, fp16 and int8 were scored on different images; rerun `make eval`")
    return found["fp32"]


def data_record(data: Path, names: list[str]) -> list[dict]:
    """Name and sha256 of every image and matte that was scored, as they are in DATA now."""
    rows = []
    for name in names:
        image = data / "image" / name
        matte = matte_path(image)
        for path in (image, matte):
            if not path.is_file():
                raise PipelineError(f"{path}: scored by `make eval` but no longer in the data folder; rerun `make eval`")
        rows.append({"name": name, "image_sha256": sha256_file(image), "matte_sha256": sha256_file(matte)})
    return rows


def compiler_record(backend: str) -> dict | None:
    """For vamc: which compiler built the engines (VAMC resolved, its --version line and sha256) and how."""
    if backend != "vamc":
        return None
    from ..backends.vamc.build import vamc_command, vamc_executable, vamc_version
    executable = vamc_executable()
    return {"executable": executable, "version": vamc_version(executable), "sha256": sha256_file(executable),
            "command": vamc_command()}


def inputs_record(inputs: ReleaseInputs) -> dict:
    for label, path in (("checkpoint", inputs.ckpt), ("fp16 config", inputs.config_fp16),
                        ("int8 config", inputs.config_int8), ("calibration list", inputs.calib_list)):
        if not path.is_file():
            raise PipelineError(f"{path}: no such {label} (build with `make fp16 int8 eval` first)")
    return {
        "checkpoint": {"file": inputs.ckpt.name, "path": str(inputs.ckpt.resolve()), "sha256": sha256_file(inputs.ckpt)},
        "configs": {dtype: {"file": p.name, "sha256": sha256_file(p)}
                    for dtype, p in (("fp16", inputs.config_fp16), ("int8", inputs.config_int8))},
        "calibration_list": {"file": inputs.calib_list.name, "sha256": sha256_file(inputs.calib_list)},
        "code": code_digest(),
        "backend": inputs.backend,
        "data": data_record(inputs.data, scored_names(inputs)),
        "limit": inputs.limit,
        "compiler": compiler_record(inputs.backend),
        # only for a tuned config: every other release keeps the record (and the name) it had before
        **({"selection_list": {"file": inputs.selection.name, "sha256": sha256_file(inputs.selection)}}
           if inputs.selection is not None else {}),
    }


def inputs_digest(record: dict) -> str:
    """Paths are left out on purpose: the same files from another folder are the same inputs."""
    compiler = record["compiler"]
    keyed = {"checkpoint": record["checkpoint"]["sha256"],
             "configs": {dtype: c["sha256"] for dtype, c in record["configs"].items()},
             "calibration_list": record["calibration_list"]["sha256"], "code": record["code"],
             "backend": record["backend"], "data": record["data"], "limit": record["limit"],
             "compiler": compiler and {k: compiler[k] for k in ("version", "sha256", "command")},
             **({"selection_list": record["selection_list"]["sha256"]} if "selection_list" in record else {})}
    return sha256_bytes(json.dumps(keyed, sort_keys=True).encode())


def _copy_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise PipelineError(f"{src}: no such folder; `make release` needs the outputs of `make fp16 int8 eval`")
    # Without their stage markers: a bundle's copies are the release's, not folders a stage may replace.
    shutil.copytree(src, dest, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns(STAGE_MARKER))


def _layout(inputs: ReleaseInputs) -> list[tuple[Path, str]]:
    """(source, path inside the bundle) of every single file; engine folders are copied whole."""
    files = [(inputs.config_fp16, f"configs/{inputs.config_fp16.name}"),
             (inputs.config_int8, f"configs/{inputs.config_int8.name}"),
             (inputs.calib_list, f"calib/{inputs.calib_list.name}")]
    for onnx in sorted({inputs.onnx_fp16, inputs.onnx_int8}):  # the exact model each engine was built from
        files += [(onnx, f"onnx/{onnx.name}"), (layout.onnx_record(onnx), f"onnx/{onnx.name}.json")]
    files += [(path, f"report/{path.name}") for path in inputs.report]
    if inputs.selection is not None:
        files.append((inputs.selection, SELECTION))
    for src, _ in files:
        if not src.is_file():
            raise PipelineError(f"{src}: missing; `make release` needs the outputs of `make fp16 int8 eval`")
    return files


def file_hashes(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): sha256_file(p)
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _calibration_images(calib_dir: Path) -> list[dict]:
    path = layout.manifest(calib_dir)
    images = _read_json(path, "calibration manifest").get("images")
    if not isinstance(images, list) or not all(isinstance(i, dict) and {"name", "sha256"} <= set(i) for i in images):
        raise PipelineError(f"{path}: not a calibration manifest (no images list of name and sha256); run `make calib`")
    for image in images:
        check_name(image["name"], f"{path}: images")
    return images


def _mismatch(rel: str, what: str, recorded: str, other: str, actual: str) -> PipelineError:
    return PipelineError(f"{rel} (in the bundle being assembled) records {what} {str(recorded)[:12]}..., but the "
                         f"bundled {other} has sha256 {actual[:12]}...: these outputs come from different runs; "
                         f"rerun `make fp16 int8 eval`, then `make release`")


def check_references(staged: Path, inputs: ReleaseInputs, sha: dict[str, str]) -> None:
    """The engine manifests, metrics and report of STAGED refer, by sha256, to the files STAGED holds (SHA: the
    sha256 of each of them, by path relative to STAGED)."""
    onnx = {"fp16": f"onnx/{inputs.onnx_fp16.name}", "int8": f"onnx/{inputs.onnx_int8.name}"}
    configs = {"fp32": f"configs/{inputs.config_fp16.name}", "fp16": f"configs/{inputs.config_fp16.name}",
               "int8": f"configs/{inputs.config_int8.name}"}
    engines = {"fp16": f"engines/{inputs.engine_fp16.parent.name}/{inputs.engine_fp16.name}",
               "int8": f"engines/{inputs.engine_int8.parent.name}/{inputs.engine_int8.name}"}
    report = (staged / "report" / "report.md").read_text(encoding="utf-8", errors="replace") \
        if (staged / "report" / "report.md").is_file() else None
    for label, folder in layout.eval_folders(inputs.backend).items():
        rel = f"report/eval/{folder}/{layout.METRICS}"
        metrics = _read_json(staged / rel, "metrics file")
        try:
            engine, config = metrics["engine"], metrics["config"]["sha256"]
            model_files = engine["model_files"]
            pairs = [(f"the model file {name}", digest, name) for name, digest in model_files.items()]
        except (KeyError, TypeError, AttributeError) as exc:
            raise PipelineError(f"{staged / rel}: not a metrics file (missing {exc}); rerun `make eval`") from None
        if config != sha[configs[label]]:
            raise _mismatch(rel, "its config as", config, configs[label], sha[configs[label]])
        if label == "fp32":
            if engine.get("sha256") != sha[onnx["fp16"]]:
                raise _mismatch(rel, "its model as", engine.get("sha256"), onnx["fp16"], sha[onnx["fp16"]])
        else:
            manifest_rel = f"{engines[label]}/{layout.MANIFEST}"
            if metrics.get("manifest_sha256") != sha.get(manifest_rel, ""):
                raise _mismatch(rel, "its engine manifest as", metrics.get("manifest_sha256"), manifest_rel,
                                sha.get(manifest_rel, "(missing)"))
            for what, digest, name in pairs:
                if digest != sha.get(f"{engines[label]}/{name}", ""):
                    raise _mismatch(rel, what + " as", digest, f"{engines[label]}/{name}",
                                    sha.get(f"{engines[label]}/{name}", "(missing)"))
            built = _read_json(staged / manifest_rel, "engine manifest")
            recorded = built.get("onnx", {}).get("sha256") if isinstance(built.get("onnx"), dict) else None
            if recorded != sha[onnx[label]]:
                raise _mismatch(manifest_rel, "its ONNX as", recorded, onnx[label], sha[onnx[label]])
        if report is not None:
            for name, digest in model_files.items():
                if str(digest)[:16] not in report:
                    raise PipelineError(f"report/report.md does not list {label}'s {name} ({str(digest)[:12]}...) "
                                        f"that the bundle ships: the report is from another run; rerun `make eval`")


def _read_only(root: Path) -> None:
    """Files and folders, deepest first, so the walk is never locked out of a folder it still has to visit."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    os.chmod(root, 0o555)


def repository_record(calib_list: Path) -> dict:
    """This repository's state; not clean when the calibration list the release used is not committed in it."""
    state = git_state()
    listed = committed(calib_list)
    state["calibration_list_committed"] = listed
    if listed is False:
        state["clean"] = False
    return state


def uncommitted_list_warning(bundle: Path, calib_list: str | Path) -> str | None:
    """What to say when BUNDLE's calibration list is one to commit but is not (the demo's and verify's never are)."""
    if load_manifest(bundle)["repository"].get("calibration_list_committed") is False \
            and meant_to_be_committed(Path(calib_list)):
        return (f"{calib_list} is not committed in this repository, so MANIFEST.json says repository.clean: false; "
                f"commit it to make the release reproducible from the repository alone")
    return None


def assemble(inputs: ReleaseInputs, root: Path) -> tuple[Path, bool]:
    """Write the bundle; returns (its path, whether it was written now) -- an existing one is left untouched."""
    record = inputs_record(inputs)
    digest = inputs_digest(record)
    bundle = root / f"{inputs.name}-{digest[:SHORT_HASH]}"
    if bundle.exists():
        record_latest(bundle)
        return bundle, False
    files = _layout(inputs)
    with atomic_dir(bundle, "release") as tmp:
        for src, rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        for engine in (inputs.engine_fp16, inputs.engine_int8):
            _copy_tree(engine, layout.engine(tmp, engine.parent.name, engine.name))
        for folder in layout.eval_folders(inputs.backend).values():  # this run's only: not other backends', not leftovers
            _copy_tree(inputs.eval_dir / folder, tmp / "report" / "eval" / folder)
        source = source_name(record["code"])
        if write_source_tar(REPO, tmp / source) != record["code"]:
            raise PipelineError(f"{REPO}: the pipeline's code changed while the release was being assembled; "
                                f"run `make release` again")
        hashes = file_hashes(tmp)  # of everything but MANIFEST.json, which is written last
        check_references(tmp, inputs, hashes)
        manifest = {
            "name": bundle.name,
            "inputs_digest": digest,
            "inputs": record,
            "data": str(inputs.data.resolve()),
            "calibration_images": _calibration_images(inputs.calib_dir),
            "files": hashes,
            "source": {"file": source, "sha256": hashes[source], "bytes": (tmp / source).stat().st_size},
            "environment": environment(),
            "versions": versions(),
            "repository": repository_record(inputs.calib_list),
        }
        (tmp / MANIFEST).write_text(dumps_json(manifest))
    _read_only(bundle)  # a shipped bundle is a record; folders only once it is in place, so the rename can happen
    record_latest(bundle)
    return bundle, True


def record_latest(bundle: Path) -> None:
    """Name BUNDLE in its root's .latest, whether written now or found: what `make demo` reads, instead of picking
    the path out of what the stage printed."""
    write_text(layout.latest_release(bundle.parent), bundle.name + "\n")


# What `verify` reads from a MANIFEST.json: a bundle missing any of these cannot be rebuilt.
REQUIRED_KEYS = ("name", "inputs_digest", "data", "files", "inputs.backend", "inputs.code", "inputs.limit",
                 "inputs.compiler", "inputs.checkpoint.file", "inputs.checkpoint.path", "inputs.checkpoint.sha256",
                 "inputs.configs.fp16.file", "inputs.configs.int8.file", "inputs.calibration_list.file")


def _field(doc: dict, dotted: str):
    node = doc
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def load_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{bundle}: not a release bundle (no {MANIFEST}; bundles live in artifacts/release/)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read it ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise PipelineError(f"{path}: malformed (expected a JSON object)")
    for dotted in REQUIRED_KEYS:
        try:
            _field(manifest, dotted)
        except KeyError:
            raise PipelineError(f"{path}: malformed: no {dotted} (not a bundle of this pipeline's "
                                f"`make release`)") from None
    if not isinstance(manifest["files"], dict) or not all(isinstance(v, str) for v in manifest["files"].values()):
        raise PipelineError(f"{path}: malformed: files must map each file to its sha256")
    return manifest


def _without(doc: dict, dotted_keys: tuple[str, ...]) -> dict:
    doc = json.loads(json.dumps(doc))
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return doc


def explain_difference(rel: str, ours: Path, theirs: Path) -> str | None:
    """Why REL may differ between two builds, or None if this difference is not expected."""
    for pattern, (why, keys) in EXPECTED_DIFFERENCES.items():
        if fnmatch.fnmatch(rel, pattern):
            if keys is None:
                return why
            try:
                same = _without(json.loads(ours.read_text()), keys) == _without(json.loads(theirs.read_text()), keys)
            except (OSError, ValueError):
                return None
            return why if same else None
    return None


def compare(bundle: Path, rebuilt: Path) -> list[tuple[str, str, str]]:
    """(file, status, note) for every file of either bundle; status is equal, expected, DIFFERENT, MISSING or
    EXTRA. Files are compared as they are now, not as MANIFEST.json says they were."""
    ours, theirs = file_hashes(bundle), file_hashes(rebuilt)
    rows = []
    for rel in sorted(set(ours) | set(theirs)):
        if rel not in theirs:
            rows.append((rel, "MISSING", "not produced by the rebuild"))
        elif rel not in ours:
            rows.append((rel, "EXTRA", "produced by the rebuild, not in the bundle"))
        elif ours[rel] == theirs[rel]:
            rows.append((rel, "equal", ""))
        else:
            why = explain_difference(rel, bundle / rel, rebuilt / rel)
            rows.append((rel, "expected", why) if why else
                        (rel, "DIFFERENT", f"{ours[rel][:12]} != {theirs[rel][:12]}"))
    return rows


def tampered(bundle: Path, manifest: dict) -> list[str]:
    """Files of the bundle whose content no longer matches its own MANIFEST (changed after release)."""
    now = file_hashes(bundle)
    return sorted(rel for rel in set(now) | set(manifest["files"]) if now.get(rel) != manifest["files"].get(rel))


# The demo's checkpoint: `make clean` removes it, `make demo-ckpt demo-data` writes it (and the demo data) again
# byte for byte.
DEMO_CKPT = layout.demo_ckpt(layout.DEMO)


def rebuild_variables(manifest: dict, bundle: Path, scratch: Path, ckpt: Path | None, data: Path | None) -> list[str]:
    """Make variables that rebuild BUNDLE into SCRATCH from the bundle's own configs and calibration list.

    Every value from the manifest is data: a name must be a plain file name, a path must hold nothing the shell
    or Make would interpret, each refused in one line naming the field. The calibration list is the copy that
    `scratch_list` makes, so nothing in the rebuild can rewrite the bundle's own.
    """
    where = bundle / MANIFEST
    inputs = manifest["inputs"]
    backend = inputs["backend"]
    if backend not in ("ort", "vamc"):
        raise PipelineError(f"{where}: inputs.backend: {backend!r} is not ort or vamc")
    limit = inputs["limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PipelineError(f"{where}: inputs.limit: {limit!r} is not empty or a positive integer")
    configs = {dtype: check_name(_field(inputs, f"configs.{dtype}.file"), f"{where}: inputs.configs.{dtype}.file")
               for dtype in ("fp16", "int8")}
    check_name(manifest["name"], f"{where}: name")
    ckpt_file = check_name(inputs["checkpoint"]["file"], f"{where}: inputs.checkpoint.file")
    ckpt = Path(check_path(str(ckpt), "--ckpt")) if ckpt else \
        Path(check_path(inputs["checkpoint"]["path"], f"{where}: inputs.checkpoint.path"))
    data = Path(check_path(str(data), "--data")) if data else Path(check_path(manifest["data"], f"{where}: data"))
    check_path(str(bundle), "the bundle's path")
    check_path(str(scratch), "the scratch folder's path")
    if not ckpt.is_file():
        if ckpt.parts[-len(DEMO_CKPT.parts):] == DEMO_CKPT.parts:
            raise PipelineError(f"{ckpt}: the release's checkpoint is not there any more: it is the demo's, which "
                                f"`make clean` removes; `make demo-ckpt demo-data` writes it and the demo data again "
                                f"byte for byte, then run make verify again")
        raise PipelineError(f"{ckpt}: the release's checkpoint is not there any more; pass CKPT=/path/to/{ckpt_file}")
    if sha256_file(ckpt) != inputs["checkpoint"]["sha256"]:
        raise PipelineError(f"{ckpt}: not the checkpoint this release was built from (sha256 differs from "
                            f"{str(inputs['checkpoint']['sha256'])[:12]}...)")
    variables = [f"ART={scratch}", f"CKPT={ckpt}", f"DATA={data}", f"BACKEND={backend}",
                 f"CONFIG={bundle / 'configs' / configs['fp16']}",  # the fp16 config also names the exported ONNX
                 f"CONFIG_FP16={bundle / 'configs' / configs['fp16']}",
                 f"CONFIG_INT8={bundle / 'configs' / configs['int8']}",
                 f"CALIB_LIST={scratch_list(manifest, scratch)}", "REDRAW=", f"LIMIT={limit or ''}",
                 f"RELEASE_ROOT={layout.release_root(scratch)}"]
    if backend == "vamc":
        variables += compiler_variables(inputs["compiler"], where)
    return variables


def scratch_list(manifest: dict, scratch: Path) -> Path:
    """Where the rebuild reads its calibration list: a copy of the bundle's, inside SCRATCH."""
    return layout.calib_list(scratch, manifest["inputs"]["calibration_list"]["file"])


def copy_list(manifest: dict, bundle: Path, scratch: Path) -> None:
    """The bundle's calibration list where the rebuild reads it, and a tuned config's selection list where the
    Makefile looks for NAME_tuned's (ART/tune/NAME/selection.txt), so the rebuilt report leaves out the same images."""
    where = bundle / MANIFEST
    name = check_name(manifest["inputs"]["calibration_list"]["file"], f"{where}: inputs.calibration_list.file")
    dest = scratch_list(manifest, scratch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle / "calib" / name, dest)
    if "selection_list" in manifest["inputs"]:
        config = Path(check_name(manifest["inputs"]["configs"]["int8"]["file"], f"{where}: inputs.configs.int8.file"))
        tuned_from = config.stem.removesuffix(TUNED_SUFFIX)  # as the Makefile's patsubst %_tuned,%
        dest = layout.selection(scratch, tuned_from)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / SELECTION, dest)


def compiler_variables(compiler, where: Path) -> list[str]:
    """VAMC and VAMC_COMMAND of a vamc release: the very compiler it recorded, checked by sha256."""
    try:
        executable, digest, command = compiler["executable"], compiler["sha256"], compiler["command"]
    except (KeyError, TypeError):
        raise PipelineError(f"{where}: malformed: inputs.compiler needs executable, sha256 and command for a vamc "
                            f"release") from None
    check_path(executable, f"{where}: inputs.compiler.executable")
    if command not in ("compile", "build"):
        raise PipelineError(f"{where}: inputs.compiler.command: {command!r} is not compile or build")
    if not Path(executable).is_file() or sha256_file(executable) != digest:
        raise PipelineError(f"{executable}: not the vamc this release was built with (missing, or its sha256 differs "
                            f"from {str(digest)[:12]}...); a rebuild with another compiler is another release")
    return [f"VAMC={executable}", f"VAMC_COMMAND={command}"]


def make_environment(environ: dict, makefile: Path) -> dict:
    """ENVIRON without what would steer the rebuild besides its explicit variables: the caller's MAKEFLAGS and
    every variable the Makefile reads with `?=` (LIMIT, REDRAW, VAMC, CONFIG...), which Make takes from the
    environment."""
    settable = set(re.findall(r"^([A-Za-z0-9_]+) *\?=", makefile.read_text(encoding="utf-8"), flags=re.M))
    drop = {"MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MAKEFILES", *settable}
    return {key: value for key, value in environ.items() if key not in drop}


def format_table(rows: list[tuple[str, str, str]]) -> str:
    width = max([len(r[0]) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'status':<9}  note", f"{'-' * width}  {'-' * 9}  ----"]
    lines += [f"{rel:<{width}}  {status:<9}  {note}".rstrip() for rel, status, note in rows]
    return "\n".join(lines)
