"""Runners: load an engine once, then turn one preprocessed image into an alpha matte (Polygraphy-style: loading
and running are kept apart from comparing and scoring, which live in evaluate.py and metrics.py).

An ENGINE given to `evaluate` is one of:
- a `.onnx` file: the simplified fp32 model, run on ONNX Runtime (OnnxRunner);
- a folder whose manifest.json says "backend": "ort": `model.onnx` (fp16 or int8 QDQ) on ONNX Runtime (OnnxRunner);
- a folder whose manifest.json says "backend": "vamc": mod.so/mod.json/mod.params + vdsp_params.json, run with
  the vendor runtime vaststreamx on a VACC card (VaststreamxRunner). vaststreamx is not on any public registry;
  where it does not import the runner refuses with a PipelineError instead of producing anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import BuildConfig, Resize
from .errors import PipelineError
from .fileio import sha256_file
from .preprocess import INTERPOLATION, apply_ops

VAMC_FILES = ("mod.so", "mod.json", "mod.params", "vdsp_params.json")


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
    manifest_path = engine / "manifest.json"
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
    needed = ("model.onnx",) if backend == "ort" else VAMC_FILES
    missing = [name for name in needed if not (engine / name).is_file()]
    if missing:
        raise PipelineError(f"{engine}: incomplete {backend} engine, missing {', '.join(missing)} (rebuild it)")
    model_files = {name: sha256_file(engine / name) for name in needed}
    return EngineInfo(engine, backend, dtype, "manifest.json", sha256_file(manifest_path), manifest, model_files)


def vdsp_size(info: EngineInfo) -> tuple[int, int]:
    """The input height and width a vamc engine's vdsp_params.json declares, once the file is the one its manifest
    records (a hand edit, or a file copied from another engine, would feed the card something else) and holds them
    as whole numbers of pixels."""
    path = info.path / "vdsp_params.json"
    recorded = (info.manifest or {}).get("vdsp_params")
    recorded = recorded.get("sha256") if isinstance(recorded, dict) else None
    if recorded != info.model_files["vdsp_params.json"]:
        raise PipelineError(f"{path}: content differs from the sha256 its manifest.json records "
                            f"({recorded or 'none'}); rebuild the engine (make fp16 int8 BACKEND=vamc)")
    try:
        vdsp = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not JSON ({exc}); rebuild the engine (make fp16 int8 BACKEND=vamc)") from None
    config = vdsp.get("OpConfig") if isinstance(vdsp, dict) else None
    if not isinstance(config, dict):
        raise PipelineError(f"{path}: expected an object with an \"OpConfig\" object (the vendor's fused-op "
                            f"format), got {json.dumps(vdsp)[:60]}; rebuild the engine (make fp16 int8 BACKEND=vamc)")
    size = []
    for key in ("IimageHeight", "IimageWidth"):
        value = config.get(key)
        if type(value) is not int or value <= 0:
            raise PipelineError(f"{path}: OpConfig.{key} is {json.dumps(value) if key in config else 'missing'}, "
                                f"expected a whole number of pixels > 0; rebuild the engine (make fp16 int8 "
                                f"BACKEND=vamc)")
        size.append(value)
    return size[0], size[1]


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


class OnnxRunner(Runner):
    """ONNX Runtime on the CPU: the fp32 ONNX, or an ort engine's model.onnx. Input: the shared preprocessing."""

    def __init__(self, info: EngineInfo):
        from . import runtime
        self.info = info
        model = info.path if info.backend == "onnx" else info.path / "model.onnx"
        try:
            self.session = runtime.session(model)
        except Exception as exc:  # ORT raises its own exception types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"{model}: ONNX Runtime cannot load it ({first})") from None
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, cfg: BuildConfig, bgr: np.ndarray) -> np.ndarray:
        return apply_ops(cfg, bgr)

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: prepared})[0]
        return out.reshape(out.shape[-2:])


