"""The `vamc` backend: drives the vendor compiler to build the real fp16 / int8 VACC engines.

vamc is proprietary (a wheel from Vastai's developer centre) and is not installed on most machines; this module
only prepares its input, runs it, checks its output and records what went in. The contract it follows is
docs/vamc-build-config.md:

- ENGINE_DIR/vamc.yaml is the build config as vamc must see it: our `pipeline:` section removed, every path
  absolute and true once the build is over, everything else passed through as written (keys we do not interpret
  included). vamc writes `<workspace.path>/<name>/mod.*`, so workspace.path = ENGINE_DIR's parent and
  name = ENGINE_DIR's name: the engine lands in ENGINE_DIR/mod.so, mod.json, mod.params with nothing to move.
- `$VAMC $VAMC_COMMAND ENGINE_DIR/vamc.yaml` runs in ENGINE_DIR/work (removed afterwards if vamc left it empty);
  its output goes line by line to the terminal and to ENGINE_DIR/vamc.log.
- Because vamc is given the final paths, the engine is built in place; a previous engine is moved aside first
  and put back if the build fails. On failure nothing new is left in ENGINE_DIR; the log alone is kept, beside
  it, as ENGINE_DIR.failed.log (e.g. artifacts/engines/NAME/vamc.failed.log), and the error names it.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ...core import layout
from ...core.config import BuildConfig, CvtColor, DecodeImage, Normalize, Resize
from ...core.errors import PipelineError
from ...core.fileio import check_out_dir, mark_stage, sha256_file, write_json, write_text
from ..engine import base_manifest

COMMANDS = ("compile", "build")  # `vamc compile` since 2025; older releases know only `vamc build`
VERSION_TIMEOUT_S = 20


# --- which vamc, and how to call it ------------------------------------------------------------------------------

def vamc_command() -> str:
    command = os.environ.get("VAMC_COMMAND", "") or "compile"
    if command not in COMMANDS:
        raise PipelineError(f"VAMC_COMMAND={command!r} is not a vamc subcommand this pipeline knows: use compile "
                            f"(vamc 3.4 and later) or build (older releases)")
    return command


def vamc_executable() -> str:
    name = os.environ.get("VAMC", "") or "vamc"
    found = shutil.which(name)
    if found is None:
        hint = "" if name == "vamc" else " (named by VAMC)"
        raise PipelineError(f"the vendor compiler `{name}`{hint} is not on PATH: install the Vastai VAMC toolkit "
                            f"(vendor's developer centre) to build VACC engines, or build the reference engines "
                            f"here with BACKEND=ort")
    return os.path.abspath(found)  # a relative VAMC (tools/vamc) must still work from vamc's own work folder


def vamc_version(executable: str) -> str | None:
    """First line of `vamc --version`, or None when it has no such option or says nothing useful."""
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True, errors="replace",
                              timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0] if done.returncode == 0 and lines else None


# --- inputs: calibration folder, vamc.yaml, vdsp_params.json --------------------------------------------------

def calibration_images(cfg: BuildConfig, calib: Path) -> tuple[Path, int]:
    """DIR/images, checked to hold exactly the images DIR/manifest.json lists (vamc samples whatever is there)."""
    images = (calib / "images").resolve()
    manifest_path = layout.manifest(calib)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        count = int(manifest["count"])
        listed = {entry["name"]: entry["sha256"] for entry in manifest["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{manifest_path}: not a calibration manifest ({exc}); run `make calib`") from None
    if not images.is_dir():
        raise PipelineError(f"{images}: no such folder: the calibration folder must hold its images there "
                            f"(run `make calib`)")
    # vamc scans dataset.path recursively and keeps the files ending in the suffix: anything else in the folder
    # either calibrates too or shows a folder that is not what the manifest says.
    present = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if not p.is_dir())
    suffix = cfg.dataset.suffix
    stray = [name for name in present if not name.endswith(suffix) or "/" in name]
    if stray:
        raise PipelineError(f"{images}: holds {stray[0]!r}, which is not a `*{suffix}` image of the calibration "
                            f"set (vamc would scan it too); rerun `make calib`")
    if count < 1 or len(present) != count or len(listed) != count:
        raise PipelineError(f"{images}: holds {len(present)} images but {manifest_path} lists {count} "
                            f"({len(listed)} entries); rerun `make calib`")
    for name in present:
        if name not in listed:
            raise PipelineError(f"{images / name}: not listed in {manifest_path}; rerun `make calib`")
        if sha256_file(images / name) != listed[name]:
            raise PipelineError(f"{images / name}: content differs from its sha256 in {manifest_path}; "
                                f"rerun `make calib`")
    return images, count


class _YamlDumper(yaml.SafeDumper):
    """Block style, except lists of plain values ([1, 3, 480, 288]), which stay on one line as in our configs."""


def _represent_list(dumper: yaml.SafeDumper, data: list):
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_YamlDumper.add_representer(list, _represent_list)


def vamc_config(cfg: BuildConfig, onnx: Path, images: Path | None, count: int | None, out: Path) -> dict:
    """The config as vamc must see it. OUT must be absolute: every path written here is."""
    doc = copy.deepcopy(cfg.vamc)
    doc["name"] = out.name
    doc["frontend"]["checkpoint"] = str(onnx.resolve())
    if cfg.backend.dtype == "int8":
        doc["dataset"]["path"] = str(images)
        doc["dataset"]["sampler"]["get_data_num"] = count
    doc["workspace"]["path"] = str(out.parent)
    return doc


def dump_vamc_yaml(doc: dict, cfg: BuildConfig) -> str:
    header = (f"# vamc build config written by `python -m pipeline build` from {cfg.source}: its `pipeline:` "
              f"section removed,\n# paths made absolute, output steered to <workspace.path>/<name>/mod.*\n")
    return header + yaml.dump(doc, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True)


def vdsp_params(cfg: BuildConfig) -> dict:
    """The vendor runtime's preprocessing description (a "vdsp params" JSON), derived from dataset.process_ops.

    Format: the fused op the vendor's model zoo uses for MODNet (FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR):
    the runtime is fed the image planar (see VaststreamxRunner for the channel order and size); it resizes,
    converts the colour order, then computes (x - Mean) / Std per channel, after x / 255 for a `div255: true`
    Normalize (NormaType DIV255_MINUSMEAN_DIVSTD, mean and std in 0..1, as the vendor's files for such models
    write it). Only the values verified for that op are written; a config needing anything else is refused
    rather than guessed.
    """
    _, _, height, width = cfg.input_shape
    order = "BGR"  # what OpenCV's decode gives; DecodeImage (vamc) and each CvtColor swap it
    mean = std = norma_type = None
    for op in cfg.dataset.process_ops:
        if isinstance(op, DecodeImage) or isinstance(op, CvtColor):
            order = order[::-1]
        elif isinstance(op, Resize) and op.interpolation != "bilinear":
            raise PipelineError(f"{cfg.source}: vdsp_params.json: Resize interpolation {op.interpolation!r} has no "
                                f"known vendor-runtime equivalent here (only bilinear: BILINEAR_CV)")
        elif isinstance(op, Normalize):
            # the vendor's files write div255 as its own NormaType with mean and std as given (0..1)
            norma_type = "DIV255_MINUSMEAN_DIVSTD" if op.div255 else "MINUSMEAN_DIVSTD"
            mean = dict(zip(order, op.mean))
            std = dict(zip(order, op.std))
    if order != "RGB":
        raise PipelineError(f"{cfg.source}: vdsp_params.json: the process_ops end in BGR order; the vendor "
                            f"runtime op known here converts BGR2RGB only")
    return {
        "OpType": "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR",
        "OpConfig": {
            "IimageFormat": "RGB_PLANAR",
            "IimageWidth": width,
            "IimageHeight": height,
            "OimageWidth": width,
            "OimageHeight": height,
            "IimageWidthPitch": width,
            "IimageHeightPitch": height,
            "Mean": [_number(mean[c]) for c in order],
            "Std": [_number(std[c]) for c in order],
            "NormaType": norma_type,
            "ColorCvtCode": "BGR2RGB",
            "ResizeType": "BILINEAR_CV",
        },
    }


def _number(value: float) -> float:
    return round(value, 6)


# --- running vamc -------------------------------------------------------------------------------------------

def run_streamed(argv: list[str], cwd: Path, log: Path) -> int:
    """Run ARGV in CWD; every line of its stdout and stderr goes to our stdout and to LOG as it comes."""
    with open(log, "w", encoding="utf-8") as sink:
        def emit(line: str) -> None:
            sys.stdout.write(line)
            sys.stdout.flush()
            sink.write(line)
            sink.flush()

        emit(f"$ {' '.join(argv)}    (in {cwd})\n")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            emit(f"cannot start {argv[0]}: {exc}\n")
            return 127
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                emit(line if line.endswith("\n") else line + "\n")
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: do not leave vamc running on its own
                proc.kill()
                proc.wait()
            proc.stdout.close()
        emit(f"# {Path(argv[0]).name} exited with status {code}\n")
        return code


def _last_output_line(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if l.strip() and not l.startswith(("$ ", "# "))]
    return lines[-1][:200] if lines else "(no output)"


# --- the backend --------------------------------------------------------------------------------------------

def build(cfg: BuildConfig, onnx: Path, calib: Path | None, out: Path, progress, correction: dict | None) -> dict:
    del progress  # vamc calibrates inside its own process
    command = vamc_command()
    executable = vamc_executable()
    images = count = None
    if cfg.backend.dtype == "int8":
        images, count = calibration_images(cfg, calib)
    params = vdsp_params(cfg)  # refuse an unsupported config before vamc runs for minutes

    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    failed_log = out.parent / f"{out.name}.failed.log"
    doc = vamc_config(cfg, onnx, images, count, out)
    yaml_text = dump_vamc_yaml(doc, cfg)

    previous = None
    check_out_dir(out, "build")  # again, just before it is moved aside: build_engine checked it before any work
    if out.exists() or out.is_symlink():
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".previous", dir=out.parent))
        previous.rmdir()
        os.replace(out, previous)
    try:
        out.mkdir()
        mark_stage(out, "build")
        manifest = _build_in(cfg, onnx, calib, out, executable, command, doc, yaml_text, params, correction)
    except BaseException as exc:
        log = out / "vamc.log"
        kept = None
        if log.is_file():
            os.replace(log, failed_log)
            kept = failed_log
        shutil.rmtree(out, ignore_errors=True)
        if previous is not None:
            os.replace(previous, out)
        if isinstance(exc, PipelineError) and kept is not None:
            raise PipelineError(f"{exc}; partial outputs removed, log kept: {kept}") from None
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    failed_log.unlink(missing_ok=True)
    return manifest


def _build_in(cfg: BuildConfig, onnx: Path, calib: Path | None, out: Path, executable: str, command: str,
              doc: dict, yaml_text: str, params: dict, correction: dict | None) -> dict:
    yaml_path = out / "vamc.yaml"
    write_text(yaml_path, yaml_text)
    write_text(out / layout.VDSP_PARAMS, json.dumps(params, indent=4) + "\n")
    version = vamc_version(executable)
    work = out / "work"
    work.mkdir()
    argv = [executable, command, str(yaml_path)]
    code = run_streamed(argv, work, out / "vamc.log")
    if code != 0:
        raise PipelineError(f"`vamc {command}` failed with exit status {code} "
                            f"(last output: {_last_output_line(out / 'vamc.log')})")
    missing = [name for name in layout.VAMC_ENGINE if not (out / name).is_file() or (out / name).stat().st_size == 0]
    if missing:
        raise PipelineError(f"`vamc {command}` exited 0 but left {', '.join(missing)} missing or empty in {out} "
                            f"(expected {', '.join(layout.VAMC_ENGINE)})")
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()

    manifest = base_manifest(cfg, "vamc", onnx, calib, correction)
    manifest["engine"] = {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                          for name in layout.VAMC_ENGINE}
    manifest["engine_prefix"] = str(out / "mod")
    manifest["vamc"] = {
        "executable": executable,
        "argv": [command, str(yaml_path)],
        "cwd": str(work),
        "version": version,
        "yaml_sha256": sha256_file(yaml_path),
        "yaml": doc,
    }
    manifest["vdsp_params"] = {"path": layout.VDSP_PARAMS, "sha256": sha256_file(out / layout.VDSP_PARAMS)}
    if cfg.backend.dtype == "int8":
        manifest["calibration"]["images_path"] = doc["dataset"]["path"]
        manifest["calibration"]["count"] = doc["dataset"]["sampler"]["get_data_num"]
    write_json(layout.manifest(out), manifest)
    return manifest
