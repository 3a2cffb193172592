"""Quantization analysis and tuning (pipeline/tuning) on the small-shape demo model, and the search's logic."""
from __future__ import annotations

import copy
import csv
import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from conftest import INT8_CONFIG, SMALL_HW, StubProgress, small_config_dict, write_config
from pipeline.backends.engine import build_engine
from pipeline.backends.ort.numbering import conv_order
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.tuning import scoring, search as search_mod, tuned_yaml
from pipeline.tuning.analyze import analyze
from pipeline.tuning.candidates import Candidate, calibrations
from pipeline.tuning.split import split
from pipeline.tuning.tune import tune
from pipeline.tuning.workbench import Workbench

CALIB, IMAGES = 4, 16
SET = (IMAGES - CALIB) // 2  # selection and confirmation images each: 6, enough to bound a mean at 95%


def tune_config(tmp_path: Path, **tune) -> Path:
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = CALIB
    raw["pipeline"]["tune"] = dict(tune)
    return write_config(tmp_path / "small_int8.yaml", raw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from pipeline.demo.data import write_demo_data
    from pipeline.stages.calibrate import make_calibration_set
    tmp = tmp_path_factory.mktemp("tune")
    write_demo_data(tmp / "data", count=IMAGES, seed=5, scale=0.15)
    config = tune_config(tmp)
    make_calibration_set(load_config(config), tmp / "data", tmp / "calib", tmp / "list.txt")
    return tmp


def workbench(cfg_path: Path, sim: Path, inputs: Path, cache: Path | None = None) -> Workbench:
    return Workbench(load_config(cfg_path), sim, inputs / "calib", inputs / "data", StubProgress(), cache)


def test_split_skips_the_calibration_subset_by_its_rule_and_halves_the_rest(inputs, tmp_path):
    cfg = load_config(inputs / "small_int8.yaml")
    names = sorted(p.name for p in (inputs / "data" / "image").iterdir())
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"0:{n}".encode()).hexdigest())
    calib = set(ranked[:CALIB])
    selection, confirmation = split(cfg, inputs / "data", calib)
    # 16 images, 4 calibration: 6 selection then 6 confirmation, in the subset's ranking
    assert [n for n, _ in selection] == ranked[CALIB:CALIB + SET]
    assert [n for n, _ in confirmation] == ranked[CALIB + SET:]
    assert all(d == hashlib.sha256((inputs / "data" / "image" / n).read_bytes()).hexdigest()
               for n, d in selection + confirmation)
    assert split(cfg, inputs / "data", calib) == (selection, confirmation)  # seeded: the same split again
    one = load_config(tune_config(tmp_path, selection_images=2))
    assert [len(x) for x in split(one, inputs / "data", calib)] == [2, 10]
    other = load_config(tune_config(tmp_path, confirmation_images=1))
    assert [len(x) for x in split(other, inputs / "data", calib)] == [11, 1]
    too_many = load_config(tune_config(tmp_path, selection_images=11, confirmation_images=2))
    with pytest.raises(PipelineError, match="12 images outside the calibration subset cannot give 11 selection and 2 "
                                            "confirmation images"):
        split(too_many, inputs / "data", calib)


@pytest.mark.parametrize("key, value, words", [("selection_images", 0, "must be >= 1"),
                                               ("confirmation_images", "half", "expected an integer"),
                                               ("max_builds", 2.5, "expected an integer"),
                                               ("max_builds", 101, "must be <= 100"),
                                               ("max_mad_increase", -0.1, "must be within"),
                                               ("max_mse_increase", 2, "must be within"),
                                               ("max_float_layers", -1, "must be >= 0"),
                                               ("validation_images", 20, "unknown key"),
                                               ("budget", 3, "unknown key")])
def test_bad_tune_section_is_one_line_naming_the_key(tmp_path, key, value, words):
    path = tune_config(tmp_path, **{key: value})
    with pytest.raises(PipelineError, match=rf"pipeline\.tune\.{key}: {words}"):
        load_config(path)


# --- the search, on a made-up problem: 10 layers, layers 3 and 7 must be float to meet the target -----------------

def fake_evaluate(calls: list, hard: bool = False):
    def evaluate(candidate: Candidate) -> dict:
        calls.append(candidate)
        base = {"kl_divergence": 3.0, "max": 2.5, "mse": 2.0}.get(candidate.mode, 4.0)
        missing = {3, 7} - set(candidate.skip)
        violation = base * (0.2 + 0.4 * len(missing)) + (5.0 if hard else 0.0) + 0.001 * len(candidate.skip)
        return {"violation": violation, "deviation": violation / 10}
    return evaluate


