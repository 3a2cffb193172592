"""Bias correction as tune's fourth knob (issue 21 section 3): the corrected candidate, its place in the search and
the choice, its model, and what tuned.yaml and the Makefile make of it."""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from test_tune import CALIBS, fake_evaluate, inputs, prerank, tune_config, workbench  # noqa: F401

from conftest import INT8_CONFIG, REPO, StubProgress
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.tuning import search as search_mod, statistics, tuned_yaml
from pipeline.tuning.candidates import Cache, Candidate, check_saved, content_digest
from pipeline.tuning.scoring import FIDELITY, LABELLED


def test_an_uncorrected_candidate_is_keyed_and_saved_as_before_and_a_corrected_one_round_trips():
    plain = Candidate("percentile", 0.9999, (1, 3))
    assert plain.key == "percentile|0.9999|1,3" and plain.label() == "percentile 0.9999, skip [1, 3]"
    assert plain.to_json() == {"calibrate_mode": "percentile", "calibrate_range": 0.9999, "skip_conv_layers": [1, 3]}
    corrected = Candidate("kl_divergence", None, (), corrected=True)
    assert corrected.key == "kl_divergence|||corrected" and corrected.label() == "kl_divergence + bias correction"
    assert corrected.to_json() == {"calibrate_mode": "kl_divergence", "calibrate_range": None,
                                   "skip_conv_layers": [], "corrected": True}
    assert Candidate.from_json(json.loads(json.dumps(corrected.to_json()))) == corrected
    assert Candidate.from_json(plain.to_json()) == plain and corrected.key != Candidate("kl_divergence", None).key


def small_record(candidate: Candidate) -> dict:
    """A candidates.json of one candidate scored on no image: what check_saved reads."""
    cache = Cache(None, {"selection": [], "extra": [], "confirmation": [], "input_shape": [1, 3, 8, 8]})
    cache.put(candidate, "selection", {k: [] for k in FIDELITY + LABELLED})
    cache.put(candidate, "extra", {k: [] for k in FIDELITY})
    return cache.record()


@pytest.mark.parametrize("value", ["yes", 1, False, None])
def test_the_cache_refuses_a_corrected_that_is_not_true(value):
    corrected = Candidate("max", None, (), corrected=True)
    assert list(check_saved(small_record(corrected))) == ["max|||corrected"]
    saved = small_record(corrected)
    saved["cache"][0]["candidate"]["corrected"] = value
    saved["digest"] = content_digest(saved)  # a well-formed file otherwise: only the field is wrong
    with pytest.raises(ValueError, match=rf"cache\[0\]\.candidate\.corrected is {value!r}, not true"):
        check_saved(saved)


def test_the_tune_setting_is_a_strict_boolean(tmp_path):
    assert load_config(tune_config(tmp_path)).pipeline.tune.bias_correction is False  # off unless asked: minutes
    assert load_config(tune_config(tmp_path, bias_correction=True)).pipeline.tune.bias_correction is True
    with pytest.raises(PipelineError, match=r"pipeline\.tune\.bias_correction: expected true or false, got"):
        load_config(tune_config(tmp_path, bias_correction="empirical"))


# --- the search ----------------------------------------------------------------------------------------------------

