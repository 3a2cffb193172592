"""Bias correction (`python -m pipeline correct`): the algorithm on models small enough to check by hand, its
stage (record, determinism, bad inputs), and the int8 builds of a config with `bias_correction: empirical`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import INT8_CONFIG, StubProgress, config_dict, small_config_dict, write_config
from pipeline import cli
from pipeline.backends.engine import build_engine
from pipeline.backends.ort import bias_correction as bc, qdq
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import sha256_file
from pipeline.stages.correct import correct_onnx

HW = (32, 32)
CHANNELS = 3


def config_file(path: Path, bias_correction="empirical", **quantize) -> Path:
    raw = small_config_dict(INT8_CONFIG, HW)
    raw["dataset"]["sampler"]["get_data_num"] = 4
    raw["backend"]["quantize"].update(quantize)
    raw["pipeline"]["bias_correction"] = bias_correction
    return write_config(path, raw)


def conv(name: str, x: str, y: str, weight: np.ndarray, bias: np.ndarray | None, inits: list, **attrs):
    inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"))
    inputs = [x, f"{name}.w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}.b"))
        inputs.append(f"{name}.b")
    return helper.make_node("Conv", inputs, [y], name=name, **attrs)


def model_of(nodes, inits, out: str, out_channels: int, input_name="input", hw=HW) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, CHANNELS, *hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, out_channels, *hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rng_weights(seed: int, *shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, shape).astype(np.float32)


def one_conv(bias=True) -> onnx.ModelProto:
    inits = []
    node = conv("c0", "input", "output", rng_weights(1, 4, CHANNELS, 1, 1),
                np.array([0.1, -0.2, 0.3, 0.0]) if bias else None, inits)
    return model_of([node], inits, "output", 4)


def chain(skip_second_bias=False) -> onnx.ModelProto:
    """input -> Conv 3x3 -> Relu -> Conv 1x1 -> output: the second Conv sees the first one's int8 error."""
    inits = []
    nodes = [conv("c0", "input", "h", rng_weights(2, 6, CHANNELS, 3, 3), np.linspace(-0.3, 0.3, 6), inits,
                  pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             conv("c1", "r", "output", rng_weights(3, 2, 6, 1, 1), None if skip_second_bias else np.array([0.05, -0.1]),
                  inits)]
    return model_of(nodes, inits, "output", 2)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    from pipeline.demo.data import write_demo_data
    from pipeline.stages.calibrate import make_calibration_set
    tmp = tmp_path_factory.mktemp("bccalib")
    write_demo_data(tmp / "PPM-100", count=5, seed=3, scale=0.15)
    make_calibration_set(load_config(config_file(tmp / "c.yaml")), tmp / "PPM-100", tmp / "calib", tmp / "list.txt")
    return tmp / "calib"


def images(calib: Path) -> np.ndarray:
    return np.load(calib / "tensors.npy").astype(np.float64)


def fake_quantize(x: np.ndarray, threshold) -> np.ndarray:
    """TVM's scale T/128, clipped to +-127, rounded half to even, in float32 as ONNX Runtime computes it."""
    s = np.maximum(np.asarray(threshold, np.float64) / 128.0, np.finfo(np.float32).tiny).astype(np.float32)
    return (np.clip(np.round(x.astype(np.float32) / s), -127, 127) * s).astype(np.float64)


def biases(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[n.input[2]] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2}


def run_stage(tmp_path: Path, model: onnx.ModelProto, calib: Path, name="m", **quantize) -> tuple[Path, dict]:
    cfg = load_config(config_file(tmp_path / f"{name}.yaml", **quantize))
    out = tmp_path / f"{name}.corrected.onnx"
    record, _, _ = correct_onnx(cfg, save(model, tmp_path / f"{name}.sim.onnx"), calib, out, StubProgress())
    assert json.loads(Path(f"{out}.json").read_text()) == json.loads(json.dumps(record))
    return out, record


# --- the algorithm --------------------------------------------------------------------------------------------

def test_one_conv_is_corrected_by_the_hand_computed_mean_error_per_channel(tmp_path, calib):
    model = one_conv()
    out, record = run_stage(tmp_path, model, calib, calibrate_mode="max", quantize_per_channel=True)
    x = images(calib)
    weight = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)[:, :, 0, 0]
    w_q = np.stack([fake_quantize(w, np.abs(w).max()) for w in weight])  # per output channel, T = max |w|
    x_q = fake_quantize(x, np.abs(x).max())  # `max`: T = max |x| over every calibration image
    error = np.einsum("oc,nchw->o", w_q, x_q) - np.einsum("oc,nchw->o", weight, x)
    error /= x.shape[0] * x.shape[2] * x.shape[3]
    corrected = biases(onnx.load(str(out)))["c0"]
    np.testing.assert_allclose(corrected, np.array([0.1, -0.2, 0.3, 0.0]) - error, rtol=0, atol=2e-6)
    assert np.abs(error).max() > 1e-4  # a correction there is to see, larger than the tolerance
    # the input's threshold does not depend on any bias: the recalibration moves nothing, one round
    assert record["rounds"] == [{"round": 1, "largest_threshold_move": 0.0, "tensor": "input"}]
    assert record["settled"] is True and record["rounds_run"] == 1
    row, = record["convs"]
    assert row["onnx_node"] == "c0" and row["bias_added"] is False
    assert row["correction_l2"] == pytest.approx(float(np.linalg.norm(error)), abs=4e-6)


