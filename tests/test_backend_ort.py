"""Reference backend: fp16 and streaming-calibrated QDQ int8 on ONNX Runtime, on the small-shape demo model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import INT8_CONFIG, small_config_dict, write_config
from pipeline import runtime
from pipeline.backends import build_engine
from pipeline.backends.ort import BINS, ActivationStats, kl_threshold
from pipeline.config import load_config
from pipeline.errors import PipelineError

SKIP = [0, 3]
# Bounds measured on a generated image with the demo checkpoint (random weights, far more sensitive to
# quantization than the trained MODNet), alpha in 0..1: fp16 max abs 0.011 (mean 0.001); int8 mean abs 0.124
# (max 0.63) with KL, which clips hard on these random activations, and 0.046 (max 0.25) with max calibration.
FP16_MAX_ABS = 0.02
INT8_KL_MEAN_ABS = 0.2
INT8_MAX_MEAN_ABS = 0.06


def no_progress(iterable, total=None):
    return iterable


def int8_config(tmp_path: Path, **quantize):
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 4
    raw["backend"]["quantize"].update({"skip_conv_layers": SKIP, **quantize})
    name = "_".join(f"{k}{v}" for k, v in quantize.items()) or "int8"
    return load_config(write_config(tmp_path / f"{name}.yaml", raw))


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    from pipeline.calibrate import make_calibration_set
    from pipeline.demo_data import write_demo_data
    tmp = tmp_path_factory.mktemp("ortcalib")
    write_demo_data(tmp / "PPM-100", count=5, seed=3, scale=0.15)
    make_calibration_set(int8_config(tmp), tmp / "PPM-100", tmp / "calib", tmp / "list.txt")
    return tmp / "calib"


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory, small_sim_onnx, calib_dir) -> Path:
    out = tmp_path_factory.mktemp("int8") / "engine"
    build_engine("ort", int8_config(out.parent), small_sim_onnx, calib_dir, out, no_progress)
    return out


def probe(calib_dir: Path) -> np.ndarray:
    return np.ascontiguousarray(np.load(calib_dir / "tensors.npy")[:1])


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_fp16_engine_runs_close_to_fp32(tmp_path, small_sim_onnx, small_config, calib_dir):
    out = tmp_path / "fp16"
    manifest = build_engine("ort", load_config(small_config), small_sim_onnx, None, out, no_progress)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert manifest["backend"] == "ort" and manifest["dtype"] == "fp16"
    assert json.loads((out / "manifest.json").read_text())["model"]["sha256"] == manifest["model"]["sha256"]
    model = onnx.load(str(out / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [w for n in model.graph.node if n.op_type == "Conv" for w in n.input[1:2]]
    assert all(initializers(model)[w].dtype == np.float16 for w in weights)
    x = probe(calib_dir)
    ref = runtime.run(runtime.session(small_sim_onnx), x)
    got = runtime.run(runtime.session(out / "model.onnx"), x)
    assert got.dtype == np.float32 and runtime.max_abs_diff(ref, got) < FP16_MAX_ABS


def test_int8_is_qdq_per_channel_with_skipped_convs_float(int8_engine, small_sim_onnx):
    model = onnx.load(str(int8_engine / "model.onnx"))
    inits = initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    original_convs = [n.name for n in onnx.load(str(small_sim_onnx)).graph.node if n.op_type == "Conv"]
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert sorted(convs) == sorted(original_convs)
    for index, name in enumerate(original_convs):
        conv = convs[name]
        if index in SKIP:
            assert inits[conv.input[1]].dtype == np.float32, name  # weight stays a float initializer
            continue
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)  # one scale per output channel
        act = producer[conv.input[0]]  # activation: Q -> DQ pair, symmetric int8
        assert act.op_type == "DequantizeLinear" and producer[act.input[0]].op_type == "QuantizeLinear"
        zero_point = inits[act.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    manifest = json.loads((int8_engine / "manifest.json").read_text())
    assert manifest["backend"] == "ort" and manifest["dtype"] == "int8"
    cal = manifest["calibration"]
    assert cal["images"] == 4 and "KL" in cal["method"] and cal["time_s"] > 0 and cal["peak_rss_mb"] > 0
    assert cal["skipped_conv_layers"] == {str(i): original_convs[i] for i in SKIP}


def test_int8_runs_close_to_fp32_and_rebuilds_identically(tmp_path, int8_engine, small_sim_onnx, calib_dir):
    x = probe(calib_dir)
    ref = runtime.run(runtime.session(small_sim_onnx), x)
    got = runtime.run(runtime.session(int8_engine / "model.onnx"), x)
    assert got.shape == ref.shape and np.mean(np.abs(got - ref)) < INT8_KL_MEAN_ABS
    again = tmp_path / "again"
    build_engine("ort", int8_config(tmp_path), small_sim_onnx, calib_dir, again, no_progress)
    assert (again / "model.onnx").read_bytes() == (int8_engine / "model.onnx").read_bytes()
    build_engine("ort", int8_config(tmp_path, calibrate_mode="max"), small_sim_onnx, calib_dir, tmp_path / "max",
                 no_progress)
    got = runtime.run(runtime.session(tmp_path / "max" / "model.onnx"), x)
    assert np.mean(np.abs(got - ref)) < INT8_MAX_MEAN_ABS


def test_per_tensor_and_other_modes(tmp_path, small_sim_onnx, calib_dir):
    cfg = int8_config(tmp_path, quantize_per_channel=False, calibrate_mode="percentile", calibrate_range=0.9999)
    build_engine("ort", cfg, small_sim_onnx, calib_dir, tmp_path / "pt", no_progress)
    model = onnx.load(str(tmp_path / "pt" / "model.onnx"))
    inits = initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    assert inits[producer[conv.input[1]].input[1]].size == 1  # one scale per tensor
    with pytest.raises(PipelineError, match="'mse' is not supported by the ort backend"):
        build_engine("ort", int8_config(tmp_path, calibrate_mode="mse"), small_sim_onnx, calib_dir,
                     tmp_path / "mse", no_progress)
    with pytest.raises(PipelineError, match="skip_conv_layers index 999 is out of range"):
        build_engine("ort", int8_config(tmp_path, skip_conv_layers=[999]), small_sim_onnx, calib_dir,
                     tmp_path / "bad", no_progress)
    assert not (tmp_path / "mse").exists() and not (tmp_path / "bad").exists()


def test_streaming_histogram_matches_one_pass():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0, s, 10_000).astype(np.float32) for s in (0.5, 1.0, 4.0, 2.0)]
    streamed = ActivationStats()
    for chunk in chunks:
        streamed.add(chunk, histogram=True)
    whole = np.concatenate(chunks)
    assert streamed.hist.sum() == whole.size and streamed.absmax == float(np.abs(whole).max())
    direct, _ = np.histogram(np.abs(whole), bins=BINS, range=(0, streamed.top))
    assert np.abs(streamed.hist - direct).sum() <= 4  # only float rounding at bin edges differs
    t = kl_threshold(streamed.hist, streamed.top, streamed.absmax)
    assert 0 < t <= streamed.absmax
