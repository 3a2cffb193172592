"""analyze's "where the error comes from" rows (issue 21, section 2): the Q/DQ writer's weights-only and
activations-only models, and the rows and reading analyze writes from them."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tune import SET, inputs, workbench  # noqa: F401 - the demo data and calibration folder tune's tests use

from conftest import SMALL_HW
from pipeline.accuracy import metrics
from pipeline.backends.ort import qdq
from pipeline.cli import main
from pipeline.core import runtime
from pipeline.tuning import analyze as analyze_mod, statistics
from pipeline.tuning.analyze import analyze, reading

# --- the writer ----------------------------------------------------------------------------------------------------

THRESHOLDS = {"x": 2.0, "r": 1.5, "b": 1.7, "c": 3.0}
SKIP = {"C"}


def chain_model() -> onnx.ModelProto:
    """x -> Conv A (bias) -> Relu -> r; x -> Conv B -> b; Add(r, b) -> s -> Conv C -> c -> Conv D -> y; all 1x1."""
    rng = np.random.default_rng(3)

    def init(name, shape):
        return numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)
    inits = [init("wA", (2, 2, 1, 1)), init("bA", (2,)), init("wB", (2, 2, 1, 1)), init("wC", (1, 2, 1, 1)),
             init("wD", (1, 1, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "wA", "bA"], ["a"], name="A"),
             helper.make_node("Relu", ["a"], ["r"], name="R"),
             helper.make_node("Conv", ["x", "wB"], ["b"], name="B"),
             helper.make_node("Add", ["r", "b"], ["s"], name="S"),
             helper.make_node("Conv", ["s", "wC"], ["c"], name="C"),
             helper.make_node("Conv", ["c", "wD"], ["y"], name="D")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def weight_q(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """TVM's weight quantization by hand: scale max|w| / 128 (per output channel or per tensor), +-127 steps."""
    top = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, 1, 1, 1) if per_channel else np.abs(w).max()
    scale = (top / 128).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.float32) * scale


def act_q(x: np.ndarray, threshold: float) -> np.ndarray:
    s = np.float32(threshold / 128)
    return np.clip(np.round(x / s), -127, 127).astype(np.float32) * s


def numpy_chain(x: np.ndarray, model: onnx.ModelProto, weights: bool, activations: bool,
                per_channel: bool) -> np.ndarray:
    """chain_model in numpy, C kept float; WEIGHTS / ACTIVATIONS: which part of the others is quantized."""
    p = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def conv(t, name, quantized=True):
        w = weight_q(p[name], per_channel) if weights and quantized else p[name]
        return np.einsum("oi,nihw->nohw", w[:, :, 0, 0], t)

    def a(t, name):
        return act_q(t, THRESHOLDS[name]) if activations else t
    r = np.maximum(conv(a(x, "x"), "wA") + p["bA"].reshape(1, -1, 1, 1), 0)
    b = conv(a(x, "x"), "wB")
    c = conv(a(r, "r") + a(b, "b"), "wC", quantized=False)
    return conv(a(c, "c"), "wD")


def ops(data: bytes) -> dict[str, int]:
    model = onnx.load_from_string(data)
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


def conv_inputs(data: bytes) -> dict[str, list[str]]:
    return {n.name: list(n.input) for n in onnx.load_from_string(data).graph.node if n.op_type == "Conv"}


