"""A FAKE of Vastai's vendor runtime `vaststreamx`, for tests only: no card, no vendor code, nothing measured.

`install(monkeypatch, card)` puts it in sys.modules as `vaststreamx`, so VaststreamxRunner imports it. It offers
the calls the runner makes (the vendor's documented sample API), records every one in `module.calls`, and
computes each output on the CPU from a known model:
- the fused preprocessing op of the engine's vdsp_params.json, done as `Card` says the hardware behaves:
  resize to the op's output size (`Card.resize`, BILINEAR_CV = cv2.INTER_LINEAR), ColorCvtCode BGR2RGB applied
  or not (`Card.converts`), (x - Mean) / Std (after x / 255 for DIV255_MINUSMEAN_DIVSTD), or no normalisation at
  all (`Card.normalises=False`: a card that feeds the model something else entirely);
- then an ONNX model on ONNX Runtime: `Card.models[engine folder]` if the test names one, else the simplified
  ONNX the engine was built from (its manifest's `onnx.path`); plus `Card.noise[engine folder]` (uniform, seeded).
"""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cv2
import numpy as np


@dataclass
class Card:
    converts: bool = True  # the fused op swaps the planes (BGR2RGB) whatever the image is labelled
    resize: int = cv2.INTER_LINEAR
    normalises: bool = True
    models: dict[Path, Path] = field(default_factory=dict)  # engine folder -> ONNX it runs
    noise: dict[Path, float] = field(default_factory=dict)  # engine folder -> amplitude of alpha noise


def install(monkeypatch, card: Card) -> types.ModuleType:
    module = make_module(card)
    monkeypatch.setitem(sys.modules, "vaststreamx", module)
    return module


def make_module(card: Card) -> types.ModuleType:
    from pipeline.core import runtime
    vsx = types.ModuleType("vaststreamx")
    vsx.__doc__ = "FAKE vaststreamx (tests/fake_vaststreamx.py)"
    vsx.calls = calls = []
    rng = np.random.default_rng(0)

    class ImageFormat(Enum):
        RGB_PLANAR = "RGB_PLANAR"

    class GraphOutputType(Enum):
        GRAPH_OUTPUT_TYPE_NCHW_HOST = "NCHW_HOST"

    class StreamBalanceMode(Enum):
        ONCE = "ONCE"

    def set_device(device_id):
        calls.append(("set_device", device_id))
        return 0

    class Model:
        def __init__(self, prefix, batch):
            calls.append(("Model", prefix, batch))
            self.engine = Path(prefix).parent
            onnx_path = card.models.get(self.engine) or \
                json.loads((self.engine / "manifest.json").read_text())["onnx"]["path"]
            self.session = runtime.session(onnx_path)
            self.noise = card.noise.get(self.engine, 0.0)

    class ModelOperator:
        def __init__(self, model):
            calls.append(("ModelOperator",))
            self.model = model

    class FusedOp:
        def __init__(self, spec):
            self.type, self.config = spec["OpType"], spec["OpConfig"]

        def apply(self, image):
            c = self.config
            hwc = image.array.transpose(1, 2, 0)
            hwc = cv2.resize(hwc, (c["OimageWidth"], c["OimageHeight"]), interpolation=card.resize)
            if card.converts and c["ColorCvtCode"] == "BGR2RGB":
                hwc = hwc[:, :, ::-1]
            x = hwc.astype(np.float64)
            if card.normalises:
                if c["NormaType"] == "DIV255_MINUSMEAN_DIVSTD":
                    x = x / 255.0
                x = (x - np.asarray(c["Mean"])) / np.asarray(c["Std"])
            return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)

    class Operator:
        @staticmethod
        def load_ops_from_json_file(path):
            calls.append(("load_ops_from_json_file", path))
            spec = json.loads(Path(path).read_text())
            assert spec["OpType"] == "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR", spec["OpType"]
            return [FusedOp(spec)]

    class Graph:
        def __init__(self, output_type):
            calls.append(("Graph", output_type))
            self.ops = []

        def add_operators(self, *ops):
            calls.append(("add_operators", [type(op).__name__ for op in ops]))
            self.ops.extend(ops)

    class Image:
        def __init__(self, array, fmt, width, height):
            self.array, self.format, self.width, self.height = array, fmt, width, height

    def create_image(array, fmt, width, height, device_id):
        calls.append(("create_image", fmt, width, height, device_id, array.copy()))
        assert array.dtype == np.uint8 and array.shape == (3, height, width), (array.dtype, array.shape)
        return Image(array, fmt, width, height)

    class Stream:
        def __init__(self, graph, mode):
            calls.append(("Stream", mode))
            self.graph = graph

        def register_operator_output(self, op):
            calls.append(("register_operator_output",))
            self.model_op = op

        def build(self):
            calls.append(("build",))

        def run_sync(self, images):
            calls.append(("run_sync", len(images)))
            preprocess, model = self.graph.ops[0], self.model_op.model
            outputs = []
            for image in images:
                assert image.format is ImageFormat.RGB_PLANAR
                alpha = runtime.run(model.session, preprocess.apply(image))
                if model.noise:
                    alpha = alpha + rng.uniform(-model.noise, model.noise, alpha.shape).astype(np.float32)
                outputs.append([alpha])
            return outputs

        def close_input(self):
            calls.append(("close_input",))

        def wait_until_done(self):
            calls.append(("wait_until_done",))

    def as_numpy(tensor):
        return np.asarray(tensor)

    for name, value in list(locals().items()):
        if name not in ("vsx", "card", "calls", "rng", "runtime"):
            setattr(vsx, name, value)
    return vsx