def prerank(candidate):
    return [0, 7, 1, 2, 3, 4, 5, 6, 8, 9]  # 7 looks bad locally, 3 does not until measured


CALIBS = [Candidate("kl_divergence", None), Candidate("max", None), Candidate("mse", None),
          Candidate("percentile", 0.9999)]


def every_significant(outcome):
    return search_mod.decide(outcome.steps, [0.0] * (len(outcome.steps) - 1))


def test_search_finds_the_fewest_layers_within_its_budget():
    calls = []
    outcome = search_mod.search(CALIBS[0], CALIBS, fake_evaluate(calls), prerank, budget=40, rank_count=10,
                                max_float=5)
    assert not outcome.out_of_budget
    decision = every_significant(outcome)
    assert decision.verdict == "chosen" and decision.chosen.candidate == Candidate("mse", None, (3, 7))
    assert len(calls) == len(set(calls)) == len(outcome.steps) <= 40
    assert [s.phase for s in outcome.steps[:4]] == ["calibration"] * 4
    assert outcome.steps[0].candidate == CALIBS[0]  # the incumbent first


def test_an_input_config_with_skipped_layers_is_the_incumbent_as_it_is():
    calls = []
    incumbent = Candidate("kl_divergence", None, (3,))
    outcome = search_mod.search(incumbent, CALIBS, fake_evaluate(calls), prerank, budget=40, rank_count=10,
                                max_float=5)
    assert outcome.steps[0].candidate == incumbent and outcome.steps[0].phase == "input"
    assert [s.candidate for s in outcome.steps[1:5]] == CALIBS


@pytest.mark.parametrize("budget", [1, 5, 13])
def test_search_never_exceeds_max_builds(budget):
    calls = []
    outcome = search_mod.search(CALIBS[0], CALIBS, fake_evaluate(calls), prerank, budget=budget, rank_count=10,
                                max_float=5)
    assert len(calls) == len(outcome.steps) == budget and outcome.out_of_budget


@pytest.mark.parametrize("max_float", [0, 1, 3])
def test_unreachable_target_keeps_at_most_max_float_layers_float(max_float):
    calls = []
    outcome = search_mod.search(CALIBS[0], CALIBS, fake_evaluate(calls, hard=True), prerank, budget=40,
                                rank_count=3, max_float=max_float)
    assert not outcome.out_of_budget  # ran out of layers it may keep float, not of builds
    assert max(len(s.candidate.skip) for s in outcome.steps) == max_float
    decision = every_significant(outcome)
    assert decision.verdict == "target not met"
    assert decision.chosen.result["violation"] == min(s.result["violation"] for s in outcome.steps[1:])


def test_a_revert_that_makes_the_deviation_worse_ranks_the_rest_again():
    # Conv 0 alone helps a little, 1 with 0 makes it worse (their errors cancelled), 3 is where the loss is but
    # the ranking never measured it (rank_count 3 of a prerank order 0, 1, 2, ...): met needs 3 float
    def evaluate(candidate):
        skip = set(candidate.skip)
        deviation = 1 - 0.05 * (0 in skip) + 0.3 * ({0, 1} <= skip) - 0.4 * (3 in skip) + 0.001 * len(skip)
        return {"deviation": deviation, "violation": deviation / 0.6}

    outcome = search_mod.search(CALIBS[0], CALIBS[:1], evaluate, lambda c: list(range(10)), budget=40,
                                rank_count=3, max_float=5)
    phases = [(s.phase, s.candidate.skip) for s in outcome.steps]
    # {0} was measured by the ranking (n = 1); {0, 1} is worse than {0}: the layers after 0 are measured again with
    # 0 kept float ({0, 1} is already known), which finds 3
    assert phases[:7] == [("calibration", ()), ("rank", (0,)), ("rank", (1,)), ("rank", (2,)), ("bisect", (0, 1)),
                          ("rerank", (0, 2)), ("rerank", (0, 3))]
    decision = every_significant(outcome)
    assert decision.chosen.candidate.skip == (0, 3) and decision.verdict == "chosen"


# --- the stages on the small model ---------------------------------------------------------------------------------

