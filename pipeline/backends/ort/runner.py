"""The reference backend's runner: an ort engine's model.onnx (or the simplified fp32 ONNX) on ONNX Runtime."""
from __future__ import annotations

import numpy as np

from ...core import layout
from ...core.config import BuildConfig
from ...core.errors import PipelineError
from ...data.preprocess import apply_ops
from ..runners import EngineInfo, Runner


class OnnxRunner(Runner):
    """ONNX Runtime on the CPU: the fp32 ONNX, or an ort engine's model.onnx. Input: the shared preprocessing."""

    def __init__(self, info: EngineInfo):
        from ...core import runtime
        self.info = info
        model = info.path if info.backend == "onnx" else info.path / layout.ORT_MODEL
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