class VaststreamxRunner(Runner):
    """The vendor runtime on a VACC card, as the vendor's own samples drive it: vsx.Model on the prefix `mod`, the
    preprocessing op from vdsp_params.json (fused resize, BGR->RGB, (x - mean) / std on the card), a Graph and a
    Stream run synchronously. Its input is the image decoded by OpenCV, planar, labelled RGB_PLANAR as
    vdsp_params.json declares, prepared as the config's `pipeline.vsx` says:
    - input_order bgr (default): the channels as OpenCV decodes them, for the card's BGR2RGB to convert; rgb:
      converted to RGB on the host first, as the vendor's MODNet sample does;
    - resize host (default): resized to the model's size by the shared preprocessing's Resize, so every engine
      sees the same pixels; card: the full-size photo, resized by the card's fused op, as the vendor's sample does.
    Which of these the card needs is what `make hwcheck` settles. Written against the vendor's documented sample
    API; it has not run on hardware here (vaststreamx is not installable on these machines)."""

    def __init__(self, info: EngineInfo, device_id: int = 0):
        try:
            import vaststreamx as vsx  # noqa: F401 - vendor runtime, from Vastai's developer centre only
        except ImportError as exc:
            raise PipelineError(f"{info.path}: a vamc engine runs only on the vendor runtime vaststreamx, which does "
                                f"not import here ({exc}); install the vaststreamx wheel into .venv, and the driver, on a "
                                f"machine with a VACC card, or evaluate the ort engines (BACKEND=ort)") from None
        self.vsx = vsx
        self.info = info
        self.device_id = device_id
        self.height, self.width = vdsp_size(info)
        if vsx.set_device(device_id) != 0:
            raise PipelineError(f"vaststreamx: cannot open VACC device {device_id}")
        self.model = vsx.Model(str(info.path / "mod"), 1)
        self.model_op = vsx.ModelOperator(self.model)
        self.preproc_ops = vsx.Operator.load_ops_from_json_file(str(info.path / "vdsp_params.json"))
        if not self.preproc_ops:
            raise PipelineError(f"{info.path / 'vdsp_params.json'}: vaststreamx loaded no preprocessing op from it")
        self.graph = vsx.Graph(vsx.GraphOutputType.GRAPH_OUTPUT_TYPE_NCHW_HOST)
        self.graph.add_operators(*self.preproc_ops, self.model_op)
        self.stream = vsx.Stream(self.graph, vsx.StreamBalanceMode.ONCE)
        self.stream.register_operator_output(self.model_op)
        self.stream.build()

    def prepare(self, cfg: BuildConfig, bgr: np.ndarray) -> np.ndarray:
        resize = next(op for op in cfg.dataset.process_ops if isinstance(op, Resize))
        if tuple(resize.size) != (self.height, self.width):
            raise PipelineError(f"{cfg.source}: Resize {list(resize.size)} differs from the engine's vdsp input "
                                f"{self.height}x{self.width}")
        settings = cfg.pipeline.vsx
        image = bgr
        if settings.resize == "host":
            image = cv2.resize(image, (self.width, self.height), interpolation=INTERPOLATION[resize.interpolation])
        if settings.input_order == "rgb":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(image.transpose(2, 0, 1))  # planar, labelled RGB_PLANAR either way

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        vsx = self.vsx
        _, height, width = prepared.shape  # the model's size, or the photo's when the card resizes
        image = vsx.create_image(prepared, vsx.ImageFormat.RGB_PLANAR, width, height, self.device_id)
        outputs = self.stream.run_sync([image])
        alpha = np.asarray(vsx.as_numpy(outputs[0][0]), dtype=np.float32)
        return alpha.reshape(alpha.shape[-2:])

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None and hasattr(stream, "close_input"):
            stream.close_input()
            stream.wait_until_done()


def open_runner(engine: str | Path) -> Runner:
    info = describe(engine)
    if info.backend == "vamc":
        return VaststreamxRunner(info)
    return OnnxRunner(info)
