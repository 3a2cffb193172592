"""The paired statistics of tuning (pipeline/tuning/statistics.py) and the choice they drive (search.decide), on
constructed per-image figures whose bootstrap distributions are known by hand."""
from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from pipeline.accuracy import metrics
from pipeline.tuning import scoring, statistics
from pipeline.tuning.candidates import Candidate
from pipeline.tuning.search import Step, decide, verdict

SEED = 0


def gain(incumbent, candidate):
    return scoring.gain(incumbent, candidate, SEED)


def binomial(n: int, q: float, ks) -> float:
    """P(K in KS) for K ~ Binomial(n, q)."""
    return sum(comb(n, k) * q ** k * (1 - q) ** (n - k) for k in ks)


def two_valued_t(n: int, k: int, a: float, b: float, centre: float) -> float:
    """The studentized mean of N images, K of them B and the rest A, about CENTRE: by hand, sd with n - 1."""
    mean = ((n - k) * a + k * b) / n
    se = abs(a - b) * math.sqrt(k * (n - k) / (n * (n - 1))) / math.sqrt(n)
    return (mean - centre) / se if se > 0 else math.copysign(math.inf, mean - centre) if mean != centre else 0.0


def step(skip=(), deviation=0.1, violation=0.5, mode="kl_divergence"):
    return Step(Candidate(mode, None, tuple(skip)), "calibration", {"deviation": deviation, "violation": violation})


def test_better_on_average_but_not_significantly():
    # two images, improvements +0.03 and -0.01 (mean +0.01, se 0.02, t = 0.5): a resample drawing the first image
    # twice (probability 1/4) has no spread and a higher mean, t* = +inf; one of each has t* = 0; the second twice
    # -inf. So p = P(t* >= 0.5) = 1/4, and with a quarter of the t* infinite no 5% lower bound is finite
    e = gain([0.05, 0.02], [0.02, 0.03])
    assert e.value == pytest.approx(0.01) and e.se == pytest.approx(0.02)
    assert statistics.p_value(e) == pytest.approx(0.25, abs=0.013)  # 3 standard errors of 9999 resamples
    assert statistics.lower(e) == -math.inf
    assert statistics.holm([statistics.p_value(e)]) == [None]
    steps = [step(deviation=0.035), step(mode="max", deviation=0.025)]  # both meet the target
    decision = decide(steps, [statistics.p_value(e)])
    assert decision.chosen is steps[0] and decision.verdict == "input kept"  # kept out


def test_significantly_better():
    # ten images, nine improved by 0.01 and one by 0.02: mean 0.011, se 0.001, t = 11. A resample drawing the 0.02
    # image K times (K ~ Binomial(10, 0.1)) has t*(K), largest t*(9) = 8 < 11: only K = 10 (probability 1e-10)
    # reaches 11, so p = 1 / (9999 + 1), never 0. The 5% lower bound is 0.011 - 0.001 t*(3): P(K >= 4) = 0.013 and
    # P(K >= 3) = 0.070 put the 95% quantile of t* at K = 3
    e = gain([0.05] * 9 + [0.06], [0.04] * 10)
    assert e.value == pytest.approx(0.011) and e.se == pytest.approx(0.001)
    assert binomial(10, 0.1, range(4, 11)) < statistics.LEVEL < binomial(10, 0.1, range(3, 11))
    assert statistics.p_value(e) == 1 / (statistics.RESAMPLES + 1)
    assert statistics.lower(e) == pytest.approx(0.011 - 0.001 * two_valued_t(10, 3, 0.01, 0.02, 0.011))
    assert statistics.holm([statistics.p_value(e)]) == [0.05]
    steps = [step(deviation=0.051), step(mode="max", deviation=0.04)]
    decision = decide(steps, [statistics.p_value(e)])
    assert decision.chosen is steps[1] and decision.verdict == "chosen"  # taken