X = np.random.default_rng(7).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_only_quantizes_the_weights_alone_as_numpy_does(per_channel):
    model = chain_model()
    data = qdq.write_qdq(model, THRESHOLDS, SKIP, per_channel, "weights")
    assert ops(data) == {"DequantizeLinear": 3, "Conv": 4, "Relu": 1, "Add": 1}  # no Clip, no QuantizeLinear
    assert conv_inputs(data) == {"A": ["x", "wA/dequantized", "bA"], "B": ["x", "wB/dequantized"],
                                 "C": ["s", "wC"], "D": ["c", "wD/dequantized"]}
    got = runtime.run(runtime.session(data), X)
    want = numpy_chain(X, model, weights=True, activations=False, per_channel=per_channel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    fp32 = runtime.run(runtime.session(model.SerializeToString()), X)
    assert np.abs(got - fp32).max() > 5e-5  # the rounding shows, 40x beyond the tolerance: not vacuous


def test_activations_only_quantizes_the_activations_alone_as_numpy_does():
    model = chain_model()
    data = qdq.write_qdq(model, THRESHOLDS, SKIP, True, "activations")
    # x, r, b and c: the Conv inputs and both inputs of the Add; s feeds only the skipped C
    assert ops(data) == {"Clip": 4, "QuantizeLinear": 4, "DequantizeLinear": 4, "Conv": 4, "Relu": 1, "Add": 1}
    assert conv_inputs(data) == {"A": ["x/dequantized", "wA", "bA"], "B": ["x/dequantized", "wB"],
                                 "C": ["s", "wC"], "D": ["c/dequantized", "wD"]}
    assert not [i.name for i in onnx.load_from_string(data).graph.initializer if i.data_type == TensorProto.INT8
                and not i.name.endswith("/zero_point")]  # no int8 weight
    got = runtime.run(runtime.session(data), X)
    np.testing.assert_allclose(got, numpy_chain(X, model, weights=False, activations=True, per_channel=True),
                               rtol=1e-5, atol=1e-6)
    both = runtime.run(runtime.session(qdq.write_qdq(model, THRESHOLDS, SKIP, True)), X)
    np.testing.assert_allclose(both, numpy_chain(X, model, weights=True, activations=True, per_channel=True),
                               rtol=1e-5, atol=1e-6)


# sha256 of write_qdq(chain_model(), THRESHOLDS, SKIP, per_channel) written by the writer before `parts` existed
TODAY = {True: "ba94cef72326328b4751b341f88f4ffbb97b49fc1098ed42fc345fc4b48ef418",
         False: "4cc99bab189d98657f101c5d629cbba4e6b570a019ef77bc9b9e28ddb1077718"}


@pytest.mark.parametrize("per_channel", [True, False])
def test_both_is_todays_writer_byte_for_byte(per_channel):
    model = chain_model()
    default = qdq.write_qdq(model, THRESHOLDS, SKIP, per_channel)
    assert hashlib.sha256(default).hexdigest() == TODAY[per_channel]
    assert qdq.write_qdq(model, THRESHOLDS, SKIP, per_channel, "both") == default
    with pytest.raises(ValueError, match="parts is 'bias', not one of both, weights, activations"):
        qdq.write_qdq(model, THRESHOLDS, SKIP, per_channel, "bias")


# --- the rows, on a model whose loss is all in one part ---------------------------------------------------------------

EDGE = 127 / 255  # preprocessing gives odd multiples of 1/255; clipped to +-127 of them, threshold 128/255 is exact


def one_conv_model(w: list[float]) -> onnx.ModelProto:
    """image -> Clip(+-127/255) -> x channel 2 zeroed (Mul by [1, 1, 0]) -> Conv 1x1 (W) -> Sigmoid -> alpha."""
    h, wd = SMALL_HW
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", -EDGE), ("hi", EDGE))]
    inits += [numpy_helper.from_array(np.array([1, 1, 0], np.float32).reshape(1, 3, 1, 1), "mask"),
              numpy_helper.from_array(np.array(w, np.float32).reshape(1, 3, 1, 1), "w")]
    nodes = [helper.make_node("Clip", ["input", "lo", "hi"], ["clipped"], name="clip"),
             helper.make_node("Mul", ["clipped", "mask"], ["m"], name="mask"),
             helper.make_node("Conv", ["m", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["alpha"], name="sigmoid")]
    graph = helper.make_graph(nodes, "one_conv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, wd])],
                              [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, h, wd])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def deviation_by_hand(wb, w_fp32: list[float], w_used: list[float], threshold: float | None, bias: float = 0.0,
                      per_image: bool = False) -> float | list[float]:
    """Mean |8-bit alpha - fp32's| over the selection images, in numpy: weights W_USED and BIAS, the input quantized
    at THRESHOLD (None: float); PER_IMAGE: each image's."""
    def pred(w, t, b=0.0):
        conv = np.einsum("i,nihw->nhw", np.array(w, np.float32), t) + np.float32(b)
        return metrics.pred_from_alpha(1 / (1 + np.exp(-conv))[0])
    out = []
    for x in wb.images("selection").inputs:
        m = np.clip(x, -EDGE, EDGE) * np.array([1, 1, 0], np.float32).reshape(1, 3, 1, 1)
        got = pred(w_used, act_q(m, threshold) if threshold is not None else m, bias)
        out.append(float(np.abs(got.astype(np.int16) - pred(w_fp32, m)).mean() / 255))
    return out if per_image else float(np.mean(out))


# weights: per output channel scale 100/128 (the largest weight reads a zeroed channel), so 3 -> 3.125 and
# -2 -> -2.34375 while the input at 128/255 is exact; activations: weights 64 and 32 steps of 8/128 are exact
# (8 again on the zeroed channel) while a threshold of 16 rounds the input to multiples of 1/8
CASES = {"weights": ([3.0, -2.0, 100.0], 128 / 255, [3.125, -2.34375, 0.0], None),
         "activations": ([4.0, 2.0, 8.0], 16.0, [4.0, 2.0, 0.0], 16.0)}


@pytest.mark.parametrize("part", ["weights", "activations"])
def test_the_row_of_the_lossy_part_carries_the_loss_and_the_reading_names_it(inputs, tmp_path, monkeypatch, part):
    w, threshold, w_used, input_threshold = CASES[part]
    path = tmp_path / "one_conv.onnx"
    onnx.save(one_conv_model(w), str(path))
    wb = workbench(inputs / "small_int8.yaml", path, inputs)
    monkeypatch.setattr(wb.quantizer, "thresholds", lambda mode, calibrate_range: {"m": threshold})
    analyze(wb, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())["sources"]
    rows = {r["quantized"]: r for r in saved["rows"]}
    assert [r["quantized"] for r in saved["rows"]] == ["weights only", "activations only", "both"]
    lossless = rows["activations only" if part == "weights" else "weights only"]
    lossy = rows[f"{part} only"]
    assert (lossless["deviation"], lossless["flips"], lossless["mse_increase"], lossless["mad_increase"],
            lossless["miou_drop"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert lossy["deviation"] == pytest.approx(deviation_by_hand(wb, w, w_used, input_threshold), abs=1e-4)
    assert lossy["deviation"] > 0.005
    assert {k: v for k, v in rows["both"].items() if k != "quantized"} == \
        {k: v for k, v in lossy.items() if k != "quantized"}  # the other part adds nothing
    read = saved["reading"]
    assert read["loses_most"] == part and read["difference"] == lossy["deviation"]
    remedy = {"weights": "bias correction or finer weights",
              "activations": "the calibration mode or fp16 Convs (`skip_conv_layers`)"}[part]
    other = "activations" if part == "weights" else "weights"
    assert read["text"] == (f"Reading: quantizing the {part} alone loses most (deviation {lossy['deviation']:.5f} "
                            f"against 0.00000 with the {other} alone; paired difference {lossy['deviation']:+.5f}, "
                            f"one-sided 95% lower bound {read['lower_bound']:+.5f}), so the remedies to try are "
                            f"{remedy}.")
    assert read["lower_bound"] == statistics.lower(statistics.mean(
        lossy["per_image_deviation"], statistics.draws(len(lossy["per_image_deviation"]), wb.cfg.pipeline.seed)))
    md = (tmp_path / "out" / "layers.md").read_text()
    assert f"\n\n{read['text']}\n\n" in md
    assert f"| {part} only | {lossy['deviation']:.5f} [" in md
    assert f"| {other} only | 0.00000 [0.00000, 0.00000] | 0.00000 [0.00000, 0.00000] | +0.00000 [+0.00000, " \
           f"+0.00000] |" in md


def test_reading_says_neither_when_the_paired_difference_is_not_significant():
    rows = [{"quantized": "weights only", "deviation": 0.02, "images": 2, "per_image_deviation": [0.01, 0.03]},
            {"quantized": "activations only", "deviation": 0.02, "images": 2, "per_image_deviation": [0.02, 0.02]}]
    read = reading(rows, 0)
    # two images bound nothing (a quarter of the resamples repeat one image): no finite lower bound
    assert read["loses_most"] is None and read["difference"] == 0.0 and read["lower_bound"] == -math.inf
    assert read["text"] == ("Reading: the weights alone and the activations alone lose about as much (deviation "
                            "0.02000 and 0.02000; paired difference +0.00000, one-sided 95% lower bound -inf, "
                            "not significant on 2 images), so neither kind of remedy comes first: bias correction or "
                            "finer weights for the weights, the calibration mode or fp16 Convs (`skip_conv_layers`) "
                            "for the activations.")


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_analyze_on_modnet_both_row_is_the_config_s_int8_and_the_cli_prints_the_reading(inputs, small_sim_onnx,
                                                                                         tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(["analyze", "--config", str(inputs / "small_int8.yaml"), "--onnx", str(small_sim_onnx), "--calib",
                 str(inputs / "calib"), "--data", str(inputs / "data"), "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "analysis.json").read_text())
    rows = saved["sources"]["rows"]
    both = rows[2]
    assert {k: both[k] for k in saved["figures"] if k != "cached"} == \
        {k: v for k, v in saved["figures"].items() if k != "cached"}
    md = (out / "layers.md").read_text()
    assert f"; deviation from fp32 (mean |alpha - fp32 alpha|) {both['deviation']:.5f}, flips {both['flips']:.5f}.\n" \
        in md  # the deviation as scoring computes it, flips beside it (not added to it)
    # the three models differ: neither part alone is the whole int8
    assert len({r["deviation"] for r in rows}) == 3 and all(r["images"] == SET for r in rows)
    wb = workbench(inputs / "small_int8.yaml", small_sim_onnx, inputs)
    models = dict(analyze_mod.source_models(wb, analyze_mod.config_candidate(wb)))
    assert list(models) == ["weights only", "activations only", "both"]
    assert models["both"] == wb.quantizer.build(analyze_mod.config_candidate(wb))
    assert "QuantizeLinear" not in ops(models["weights only"]) and "QuantizeLinear" in ops(models["activations only"])
    assert capsys.readouterr().out.splitlines()[-1] == saved["sources"]["reading"]["text"]


# --- the same rows with bias correction ------------------------------------------------------------------------------

BIAS = -0.4  # the stubbed correction's bias on the one Conv (which has none)


def stub_correction(monkeypatch) -> list:
    """bias_correction.correct stubbed (the correction itself is tests/test_bias_correction.py's): the model with
    BIAS added to its Conv as a bias input, and its statistics as the build collects them; returns the list of
    (calibrate_mode, skipped) of each call."""
    from pipeline.backends.ort import bias_correction, qdq
    from pipeline.backends.ort.build import calibration_statistics
    calls = []

    def fake_correct(cfg, model, calib_tensors, progress, skipped):
        calls.append((cfg.backend.quantize.calibrate_mode, skipped))
        out = onnx.ModelProto()
        out.CopyFrom(model)
        conv = next(n for n in out.graph.node if n.op_type == "Conv")
        conv.input.append("corrected_bias")
        out.graph.initializer.append(numpy_helper.from_array(np.array([BIAS], np.float32), "corrected_bias"))
        tensors = qdq.quantized_tensors(out, set(skipped))
        return out.SerializeToString(), {}, calibration_statistics(cfg, out, tensors, calib_tensors, progress, "stub")
    monkeypatch.setattr(bias_correction, "correct", fake_correct)
    return calls


def corrected_config(tmp_path, **pipeline):
    import yaml
    from test_tune import tune_config
    tmp_path.mkdir(exist_ok=True)
    path = tune_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    for key, value in pipeline.items():
        if key == "tune_bias_correction":
            raw["pipeline"]["tune"]["bias_correction"] = value
        else:
            raw["pipeline"][key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def test_with_the_knob_the_corrected_model_gets_its_three_rows_and_the_reading_says_whether_it_helped(
        inputs, tmp_path, monkeypatch):
    calls = stub_correction(monkeypatch)
    w, _, w_used, _ = CASES["weights"]
    path = tmp_path / "one_conv.onnx"
    onnx.save(one_conv_model(w), str(path))

    def run(cfg_path, out):
        wb = workbench(cfg_path, path, inputs)
        monkeypatch.setattr(wb.quantizer, "thresholds",
                            lambda mode, calibrate_range, corrected=None: {"m": CASES["weights"][1]})
        analyze(wb, out)
        return wb, json.loads((out / "analysis.json").read_text())

    # off by default: three rows, no correction run
    _, plain = run(corrected_config(tmp_path / "a"), tmp_path / "plain")
    assert [r["quantized"] for r in plain["sources"]["rows"]] == ["weights only", "activations only", "both"]
    assert calls == [] and plain["sources"]["reading"]["bias_correction"] is None

    # pipeline.tune.bias_correction: true adds the corrected model's rows, from one correction
    wb, saved = run(corrected_config(tmp_path / "b", tune_bias_correction=True), tmp_path / "knob")
    assert calls == [("kl_divergence", [])]
    rows = {r["quantized"]: r for r in saved["sources"]["rows"]}
    assert list(rows) == ["weights only", "activations only", "both", "weights only + bias correction",
                          "activations only + bias correction", "both + bias correction"]
    assert {k: rows[k] for k in ("weights only", "activations only", "both")} == \
        {r["quantized"]: r for r in plain["sources"]["rows"]}  # the config's own rows unchanged
    assert saved["candidate"] == plain["candidate"] and saved["figures"] == plain["figures"]
    # by hand: the input's quantization is exact (CASES), so weights-only and both are the rounded weights with the
    # bias, activations-only the float weights with it, each against the ORIGINAL fp32
    by_hand = {"weights only + bias correction": deviation_by_hand(wb, w, w_used, None, BIAS, per_image=True),
               "activations only + bias correction": deviation_by_hand(wb, w, w, None, BIAS, per_image=True),
               "both + bias correction": deviation_by_hand(wb, w, w_used, 128 / 255, BIAS, per_image=True)}
    for label, per_image in by_hand.items():
        assert rows[label]["per_image_deviation"] == pytest.approx(per_image, abs=1e-4)
        assert rows[label]["deviation"] == pytest.approx(np.mean(per_image), abs=1e-4)
    assert rows["activations only + bias correction"]["deviation"] > 0.005  # the bias shows: not vacuous
    # the reading: the paired improvement of the `both` rows, uncorrected minus corrected, and its bounds
    read = saved["sources"]["reading"]
    diff = [a - b for a, b in zip(rows["both"]["per_image_deviation"],
                                  rows["both + bias correction"]["per_image_deviation"])]
    e = statistics.mean(diff, statistics.draws(len(diff), wb.cfg.pipeline.seed))
    lower, upper = statistics.lower(e), statistics.upper(e)
    helped = True if lower > 0 else False if upper < 0 else None
    improvement = rows["both"]["deviation"] - rows["both + bias correction"]["deviation"]
    assert read["bias_correction"] == {"helped": helped, "improvement": improvement, "lower_bound": lower,
                                       "upper_bound": upper, "text": read["bias_correction"]["text"]}
    verdict = {True: "helps the int8 model", False: "makes the int8 model worse",
               None: "is not shown to help or to hurt the int8 model"}[helped]
    tail = f", not significant on {SET} images" if helped is None else ""
    sentence = (f"Bias correction {verdict} (deviation {rows['both']['deviation']:.5f} without it, "
                f"{rows['both + bias correction']['deviation']:.5f} with it; paired improvement {improvement:+.5f}, "
                f"one-sided 95% bounds [{lower:+.5f}, {upper:+.5f}]{tail}).")
    assert read["bias_correction"]["text"] == sentence
    assert read["text"] == f"{plain['sources']['reading']['text']} {sentence}"
    md = (tmp_path / "knob" / "layers.md").read_text()
    assert f"| both + bias correction | {rows['both + bias correction']['deviation']:.5f} [" in md
    assert f"\n\n{read['text']}\n\n" in md


def test_a_corrected_config_s_rows_are_its_corrected_model_and_the_uncorrected_ones_follow(inputs, tmp_path,
                                                                                            monkeypatch):
    calls = stub_correction(monkeypatch)
    w, threshold, w_used, _ = CASES["weights"]
    path = tmp_path / "one_conv.onnx"
    onnx.save(one_conv_model(w), str(path))
    wb = workbench(corrected_config(tmp_path, bias_correction="empirical"), path, inputs)
    monkeypatch.setattr(wb.quantizer, "thresholds", lambda mode, calibrate_range, corrected=None: {"m": threshold})
    analyze(wb, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert calls == [("kl_divergence", [])]  # one correction: the config's own model needs it anyway
    rows = {r["quantized"]: r for r in saved["sources"]["rows"]}
    assert list(rows) == ["weights only", "activations only", "both", "weights only without bias correction",
                          "activations only without bias correction", "both without bias correction"]
    # `both` is what the config builds: the corrected model, the whole-model figures above it
    assert saved["candidate"] == {"calibrate_mode": "kl_divergence", "calibrate_range": None, "skip_conv_layers": [],
                                  "corrected": True}
    assert rows["both"]["deviation"] == pytest.approx(deviation_by_hand(wb, w, w_used, 128 / 255, BIAS), abs=1e-4)
    assert {k: rows["both"][k] for k in saved["figures"] if k != "cached"} == \
        {k: v for k, v in saved["figures"].items() if k != "cached"}
    assert rows["both without bias correction"]["deviation"] == \
        pytest.approx(deviation_by_hand(wb, w, w_used, None), abs=1e-4)
    assert rows["activations only without bias correction"]["deviation"] == 0.0
    read = saved["sources"]["reading"]["bias_correction"]
    assert read["improvement"] == rows["both without bias correction"]["deviation"] - rows["both"]["deviation"]
    md = (tmp_path / "out" / "layers.md").read_text()
    assert "Calibration kl_divergence + bias correction, " in md
    assert "The per-Conv table is measured on the simplified ONNX, uncorrected" in md
    assert "The config is bias-corrected: the first three rows are its corrected model" in md