def test_the_search_tries_every_calibration_corrected_after_the_calibrations_and_none_when_off():
    calls = []
    outcome = search_mod.search(CALIBS[0], CALIBS, fake_evaluate(calls), prerank, budget=40, rank_count=10,
                                max_float=5, correction=True)
    # mse is the calibration of lowest deviation (fake_evaluate): its corrected self first, then every other
    # calibration corrected in their order, then the ranking from the uncorrected base
    corrected = [replace(c, corrected=True) for c in (CALIBS[2], CALIBS[0], CALIBS[1], CALIBS[3])]
    assert [(s.phase, s.candidate) for s in outcome.steps[:8]] == \
        [("calibration", c) for c in CALIBS] + [("correction", c) for c in corrected]
    assert calls[:8] == [*CALIBS, *corrected]  # each evaluated once
    assert not any(s.candidate.corrected for s in outcome.steps[8:])
    assert all(s.candidate.mode == "mse" for s in outcome.steps[8:]) and outcome.steps[8].phase == "rank"
    off = search_mod.search(CALIBS[0], CALIBS, fake_evaluate([]), prerank, budget=40, rank_count=10, max_float=5)
    assert [s.candidate for s in off.steps] == [s.candidate for s in outcome.steps if not s.candidate.corrected]
    assert "correction" not in {s.phase for s in off.steps}
    # each correction counts against max_builds as any candidate: the budget can end the phase half-way
    for budget, tried in ((4, 0), (6, 2)):
        short = search_mod.search(CALIBS[0], CALIBS, fake_evaluate([]), prerank, budget=budget, rank_count=10,
                                  max_float=5, correction=True)
        assert short.out_of_budget and [s.candidate for s in short.steps] == [*CALIBS, *corrected[:tried]]


def test_a_corrected_incumbent_is_compared_with_every_calibration_in_both_states_and_its_uncorrected_twin():
    incumbent = Candidate("kl_divergence", None, (), corrected=True)
    outcome = search_mod.search(incumbent, CALIBS, fake_evaluate([]), prerank, budget=40, rank_count=10,
                                max_float=5, correction=True)
    assert (outcome.steps[0].phase, outcome.steps[0].candidate) == ("input", incumbent)
    assert [s.candidate for s in outcome.steps[1:5]] == CALIBS
    # the correction phase: the other calibrations corrected, base (mse) first; KL corrected is the incumbent and
    # its uncorrected twin the first calibration, both already scored, so neither counts twice
    assert [(s.phase, s.candidate) for s in outcome.steps[5:8]] == \
        [("correction", replace(c, corrected=True)) for c in (CALIBS[2], CALIBS[1], CALIBS[3])]
    assert outcome.steps[8].phase == "rank" and outcome.steps[8].candidate.mode == "mse"  # base: never corrected
    assert not any(s.candidate.corrected for s in outcome.steps[8:])
    # an incumbent with Convs kept float: its uncorrected twin is a candidate of its own, after the corrections
    skipping = Candidate("kl_divergence", None, (3,), corrected=True)
    steps = search_mod.search(skipping, CALIBS, fake_evaluate([]), prerank, budget=40, rank_count=10,
                              max_float=5, correction=True).steps
    assert [(s.phase, s.candidate) for s in steps[5:10]] == \
        [("correction", replace(c, corrected=True)) for c in (CALIBS[2], CALIBS[0], CALIBS[1], CALIBS[3])] + \
        [("correction", replace(skipping, corrected=False))]
    # without the knob, a corrected incumbent meets the uncorrected calibrations only
    off = search_mod.search(incumbent, CALIBS, fake_evaluate([]), prerank, budget=40, rank_count=10, max_float=5)
    assert [s.candidate.corrected for s in off.steps] == [True] + [False] * (len(off.steps) - 1)


def test_an_input_config_with_bias_correction_is_a_corrected_incumbent(inputs, small_sim_onnx, tmp_path, monkeypatch):
    from pipeline.tuning import tune as tune_mod
    seen = {}

    def fake_search(incumbent, calibrations, evaluate, prerank, budget, rank_count, max_float, correction):
        seen.update(incumbent=incumbent, calibrations=calibrations, correction=correction)
        return search_mod.Outcome()
    monkeypatch.setattr(tune_mod, "search", fake_search)
    raw = yaml.safe_load(tune_config(tmp_path).read_text())
    raw["pipeline"]["bias_correction"] = "empirical"
    raw["pipeline"]["tune"] = {"bias_correction": False}
    (tmp_path / "corrected.yaml").write_text(yaml.safe_dump(raw))
    tune_mod.run_search(workbench(tmp_path / "corrected.yaml", small_sim_onnx, inputs), StubProgress())
    assert seen["incumbent"] == Candidate("kl_divergence", None, (), corrected=True) and seen["correction"] is False
    assert not any(c.corrected for c in seen["calibrations"])
    tune_mod.run_search(workbench(tune_config(tmp_path, bias_correction=True), small_sim_onnx, inputs), StubProgress())
    assert seen["incumbent"] == Candidate("kl_divergence", None, ()) and seen["correction"] is True
    tune_mod.run_search(workbench(tune_config(tmp_path), small_sim_onnx, inputs), StubProgress())
    assert seen["correction"] is False  # the default: off