def test_the_bound_and_the_test_agree_and_are_seeded():
    rng = np.random.default_rng(3)
    for _ in range(20):
        e = gain(rng.normal(0.02, 0.03, 12), np.zeros(12))
        p = statistics.p_value(e)
        for level in (0.05, 0.01, 0.0125, 0.05 / 40):
            assert (statistics.lower(e, level) > 0) == (p < level)
    draws = statistics.draws(7, SEED)
    assert draws.shape == (statistics.RESAMPLES, 7) and (draws.sum(axis=1) == 7).all()  # n draws per resample
    statistics.draws.cache_clear()
    assert np.array_equal(statistics.draws(7, SEED), draws)
    assert not np.array_equal(statistics.draws(7, SEED + 1), draws)


# fifteen images improved by 1, five worsened by 1: t = 2.52. A resample's t* is at least that when it draws the
# worse images K <= 1 times, K ~ Binomial(20, 0.25): p = P(K <= 1) = 0.0243, between 0.05 / 5 and 0.05
BORDERLINE = [1.0] * 15 + [-1.0] * 5


def test_the_multiple_comparison_correction_changes_a_decision():
    t = two_valued_t(20, 5, 1.0, -1.0, 0.0)
    assert [k for k in range(21) if two_valued_t(20, k, 1.0, -1.0, 0.5) >= t] == [0, 1]
    p = statistics.p_value(gain(BORDERLINE, [0.0] * 20))
    assert p == pytest.approx(binomial(20, 0.25, (0, 1)), abs=0.005)  # 0.0243, 3 standard errors of 9999
    assert statistics.holm([p]) == [0.05]                    # alone: taken
    noise = statistics.p_value(gain([0.05, 0.02], [0.02, 0.03]))  # 0.25, as above
    assert statistics.holm([p] + [noise] * 4) == [None] * 5  # one of five: 0.0243 >= 0.05 / 5, kept out
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


def rejection_rate(sample, level: float, datasets: int, rng) -> float:
    """Share of DATASETS samples of true mean 0 whose p-value is below LEVEL: the test's real size."""
    return float(np.mean([statistics.p_value(statistics.mean(sample(rng), statistics.draws(25, SEED))) < level
                          for _ in range(datasets)]))


@pytest.mark.slow  # thousands of simulated tests, many seconds
def test_the_p_values_hold_their_level_on_normal_and_skewed_differences():
    # 25 images, true mean 0: the rate of "significantly better" is the test's size. The percentile bootstrap
    # this replaced measured 1.6x, 3.8x and 2.2x on these three (bench/statistics.py prints both)
    rng = np.random.default_rng(11)
    normal = lambda r: r.normal(size=25)                   # noqa: E731
    left_skewed = lambda r: 1.0 - r.exponential(size=25)   # many small gains, a few large losses  # noqa: E731
    assert 0.005 <= rejection_rate(normal, 0.01, 3000, rng) <= 0.016
    assert rejection_rate(left_skewed, 0.01, 3000, rng) <= 0.022
    assert rejection_rate(left_skewed, 0.05, 3000, rng) <= 0.07


def test_the_standard_errors_by_hand_and_against_the_bootstrap_spread():
    e = statistics.mean([0.1, 0.4, 0.7], statistics.draws(3, SEED))
    assert e.value == pytest.approx(0.4) and e.se == pytest.approx(0.3 / math.sqrt(3))  # sd 0.3 with n - 1
    # mIoU's delta-method gradient against finite differences, and its standard error against the spread of the
    # resampled estimate on many images (the two agree to first order)
    c = np.array([400.0, 30.0, 50.0, 900.0])
    for k in range(4):
        h = np.eye(4)[k] * 1e-3
        fd = (metrics.pooled_miou(c + h) - metrics.pooled_miou(c - h)) / 2e-3
        assert statistics.miou_gradient(c)[k] == pytest.approx(fd, rel=1e-6)
    rng = np.random.default_rng(5)
    n = 300
    ref = np.stack([rng.integers(50, 150, n), rng.integers(0, 20, n), rng.integers(0, 20, n),
                    rng.integers(500, 900, n)], axis=1)
    mine = ref + np.stack([-rng.integers(0, 10, n), rng.integers(0, 10, n), rng.integers(0, 10, n),
                           np.zeros(n, dtype=int)], axis=1)
    draws = statistics.draws(n, SEED)
    e = statistics.miou_drop(ref, mine, draws)
    assert e.value == pytest.approx(metrics.miou(dict(zip(statistics.COUNTS, ref.sum(axis=0))))
                                    - metrics.miou(dict(zip(statistics.COUNTS, mine.sum(axis=0)))))
    spread = np.std(metrics.pooled_miou(draws @ ref) - metrics.pooled_miou(draws @ mine))
    assert e.se == pytest.approx(spread, rel=0.1)


