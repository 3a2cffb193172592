"""Reference backend: fp16, and int8 quantized where TVM quantizes, on the small-shape demo model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import INT8_CONFIG, StubProgress, small_config_dict, write_config
from pipeline.backends.engine import build_engine
from pipeline.backends.ort import fp16, qdq, stats, thresholds
from pipeline.backends.ort.numbering import conv_order
from pipeline.core import runtime
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError

SKIP = [0, 54]  # 54: f_branch.conv_lr4x in vamc's numbering, hr_branch.tohr_enc2x in ONNX order
FP16_MAX_ABS = 0.02  # measured 0.011 on a generated image with the demo checkpoint


def int8_config(tmp_path: Path, numbering: str = "vamc", **quantize):
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 4
    raw["backend"]["quantize"].update({"skip_conv_layers": SKIP, **quantize})
    raw["pipeline"]["conv_numbering"] = numbering
    name = "_".join(f"{k}{v}" for k, v in quantize.items()) or "int8"
    return load_config(write_config(tmp_path / f"{name}_{numbering}.yaml", raw))


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    from pipeline.demo.data import write_demo_data
    from pipeline.stages.calibrate import make_calibration_set
    tmp = tmp_path_factory.mktemp("ortcalib")
    write_demo_data(tmp / "PPM-100", count=5, seed=3, scale=0.15)
    make_calibration_set(int8_config(tmp), tmp / "PPM-100", tmp / "calib", tmp / "list.txt")
    return tmp / "calib"


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory, small_sim_onnx, calib_dir) -> Path:
    out = tmp_path_factory.mktemp("int8") / "engine"
    build_engine("ort", int8_config(out.parent), small_sim_onnx, calib_dir, out, StubProgress())
    return out


def probe(calib_dir: Path) -> np.ndarray:
    return np.ascontiguousarray(np.load(calib_dir / "tensors.npy")[:1])


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_fp16_engine_runs_close_to_fp32(tmp_path, small_sim_onnx, small_config, calib_dir):
    out = tmp_path / "fp16"
    manifest = build_engine("ort", load_config(small_config), small_sim_onnx, None, out, StubProgress())
    assert sorted(p.name for p in out.iterdir()) == [".pipeline-stage", "manifest.json", "model.onnx"]
    assert (out / ".pipeline-stage").read_text() == "build\n"
    assert manifest["backend"] == "ort" and manifest["dtype"] == "fp16"
    kept = manifest["fp16"]["kept_float32_op_types"]  # on x86, every op type (see fp16.py)
    assert kept == sorted(set(kept)) and set(kept) <= {n.op_type for n in onnx.load(str(small_sim_onnx)).graph.node}
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


def test_fp16_reports_ops_onnx_runtime_runs_in_float32():
    """Acos has no float16 CPU kernel: ONNX Runtime wraps it in float32 Casts itself, and that is what is read
    back (the old fallback waited for a load error that never comes)."""
    node = helper.make_node("Acos", ["x"], ["y"], name="acos")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fp16.float32_fallback_ops(fp16.optimized_graph(model.SerializeToString())) == ["Acos"]
    x = np.array([[-0.5, 0.0, 0.5, 1.0]], np.float16)
    np.testing.assert_allclose(runtime.run(runtime.session(model.SerializeToString()), x), np.arccos(x), atol=2e-3)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def quantized_from(model: onnx.ModelProto, tensor: str) -> str | None:
    """The float tensor a DequantizeLinear output came from through Clip -> QuantizeLinear, else None."""
    by_output = producers(model)
    dq = by_output.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = by_output[dq.input[0]]
    clip = by_output[q.input[0]]
    assert q.op_type == "QuantizeLinear" and clip.op_type == "Clip"
    return clip.input[0]


def test_int8_placement_follows_tvm(int8_engine, small_sim_onnx):
    original = onnx.load(str(small_sim_onnx))
    model = onnx.load(str(int8_engine / "model.onnx"))
    inits = initializers(model)
    by_output = producers(model)
    skipped = {conv_order(original)[i] for i in SKIP}
    assert "/f_branch/conv_lr4x/layers/layers.0/Conv" in skipped
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert len(convs) == 69
    for name, conv in convs.items():
        original_conv = next(n for n in original.graph.node if n.name == name)
        if name in skipped:  # input and weight float, as in the fp32 model
            assert list(conv.input) == list(original_conv.input), name
            assert inits[conv.input[1]].dtype == np.float32
            continue
        assert quantized_from(model, conv.input[0]) == original_conv.input[0], name
        dq = by_output[conv.input[1]]
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)  # per output channel
        assert np.abs(weight).max() <= 127 and not inits[dq.input[2]].any()
        w = initializers(original)[original_conv.input[1]]
        np.testing.assert_allclose(scale, np.abs(w).reshape(len(w), -1).max(axis=1) / 128, rtol=1e-6)
        assert conv.input[2:] == original_conv.input[2:]  # the bias stays float
    for node in model.graph.node:
        if node.op_type in ("Add", "Mul"):  # the residual adds and the SE block's multiply: both inputs
            assert all(quantized_from(model, i) is not None for i in node.input), node.name
        elif node.op_type not in ("Conv", "Clip", "QuantizeLinear", "DequantizeLinear"):
            assert all(quantized_from(model, i) is None for i in node.input), node.name
    sigmoid = by_output["output"]
    assert sigmoid.op_type == "Sigmoid" and by_output[sigmoid.input[0]].op_type == "Conv"
    assert sum(n.op_type == "Mul" for n in model.graph.node) == 1
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == \
        len(qdq.quantized_tensors(original, skipped))


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_int8_manifest_records_every_quantized_tensor(int8_engine, small_sim_onnx, calib_dir):
    manifest = json.loads((int8_engine / "manifest.json").read_text())
    cal = manifest["calibration"]
    assert manifest["backend"] == "ort" and manifest["dtype"] == "int8"
    assert cal["images"] == 4 and cal["calibrate_mode"] == "kl_divergence" and cal["conv_numbering"] == "vamc"
    original = onnx.load(str(small_sim_onnx))
    assert cal["skipped_conv_layers"] == {str(i): conv_order(original)[i] for i in SKIP}
    skipped = set(cal["skipped_conv_layers"].values())
    assert sorted(cal["tensors"]) == sorted(qdq.quantized_tensors(original, skipped))
    # the thresholds are those of an independent collection; the model's scales are threshold / 128
    collected = stats.collect(original, list(cal["tensors"]), calib_dir / "tensors.npy", StubProgress(), "calibration")
    model = onnx.load(str(int8_engine / "model.onnx"))
    inits = initializers(model)
    for name, row in cal["tensors"].items():
        s = collected.tensors[name]
        assert row["absmax"] == s.absmax
        assert row["threshold"] == thresholds.kl_divergence(s.hist, s.absmax)
        assert row["clipped_share"] == thresholds.clipped_share(s.hist, s.absmax, row["threshold"])
        assert inits[f"{name}/scale"] == np.float32(row["threshold"] / 128)
        assert inits[f"{name}/clip_max"] == np.float32(127 * np.float32(row["threshold"] / 128))
    assert any(row["clipped_share"] > 0 for row in cal["tensors"].values())  # KL clips


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_int8_rebuilds_identically_and_numbering_switches_the_skipped_conv(tmp_path, int8_engine, small_sim_onnx,
                                                                            calib_dir):
    again = tmp_path / "again"
    build_engine("ort", int8_config(tmp_path), small_sim_onnx, calib_dir, again, StubProgress())
    assert (again / "model.onnx").read_bytes() == (int8_engine / "model.onnx").read_bytes()
    manifest = build_engine("ort", int8_config(tmp_path, numbering="onnx", calibrate_mode="max"), small_sim_onnx,
                            calib_dir, tmp_path / "onnx", StubProgress())
    assert manifest["calibration"]["skipped_conv_layers"]["54"] == "/hr_branch/tohr_enc2x/layers/layers.0/Conv"
    model = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert quantized_from(model, convs["/hr_branch/tohr_enc2x/layers/layers.0/Conv"].input[0]) is None
    assert quantized_from(model, convs["/f_branch/conv_lr4x/layers/layers.0/Conv"].input[0]) is not None
    rows = manifest["calibration"]["tensors"]
    assert all(row["threshold"] == row["absmax"] and "clipped_share" not in row for row in rows.values())


def test_per_tensor_weights_mse_mode_and_bad_index(tmp_path, small_sim_onnx, calib_dir):
    cfg = int8_config(tmp_path, quantize_per_channel=False, calibrate_mode="mse")
    manifest = build_engine("ort", cfg, small_sim_onnx, calib_dir, tmp_path / "pt", StubProgress())
    assert manifest["calibration"]["calibrate_mode"] == "mse"
    model = onnx.load(str(tmp_path / "pt" / "model.onnx"))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    assert initializers(model)[producers(model)[conv.input[1]].input[1]].size == 1  # one scale per tensor
    with pytest.raises(PipelineError, match="skip_conv_layers index 999 is out of range"):
        build_engine("ort", int8_config(tmp_path, skip_conv_layers=[999]), small_sim_onnx, calib_dir,
                     tmp_path / "bad", StubProgress())
    assert not (tmp_path / "bad").exists()


def conv_model(bias: float, sigmoid: bool) -> onnx.ModelProto:
    """x -> 1x1 Conv (weight 1, BIAS) [-> Sigmoid] on four values."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if sigmoid else "y"], name="conv")]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 4])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_matte_reaches_one_where_fp32_does_and_activations_clip_at_127_steps():
    x = np.array([[[[-1.0, 0.0, 0.5, 1.0]]]], np.float32)
    head = conv_model(40.0, sigmoid=True)  # saturates: fp32 gives exactly 1.0
    data = qdq.write_qdq(head, {"x": 1.0}, set(), per_channel=True)
    fp32, int8 = runtime.run(runtime.session(head.SerializeToString()), x), runtime.run(runtime.session(data), x)
    assert (fp32 == 1.0).all() and (int8 == 1.0).all()
    assert qdq.write_qdq(head, {"x": 1.0}, set(), per_channel=True) == data  # deterministic bytes
    # threshold 1: scale 1/128, so -1 -> -127 steps (TVM clips to +-127; QuantizeLinear alone would give -128);
    # the weight 1.0 is its own max |w|, so the same rule makes it 127/128
    identity = qdq.write_qdq(conv_model(0.0, sigmoid=False), {"x": 1.0}, set(), per_channel=True)
    got = runtime.run(runtime.session(identity), x).ravel()
    np.testing.assert_allclose(got, np.array([-127, 0, 64, 127]) / 128 * 127 / 128, rtol=1e-6)
