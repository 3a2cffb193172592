"""The paired statistics of tuning (pipeline/tuning/statistics.py) and the choice they drive (search.decide), on
constructed per-image figures whose bootstrap distributions are known by hand."""
from __future__ import annotations

import time
from math import comb

import numpy as np
import pytest

from pipeline import metrics
from pipeline.tuning import scoring, statistics
from pipeline.tuning.candidates import Candidate
from pipeline.tuning.search import Step, decide, verdict

SEED = 0


def gain(incumbent, candidate):
    return scoring.gain_draws(incumbent, candidate, SEED)


def binomial_tail(n: int, q: float, k: int) -> float:
    """P(K >= k) for K ~ Binomial(n, q)."""
    return sum(comb(n, j) * q ** j * (1 - q) ** (n - j) for j in range(k, n + 1))


def step(skip=(), deviation=0.1, violation=0.5, mode="kl_divergence"):
    return Step(Candidate(mode, None, tuple(skip)), "calibration", {"deviation": deviation, "violation": violation})


def test_better_on_average_but_not_significantly():
    # two images, improvements +0.03 and -0.01 (mean +0.01): a resample of 2 images has mean -0.01 with probability
    # 1/4 (both the second), so the share at or below 0 is 1/4 and the 5% lower bound is -0.01 exactly
    d = gain([0.05, 0.02], [0.02, 0.03])
    assert d.mean() == pytest.approx(0.01, abs=0.001)
    assert statistics.p_value(d) == pytest.approx(0.25, abs=0.03)
    assert statistics.lower(d) == pytest.approx(-0.01)
    assert statistics.holm([statistics.p_value(d)]) == [None]
    steps = [step(deviation=0.035), step(mode="max", deviation=0.025)]  # both meet the target
    decision = decide(steps, [statistics.p_value(d)])
    assert decision.chosen is steps[0] and decision.verdict == "input kept"  # kept out


def test_significantly_better():
    # ten images, nine improved by 0.01 and one by 0.02: every resample mean is >= 0.01 and P(mean = 0.01) =
    # P(the 0.02 image never drawn) = 0.9^10 = 0.349 > 5%, so the lower bound is 0.01 exactly
    d = gain([0.05] * 9 + [0.06], [0.04] * 10)
    assert statistics.p_value(d) == 0.0
    assert statistics.lower(d) == pytest.approx(0.01)
    assert statistics.holm([0.0]) == [0.05]
    steps = [step(deviation=0.051), step(mode="max", deviation=0.04)]
    decision = decide(steps, [statistics.p_value(d)])
    assert decision.chosen is steps[1] and decision.verdict == "chosen"  # taken


def test_the_bound_and_the_test_agree_and_are_seeded():
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = gain(rng.normal(0.02, 0.03, 12), np.zeros(12))
        p = statistics.p_value(d)
        for level in (0.05, 0.01, 0.0125):
            assert (statistics.lower(d, level) > 0) == (p < level)
    draws = statistics.draws(7, SEED)
    assert draws.shape == (statistics.RESAMPLES, 7) and (draws.sum(axis=1) == 7).all()  # n draws per resample
    statistics.draws.cache_clear()
    assert np.array_equal(statistics.draws(7, SEED), draws)
    assert not np.array_equal(statistics.draws(7, SEED + 1), draws)


# eight images improved by 1, two worsened by 1.2: a resample's mean is <= 0 when it draws the worse ones K >= 5
# times out of 10 (10 - K - 1.2 K <= 0), K ~ Binomial(10, 0.2): p = P(K >= 5) = 0.0328, between 0.05 / 5 and 0.05
BORDERLINE = [1.0] * 8 + [-1.2] * 2


def test_the_multiple_comparison_correction_changes_a_decision():
    p = statistics.p_value(gain(BORDERLINE, [0.0] * 10))
    assert binomial_tail(10, 0.2, 5) == pytest.approx(0.0328, abs=1e-4)
    assert p == pytest.approx(binomial_tail(10, 0.2, 5), abs=0.012)  # 3 standard errors of 2000 resamples
    assert statistics.holm([p]) == [0.05]                    # alone: taken
    noise = statistics.p_value(gain([0.05, 0.02], [0.02, 0.03]))  # 0.25, as above
    assert statistics.holm([p] + [noise] * 4) == [None] * 5  # one of five: 0.0328 >= 0.05 / 5, kept out
    alone = [step(), step(mode="max", deviation=0.05)]
    assert decide(alone, [p]).chosen is alone[1]
    crowded = alone + [step(mode="mse", deviation=0.09), step((1,), deviation=0.09), step((2,), deviation=0.09)]
    assert decide(crowded, [p, noise, noise, noise]).verdict == "input kept"
    # Holm steps down: with a clear winner first, the borderline one is tested at 0.05 / 4 = 0.0125 -> still out;
    # with four clear winners it is tested at 0.05 / 1 and taken
    assert statistics.holm([0.0, p, noise, noise, noise]) == [0.01, None, None, None, None]
    assert statistics.holm([0.0, 0.0, 0.0, 0.0, p]) == [0.01, 0.0125, 0.05 / 3, 0.025, 0.05]


def test_input_kept_when_every_candidate_equals_the_input():
    same = [0.03, 0.05, 0.04, 0.02]
    steps = [step(), step(mode="max"), step(mode="mse"), step((1,))]
    p_values = [statistics.p_value(gain(same, same)) for _ in steps[1:]]
    assert p_values == [1.0, 1.0, 1.0]  # a difference of 0 everywhere is never an improvement
    decision = decide(steps, p_values)
    assert decision.chosen is steps[0] and decision.verdict == "input kept" and decision.compared == 3