# --- the choice ----------------------------------------------------------------------------------------------------

def test_the_corrected_candidate_is_chosen_when_significantly_closer_and_within_the_target():
    # ten images: the corrected base closer to fp32 than KL by 0.01 on nine and 0.02 on one (p = 1 / 10000,
    # tests/test_tune_statistics.py::test_significantly_better); the uncorrected base worse on average
    kl = [0.05] * 9 + [0.06]
    corrected, base = [0.04] * 10, [0.045] * 5 + [0.06] * 5
    p = [statistics.p_value(statistics.mean([a - b for a, b in zip(kl, c)], statistics.draws(10, 0)))
         for c in (base, corrected)]
    assert p[1] == 1 / (statistics.RESAMPLES + 1) and p[0] > 0.5
    steps = [search_mod.Step(Candidate("kl_divergence", None), "calibration", {"deviation": 0.051, "violation": 2}),
             search_mod.Step(Candidate("mse", None), "calibration", {"deviation": 0.0525, "violation": 0.9}),
             search_mod.Step(Candidate("mse", None, (), True), "correction", {"deviation": 0.04, "violation": 0.8})]
    decision = search_mod.decide(steps, p)
    assert decision.chosen is steps[2] and decision.verdict == "chosen" and decision.compared == 2
    # the same gain missing the target: not chosen (nothing else is significant, KL misses it too)
    missed = [*steps[:2], replace(steps[2], result={"deviation": 0.04, "violation": 1.5})]
    assert search_mod.decide(missed, p).verdict == "target not met"
    # a Conv kept float costs speed on the card: the corrected candidate wins over a closer one that skips a Conv
    skipping = search_mod.Step(Candidate("mse", None, (3,)), "bisect", {"deviation": 0.03, "violation": 0.5})
    assert search_mod.decide([*steps, skipping], [*p, p[1]]).chosen is steps[2]


# --- the build, and what tuned.yaml carries ------------------------------------------------------------------------

