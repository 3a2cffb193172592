"""The vamc backend's runner: a vamc engine on a VACC card through the vendor runtime vaststreamx."""
from __future__ import annotations

import json

import cv2
import numpy as np

from ...core import layout
from ...core.config import BuildConfig, Resize
from ...core.errors import PipelineError
from ...data.preprocess import INTERPOLATION
from ..runners import EngineInfo, Runner


def vdsp_size(info: EngineInfo) -> tuple[int, int]:
    """The input height and width a vamc engine's vdsp_params.json declares, once the file is the one its manifest
    records (a hand edit, or a file copied from another engine, would feed the card something else) and holds them
    as whole numbers of pixels."""
    path = info.path / layout.VDSP_PARAMS
    recorded = (info.manifest or {}).get("vdsp_params")
    recorded = recorded.get("sha256") if isinstance(recorded, dict) else None
    if recorded != info.model_files[layout.VDSP_PARAMS]:
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
        self.preproc_ops = vsx.Operator.load_ops_from_json_file(str(info.path / layout.VDSP_PARAMS))
        if not self.preproc_ops:
            raise PipelineError(f"{info.path / layout.VDSP_PARAMS}: vaststreamx loaded no preprocessing op from it")
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