def test_decide_takes_the_fewest_float_convs_then_the_lowest_deviation_among_significant_ones_meeting_the_target():
    steps = [step(deviation=0.10, violation=1.5),             # the input misses the target
             step(mode="max", deviation=0.05, violation=0.9),  # meets it, significant
             step(mode="mse", deviation=0.04, violation=0.8),  # meets it, not significant
             step((2,), deviation=0.03, violation=0.5),        # meets it, significant, but one Conv float
             step((2, 5), deviation=0.02, violation=2.0)]      # significant, misses the target
    decision = decide(steps, [0.0, 0.4, 0.0, 0.0])
    assert decision.chosen is steps[1] and decision.verdict == "chosen"
    assert decision.levels == [0.05 / 4, None, 0.05 / 3, 0.05 / 2]
    # nothing significant meets the target: the input misses it too -> target not met, the nearest significant one
    decision = decide(steps, [0.9, 0.4, 0.9, 0.0])
    assert decision.chosen is steps[4] and decision.verdict == "target not met"


def test_miou_of_resampled_images_pools_their_counts():
    confusion = np.array([[10, 2, 3, 85], [40, 5, 5, 50]])
    draws = np.array([[2, 0], [1, 1], [0, 2]])  # the first image twice; each once; the second twice
    got = statistics.resampled_miou(confusion, draws)
    # by hand: pooled (tp, fp, fn, tn); IoU fg = tp / (tp + fp + fn), bg = tn / (tn + fp + fn)
    assert got[0] == pytest.approx((20 / 30 + 170 / 180) / 2)
    assert got[1] == pytest.approx((50 / 65 + 135 / 150) / 2)
    assert got[1] == pytest.approx(metrics.miou({"tp": 50, "fp": 7, "fn": 8, "tn": 135}))
    assert got[2] == pytest.approx((80 / 100 + 100 / 120) / 2)
    assert statistics.miou(np.array([0, 0, 0, 100])) == 1.0  # no foreground anywhere: nothing to get wrong


def test_summary_bounds_and_target_by_hand():
    from pipeline.config import Tune
    tune = Tune(None, None, max_mse_increase=0.01, max_mad_increase=0.01, max_miou_drop=0.01, max_builds=1,
                max_float_layers=1)
    fp32 = {"mse": [0.02, 0.02], "mad": [0.1, 0.1], "tp": [50, 50], "fp": [0, 0], "fn": [0, 0], "tn": [50, 50]}
    mine = {**fp32, "mad": [0.1, 0.13], "deviation": [0.02, 0.04], "flips": [0.0, 0.0]}
    s = scoring.summary({"deviation": mine["deviation"], "flips": mine["flips"]}, mine, fp32, tune, SEED)
    # ΔMAD per image 0 and 0.03: resample means 0, 0.015, 0.03; the upper 5% bound is 0.03 > 0.01: not met
    assert s["mad_increase"] == pytest.approx(0.015) and s["bounds"]["mad_increase"] == pytest.approx([0.0, 0.03])
    assert s["bounds"]["mse_increase"] == [0.0, 0.0] and s["miou_drop"] == 0.0
    assert s["violation"] == pytest.approx(3.0) and s["deviation"] == pytest.approx(0.03)


def test_the_bootstrap_of_a_whole_tune_takes_under_5_s():
    # 40 candidates on 25 selection and 1000 extra images, 2000 resamples each: the paired gains and the summaries
    from pipeline.config import Tune
    tune = Tune(None, None, 0.002, 0.002, 0.003, 40, 5)
    rng = np.random.default_rng(0)
    labelled = {"mse": list(rng.uniform(0, 0.1, 25)), "mad": list(rng.uniform(0, 0.2, 25)),
                "tp": [100] * 25, "fp": [10] * 25, "fn": [10] * 25, "tn": [880] * 25}
    fidelity = {"deviation": list(rng.uniform(0, 0.1, 1025)), "flips": list(rng.uniform(0, 0.01, 1025))}
    statistics.draws.cache_clear()
    started = time.perf_counter()
    for _ in range(40):
        scoring.summary(fidelity, labelled, labelled, tune, SEED)
        statistics.p_value(gain(fidelity["deviation"], fidelity["flips"]))
    assert time.perf_counter() - started < 5.0


def test_the_confirmation_makes_the_verdict():
    steps = [step(violation=2.0), step(mode="max", deviation=0.05)]
    chosen = decide(steps, [0.0])
    assert verdict(chosen, 0.01, 0.9) == "confirmed"
    assert verdict(chosen, 0.0, 0.9) == "not confirmed"    # not significantly closer to fp32 there
    assert verdict(chosen, 0.01, 1.2) == "not confirmed"   # misses the target there
    kept = decide([step(), step(mode="max")], [1.0])
    assert verdict(kept, -1.0, 5.0) == "input kept"        # nothing chosen: nothing to confirm
    missed = decide([step(violation=2.0), step(mode="max")], [1.0])
    assert verdict(missed, 0.0, 2.0) == "target not met"


def test_deviation_is_the_mean_absolute_difference_and_flips_are_apart():
    # one pixel crosses the label threshold by one level (127 -> 128); another is 51 levels off, on one side
    ref = [np.array([[127, 0], [200, 255]], dtype=np.uint8)]
    pred = [np.array([[128, 0], [149, 255]], dtype=np.uint8)]
    got = scoring.fidelity_figures(pred, ref)
    assert got["deviation"] == [pytest.approx((1 + 51) / 4 / 255)]
    assert got["flips"] == [0.25]