def test_the_correction_is_sequential_correcting_the_first_conv_changes_the_seconds(calib):
    model, convs, _ = bc.with_biases(chain(), set())
    tensors = qdq.quantized_tensors(model, set())
    calib_tensors = calib / "tensors.npy"
    cfg = load_config(config_file(calib.parent / "seq.yaml", calibrate_mode="max"))
    thresholds, _ = bc.calibrate(model, tensors, cfg, calib_tensors, StubProgress())
    fp32 = bc.channel_means(model, [c.output for c in convs], calib_tensors, StubProgress())
    sequential = bc.correct_once(model, convs, fp32, thresholds, set(), True, calib_tensors, StubProgress())
    assert [[c.name for c in g] for g in bc.generations(model, convs)] == [["c0"], ["c1"]]

    quantized = onnx.load_from_string(qdq.write_qdq(model, thresholds, set(), True))
    # each Conv's output measured alone, as the correction measures it (with the Relu and its Q/DQ downstream,
    # ONNX Runtime's graph optimizations compute `h` otherwise, within 3e-5)
    at_once = {t: bc.channel_means(quantized, [t], calib_tensors, StubProgress())[t] for t in ("h", "output")}
    original = bc.biases_of(model, convs)
    np.testing.assert_allclose(sequential["c0.b"], original["c0.b"] - (at_once["h"] - fp32["h"]), atol=1e-6)
    # c1 measured with c0 already corrected: not what the uncorrected pass says
    bc.set_biases(quantized, {"c0.b": sequential["c0.b"]})
    after = bc.channel_means(quantized, ["output"], calib_tensors, StubProgress())["output"]
    np.testing.assert_allclose(sequential["c1.b"], original["c1.b"] - (after - fp32["output"]), atol=1e-6)
    not_sequential = original["c1.b"] - (at_once["output"] - fp32["output"])
    assert np.abs(sequential["c1.b"] - not_sequential).max() > 100 * 1e-6  # well beyond the tolerance above


def residual() -> onnx.ModelProto:
    """Three Convs in a row and a skip connection from the first to an Add before the fourth: the first Conv's
    activation must be kept across the passes in between; two Convs of one generation share a pass."""
    inits, w = [], rng_weights
    nodes = [conv("c0", "input", "a", w(4, 4, CHANNELS, 3, 3), np.full(4, 0.1), inits, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="r0"),
             conv("c1", "ar", "b", w(5, 4, 4, 1, 1), np.full(4, -0.1), inits),
             conv("side", "ar", "s", w(6, 4, 4, 1, 1), None, inits),
             helper.make_node("Relu", ["b"], ["br"], name="r1"),
             conv("c2", "br", "c", w(7, 4, 4, 3, 3), np.zeros(4), inits, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "ar"], ["d"], name="add"),
             helper.make_node("Add", ["d", "s"], ["e"], name="add2"),
             conv("c3", "e", "output", w(8, 2, 4, 1, 1), np.zeros(2), inits)]
    return model_of(nodes, inits, "output", 2)


