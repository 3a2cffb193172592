"""Stage `release`: one folder to ship, named by its inputs; and `verify`: rebuild it and compare file by file.

A bundle is `RELEASE_ROOT/<name>-<short hash>/`, where the short hash is the start of the inputs digest: sha256
over the checkpoint, both configs, the calibration list, the pipeline's own code and the backend. The same inputs
give the same name, so an existing bundle is never overwritten and a changed input always gets a new folder.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .fileio import atomic_dir, dumps_json, sha256_file
from .provenance import REPO, git_state, versions

MANIFEST = "MANIFEST.json"
SHORT_HASH = 12
# The code whose change can change an artifact: every module of the package, the recipe and the pinned tools.
CODE_GLOBS = ("pipeline/**/*.py", "Makefile", "requirements.txt")
# Files a rebuild is not expected to reproduce byte for byte, why, and (for JSON) the only keys allowed to differ;
# None means the whole file may differ. Every other file must come back identical.
EXPECTED_DIFFERENCES = {
    "engines/*/*/manifest.json": ("records the build's wall time, peak memory and absolute input paths", None),
    "engines/*/vamc/vamc.log": ("vamc's own console log (timings, progress), not an input to the engine", None),
    "report/eval/*/run.json": ("paths and wall-clock timings of the evaluation run", None),
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


def code_digest(repo: Path = REPO) -> str:
    """sha256 over (relative path, content sha256) of the pipeline's code, in path order."""
    files = sorted({p for pattern in CODE_GLOBS for p in repo.glob(pattern) if p.is_file()
                    and "__pycache__" not in p.parts})
    lines = [f"{p.relative_to(repo).as_posix()} {sha256_file(p)}" for p in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


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
    }


def inputs_digest(record: dict) -> str:
    """Paths are left out on purpose: the same files from another folder are the same inputs."""
    keyed = {"checkpoint": record["checkpoint"]["sha256"],
             "configs": {dtype: c["sha256"] for dtype, c in record["configs"].items()},
             "calibration_list": record["calibration_list"]["sha256"], "code": record["code"],
             "backend": record["backend"]}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def _copy_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise PipelineError(f"{src}: no such folder; `make release` needs the outputs of `make fp16 int8 eval`")
    shutil.copytree(src, dest, copy_function=shutil.copyfile)


def _layout(inputs: ReleaseInputs) -> list[tuple[Path, str]]:
    """(source, path inside the bundle) of every single file; engine folders are copied whole."""
    files = [(inputs.config_fp16, f"configs/{inputs.config_fp16.name}"),
             (inputs.config_int8, f"configs/{inputs.config_int8.name}"),
             (inputs.calib_list, f"calib/{inputs.calib_list.name}")]
    for onnx in sorted({inputs.onnx_fp16, inputs.onnx_int8}):  # the exact model each engine was built from
        files += [(onnx, f"onnx/{onnx.name}"), (Path(f"{onnx}.json"), f"onnx/{onnx.name}.json")]
    files += [(path, f"report/{path.name}") for path in inputs.report]
    for src, _ in files:
        if not src.is_file():
            raise PipelineError(f"{src}: missing; `make release` needs the outputs of `make fp16 int8 eval`")
    return files


def file_hashes(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): sha256_file(p)
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _calibration_images(calib_dir: Path) -> list[dict]:
    manifest = calib_dir / "manifest.json"
    if not manifest.is_file():
        raise PipelineError(f"{manifest}: missing (run `make calib`)")
    return json.loads(manifest.read_text())["images"]


def assemble(inputs: ReleaseInputs, root: Path) -> tuple[Path, bool]:
    """Write the bundle; returns (its path, whether it was written now) -- an existing one is left untouched."""
    record = inputs_record(inputs)
    digest = inputs_digest(record)
    bundle = root / f"{inputs.name}-{digest[:SHORT_HASH]}"
    if bundle.exists():
        return bundle, False
    files = _layout(inputs)
    with atomic_dir(bundle) as tmp:
        for src, rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        for engine in (inputs.engine_fp16, inputs.engine_int8):
            _copy_tree(engine, tmp / "engines" / engine.parent.name / engine.name)
        _copy_tree(inputs.eval_dir, tmp / "report" / "eval")
        manifest = {
            "name": bundle.name,
            "inputs_digest": digest,
            "inputs": record,
            "data": str(inputs.data.resolve()),
            "calibration_images": _calibration_images(inputs.calib_dir),
            "files": file_hashes(tmp),
            "versions": versions(),
            "repository": git_state(),
        }
        (tmp / MANIFEST).write_text(dumps_json(manifest))
        for path in tmp.rglob("*"):  # a shipped bundle is a record: read-only
            if path.is_file():
                os.chmod(path, 0o444)
    return bundle, True


def load_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{bundle}: not a release bundle (no {MANIFEST}; bundles live in artifacts/release/)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


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


def rebuild_variables(manifest: dict, bundle: Path, scratch: Path, ckpt: Path | None, data: Path | None) -> list[str]:
    """Make variables that rebuild BUNDLE into SCRATCH from the bundle's own configs and calibration list."""
    inputs = manifest["inputs"]
    ckpt = ckpt or Path(inputs["checkpoint"]["path"])
    if not ckpt.is_file():
        raise PipelineError(f"{ckpt}: the release's checkpoint is not there any more; pass CKPT=/path/to/"
                            f"{inputs['checkpoint']['file']}")
    if sha256_file(ckpt) != inputs["checkpoint"]["sha256"]:
        raise PipelineError(f"{ckpt}: not the checkpoint this release was built from (sha256 differs from "
                            f"{inputs['checkpoint']['sha256'][:12]}...)")
    configs = inputs["configs"]
    return [f"ART={scratch}", f"CKPT={ckpt}", f"DATA={data or manifest['data']}", f"BACKEND={inputs['backend']}",
            f"CONFIG_FP16={bundle / 'configs' / configs['fp16']['file']}",
            f"CONFIG_INT8={bundle / 'configs' / configs['int8']['file']}",
            f"CALIB_LIST={bundle / 'calib' / inputs['calibration_list']['file']}",
            f"RELEASE_ROOT={scratch / 'release'}"]


def format_table(rows: list[tuple[str, str, str]]) -> str:
    width = max([len(r[0]) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'status':<9}  note", f"{'-' * width}  {'-' * 9}  ----"]
    lines += [f"{rel:<{width}}  {status:<9}  {note}".rstrip() for rel, status, note in rows]
    return "\n".join(lines)
