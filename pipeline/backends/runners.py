"""Runners: load an engine once, then turn one preprocessed image into an alpha matte (Polygraphy-style: loading
and running are kept apart from comparing and scoring, which live in evaluate.py and metrics.py).

An ENGINE given to `evaluate` is one of:
- a `.onnx` file: the simplified fp32 model, run on ONNX Runtime (ort/runner.py, OnnxRunner);
- a folder whose manifest.json says "backend": "ort": `model.onnx` (fp16 or int8 QDQ) on ONNX Runtime (ort/runner.py, OnnxRunner);
- a folder whose manifest.json says "backend": "vamc": mod.so/mod.json/mod.params + vdsp_params.json, run with
  the vendor runtime vaststreamx on a VACC card (vamc/runner.py, VaststreamxRunner). vaststreamx is not on any public registry;
  where it does not import the runner refuses with a PipelineError instead of producing anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import sha256_file

VAMC_FILES = (*layout.VAMC_ENGINE, layout.VDSP_PARAMS)


@dataclass(frozen=True)
class EngineInfo:
    path: Path
    backend: str  # "onnx" (a plain fp32 file), "ort" or "vamc"
    dtype: str  # fp32, fp16, int8
    hash_of: str  # which file `sha256` is the hash of
    sha256: str
    manifest: dict | None
    model_files: dict  # name -> sha256 of the files that compute the output (reproducible, unlike a manifest)

    def to_json(self) -> dict:
        """Identity of the engine, without its path, so the same engine evaluated anywhere records the same."""
        return {"backend": self.backend, "dtype": self.dtype, "hash_of": self.hash_of, "sha256": self.sha256,
                "model_files": self.model_files}


def describe(engine: str | Path) -> EngineInfo:
    """What ENGINE is, from its file name or manifest.json; a clear error for anything else."""
    engine = Path(engine)
    if engine.is_file() and engine.suffix == ".onnx":
        digest = sha256_file(engine)
        return EngineInfo(engine, "onnx", "fp32", engine.name, digest, None, {engine.name: digest})
    manifest_path = layout.manifest(engine)
    if not engine.is_dir() or not manifest_path.is_file():
        raise PipelineError(f"{engine}: not an engine (expected a simplified .onnx file, or an engine folder with "
                            f"manifest.json from `make fp16` / `make int8`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{manifest_path}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise PipelineError(f"{manifest_path}: malformed engine manifest (expected a JSON object; rebuild the engine)")
    backend, dtype = manifest.get("backend"), manifest.get("dtype")
    if backend not in ("ort", "vamc") or dtype not in ("fp16", "int8"):
        raise PipelineError(f"{manifest_path}: expected \"backend\" ort or vamc and \"dtype\" fp16 or int8, got "
                            f"{backend!r} and {dtype!r}")
    needed = (layout.ORT_MODEL,) if backend == "ort" else VAMC_FILES
    missing = [name for name in needed if not (engine / name).is_file()]
    if missing:
        raise PipelineError(f"{engine}: incomplete {backend} engine, missing {', '.join(missing)} (rebuild it)")
    model_files = {name: sha256_file(engine / name) for name in needed}
    return EngineInfo(engine, backend, dtype, layout.MANIFEST, sha256_file(manifest_path), manifest, model_files)


class Runner:
    """Loads an engine; `prepare` runs on the loader threads (decode + resize), `infer` on the caller's thread."""
    info: EngineInfo

    def prepare(self, cfg: BuildConfig, bgr: np.ndarray) -> np.ndarray:
        """The engine's input from a decoded 8-bit BGR photo."""
        raise NotImplementedError

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        """Alpha (H, W) float, 0..1, at the model's size."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_runner(engine: str | Path) -> Runner:
    info = describe(engine)
    if info.backend == "vamc":
        from .vamc.runner import VaststreamxRunner
        return VaststreamxRunner(info)
    from .ort.runner import OnnxRunner
    return OnnxRunner(info)