@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_tune_writes_a_config_that_differs_only_in_quantize_and_reruns_from_its_cache(inputs, small_sim_onnx,
                                                                                    tmp_path, monkeypatch):
    # A target nothing meets (a millionth of an MSE or MAD increase, of an mIoU drop: int8 is never that close to
    # fp32 on these 6 images), with a budget of 9: the search spends it and says so.
    limits = {"max_mse_increase": 1e-6, "max_mad_increase": 1e-6, "max_miou_drop": 1e-6}
    cfg_path = tune_config(tmp_path, max_builds=9, **limits)
    out = tmp_path / "tune"
    wb = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    bar = StubProgress()
    result = tune(wb, out, "python -m pipeline tune ...", bar)
    outcome = result.outcome
    assert len(outcome.steps) == bar.done == 9 and outcome.out_of_budget
    # + the confirmation of the input and of the chosen one (once scored on the confirmation images, SET each)
    assert wb.built == 9 + 1 + (result.chosen is not outcome.steps[0])
    assert wb.passes == SET * (2 + 9 + 1 + (result.chosen is not outcome.steps[0]))  # fp32 on both sets, candidates
    assert [s.candidate for s in outcome.steps[:7]] == calibrations(wb.cfg)
    # each candidate's violation is its largest upper bound as a share of its limit (by hand, from its bounds)
    for s in outcome.steps:
        upper = {key: s.result["bounds"][key][1] for key in ("mse_increase", "mad_increase", "miou_drop")}
        assert s.result["violation"] == max(upper["mse_increase"] / 1e-6, upper["mad_increase"] / 1e-6,
                                            upper["miou_drop"] / 1e-6) > 1
    assert result.verdict == "target not met"
    md = (out / "tune.md").read_text()
    assert "**verdict: target not met: no candidate of 8 that is significantly closer to fp32 than the input " \
           "config (kl_divergence) meets the target (MSE increase <= 1e-06, MAD increase <= 1e-06, mIoU drop <= " \
           f"1e-06, upper 95% bounds), nor does the input config; best found: {result.chosen.candidate.label()}; " \
           "max_builds=9 spent.**" in md

    tuned = load_config(out / "tuned.yaml")
    raw_in, raw_out = yaml.safe_load(cfg_path.read_text()), yaml.safe_load((out / "tuned.yaml").read_text())
    raw_out["backend"].pop("quantize"), raw_in["backend"].pop("quantize")
    assert raw_out == raw_in
    text = (out / "tuned.yaml").read_text()
    assert text.splitlines()[1] == "# Verdict: target not met"
    best = result.chosen.candidate
    q = tuned.backend.quantize
    assert (q.calibrate_mode, q.skip_conv_layers) == (best.mode, best.skip)
    assert q.quantize_per_channel is True

    # the tuned config builds, with the backend, exactly the model that was scored; its skip list counts in
    # vamc's order (the skipped Convs keep float weights)
    engine = tmp_path / "engine"
    build_engine("ort", tuned, small_sim_onnx, inputs / "calib", engine, StubProgress())
    assert (engine / "model.onnx").read_bytes() == wb.quantizer.build(best)
    model = onnx.load(str(engine / "model.onnx"))
    floats = {i.name for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.float32}
    vamc = conv_order(onnx.load(str(small_sim_onnx)), "vamc")
    by_name = {n.name: n for n in model.graph.node}
    assert all(by_name[vamc[i]].input[1] in floats for i in best.skip)

    # a rerun runs no model at all (every figure, confirmation included, is in the cache), follows the same path
    # and writes the same config: the bootstrap is seeded
    def no_model(*args):
        raise AssertionError("a model was run")
    monkeypatch.setattr(scoring, "predict", no_model)
    rerun = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    again = tune(rerun, out, "python -m pipeline tune ...", StubProgress())
    assert rerun.built == 0 and [s.candidate for s in again.outcome.steps] == [s.candidate for s in outcome.steps]
    assert (out / "tuned.yaml").read_text() == text
    monkeypatch.undo()

    # another target reuses what was scored on the selection images: this one (any change allowed) is met by
    # every calibration, so the search stops after them (and every calibration corrected, when the setting asks)
    looser = tune_config(tmp_path, max_builds=12, max_mse_increase=1.0, max_mad_increase=1.0, max_miou_drop=1.0)
    raised = workbench(looser, small_sim_onnx, inputs, out / "candidates.json")
    met = tune(raised, out, "python -m pipeline tune ...", StubProgress())
    assert all(s.result["cached"] for s in met.outcome.steps)
    assert [s.candidate for s in met.outcome.steps] == calibrations(raised.cfg)
    assert met.verdict in ("confirmed", "not confirmed", "input kept")
    assert load_config(out / "tuned.yaml").backend.quantize.skip_conv_layers == ()