def test_the_passes_keep_what_later_passes_read_and_give_what_prefix_passes_give(calib):
    """One pass per generation over only the nodes it adds (activations kept between passes) against the plain
    way: every generation's Convs measured in a model running from the input."""
    model, convs, _ = bc.with_biases(residual(), set())
    calib_tensors = calib / "tensors.npy"
    cfg = load_config(config_file(calib.parent / "res.yaml", calibrate_mode="kl_divergence"))
    thresholds, _ = bc.calibrate(model, qdq.quantized_tensors(model, set()), cfg, calib_tensors, StubProgress())
    fp32 = bc.channel_means(model, [c.output for c in convs], calib_tensors, StubProgress())
    groups = bc.generations(model, convs)
    assert [[c.name for c in g] for g in groups] == [["c0"], ["c1", "side"], ["c2"], ["c3"]]
    quantized = onnx.load_from_string(qdq.write_qdq(model, thresholds, set(), True))
    steps = bc.plan(quantized, {c.output for c in convs})
    assert [s.measured for s in steps] == [["a"], ["b", "s"], ["c"], ["output"]]
    # c0's activation (as int8: every reader is quantized, and dequantizes it in its own pass) is kept from pass 2
    # to the Add of pass 4
    assert [s.keeps for s in steps] == [["input/int8"], ["ar/int8"], ["br/int8", "s/int8"], []]
    assert [s.reads for s in steps] == [["input"], ["input/int8"], ["ar/int8"], ["ar/int8", "br/int8", "s/int8"]]
    assert steps[1].last_read == {"ar/int8": 4}

    expected = bc.biases_of(model, convs)
    for group in groups:
        bc.set_biases(quantized, expected)
        for c in group:
            mean = bc.channel_means(quantized, [c.output], calib_tensors, StubProgress())[c.output]
            expected[c.bias] = (expected[c.bias].astype(np.float64) - (mean - fp32[c.output])).astype(np.float32)
    found = bc.correct_once(model, convs, fp32, thresholds, set(), True, calib_tensors, StubProgress())
    assert set(found) == set(expected)
    for name in found:  # the same models as ONNX Runtime optimizes them: the same bytes
        assert found[name].tobytes() == expected[name].tobytes(), name
    moved = {name: float(np.abs(found[name] - bc.biases_of(model, convs)[name]).max()) for name in found}
    assert min(moved.values()) > 1e-4  # every Conv was corrected by more than the tolerance


def test_a_conv_without_bias_gets_one(tmp_path, calib):
    out, record = run_stage(tmp_path, chain(skip_second_bias=True), calib)
    corrected = onnx.load(str(out))
    second = next(n for n in corrected.graph.node if n.name == "c1")
    assert list(second.input) == ["r", "c1.w", "c1/bias_correction"]
    assert np.abs(biases(corrected)["c1"]).max() > 0
    assert {r["onnx_node"]: r["bias_added"] for r in record["convs"]} == {"c0": False, "c1": True}


def test_skipped_convs_are_not_corrected(tmp_path, calib):
    model = chain(skip_second_bias=True)
    out, record = run_stage(tmp_path, model, calib, skip_conv_layers=[1])  # c1, in both numberings
    corrected = onnx.load(str(out))
    second = next(n for n in corrected.graph.node if n.name == "c1")
    assert list(second.input) == ["r", "c1.w"]  # no bias added
    assert [r["onnx_node"] for r in record["convs"]] == ["c0"] and record["skipped_convs"] == ["c1"]
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    after = {t.name: t.SerializeToString() for t in corrected.graph.initializer}
    assert after["c1.w"] == before["c1.w"] and after["c0.w"] == before["c0.w"]
    assert after["c0.b"] != before["c0.b"]


