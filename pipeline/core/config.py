"""The single loader of build configs: vamc's YAML schema plus our own `pipeline:` section.

Every shape, mean and std the pipeline uses comes from the dataclasses built here. The vamc part of the file is
also kept verbatim (`BuildConfig.vamc`) so the vamc backend can pass through keys we do not interpret.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import PipelineError
from .names import name_problem

CALIBRATE_MODES = ("kl_divergence", "max", "percentile", "mse")
CONV_NUMBERINGS = ("vamc", "onnx")  # how skip_conv_layers counts Convs (pipeline/backends/ort/numbering.py)
BACKEND_DTYPES = ("fp16", "int8")
FRONTEND_TYPES = ("onnx",)
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")
CVT_CODES = ("COLOR_BGR2RGB", "COLOR_RGB2BGR")
VSX_INPUT_ORDERS = ("bgr", "rgb")
VSX_RESIZES = ("host", "card")


@dataclass(frozen=True)
class Frontend:
    type: str
    checkpoint: str
    input_name: str
    shape: tuple[int, int, int, int]
    dtype: str


@dataclass(frozen=True)
class Quantize:
    calibrate_mode: str
    quantize_per_channel: bool
    calibrate_range: float | None
    skip_conv_layers: tuple[int, ...]
    calibrate_chunk_by: int | None
    overflow_adaptive: int | None


@dataclass(frozen=True)
class Backend:
    type: str
    dtype: str
    compile: dict
    quantize: Quantize | None


@dataclass(frozen=True)
class DecodeImage:
    pass


@dataclass(frozen=True)
class Resize:
    size: tuple[int, int]  # (H, W), as vamc writes it
    interpolation: str


@dataclass(frozen=True)
class Normalize:
    div255: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class CvtColor:
    code: str


@dataclass(frozen=True)
class ToTensor:
    pass


ProcessOp = DecodeImage | Resize | Normalize | CvtColor | ToTensor


@dataclass(frozen=True)
class Dataset:
    type: str
    path: str
    suffix: str
    get_data_num: int
    process_ops: tuple[ProcessOp, ...]


@dataclass(frozen=True)
class Gate:
    """Largest allowed change of an engine's metrics against fp32 on the same data."""
    max_mse_increase: float
    max_mad_increase: float
    max_miou_drop: float


@dataclass(frozen=True)
class Vsx:
    """How the VaststreamxRunner feeds a vamc engine on the card (settled by `make hwcheck`)."""
    input_order: str  # bgr: planar as OpenCV decodes it (the card's BGR2RGB converts); rgb: converted on the host
    resize: str  # host: resized to the model size here, like every engine; card: full-size photo, the card resizes


@dataclass(frozen=True)
class Tune:
    """`python -m pipeline tune`: its split of the images outside the calibration subset (None: half each), its
    target against fp32 (upper 95% bounds of the changes), its budget of builds and of Convs kept float."""
    selection_images: int | None
    confirmation_images: int | None
    max_mse_increase: float
    max_mad_increase: float
    max_miou_drop: float
    max_builds: int
    max_float_layers: int
    # whether the search also tries every calibration bias-corrected: off by default, since it costs one correction
    # per calibration (7), each about 10 minutes at 480x288 (3 rounds): an hour more than the rest of the tune
    # (docs/tuning.md); it also makes analyze add the corrected model's rows (one correction)
    bias_correction: bool = False


# tune compares at most this many candidates with the input config: Holm's smallest level is then 0.05 / 100, which
# the studentized bootstrap's 9999 resamples still resolve (pipeline/tuning/statistics.py)
TUNE_MAX_BUILDS = 100
TUNE_DEFAULTS = {"selection_images": None, "confirmation_images": None, "max_mse_increase": 0.002,
                 "max_mad_increase": 0.002, "max_miou_drop": 0.003, "max_builds": 40, "max_float_layers": 5,
                 "bias_correction": False}