@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_a_corrected_candidate_is_the_qdq_of_the_corrected_model_and_make_int8_builds_it(inputs, small_sim_onnx,
                                                                                        tmp_path, monkeypatch):
    from pipeline.backends.engine import build_engine
    from pipeline.backends.ort import qdq, stats
    from pipeline.backends.ort.build import tensor_thresholds
    from pipeline.stages.correct import correct_onnx
    from pipeline.tuning import tune as tune_mod

    # the input config (max: its thresholds are the quickest to recompute, as the correction does 4 times) and its
    # correction only: the other calibrations and the ranking are tested elsewhere
    raw = yaml.safe_load(tune_config(tmp_path, max_float_layers=0, bias_correction=True).read_text())
    raw["backend"]["quantize"]["calibrate_mode"] = "max"
    cfg_path = tmp_path / "small_max.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(tune_mod, "calibrations", lambda cfg: [Candidate("max", None)])
    out = tmp_path / "tune"
    wb = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    wb.quantizer.progress = recorded = StubProgress()

    def take_the_correction(steps, p_values, level=statistics.LEVEL):  # the choice is tested above
        decision = search_mod.decide(steps, p_values, level)
        return replace(decision, chosen=next(s for s in steps if s.phase == "correction"), verdict="chosen")
    monkeypatch.setattr(tune_mod, "decide", take_the_correction)
    result = tune_mod.tune(wb, out, "python -m pipeline tune ...", StubProgress())
    chosen = result.chosen.candidate
    assert [s.phase for s in result.outcome.steps] == ["calibration", "correction"]
    assert chosen == Candidate("max", None, (), corrected=True)
    descs = [desc for desc, _ in recorded.loops]
    assert "bias correction" in descs
    # one statistics collection (two passes), the simplified model's: the corrected model's statistics are those
    # of the correction's last recalibration, not collected again
    assert descs.count("statistics") == 2

    # tuned.yaml says so
    text = (out / "tuned.yaml").read_text()
    assert text.splitlines()[0] == f"# {tuned_yaml.MARK} (docs/tuning.md): {cfg_path.name} with only " \
                                   f"backend.quantize and pipeline.bias_correction changed."
    tuned = load_config(out / "tuned.yaml")
    assert tuned.pipeline.bias_correction == "empirical"
    assert (tuned.backend.quantize.calibrate_mode, tuned.backend.quantize.skip_conv_layers) == ("max", ())
    saved = json.loads((out / "candidates.json").read_text())
    assert saved["chosen"] == chosen.to_json() and saved["search"][1]["phase"] == "correction"

    # the model scored is the corrected ONNX `make int8` makes for the tuned config (python -m pipeline correct),
    # quantized with thresholds from its own statistics by write_qdq, and the engine built from that ONNX
    corrected_onnx = tmp_path / "small.corrected.onnx"
    correct_onnx(tuned, small_sim_onnx, inputs / "calib", corrected_onnx, StubProgress())
    assert wb.quantizer.corrected("max", None)[0].SerializeToString() == corrected_onnx.read_bytes()
    model = onnx.load(str(corrected_onnx))
    collected = stats.collect(model, qdq.quantized_tensors(model, set()), inputs / "calib" / "tensors.npy",
                              StubProgress(), "statistics")
    direct = qdq.write_qdq(model, tensor_thresholds(collected, "max", None), set(), True)
    assert wb.quantizer.build(chosen) == direct
    assert wb.quantizer.build(replace(chosen, corrected=False)) != direct
    build_engine("ort", tuned, corrected_onnx, inputs / "calib", tmp_path / "engine", StubProgress())
    assert (tmp_path / "engine" / "model.onnx").read_bytes() == direct