def test_the_iteration_stops_once_thresholds_settle_and_records_its_rounds(tmp_path, calib, monkeypatch):
    # `max` on the Relu's output: c0's correction moves that threshold, so the first recalibration moves
    _, record = run_stage(tmp_path, chain(), calib, name="settle", calibrate_mode="max")
    first = record["rounds"][0]
    assert first["tensor"] == "r" and first["largest_threshold_move"] > 0
    moves = [r["largest_threshold_move"] for r in record["rounds"]]
    assert record["rounds_run"] == len(moves) <= bc.MAX_ROUNDS
    assert record["settled"] == (moves[-1] <= bc.THRESHOLD_MOVE)
    assert all(m > bc.THRESHOLD_MOVE for m in moves[:-1])  # it went on only while a threshold moved more
    monkeypatch.setattr(bc, "THRESHOLD_MOVE", -1.0)  # nothing counts as settled: every round runs
    _, strict = run_stage(tmp_path, chain(), calib, name="strict", calibrate_mode="max")
    assert strict["rounds_run"] == bc.MAX_ROUNDS and strict["settled"] is False
    assert strict["rounds"][0] == first


def test_largest_move_is_relative_and_names_its_tensor():
    assert bc.largest_move({"a": 2.0, "b": 1.0, "c": 0.0}, {"a": 2.01, "b": 1.02, "c": 0.0}) == \
        (pytest.approx(0.02), "b")


def test_two_runs_give_the_same_bytes(tmp_path, calib):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    first, _ = run_stage(tmp_path / "a", chain(), calib)
    second, _ = run_stage(tmp_path / "b", chain(), calib)
    assert first.read_bytes() == second.read_bytes()
    assert Path(f"{first}.json").read_bytes() == Path(f"{second}.json").read_bytes()


def test_the_record_names_its_inputs_and_the_fp32_deviation(tmp_path, calib):
    out, record = run_stage(tmp_path, chain(), calib, calibrate_mode="kl_divergence")
    assert record["input_onnx"] == {"file": "m.sim.onnx", "sha256": sha256_file(tmp_path / "m.sim.onnx")}
    assert record["output_onnx"] == {"file": out.name, "sha256": sha256_file(out)}
    assert record["calibration"] == {"images": 4, "manifest_sha256": sha256_file(calib / "manifest.json"),
                                     "tensors_sha256": sha256_file(calib / "tensors.npy")}
    assert record["quantize"]["calibrate_mode"] == "kl_divergence" and record["bias_correction"] == "empirical"
    assert record["fp32_deviation"]["mean_abs_alpha_diff"] > 0


def test_the_fp32_deviation_taken_from_the_calibrations_equals_a_pass_of_its_own_bit_for_bit(tmp_path, calib):
    """The record's deviation comes from the first and last calibrations' passes (the original's output kept on
    disk, the corrected one's read as it is calibrated); it must equal both float models run on their own, bit for
    bit, also where a Conv had no bias (the original's output is taken from the model with a zero bias added)."""
    from pipeline.core import runtime
    model = chain(skip_second_bias=True)
    out, record = run_stage(tmp_path, model, calib, calibrate_mode="kl_divergence")
    x = np.load(calib / "tensors.npy")
    a, b = runtime.session(model.SerializeToString()), runtime.session(out)
    total, largest = 0.0, 0.0
    for i in range(len(x)):
        diff = np.abs(runtime.run(b, x[i:i + 1]).astype(np.float64) - runtime.run(a, x[i:i + 1]).astype(np.float64))
        total, largest = total + float(diff.mean()), max(largest, float(diff.max()))
    assert record["fp32_deviation"] == {"images": len(x), "mean_abs_alpha_diff": total / len(x),
                                        "max_abs_alpha_diff": largest}
    assert largest > 0


# --- bad inputs: one line each ---------------------------------------------------------------------------------