def test_one_image_bounds_nothing():
    e = statistics.mean([0.3], statistics.draws(1, SEED))
    assert statistics.lower(e) == -math.inf and statistics.upper(e) == math.inf and statistics.p_value(e) == 1.0


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


def test_miou_of_pooled_counts_by_hand():
    confusion = np.array([[10, 2, 3, 85], [40, 5, 5, 50]])
    pooled = confusion.sum(axis=0)  # (50, 7, 8, 135); IoU fg = tp / (tp + fp + fn), bg = tn / (tn + fp + fn)
    assert metrics.pooled_miou(pooled) == pytest.approx((50 / 65 + 135 / 150) / 2)
    assert metrics.pooled_miou(pooled) == pytest.approx(metrics.miou({"tp": 50, "fp": 7, "fn": 8, "tn": 135}))
    assert metrics.pooled_miou(np.array([0, 0, 0, 100])) == 1.0  # no foreground anywhere: nothing to get wrong
    # the absent foreground adds nothing; the background moves with its misses: d/d fp = -tn / 100^2 / 2
    assert list(statistics.miou_gradient(np.array([0, 0, 0, 100]))) == [0, -0.005, -0.005, 0]


def test_summary_bounds_and_target_by_hand():
    from pipeline.core.config import Tune
    tune = Tune(None, None, max_mse_increase=0.01, max_mad_increase=0.01, max_miou_drop=0.01, max_builds=1,
                max_float_layers=1)
    n = 20
    fp32 = {"mse": [0.02] * n, "mad": [0.1] * n, "tp": [50] * n, "fp": [0] * n, "fn": [0] * n, "tn": [50] * n}
    mine = {**fp32, "mad": [0.1] * 15 + [0.14] * 5, "deviation": [0.02] * 10 + [0.04] * 10, "flips": [0.0] * n}
    s = scoring.summary({"deviation": mine["deviation"], "flips": mine["flips"]}, mine, fp32, tune, SEED)
    # ΔMAD: 15 images 0, 5 images 0.04 (mean 0.01). A resample drawing the 0.04 ones K times, K ~ Binomial(20,
    # 0.25): P(K <= 1) = 0.024 < 5% < P(K <= 2) = 0.091, so the 5% quantile of t* is t*(2) and the upper bound is
    # 0.01 - se t*(2): 0.0187 > 0.01, the target is missed by 1.87x
    assert binomial(n, 0.25, (0, 1)) < statistics.LEVEL < binomial(n, 0.25, (0, 1, 2))
    se = 0.04 * math.sqrt(5 * 15 / (n * (n - 1))) / math.sqrt(n)
    upper = 0.01 - se * two_valued_t(n, 2, 0.0, 0.04, 0.01)
    assert s["mad_increase"] == pytest.approx(0.01) and s["bounds"]["mad_increase"][1] == pytest.approx(upper)
    assert upper == pytest.approx(0.01866, abs=1e-5)
    assert s["bounds"]["mse_increase"] == [0.0, 0.0] and s["miou_drop"] == 0.0 and s["bounds"]["miou_drop"] == [0, 0]
    assert s["violation"] == pytest.approx(upper / 0.01) and s["deviation"] == pytest.approx(0.03)
    # two images bound nothing at 95%: a quarter of the resamples repeat one image and have no spread
    two = scoring.summary({"deviation": [0.02, 0.04], "flips": [0.0, 0.0]}, {**mine, "mad": [0.1, 0.13],
                          **{k: v[:2] for k, v in fp32.items() if k != "mad"}},
                          {k: v[:2] for k, v in fp32.items()}, tune, SEED)
    assert two["bounds"]["mad_increase"] == [-math.inf, math.inf] and two["violation"] == math.inf


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


