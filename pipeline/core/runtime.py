"""ONNX files, ONNX Runtime sessions and seeded probe inputs, shared by every stage that runs a model on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .config import BuildConfig
from .errors import PipelineError


def read_onnx(path: str | Path, hint: str) -> onnx.ModelProto:
    """The model in PATH, checked whole; a truncated or corrupt file is one line naming it (HINT: how to redo it)."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError: both mean the file is unusable
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: not a valid ONNX model ({first}); {hint}") from None
    return model


def check_model_input(cfg: BuildConfig, model: onnx.ModelProto, source) -> None:
    """MODEL takes the config's one input, by name and static shape (the simplified ONNX of CFG's model)."""
    found = [(i.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    expected = [(cfg.frontend.input_name, list(cfg.input_shape))]
    if found != expected:
        raise PipelineError(f"{source}: takes {found[0][0] if found else 'no input'!r} "
                            f"{found[0][1] if found else []}, but {cfg.source} builds "
                            f"{expected[0][0]!r} {expected[0][1]}: not the simplified ONNX of this config "
                            f"(`make simplify CONFIG={cfg.source}` writes it)")


def session(model: str | Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's warnings about unused initializers are noise here
    # ORT's pool threads spin between ops by default: with evaluate's loader threads, or a second process, that
    # burns the cores the work needs (same images/s alone, a sixth less wall time for two test processes; no byte
    # changes, the arithmetic is the same)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


def probe_inputs(shape: tuple[int, ...], seed: int, count: int) -> list[np.ndarray]:
    """Inputs in the range preprocessing produces ([-1, 1] for MODNet's normalisation), reproducible from SEED."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) for _ in range(count)]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