def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main(["correct", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def test_bad_inputs_are_one_line(tmp_path, calib, capsys):
    onnx_path = save(chain(), tmp_path / "m.sim.onnx")
    out = tmp_path / "m.corrected.onnx"
    yes = config_file(tmp_path / "yes.yaml", bias_correction=True)  # what YAML makes of `yes`
    code, err = run_cli(capsys, "--config", yes, "--onnx", onnx_path, "--calib", calib, "--out", out)
    assert code == 2 and err == (f"error: config error: {yes}: pipeline.bias_correction: bool True is not false or "
                                 f"empirical (bias correction is off unless written as `bias_correction: empirical`)\n")

    good = config_file(tmp_path / "good.yaml")
    other = save(model_of([helper.make_node("Relu", ["x"], ["output"])], [], "output", CHANNELS, input_name="x"),
                 tmp_path / "other.onnx")
    code, err = run_cli(capsys, "--config", good, "--onnx", other, "--calib", calib, "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {other}: takes 'x' [1, 3, 32, 32], but {good} builds 'input' [1, 3, 32, 32]: "
                          f"not the simplified ONNX of this config")

    big = config_file(tmp_path / "big.yaml")
    raw = small_config_dict(INT8_CONFIG, (64, 32))
    raw["dataset"]["sampler"]["get_data_num"] = 4
    raw["pipeline"]["bias_correction"] = "empirical"
    write_config(big, raw)
    wide = save(model_of([helper.make_node("Relu", ["input"], ["output"])], [], "output", CHANNELS, hw=(64, 32)),
                tmp_path / "wide.onnx")
    code, err = run_cli(capsys, "--config", big, "--onnx", wide, "--calib", calib, "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert err == (f"error: {calib / 'manifest.json'}: records 4 images and tensors of shape [4, 3, 32, 32], but {big} "
                   f"needs [4, 3, 64, 32]; rerun `make calib`\n")

    off = config_file(tmp_path / "off.yaml", bias_correction=False)
    code, err = run_cli(capsys, "--config", off, "--onnx", onnx_path, "--calib", calib, "--out", out)
    assert code == 2 and err == (f"error: {off}: pipeline.bias_correction is false; set it to empirical to build from "
                                 f"a bias-corrected ONNX\n")
    assert not out.exists() and not Path(f"{out}.json").exists()


@pytest.mark.parametrize("value, accepted", [(False, False), ("empirical", "empirical"), (True, None), ("yes", None),
                                             ("analytic", None), (0, None), (None, None)])
def test_the_config_key_takes_false_or_empirical_only(tmp_path, value, accepted):
    raw = config_dict(INT8_CONFIG)
    raw["pipeline"]["bias_correction"] = value
    path = write_config(tmp_path / "c.yaml", raw)
    if accepted is not None:
        assert load_config(path).pipeline.bias_correction == accepted
        return
    with pytest.raises(PipelineError, match=rf"^config error: {path}: pipeline\.bias_correction: .* is not false or "
                                            r"empirical"):
        load_config(path)


def test_without_the_key_bias_correction_is_off():
    assert load_config(INT8_CONFIG).pipeline.bias_correction is False


# --- builds ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corrected(tmp_path_factory, calib) -> tuple[Path, Path]:
    """(config, corrected ONNX) of the chain model with bias_correction: empirical."""
    tmp = tmp_path_factory.mktemp("corrected")
    config = config_file(tmp / "bc.yaml")
    out = tmp / "bc.corrected.onnx"
    correct_onnx(load_config(config), save(chain(), tmp / "bc.sim.onnx"), calib, out, StubProgress())
    return config, out


def test_an_int8_build_records_the_corrected_onnx_it_was_built_from(tmp_path, calib, corrected, monkeypatch):
    import pipeline.backends.engine
    import pipeline.stages.correct
    config, onnx_path = corrected
    hashed = []

    def counting(path):
        hashed.append(Path(path))
        return sha256_file(path)
    for module in (pipeline.backends.engine, pipeline.stages.correct):
        monkeypatch.setattr(module, "sha256_file", counting)
    manifest = build_engine("ort", load_config(config), onnx_path, calib, tmp_path / "engine", StubProgress())
    monkeypatch.undo()
    assert hashed.count(onnx_path) == 1  # checked and recorded from one reading
    record = Path(f"{onnx_path}.json")
    assert manifest["onnx"]["sha256"] == sha256_file(onnx_path)
    assert manifest["bias_correction"] == {
        "mode": "empirical", "onnx_sha256": sha256_file(onnx_path),
        "record": {"file": record.name, "sha256": sha256_file(record)},
        "input_onnx_sha256": sha256_file(onnx_path.parent / "bc.sim.onnx")}
    # the engine quantizes the corrected biases
    engine = onnx.load(str(tmp_path / "engine" / "model.onnx"))
    assert biases(engine)["c1"].tobytes() == biases(onnx.load(str(onnx_path)))["c1"].tobytes()


def test_a_build_refuses_an_onnx_its_config_does_not_ask_for(tmp_path, calib, corrected):
    config, onnx_path = corrected
    simplified = onnx_path.parent / "bc.sim.onnx"
    with pytest.raises(PipelineError, match=rf"^{simplified}: not a bias-corrected ONNX \(no correction record "):
        build_engine("ort", load_config(config), simplified, calib, tmp_path / "a", StubProgress())
    off = config_file(tmp_path / "off.yaml", bias_correction=False)
    with pytest.raises(PipelineError, match=rf"^{onnx_path}: a bias-corrected ONNX .* has pipeline.bias_correction: "
                                            r"false; build from the simplified ONNX"):
        build_engine("ort", load_config(off), onnx_path, calib, tmp_path / "b", StubProgress())
    copy = save(onnx.load(str(onnx_path)), tmp_path / "edited.onnx")
    Path(f"{copy}.json").write_text(Path(f"{onnx_path}.json").read_text().replace(sha256_file(onnx_path), "0" * 64))
    with pytest.raises(PipelineError, match=r"is not the 000000000000\.\.\. its record"):
        build_engine("ort", load_config(config), copy, calib, tmp_path / "c", StubProgress())
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))