def make_int8_onnx(config: Path, tmp_path: Path) -> str:
    """The ONNX `make int8` would build CONFIG's engine from (make -n: nothing runs)."""
    done = subprocess.run(["make", "-n", "int8", f"ART={tmp_path}/art", "BACKEND=ort", f"CONFIG_INT8={config}"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if "pipeline build" in line)
    return line.split("--onnx ")[1].split()[0].strip("'")


@pytest.mark.slow
def test_tuned_yaml_writes_or_replaces_bias_correction_and_the_makefile_reads_it(tmp_path):
    text = INT8_CONFIG.read_text()
    raw = yaml.safe_load(text)
    block = tuned_yaml.quantize_block(raw["backend"]["quantize"], "mse", None, [])
    on = tuned_yaml.tuned_text(text, block, ["header"], "empirical")
    lines = on.splitlines()[2:]  # the header and its body sha256
    at = lines.index("pipeline:")
    indent = next(line for line in text.splitlines()[text.splitlines().index("pipeline:") + 1:]
                  if line.strip() and not line.lstrip().startswith("#")).split("seed")[0]
    assert lines[at + 1] == f"{indent}bias_correction: empirical"
    assert lines[:at + 1] + lines[at + 2:] == tuned_yaml.tuned_text(text, block, ["header"]).splitlines()[2:]
    expected = {**raw, "backend": {**raw["backend"], "quantize": block},
                "pipeline": {**raw["pipeline"], "bias_correction": "empirical"}}
    assert yaml.safe_load(on) == expected
    (tmp_path / "on_tuned.yaml").write_text(on)
    assert load_config(tmp_path / "on_tuned.yaml").pipeline.bias_correction == "empirical"
    assert make_int8_onnx(tmp_path / "on_tuned.yaml", tmp_path).endswith("/onnx/on_tuned.corrected.onnx")

    # an existing line is replaced where it is, its neighbours kept
    commented = text.replace("  opset: 17", "  bias_correction: empirical  # corrected\n  opset: 17")
    off = tuned_yaml.tuned_text(commented, block, ["header"], False)
    assert "  bias_correction: false\n  opset: 17" in off and "empirical" not in off
    assert off.splitlines()[2:] == [line.replace("bias_correction: empirical  # corrected",
                                                 "bias_correction: false")
                                    for line in tuned_yaml.tuned_text(commented, block, ["header"]).splitlines()[2:]]
    (tmp_path / "off_tuned.yaml").write_text(off)
    assert load_config(tmp_path / "off_tuned.yaml").pipeline.bias_correction is False
    assert make_int8_onnx(tmp_path / "off_tuned.yaml", tmp_path).endswith("/onnx/off_tuned.sim.onnx")

    # a config without a pipeline section gets one, indented as the Makefile's sed reads it
    bare = text[:text.index("# Our settings")]
    appended = tuned_yaml.tuned_text(bare, block, ["header"], "empirical")
    assert appended.endswith("workspace:\n  path: ./deploy_weights/\npipeline:\n  bias_correction: empirical\n")
    (tmp_path / "bare_tuned.yaml").write_text(appended)
    assert make_int8_onnx(tmp_path / "bare_tuned.yaml", tmp_path).endswith("/onnx/bare_tuned.corrected.onnx")


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_a_corrected_input_config_with_skipped_convs_is_built_as_make_int8_builds_it(inputs, small_sim_onnx,
                                                                                     tmp_path):
    from pipeline.backends.engine import build_engine
    from pipeline.stages.correct import correct_onnx

    # make int8 corrects for the config's skip_conv_layers (skipped Convs are not corrected): so does the incumbent
    raw = yaml.safe_load(tune_config(tmp_path).read_text())
    raw["backend"]["quantize"].update(calibrate_mode="max", skip_conv_layers=[1])
    raw["pipeline"]["bias_correction"] = "empirical"
    cfg_path = tmp_path / "skip_corrected.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    wb = workbench(cfg_path, small_sim_onnx, inputs)
    cfg = load_config(cfg_path)
    correct_onnx(cfg, small_sim_onnx, inputs / "calib", tmp_path / "c.onnx", StubProgress())
    build_engine("ort", cfg, tmp_path / "c.onnx", inputs / "calib", tmp_path / "engine", StubProgress())
    incumbent = Candidate("max", None, (1,), corrected=True)
    assert wb.quantizer.build(incumbent) == (tmp_path / "engine" / "model.onnx").read_bytes()
    assert wb.quantizer.corrected("max", None, (1,))[0].SerializeToString() == (tmp_path / "c.onnx").read_bytes()


def shifted_model(model: onnx.ModelProto, shift: float) -> onnx.ModelProto:
    """MODEL with SHIFT added to its first Conv bias: a stand-in for the corrected model, distinct per calibration."""
    from onnx import numpy_helper
    out = onnx.ModelProto()
    out.CopyFrom(model)
    bias = next(n.input[2] for n in out.graph.node if n.op_type == "Conv" and len(n.input) > 2)
    init = next(i for i in out.graph.initializer if i.name == bias)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), bias))
    return out