@pytest.mark.slow  # builds two engines of the whole small model
@pytest.mark.parametrize("per_channel", [True, False])
def test_the_config_tune_writes_for_a_candidate_builds_the_very_model_it_scored(inputs, small_sim_onnx, tmp_path,
                                                                               per_channel):
    # the build collects only the tensors it quantizes and no histograms for max; tune collects every tensor once,
    # with histograms, and derives each candidate's thresholds from that: the bytes must agree all the same
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = CALIB
    raw["backend"]["quantize"]["quantize_per_channel"] = per_channel
    cfg_path = write_config(tmp_path / "small_int8.yaml", raw)
    wb = workbench(cfg_path, small_sim_onnx, inputs)
    candidates = [Candidate("max", None, (0, 2)), Candidate("percentile", 0.9999, (1,))]
    scored = {}
    for i, candidate in enumerate(candidates):
        block = tuned_yaml.quantize_block(wb.cfg.vamc["backend"]["quantize"], candidate.mode, candidate.range,
                                          list(candidate.skip))
        tuned = tmp_path / f"tuned_{i}.yaml"
        tuned.write_text(tuned_yaml.tuned_text(cfg_path.read_text(), block, ["a test"]))
        build_engine("ort", load_config(tuned), small_sim_onnx, inputs / "calib", tmp_path / f"engine_{i}",
                     StubProgress())
        scored[candidate] = wb.quantizer.build(candidate)
        assert (tmp_path / f"engine_{i}" / "model.onnx").read_bytes() == scored[candidate], candidate
    assert len(set(scored.values())) == len(candidates)  # each setting is its own model: none was ignored
    unskipped = wb.quantizer.build(Candidate("max", None))
    assert unskipped != scored[candidates[0]]
    model = onnx.load_from_string(scored[candidates[0]])
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    vamc = conv_order(onnx.load(str(small_sim_onnx)), "vamc")
    by_name = {n.name: n for n in model.graph.node}
    read = [by_name[vamc[i]].input[1] for i in range(3)]
    assert weights[read[0]].dtype == weights[read[2]].dtype == np.float32  # skipped: the float weight itself
    assert read[1].endswith("/dequantized")  # in vamc's numbering, Conv 1 is quantized, per channel or per tensor
    base = read[1].removesuffix("/dequantized")
    assert weights[f"{base}/int8"].dtype == np.int8 and weights[f"{base}/scale"].ndim == (1 if per_channel else 0)


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_the_image_lists_and_every_figure_come_back_from_the_cache_by_hand(inputs, small_sim_onnx, tmp_path):
    import json

    from pipeline.accuracy import metrics
    from pipeline.tuning import statistics
    cfg_path = tune_config(tmp_path, max_builds=3)
    out = tmp_path / "tune"
    wb = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    result = tune(wb, out, "python -m pipeline tune ...", StubProgress())
    selection = (out / "selection.txt").read_text()
    confirmation = (out / "confirmation.txt").read_text()
    assert selection == "".join(f"{d}  {n}\n" for n, d in wb.selection_entries)
    assert confirmation == "".join(f"{d}  {n}\n" for n, d in wb.confirmation_entries)
    names = {line.split("  ")[1] for line in (selection + confirmation).splitlines()}
    calib = {e["name"] for e in json.loads((inputs / "calib" / "manifest.json").read_text())["images"]}
    assert len(names) == 2 * SET and not names & calib  # disjoint from each other and from the calibration subset

    saved = json.loads((out / "candidates.json").read_text())
    entries = {json.dumps(e["candidate"], sort_keys=True): e["figures"] for e in saved["cache"]}
    key = json.dumps(result.chosen.candidate.to_json(), sort_keys=True)
    mine, fp32 = entries[key], saved["fp32"]
    for image_set in ("selection", "confirmation"):
        own, ref = mine[image_set], fp32[image_set]
        figures = result.figures[image_set]["chosen"]
        assert figures["deviation"] == pytest.approx(sum(own["deviation"]) / SET)
        assert figures["flips"] == pytest.approx(sum(own["flips"]) / SET)
        assert figures["mad_increase"] == pytest.approx((sum(own["mad"]) - sum(ref["mad"])) / SET)
        assert figures["mse_increase"] == pytest.approx((sum(own["mse"]) - sum(ref["mse"])) / SET)
        pooled = lambda f: {k: sum(f[k]) for k in ("tp", "fp", "fn", "tn")}  # noqa: E731
        assert figures["miou_drop"] == pytest.approx(metrics.miou(pooled(ref)) - metrics.miou(pooled(own)))
        assert all(0 <= d <= 1 and 0 <= f <= 1 for d, f in zip(own["deviation"], own["flips"]))
        # the bounds, recomputed from the cached per-image figures alone
        diff = [a - b for a, b in zip(own["mad"], ref["mad"])]
        e = statistics.mean(diff, statistics.draws(SET, 0))
        assert figures["bounds"]["mad_increase"] == [statistics.lower(e), statistics.upper(e)]
    header = (out / "tuned.yaml").read_text().splitlines()
    assert header[1] == f"# Verdict: {result.verdict}"
    assert f"# {len(result.outcome.steps) - 1} candidates compared with the input config; each figure is a mean " \
           f"with [lower, upper] one-sided 95% bounds" in header[3]
    # the header's figures, recomputed from candidates.json alone: the chosen config's deviation on the selection
    # images and its paired improvement over the input (at its Holm level)
    incumbent = entries[json.dumps(result.incumbent.candidate.to_json(), sort_keys=True)]
    draws = statistics.draws(SET, 0)
    dev = mine["selection"]["deviation"]
    dev_bounds = [statistics.lower(statistics.mean(dev, draws)), statistics.upper(statistics.mean(dev, draws))]
    chosen_line = f"#   this config ({result.chosen.candidate.label()}): deviation {sum(dev) / SET:.5f} " \
                  f"[{dev_bounds[0]:.5f}, {dev_bounds[1]:.5f}], flips "
    assert header[header.index(next(line for line in header if line.startswith(f"# on {SET} selection"))) + 1] \
        .startswith(chosen_line)
    diff = [a - b for a, b in zip(incumbent["selection"]["deviation"], dev)]
    at = result.gains["selection"][2]
    low = statistics.lower(statistics.mean(diff, draws), at)
    assert f"# on {SET} selection images: improvement of deviation over the input {sum(diff) / SET:+.5f}, lower bound " \
           f"{low:+.5f} (level {at:.4g}); optimistic: the search chose on these images" in header
    assert any(line.startswith(f"# on {SET} confirmation images: improvement of deviation over the input ")
               for line in header)
    assert sum(line.startswith(("#   this config (", "#   the input config (")) for line in header) == 4


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_analyze_one_row_per_conv_in_vamc_order(inputs, small_sim_onnx, tmp_path):
    wb = workbench(inputs / "small_int8.yaml", small_sim_onnx, inputs)
    result = analyze(wb, tmp_path / "analysis")
    with open(tmp_path / "analysis" / "layers.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    model = onnx.load(str(small_sim_onnx))
    assert [r["onnx_node"] for r in rows] == conv_order(model, "vamc")
    assert [int(r["vamc_index"]) for r in rows] == list(range(len(rows)))
    assert [int(r["onnx_index"]) for r in rows] == [conv_order(model, "onnx").index(r["onnx_node"]) for r in rows]
    measured = [r for r in rows if r["float_deviation_change"]]
    assert len(measured) == 8
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, len(rows) + 1))
    assert sorted(measured, key=lambda r: float(r["float_deviation_change"])) == \
        sorted(measured, key=lambda r: int(r["rank"]))  # measured first, most deviation removed first
    # the first Conv reads the image itself: quantizing it alone or everything gives the same error there
    first = next(r for r in rows if r["onnx_index"] == "0")
    assert float(first["single_sqnr_db"]) == pytest.approx(float(first["entire_sqnr_db"]), abs=0.01)
    # weight SQNR against a direct computation (per output channel, scale max|w| / 128, clip +-127)
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[
        next(n for n in model.graph.node if n.name == first["onnx_node"]).input[1]].astype(np.float64)
    scale = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, 1, 1, 1) / 128
    direct = 10 * np.log10(np.sum(w ** 2) / np.sum((w - np.clip(np.round(w / scale), -127, 127) * scale) ** 2))
    assert float(first["weight_sqnr_db"]) == pytest.approx(direct, rel=1e-5)
    assert (tmp_path / "analysis" / "layers.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "analysis" / "layers.md").read_text()
    assert f"`{result['worst'][0]['onnx_node']}`" in md.split("|--:|")[-1].splitlines()[1]


def test_tuned_yaml_keeps_every_other_line_of_the_input():
    text = INT8_CONFIG.read_text()
    raw = yaml.safe_load(text)
    block = tuned_yaml.quantize_block(raw["backend"]["quantize"], "percentile", 0.9999, [54, 3])
    out = tuned_yaml.tuned_text(text, block, ["first line", "second"])
    assert out.startswith("# first line\n# second\n")
    assert yaml.safe_load(out)["backend"]["quantize"] == {"calibrate_mode": "percentile", "quantize_per_channel": True,
                                                          "calibrate_range": 0.9999, "skip_conv_layers": [54, 3]}
    before = [line for line in text.splitlines() if not line.startswith("    ")]
    after = [line for line in out.splitlines()[3:] if not line.startswith("    ")]
    assert after == before  # comments and every line outside the quantize block, in order
    expected = copy.deepcopy(raw)
    expected["backend"]["quantize"] = block
    assert yaml.safe_load(out) == expected
    flow = text.replace("  quantize:\n    calibrate_mode: kl_divergence\n    quantize_per_channel: true\n",
                        "  quantize: {calibrate_mode: kl_divergence, quantize_per_channel: true}\n")
    assert yaml.safe_load(tuned_yaml.tuned_text(flow, block, [])) == expected  # falls back to a full dump


@pytest.mark.slow
def test_make_eval_adds_the_vendor_row_for_a_tuned_config_once_that_engine_exists(tmp_path):
    """What `make eval` runs (the stages stood in for by recording_py.py's, each recorded)."""
    import recording_py
    art = tmp_path / "art"
    tuned = tmp_path / "official_modnet_int8_tuned.yaml"
    tuned.write_text(INT8_CONFIG.read_text())
    standins, calls = recording_py.install(tmp_path / "standins")

    def ran(config: Path) -> list[dict]:
        return recording_py.run_make({**standins, "ART": art, "BACKEND": "ort", "CONFIG_INT8": config}, calls, "eval")

    def engine_args(stages: list[dict]) -> list[list[str]]:  # the report's and the gate's
        return [c["args"] for c in stages if c["stage"] in ("report", "gate")]

    vendor = ("--engine", "int8 vendor config (KL, per channel, no skip)")
    first = ran(tuned)
    assert [c["stage"] for c in first].count("evaluate") == 3  # the vendor engine has not been built
    assert not any(recording_py.holds(args, *vendor) for args in engine_args(first))
    (art / "engines" / "official_modnet_int8" / "ort").mkdir(parents=True)
    (art / "engines" / "official_modnet_int8" / "ort" / "manifest.json").write_text("{}")
    second = ran(tuned)
    evaluated = [dict(zip(c["args"][::2], c["args"][1::2])) for c in second if c["stage"] == "evaluate"]
    assert [(e["--config"], e["--engine"]) for e in evaluated if e["--out"] == f"{art}/eval/int8-vendor-ort"] == \
        [("build_configs/official_modnet_int8.yaml", f"{art}/engines/official_modnet_int8/ort")]
    rows = (*vendor, f"{art}/eval/int8-vendor-ort", "build_configs/official_modnet_int8.yaml", "--engine", "int8",
            f"{art}/eval/int8-ort", str(tuned))
    assert [recording_py.holds(args, *rows) for args in engine_args(second)] == [True, True]
    assert not any(recording_py.holds(args, *vendor) for args in engine_args(ran(INT8_CONFIG)))  # it is the int8 row
    calib = [c["args"] for c in first if c["stage"] == "calib"]  # NAME_tuned draws from NAME's list
    assert [args[args.index("--list") + 1] for args in calib] == ["calib/official_modnet_int8.txt"]


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_extra_unlabelled_images_join_the_deviation_only_and_may_not_be_calibration_images(inputs, small_sim_onnx,
                                                                                          tmp_path, capsys):
    import json
    import shutil

    from pipeline import cli
    from pipeline.demo.data import write_demo_data
    write_demo_data(tmp_path / "other", count=2, seed=9, scale=0.15)
    extra = tmp_path / "other" / "image"  # photos only: the mattes stay out of reach
    cfg_path = tune_config(tmp_path, max_builds=2)
    out = tmp_path / "tune"
    wb = Workbench(load_config(cfg_path), small_sim_onnx, inputs / "calib", inputs / "data", StubProgress(),
                   out / "candidates.json", extra=extra)
    result = tune(wb, out, "python -m pipeline tune ...", StubProgress())
    saved = json.loads((out / "candidates.json").read_text())
    assert [e["name"] for e in saved["context"]["extra"]] == sorted(p.name for p in extra.iterdir())
    first = saved["cache"][0]["figures"]
    assert set(first["extra"]) == {"deviation", "flips"} and len(first["extra"]["deviation"]) == 2
    step = result.outcome.steps[0]
    figures = next(e["figures"] for e in saved["cache"] if e["candidate"] == step.candidate.to_json())
    assert (step.result["images"], step.result["labelled"]) == (SET + 2, SET)
    assert step.result["deviation"] == pytest.approx(
        sum(figures["selection"]["deviation"] + figures["extra"]["deviation"]) / (SET + 2))
    # the ground-truth figures are the labelled images' alone: the same as a tune without the extra images
    plain = workbench(cfg_path, small_sim_onnx, inputs, tmp_path / "plain.json").evaluate(step.candidate)
    for key in ("mse_increase", "mad_increase", "miou_drop"):
        assert step.result[key] == pytest.approx(plain[key]) and step.result["bounds"][key] == plain["bounds"][key]
    assert plain["images"] == SET and plain["deviation"] != step.result["deviation"]
    assert result.figures["confirmation"]["input"]["images"] == SET  # confirmation: DATA's images only
    assert "and 2 unlabelled extra images (deviation and flips only)" in (out / "tune.md").read_text()

    calib = json.loads((inputs / "calib" / "manifest.json").read_text())["images"][0]["name"]
    shutil.copy(inputs / "data" / "image" / calib, extra / "copy.jpg")
    args = ["tune", "--config", str(cfg_path), "--onnx", str(small_sim_onnx), "--calib", str(inputs / "calib"),
            "--data", str(inputs / "data"), "--extra-images", str(extra), "--out", str(tmp_path / "refused")]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == (f"error: --extra-images {extra}: copy.jpg is the calibration image {calib} "
                                       f"(same sha256); extra images must be other photos: remove it from the "
                                       f"folder\n")
    assert not (tmp_path / "refused").exists()
    # a selection image, or the same photo twice, would weigh twice in every mean: refused too
    (extra / "copy.jpg").unlink()
    first = wb.selection_entries[0][0]
    shutil.copy(inputs / "data" / "image" / first, extra / "copy.jpg")
    assert cli.main(args) == 2
    assert f"copy.jpg is the selection image {first} (same sha256)" in capsys.readouterr().err
    (extra / "copy.jpg").unlink()
    twin = sorted(extra.iterdir())[0]
    shutil.copy(twin, extra / "zz_twin.jpg")
    assert cli.main(args) == 2
    assert f"zz_twin.jpg is a copy of {twin.name} in the same folder (same sha256)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


# --- a model whose int8 loss sits in one Conv: per-tensor activation outliers from a function-preserving rescale ---

def outlier_model(path: Path, scale: float, width: int = 8, channels=(0, 1)) -> None:
    """Conv-ReLU-Conv-ReLU-Conv-Sigmoid at the small shape. Channels CHANNELS of the first Conv scaled by SCALE
    (weights and bias) and their input weights in the second Conv by 1 / SCALE: ReLU(s x) = s ReLU(x) for s > 0, so
    the function is the same, but the second Conv's input holds channels SCALE times larger than the others, which a
    per-tensor int8 threshold cannot serve: clipped, or the small channels rounded to nothing."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.5, (width, 3, 3, 3)), rng.normal(0.1, 0.1, width)
    w2, b2 = rng.normal(0, 0.3, (width, width, 3, 3)), rng.normal(0, 0.1, width)
    w3, b3 = rng.normal(0, 0.9, (1, width, 3, 3)), np.zeros(1)
    for c in channels:
        w1[c], b1[c], w2[:, c] = w1[c] * scale, b1[c] * scale, w2[:, c] / scale
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]

    def conv(x, k, out):
        return helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [out], name=f"conv{k}", pads=[1, 1, 1, 1],
                                kernel_shape=[3, 3])
    nodes = [conv("input", 1, "c1"), helper.make_node("Relu", ["c1"], ["r1"]), conv("r1", 2, "c2"),
             helper.make_node("Relu", ["c2"], ["r2"]), conv("r2", 3, "c3"), helper.make_node("Sigmoid", ["c3"], ["out"])]
    h, w = SMALL_HW
    graph = helper.make_graph(nodes, "outliers", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_the_ranking_finds_the_conv_where_per_tensor_int8_loses_everything(tmp_path):
    import cv2

    from pipeline.accuracy import metrics
    from pipeline.core import runtime
    from pipeline.data.preprocess import load_input
    from pipeline.demo.data import write_demo_data
    from pipeline.stages.calibrate import make_calibration_set
    outlier_model(tmp_path / "plain.onnx", 1.0)
    outlier_model(tmp_path / "outliers.onnx", 300.0)
    cfg_path = tune_config(tmp_path, max_builds=20, max_mse_increase=0.01, max_mad_increase=0.02, max_miou_drop=0.1)
    cfg = load_config(cfg_path)
    # photos at the model's size whose mattes are fp32's own predictions: any int8 error is a loss against them.
    # 10 selection images: on 6, a resample of two distinct images in 2% of the 9999 gives t* tails so heavy that
    # even this gain (deviation 0.41 -> 0.006 on every image) does not pass Holm's 0.05 / 20
    write_demo_data(tmp_path / "src", count=CALIB + 20, seed=5, scale=0.15)
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    (data / "matte").mkdir()
    plain, outliers = runtime.session(tmp_path / "plain.onnx"), runtime.session(tmp_path / "outliers.onnx")
    for src in sorted((tmp_path / "src" / "image").iterdir()):
        cv2.imwrite(str(data / "image" / src.name), cv2.resize(cv2.imread(str(src)), SMALL_HW[::-1],
                                                              interpolation=cv2.INTER_AREA))
        x = load_input(cfg, data / "image" / src.name)
        alpha = runtime.run(outliers, x)
        assert np.abs(alpha - runtime.run(plain, x)).max() < 1e-4  # the rescale preserves the function
        cv2.imwrite(str(data / "matte" / src.name), metrics.pred_from_alpha(alpha), [cv2.IMWRITE_JPEG_QUALITY, 100])
    make_calibration_set(cfg, data, tmp_path / "calib", tmp_path / "list.txt")
    wb = Workbench(cfg, tmp_path / "outliers.onnx", tmp_path / "calib", data, StubProgress(),
                   tmp_path / "tune" / "candidates.json")
    result = tune(wb, tmp_path / "tune", "python -m pipeline tune ...", StubProgress())
    calibration = [s for s in result.outcome.steps if s.phase == "calibration"]
    assert len(calibration) == 7 and min(s.result["violation"] for s in calibration) > 10  # none comes near
    assert min(s.result["deviation"] for s in calibration) > 0.3  # mean |alpha - fp32 alpha| above 0.3 for all
    ranked = [s for s in result.outcome.steps if s.phase == "rank"]
    # measured in single-SQNR order: the worst is the second Conv (vamc order), the one reading the outliers, and
    # keeping it float removes the most deviation
    assert ranked[0].candidate.skip == (1,) and min(ranked, key=lambda s: s.result["deviation"]) is ranked[0]
    assert result.verdict == "confirmed" and result.chosen.candidate.skip == (1,)
    assert result.figures["confirmation"]["chosen"]["deviation"] < 0.05


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_a_rerun_that_confirms_on_the_previous_runs_selection_images_says_so(inputs, small_sim_onnx, tmp_path, capsys):
    cfg_path = tune_config(tmp_path, max_builds=1)
    out = tmp_path / "tune"
    first = workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json")
    assert first.notices == []
    first.cache.save()
    # the same split again: nothing to say
    assert workbench(cfg_path, small_sim_onnx, inputs, out / "candidates.json").notices == []
    # two selection images fewer: the previous run's last two selection images are now the first confirmation ones
    fewer = tune_config(tmp_path, max_builds=1, selection_images=SET - 2)
    moved = [n for n, _ in first.selection_entries[SET - 2:]]
    again = workbench(fewer, small_sim_onnx, inputs, out / "candidates.json")
    assert [n for n, _ in again.confirmation_entries[:2]] == moved
    assert again.notices == [f"{out / 'candidates.json'}: 2 of this run's {SET + 2} confirmation images ({moved[0]}, "
                             f"{moved[1]}) were searched on by an earlier tune in this folder (selection or extra "
                             f"images then): the confirmation is not on fresh images; judge the tuned config on images "
                             f"no tune has seen"]
    args = ["tune", "--config", str(fewer), "--onnx", str(small_sim_onnx), "--calib", str(inputs / "calib"),
            "--data", str(inputs / "data"), "--out", str(out)]
    from pipeline import cli
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: {again.notices[0]}" in err.splitlines()
    assert f"**Warning:** {again.notices[0]}." in (out / "tune.md").read_text().splitlines()
    assert f"# Warning: {again.notices[0]}" in (out / "tuned.yaml").read_text().splitlines()
    # remembered: a rerun of the moved split, whose context is now the saved one, still says so
    assert workbench(fewer, small_sim_onnx, inputs, out / "candidates.json").notices == again.notices
