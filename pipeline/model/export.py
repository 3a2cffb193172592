"""Stage 1: official checkpoint -> static-shape ONNX."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import atomic_path
from .checkpoint import load_modnet

OUTPUT_NAME = "output"


def export_onnx(cfg: BuildConfig, ckpt: str | Path, out: str | Path) -> None:
    model = load_modnet(ckpt)
    dummy = torch.zeros(cfg.input_shape, dtype=torch.float32)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose: it gives a plain, byte-deterministic graph with no
            # onnxscript dependency; its deprecation notice is not news to the user.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, export_params=True,
                                  opset_version=cfg.pipeline.opset, do_constant_folding=True,
                                  input_names=[cfg.frontend.input_name], output_names=[OUTPUT_NAME])
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise PipelineError(f"export produced an invalid ONNX model: {str(exc).splitlines()[0]}") from None