@pytest.mark.slow  # a whole tune (14 candidates) on the whole small model
def test_every_calibration_is_tried_corrected_once_and_a_corrected_non_base_winner_is_what_tuned_yaml_carries(
        inputs, small_sim_onnx, tmp_path, monkeypatch):
    from pipeline.backends.ort import bias_correction, qdq, stats
    from pipeline.backends.ort.build import calibration_statistics, tensor_thresholds
    from pipeline.tuning import scoring, tune as tune_mod
    from pipeline.tuning.candidates import calibrations

    # the correction stubbed (the search is under test, the correction in tests/test_bias_correction.py): a model
    # of its own per calibration, so a corrected candidate is not its uncorrected twin
    cfg_path = tune_config(tmp_path, max_float_layers=0, bias_correction=True)
    every = calibrations(load_config(cfg_path))
    corrections = []

    def fake_correct(cfg, model, calib_tensors, progress, skipped):
        q = cfg.backend.quantize
        calibration = Candidate(q.calibrate_mode, q.calibrate_range if q.calibrate_mode == "percentile" else None)
        corrections.append((calibration, skipped))
        shifted = shifted_model(model, 0.01 * (1 + every.index(calibration)))
        tensors = qdq.quantized_tensors(shifted, set(skipped))  # its statistics, as the build collects them
        collected = calibration_statistics(cfg, shifted, tensors, calib_tensors, progress, "stub")
        return shifted.SerializeToString(), {}, collected
    monkeypatch.setattr(bias_correction, "correct", fake_correct)

    def take(steps, p_values, level=statistics.LEVEL):  # the rule is tested above: here, what follows the choice
        decision = search_mod.decide(steps, p_values, level)  # the last correction: never the base's
        return replace(decision, chosen=[s for s in steps if s.phase == "correction"][-1], verdict="chosen")
    monkeypatch.setattr(tune_mod, "decide", take)
    out = tmp_path / "tune"
    wb = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    result = tune_mod.tune(wb, out, "python -m pipeline tune ...", StubProgress())
    steps = result.outcome.steps
    base = min(steps[:len(every)], key=lambda s: (not s.met, s.result["deviation"])).candidate
    winner = result.chosen.candidate
    assert winner.corrected and winner.mode == "percentile" and replace(winner, corrected=False) != base
    assert [(s.phase, s.candidate) for s in steps] == \
        [("calibration", c) for c in every] + \
        [("correction", replace(c, corrected=True)) for c in [base, *[c for c in every if c != base]]]
    # one correction per calibration, nothing skipped, none repeated though the chosen one is scored again (on
    # the confirmation images) and built below
    assert sorted(corrections, key=lambda c: every.index(c[0])) == [(c, []) for c in every]
    assert result.decision.compared == 2 * len(every) - 1 and len(result.p_values) == 2 * len(every) - 1

    tuned = load_config(out / "tuned.yaml")
    q = tuned.backend.quantize
    assert (q.calibrate_mode, q.calibrate_range, q.skip_conv_layers) == ("percentile", winner.range, ())
    assert tuned.pipeline.bias_correction == "empirical"
    assert (out / "tuned.yaml").read_text().splitlines()[0].endswith(
        "with only backend.quantize and pipeline.bias_correction changed.")
    # what was scored for it: the Q/DQ of its own corrected model, at thresholds collected on that model
    model = shifted_model(wb.model, 0.01 * (1 + every.index(replace(winner, corrected=False))))
    collected = stats.collect(model, qdq.quantized_tensors(model, set()), inputs / "calib" / "tensors.npy",
                              StubProgress(), "statistics")
    direct = qdq.write_qdq(model, tensor_thresholds(collected, "percentile", winner.range), set(), True)
    assert wb.quantizer.build(winner) == direct != wb.quantizer.build(replace(winner, corrected=False))
    assert len(corrections) == len(every)

    # a rerun follows the same steps from candidates.json: no correction, no model run, the same tuned.yaml
    text = (out / "tuned.yaml").read_text()

    def nothing(*args, **kwargs):
        raise AssertionError("a correction or a model ran")
    monkeypatch.setattr(bias_correction, "correct", nothing)
    monkeypatch.setattr(scoring, "predict", nothing)
    rerun = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    again = tune_mod.tune(rerun, out, "python -m pipeline tune ...", StubProgress())
    assert rerun.built == 0 and [(s.phase, s.candidate) for s in again.outcome.steps] == \
        [(s.phase, s.candidate) for s in steps]
    assert (out / "tuned.yaml").read_text() == text