@dataclass(frozen=True)
class PipelineSettings:
    seed: int
    opset: int
    parity_tolerance: float
    gate: Gate
    conv_numbering: str
    vsx: Vsx
    tune: Tune
    # False: int8 builds from the simplified ONNX; "empirical": from the bias-corrected one (`python -m pipeline
    # correct`, pipeline/backends/ort/bias_correction.py)
    bias_correction: bool | str = False


@dataclass(frozen=True)
class BuildConfig:
    source: Path
    name: str
    frontend: Frontend
    backend: Backend
    dataset: Dataset
    workspace_path: str
    pipeline: PipelineSettings
    vamc: dict  # the file's vamc sections as written, without `pipeline:`

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.frontend.shape

    @property
    def height(self) -> int:
        return self.frontend.shape[2]

    @property
    def width(self) -> int:
        return self.frontend.shape[3]

    @property
    def normalize(self) -> Normalize:
        return next(op for op in self.dataset.process_ops if isinstance(op, Normalize))


class _Reader:
    """Walks the raw YAML, turning every problem into one line that names the file and the key path."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, where: str, message: str) -> PipelineError:
        return PipelineError(f"config error: {self.source}: {where}: {message}")

    def dict_(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        return value

    def mapping(self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        self.dict_(value, where)
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            known = ", ".join(required + optional)
            raise self.fail(_join(where, str(unknown[0])), f"unknown key (known here: {known})")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(_join(where, missing[0]), "missing required key")
        return value

    def str_(self, value: Any, where: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def file_name(self, value: Any, where: str) -> str:
        """A string the pipeline joins to a folder (engine and list names, image suffixes): it must stay inside."""
        problem = name_problem(self.str_(value, where))
        if problem:
            raise self.fail(where, f"{value!r} {problem}")
        return value

    def int_(self, value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(where, f"must be <= {maximum}, got {value}")
        return value

    def float_(self, value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) else ""
            raise self.fail(where, f"expected a number, got {_kind(value)}{hint}")
        value = float(value)
        if not math.isfinite(value):  # NaN passes every range check below, so a limit of .nan could never fail
            raise self.fail(where, f"must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(where, f"must be within [{low}, {high}], got {value}")
        return value

    def bool_(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_kind(value)}")
        return value

    def list_(self, value: Any, where: str, length: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {_kind(value)}")
        if length is not None and len(value) != length:
            raise self.fail(where, f"expected {length} items, got {len(value)}")
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _frontend(r: _Reader, raw: Any) -> Frontend:
    d = r.mapping(raw, "frontend", ("type", "checkpoint", "shape"), ("dtype",))
    shapes = r.dict_(d["shape"], "frontend.shape")
    if len(shapes) != 1:
        raise r.fail("frontend.shape", f"expected exactly one input (MODNet has one), got {len(shapes)}")
    (input_name, dims), = shapes.items()
    where = f"frontend.shape.{input_name}"
    dims = r.list_(dims, where, 4)
    shape = tuple(r.int_(v, f"{where}[{i}]", minimum=1) for i, v in enumerate(dims))
    if shape[0] != 1:
        raise r.fail(f"{where}[0]", f"batch size must be 1 (calibration and evaluation feed one image at a time), "
                                    f"got {shape[0]}")
    if shape[1] != 3:
        raise r.fail(f"{where}[1]", f"MODNet takes 3 channels (RGB), got {shape[1]}")
    if shape[2] % 32 or shape[3] % 32:
        raise r.fail(where, f"height and width must be multiples of 32 (MODNet downsamples 32x), got {shape[2]}x{shape[3]}")
    return Frontend(
        type=r.str_(d["type"], "frontend.type", FRONTEND_TYPES),
        checkpoint=r.str_(d["checkpoint"], "frontend.checkpoint"),
        input_name=input_name,
        shape=shape,
        dtype=r.str_(d.get("dtype", "fp32"), "frontend.dtype", ("fp32",)),
    )


def _quantize(r: _Reader, raw: Any) -> Quantize:
    where = "backend.quantize"
    d = r.mapping(raw, where, ("calibrate_mode",), ("quantize_per_channel", "calibrate_range", "skip_conv_layers",
                                                      "calibrate_chunk_by", "overflow_adaptive"))
    mode = r.str_(d["calibrate_mode"], f"{where}.calibrate_mode", CALIBRATE_MODES)
    calibrate_range = None
    if "calibrate_range" in d:
        calibrate_range = r.float_(d["calibrate_range"], f"{where}.calibrate_range", 0.5, 1.0)
    elif mode == "percentile":
        raise r.fail(f"{where}.calibrate_range", "required when calibrate_mode is percentile (e.g. 0.99999)")
    skip = r.list_(d.get("skip_conv_layers", []), f"{where}.skip_conv_layers")
    skip = tuple(r.int_(v, f"{where}.skip_conv_layers[{i}]", minimum=0) for i, v in enumerate(skip))
    if len(set(skip)) != len(skip):
        raise r.fail(f"{where}.skip_conv_layers", f"repeated index in {list(skip)}")
    optional_int = {k: (r.int_(d[k], f"{where}.{k}") if k in d else None)
                    for k in ("calibrate_chunk_by", "overflow_adaptive")}
    return Quantize(
        calibrate_mode=mode,
        quantize_per_channel=r.bool_(d.get("quantize_per_channel", False), f"{where}.quantize_per_channel"),
        calibrate_range=calibrate_range,
        skip_conv_layers=tuple(sorted(skip)),
        **optional_int,
    )


def _backend(r: _Reader, raw: Any) -> Backend:
    d = r.mapping(raw, "backend", ("type", "dtype"), ("compile", "quantize"))
    dtype = r.str_(d["dtype"], "backend.dtype", BACKEND_DTYPES)
    compile_ = r.mapping(d.get("compile", {}), "backend.compile", (),
                         ("data_transport_mode", "cluster_mode", "opt_level"))
    for key, value in compile_.items():
        r.int_(value, f"backend.compile.{key}", minimum=0)
    quantize = None
    if dtype == "int8":
        if "quantize" not in d:
            raise r.fail("backend.quantize", "missing: an int8 build needs calibrate_mode and friends")
        quantize = _quantize(r, d["quantize"])
    elif "quantize" in d:
        r.dict_(d["quantize"], "backend.quantize")  # vamc ignores it for fp16; so do we
    return Backend(type=r.str_(d["type"], "backend.type", ("tvm_vacc",)), dtype=dtype, compile=dict(compile_),
                   quantize=quantize)


def _numbers3(r: _Reader, value: Any, where: str, positive: bool = False) -> tuple[float, float, float]:
    items = r.list_(value, where, 3)
    out = tuple(r.float_(v, f"{where}[{i}]") for i, v in enumerate(items))
    if positive and any(v <= 0 for v in out):
        raise r.fail(where, f"every std must be > 0 (a std of 0 divides by zero, a negative one flips the input): "
                            f"{list(out)}")
    return out


def _process_op(r: _Reader, raw: Any, where: str) -> ProcessOp:
    if not isinstance(raw, dict) or "type" not in raw:
        raise r.fail(where, "expected a mapping with a `type`")
    kind = raw["type"]
    if kind == "DecodeImage":
        r.mapping(raw, where, ("type",))
        return DecodeImage()
    if kind == "Resize":
        d = r.mapping(raw, where, ("type", "size"), ("interpolation",))
        size = r.list_(d["size"], f"{where}.size", 2)
        return Resize(size=tuple(r.int_(v, f"{where}.size[{i}]", minimum=1) for i, v in enumerate(size)),
                      interpolation=r.str_(d.get("interpolation", "bilinear"), f"{where}.interpolation", INTERPOLATIONS))
    if kind == "Normalize":
        d = r.mapping(raw, where, ("type", "mean", "std"), ("div255",))
        return Normalize(div255=r.bool_(d.get("div255", True), f"{where}.div255"),
                         mean=_numbers3(r, d["mean"], f"{where}.mean"),
                         std=_numbers3(r, d["std"], f"{where}.std", positive=True))
    if kind == "CvtColor":
        d = r.mapping(raw, where, ("type", "code"))
        return CvtColor(code=r.str_(d["code"], f"{where}.code", CVT_CODES))
    if kind == "ToTensor":
        r.mapping(raw, where, ("type",))
        return ToTensor()
    raise r.fail(f"{where}.type", f"unknown or unsupported op {kind!r} (supported: DecodeImage, Resize, Normalize, "
                                  f"CvtColor, ToTensor)")


def _dataset(r: _Reader, raw: Any, shape: tuple[int, int, int, int]) -> Dataset:
    d = r.mapping(raw, "dataset", ("type", "path", "sampler", "process_ops"))
    s = r.mapping(d["sampler"], "dataset.sampler", ("suffix", "get_data_num"))
    raw_ops = r.list_(d["process_ops"], "dataset.process_ops")
    ops = tuple(_process_op(r, op, f"dataset.process_ops[{i}]") for i, op in enumerate(raw_ops))
    if not ops or not isinstance(ops[0], DecodeImage):
        raise r.fail("dataset.process_ops[0]", "the first op must be DecodeImage")
    if not isinstance(ops[-1], ToTensor):
        raise r.fail(f"dataset.process_ops[{len(ops) - 1}]", "the last op must be ToTensor")
    for kind in (Resize, Normalize):
        if sum(isinstance(op, kind) for op in ops) != 1:
            raise r.fail("dataset.process_ops", f"expected exactly one {kind.__name__} op")
    resize = next(op for op in ops if isinstance(op, Resize))
    if resize.size != shape[2:]:
        raise r.fail("dataset.process_ops", f"Resize size {list(resize.size)} does not match the input shape's "
                                            f"[H, W] {list(shape[2:])}")
    return Dataset(
        type=r.str_(d["type"], "dataset.type"),
        path=r.str_(d["path"], "dataset.path"),
        suffix=r.file_name(s["suffix"], "dataset.sampler.suffix"),
        get_data_num=r.int_(s["get_data_num"], "dataset.sampler.get_data_num", minimum=1),
        process_ops=ops,
    )


def _pipeline(r: _Reader, raw: Any) -> PipelineSettings:
    # The gate's limits are required: a default loose enough for any config would be a gate that never fails.
    d = r.mapping(raw if raw is not None else {}, "pipeline", ("gate",), ("seed", "opset", "parity_tolerance",
                                                                        "conv_numbering", "vsx", "tune",
                                                                        "bias_correction"))
    limits = ("max_mse_increase", "max_mad_increase", "max_miou_drop")
    g = r.mapping(d["gate"], "pipeline.gate", limits)
    gate = Gate(**{k: r.float_(g[k], f"pipeline.gate.{k}", 0.0, 1.0) for k in limits})
    v = r.mapping(d.get("vsx", {}), "pipeline.vsx", (), ("input_order", "resize"))
    vsx = Vsx(input_order=r.str_(v.get("input_order", "bgr"), "pipeline.vsx.input_order", VSX_INPUT_ORDERS),
              resize=r.str_(v.get("resize", "host"), "pipeline.vsx.resize", VSX_RESIZES))
    return PipelineSettings(
        seed=r.int_(d.get("seed", 0), "pipeline.seed", minimum=0),
        opset=r.int_(d.get("opset", 17), "pipeline.opset", minimum=11),
        parity_tolerance=r.float_(d.get("parity_tolerance", 1e-4), "pipeline.parity_tolerance", 0.0, 1.0),
        gate=gate,
        conv_numbering=r.str_(d.get("conv_numbering", "vamc"), "pipeline.conv_numbering", CONV_NUMBERINGS),
        vsx=vsx,
        tune=_tune(r, d.get("tune", {})),
        bias_correction=_bias_correction(r, d.get("bias_correction", False)),
    )


def _bias_correction(r: _Reader, value: Any) -> bool | str:
    # YAML reads yes/on/true as True: a bare boolean other than false is refused, not taken for a mode.
    if value is False or value == "empirical":
        return value
    raise r.fail("pipeline.bias_correction", f"{_kind(value)} is not false or empirical (bias correction is off "
                                             f"unless written as `bias_correction: empirical`)")


def _tune(r: _Reader, raw: Any) -> Tune:
    t = {**TUNE_DEFAULTS, **r.mapping(raw, "pipeline.tune", (), tuple(TUNE_DEFAULTS))}
    images = {key: None if t[key] is None else r.int_(t[key], f"pipeline.tune.{key}", minimum=1)
              for key in ("selection_images", "confirmation_images")}
    return Tune(**images,
                max_mse_increase=r.float_(t["max_mse_increase"], "pipeline.tune.max_mse_increase", 0.0, 1.0),
                max_mad_increase=r.float_(t["max_mad_increase"], "pipeline.tune.max_mad_increase", 0.0, 1.0),
                max_miou_drop=r.float_(t["max_miou_drop"], "pipeline.tune.max_miou_drop", 0.0, 1.0),
                max_builds=r.int_(t["max_builds"], "pipeline.tune.max_builds", minimum=1,
                                  maximum=TUNE_MAX_BUILDS),
                max_float_layers=r.int_(t["max_float_layers"], "pipeline.tune.max_float_layers", minimum=0),
                bias_correction=r.bool_(t["bias_correction"], "pipeline.tune.bias_correction"))


def parse_config(raw: Any, source: str | Path) -> BuildConfig:
    r = _Reader(Path(source))
    d = r.mapping(raw, "", ("name", "frontend", "backend", "dataset", "workspace"), ("pipeline",))
    frontend = _frontend(r, d["frontend"])
    workspace = r.mapping(d["workspace"], "workspace", ("path",))
    vamc = copy.deepcopy({k: v for k, v in d.items() if k != "pipeline"})
    return BuildConfig(
        source=Path(source),
        name=r.file_name(d["name"], "name"),
        frontend=frontend,
        backend=_backend(r, d["backend"]),
        dataset=_dataset(r, d["dataset"], frontend.shape),
        workspace_path=r.str_(workspace["path"], "workspace.path"),
        pipeline=_pipeline(r, d.get("pipeline")),
        vamc=vamc,
    )


def load_config(path: str | Path) -> BuildConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"config error: {path}: no such file (the configs live in build_configs/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"config error: {path}: cannot read it: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"config error: {path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise PipelineError(f"config error: {path} is empty (copy one of build_configs/*.yaml to start from)")
    return parse_config(raw, path)


# `make hwcheck` (pipeline/stages/hwcheck.py): how its verdicts read the differences it measures, alpha in 0..1.
# The fp16 engine on the right input agrees with ONNX Runtime fp32 to well within this mean |alpha difference|
# (the ort fp16 engine is at 0.0025 on the random-weights demo model, the worst case we have measured):
HWCHECK_AGREE_MEAN_ABS = 0.01
# ...and the wrong channel order must be at least this many times further from fp32 than the right one:
HWCHECK_SEPARATION = 10.0
# Numbering: the vamc engine must be near one reference engine, within this share of the distance between the
# two references (closer than that, it is also at least twice as far from the other one, by the triangle
# inequality; a card further from both behaves like neither, and which it is "closer" to says nothing), closer to
# it on this share of the images, and the references must differ by at least this much at all:
HWCHECK_NUMBERING_NEAR = 1 / 3
HWCHECK_NUMBERING_IMAGE_SHARE = 0.8
HWCHECK_NUMBERING_MIN_GAP = 1.0e-3
# Prediction: our reference int8 (ort) stands in for the card's int8 only when the two differ by at most this share
# of how far our int8 is from fp32. Tuning ranks settings by their int8 error; an emulation further than that from
# the card would rank them by errors the card does not make.
HWCHECK_PREDICTS = 1 / 4