def test_vamc_is_given_the_corrected_onnx_and_nothing_else_changes(tmp_path, standin):
    from test_backend_vamc import expected_yaml, make_calib, run_build
    calib = make_calib(tmp_path / "calib")
    raw = config_dict(INT8_CONFIG)
    raw["pipeline"]["bias_correction"] = "empirical"
    config = write_config(tmp_path / "official_modnet_int8.yaml", raw)
    model = model_of([helper.make_node("Relu", ["input"], ["output"])], [], "output", CHANNELS, hw=(480, 288))
    onnx_path = save(model, tmp_path / "official_modnet_int8.corrected.onnx")
    Path(f"{onnx_path}.json").write_text(json.dumps({"bias_correction": "empirical",
                                                     "output_onnx": {"sha256": sha256_file(onnx_path)}}))
    out = tmp_path / "engines" / "official_modnet_int8" / "vamc"
    manifest = run_build(config, onnx_path, out, calib)
    quantize = "  quantize:\n    calibrate_mode: kl_divergence\n    quantize_per_channel: true\n"
    assert (out / "vamc.yaml").read_text() == expected_yaml(config, "vamc", onnx_path.resolve(), "int8",
                                                            str((calib / "images").resolve()), 3, out.parent, quantize)
    assert manifest["bias_correction"]["onnx_sha256"] == sha256_file(onnx_path)


@pytest.mark.slow  # runs Make (make -n: a Make start with deps.py each)
@pytest.mark.parametrize("written, corrected", [("empirical", True), ('"empirical"  # on', True), ("false", False),
                                                ("yes", False)])
def test_make_builds_releases_and_hwchecks_the_corrected_onnx_of_an_empirical_config(tmp_path, written, corrected):
    """`make -n`: nothing runs. A value Make does not read as empirical builds from the simplified ONNX, where the
    config loader refuses `yes` and the build refuses an ONNX its config does not ask for (tests above)."""
    from test_make_usage import make
    config = tmp_path / "mine.yaml"
    text = INT8_CONFIG.read_text().replace("\npipeline:\n", f"\npipeline:\n  bias_correction: {written}\n")
    config.write_text(text)
    art = tmp_path / "art"
    onnx_int8 = f"{art}/onnx/mine.{'corrected' if corrected else 'sim'}.onnx"
    lines = {}
    for goals, stages in ((["int8"], ["build"]), (["release", "hwcheck"], ["release", "hwcheck"])):  # a Make each
        done = make("-n", f"ART={art}", "BACKEND=ort", f"CONFIG_INT8={config}", *goals)
        assert done.returncode == 0, done.stderr
        lines[goals[0]] = done.stdout.replace("\\\n", "").splitlines()
        for stage in stages:
            assert any(f" -m pipeline {stage} " in line and f"'{onnx_int8}'" in line for line in lines[goals[0]]), \
                lines[goals[0]]
    correct = [line for line in lines["int8"] if " -m pipeline correct " in line]
    if corrected:
        assert correct == [f".venv/bin/python -m pipeline correct --config '{config}' --onnx '{art}/onnx/mine.sim.onnx' "
                           f"--calib '{art}/calib/mine' --out '{onnx_int8}'"]
    else:
        assert correct == []