@pytest.mark.parametrize("level", [0.05, 0.0125, 0.05 / 3, 0.0005, 0.05 / 100, 1 / 10000, 2 / 10000])
def test_the_bound_and_the_test_agree_on_both_sides_of_each_critical_resample(level):
    # t* = 0, 1, ..., 9998 and se 1: the observed t = value sits just above or below each order statistic, so an
    # off-by-one in the critical rank flips one of the two cases. By hand: p = (k + 1) / 10000, k = #{t* >= t}
    resamples = statistics.RESAMPLES
    t = np.arange(resamples, dtype=np.float64)
    near = round(level * (resamples + 1))  # the critical rank is within a step or two of level x 10000
    for k in range(max(0, near - 4), near + 4):
        for value in (resamples - k - 0.5, resamples - k - 1.5):  # k, then k + 1 t* at or beyond it
            e = statistics.Estimate(value, 1.0, t)
            at_or_beyond = int(np.sum(t >= value))
            assert statistics.p_value(e) == (at_or_beyond + 1) / (resamples + 1)
            assert (statistics.lower(e, level) > 0) == (statistics.p_value(e) < level)
            mirrored = statistics.Estimate(-value, 1.0, -t)  # the upper bound below 0, by the mirrored test
            assert (statistics.upper(mirrored, level) < 0) == (statistics.p_value(e) < level)


def test_equal_values_stay_exact_and_infinite_critical_values_keep_their_side():
    # five images each improved by 0.4 - 0.3 (not exactly 0.1 in floating point): no spread at all, so p is the
    # smallest there is and the lower bound is the value itself, not an artefact of 1e-17 rounding
    e = gain([0.4] * 5, [0.3] * 5)
    assert e.se == 0 and statistics.p_value(e) == 1 / (statistics.RESAMPLES + 1)
    assert statistics.lower(e) == e.value == 0.4 - 0.3
    every_below = statistics.Estimate(0.1, 0.01, np.full(statistics.RESAMPLES, -np.inf))
    assert statistics.p_value(every_below) < 0.05 and statistics.lower(every_below) == math.inf


def test_miou_drop_resamples_by_hand():
    # resample r of the images, pooled by hand: its drop, and its delta-method se from the covariance of the
    # repeated images' eight counts with the gradient at the resample's own means
    rng = np.random.default_rng(2)
    n = 12
    ref = np.stack([rng.integers(50, 150, n), rng.integers(0, 20, n), rng.integers(0, 20, n),
                    rng.integers(500, 900, n)], axis=1)
    mine = ref + rng.integers(0, 8, (n, 4)) * np.array([-1, 1, 1, 0])
    draws = statistics.draws(n, SEED)
    e = statistics.miou_drop(ref, mine, draws)
    for r in (0, 1, 7):
        drawn = np.repeat(np.arange(n), draws[r].astype(int))
        z = np.concatenate([ref, mine], axis=1)[drawn].astype(np.float64)
        m = z.mean(axis=0)
        drop = metrics.pooled_miou(m[:4]) - metrics.pooled_miou(m[4:])
        g = np.concatenate([statistics.miou_gradient(m[:4]), -statistics.miou_gradient(m[4:])])
        se = math.sqrt(g @ np.cov(z.T, ddof=1) @ g / n)
        assert e.t[r] == pytest.approx((drop - e.value) / se, rel=1e-8)
