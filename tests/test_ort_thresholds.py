"""Calibration statistics and the four threshold modes, against direct implementations on pooled arrays."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import StubProgress
from pipeline.backends.ort import stats, thresholds
from pipeline.core import runtime

BINS = 8001


def tvm_minimize_kl(hist: np.ndarray, absmax: float) -> float:
    """TVM's MinimizeKL (calibrate.cc) transcribed in float64: its loop over the candidate windows as a loop, its
    loops over the quantized levels as array rows (the same sums; a Python loop there took 15 s a case)."""
    z, levels, eps = BINS // 2, 255, 1e-4

    def smooth(x):
        zero = x == 0
        n_zero, n_nonzero = zero.sum(), (~zero).sum()
        if n_nonzero == 0 or eps * n_zero / n_nonzero >= 1:
            return None
        return x + eps * zero - eps * n_zero / n_nonzero * (~zero)

    best, best_t = np.inf, None
    for i in range(levels // 2, z + 1):
        lo, hi = z - i, z + i + 1
        threshold = -absmax + hi * 2 * absmax / BINS  # hist_edges[p_bin_idx_stop]
        p = np.zeros(hi - lo)
        sliced = np.zeros(hi - lo)
        # the C++ loop over bins j: j <= lo adds to p[0], j >= hi to p[last], the others are copied to p and
        # sliced (so sliced[0] stays 0 and p[last] = hist[hi - 1] + everything above)
        p[0] = hist[:lo + 1].sum()
        sliced[1:] = hist[lo + 1:hi]
        p[1:] = hist[lo + 1:hi]
        p[-1] += hist[hi:].sum()
        # the C++ loops over the 255 levels, a row each: level j merges bins j*merged .. (j+1)*merged - 1, the
        # last level also the remainder; q spreads a level's sum evenly over its nonzero bins where p != 0
        merged = len(sliced) // levels
        body = levels * merged
        rows = sliced[:body].reshape(levels, merged)
        quantized, norm = rows.sum(axis=1), np.count_nonzero(rows, axis=1)
        quantized[-1] += sliced[body:].sum()
        norm[-1] += np.count_nonzero(sliced[body:])
        per_bin = np.where(norm > 0, quantized / np.maximum(norm, 1), 0.0)
        spread = np.concatenate([np.repeat(per_bin, merged), np.full(len(sliced) - body, per_bin[-1])])
        q = np.where(p != 0, spread, 0.0)
        p, q = smooth(p), smooth(q)
        divergence = np.inf
        if p is not None and q is not None:
            p, q = p / p.sum(), q / q.sum()
            divergence = float(np.sum(p * np.log(p / q)))
        if divergence < best:
            best, best_t = divergence, threshold
    return best_t


def pooled_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    relu = np.maximum(rng.standard_normal(60_000), 0) * 2.0
    relu[:40] *= 6.0  # a long tail for KL to clip
    return {
        "relu": relu.astype(np.float32),
        "signed": rng.standard_normal(80_000).astype(np.float32),
        "eight_bit": ((rng.integers(0, 256, 30_000) - 127.5) / 127.5).astype(np.float32),
        "sparse": np.concatenate([np.zeros(5_000), rng.standard_normal(300)]).astype(np.float32),
    }


@pytest.mark.slow  # the KL search on every case, many seconds
@pytest.mark.parametrize("case", sorted(pooled_cases()))
def test_kl_is_tvms_minimize_kl(case):
    x = pooled_cases()[case]
    absmax = float(np.abs(x).max())
    hist, _ = np.histogram(x, bins=BINS, range=(-absmax, absmax))
    expected = tvm_minimize_kl(hist, absmax)
    assert thresholds.kl_divergence(hist, absmax) == pytest.approx(expected, rel=1e-12)
    # the fast evaluation of every candidate equals the per-candidate one
    fast = thresholds._divergences(hist)
    direct = np.array([thresholds._divergence(hist, i) for i in range(127, 4001)])
    finite = np.isfinite(direct)
    assert np.array_equal(np.isfinite(fast), finite)
    np.testing.assert_allclose(fast[finite], direct[finite], rtol=0, atol=1e-10)


def test_kl_clips_a_relu_tail_and_other_modes():
    x = pooled_cases()["relu"]
    absmax = float(np.abs(x).max())
    hist, _ = np.histogram(x, bins=BINS, range=(-absmax, absmax))
    kl = thresholds.kl_divergence(hist, absmax)
    assert kl < 0.6 * absmax  # the 40 outliers are clipped
    assert thresholds.threshold("max", None, absmax) == absmax
    width = 2 * absmax / BINS
    for fraction in (0.99, 0.999, 0.99999, None):
        exact = np.quantile(np.abs(x), fraction or 0.99999, method="inverted_cdf")  # smallest t with F(t) >= f
        got = thresholds.threshold("percentile", hist, absmax, fraction)
        assert exact <= got + 1e-9 and got - exact <= width + 1e-9  # the upper edge of the quantile's bin
    with pytest.raises(ValueError, match="needs the histograms"):
        thresholds.threshold("kl_divergence", None, absmax)


def direct_model_error(x: np.ndarray, absmax: float, t: float) -> float:
    """Our mse definition evaluated value by value: |x| at its bin centre, s^2/12 inside, clip error outside."""
    width = 2 * absmax / BINS
    centre = np.minimum(np.floor(np.abs(x.astype(np.float64)) / width + 0.5), 4000) * width  # M: last bin
    s = t / 128
    inside = centre <= 127 * s
    return float(np.sum(np.where(inside, np.where(centre > 0, s * s / 12, 0.0), (centre - 127 * s) ** 2)))


@pytest.mark.parametrize("case", ["relu", "signed"])
def test_mse_minimises_our_error_model(case):
    x = pooled_cases()[case]
    absmax = float(np.abs(x).max())
    hist, _ = np.histogram(x, bins=BINS, range=(-absmax, absmax))
    edges = (2 * np.arange(4001) + 1) / BINS * absmax
    model = thresholds.expected_squared_error(hist, absmax, edges)
    sample = np.linspace(0, 4000, 41).astype(int)
    direct = np.array([direct_model_error(x, absmax, edges[k]) for k in sample])
    np.testing.assert_allclose(model[sample], direct, rtol=1e-6)
    best = thresholds.mse(hist, absmax)
    assert best == edges[np.argmin(model)]
    # the model tracks the real error of quantizing the pooled values (scale T/128, round, clip to +-127)
    s = best / 128
    real = np.sum((x - s * np.clip(np.round(x / s), -127, 127)) ** 2)
    assert real == pytest.approx(model[np.argmin(model)], rel=0.1)
    assert 0 < best < absmax


def tiny_model() -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Add(., Relu) -> out: three tensors to collect."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 6])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_streamed_statistics_equal_the_pooled_ones(tmp_path):
    """Two passes over the images give the max and histogram of the pooled values; an all-tiny first image
    (which made the old range-doubling histogram NaN) changes nothing."""
    model = tiny_model()
    rng = np.random.default_rng(1)
    images = rng.standard_normal((5, 3, 8, 6)).astype(np.float32)
    images[0] = 1e-30
    np.save(tmp_path / "tensors.npy", images)
    names = ["x", "r1", "c2"]
    got = stats.collect(model, names, tmp_path / "tensors.npy", StubProgress(), "calibration")
    assert got.images == 5

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r1", "c2"))
    session = runtime.session(probe.SerializeToString())
    outputs = [session.run(["r1", "c2"], {"x": image[None]}) for image in images]
    pooled = {"x": images.ravel(), "r1": np.concatenate([o[0].ravel() for o in outputs]),
              "c2": np.concatenate([o[1].ravel() for o in outputs])}
    for name in names:
        s = got.tensors[name]
        absmax = float(np.abs(pooled[name]).max())
        assert s.absmax == absmax
        direct, _ = np.histogram(pooled[name], bins=BINS, range=(-absmax, absmax))
        assert np.isfinite(s.hist).all() and s.hist.sum() == pooled[name].size
        assert np.abs(s.hist - direct).sum() <= 2  # only values within float rounding of a bin edge may move
        for mode in ("kl_divergence", "percentile", "mse"):
            assert thresholds.threshold(mode, s.hist, s.absmax, 0.999) == \
                thresholds.threshold(mode, direct, absmax, 0.999), (name, mode)
    only_max = stats.collect(model, names, tmp_path / "tensors.npy", StubProgress(), "calibration",
                             histograms=False)
    assert all(only_max.tensors[n].hist is None and only_max.tensors[n].absmax == got.tensors[n].absmax
               for n in names)


def test_all_zero_tensor_has_no_nan():
    histogram = stats.Histogrammer()
    counts = histogram(np.zeros(10, np.float32), 0.0)
    assert counts[4000] == 10 and counts.sum() == 10
    assert thresholds.kl_divergence(counts, 0.0) == 0.0 and thresholds.mse(counts, 0.0) == 0.0
    counts = histogram(np.array([-2.0, 0.0, 2.0], np.float32), 2.0)
    assert counts[0] == 1 and counts[4000] == 1 and counts[8000] == 1


@pytest.mark.parametrize("seed", range(4))
def test_histogram_of_a_tensor_larger_than_a_chunk(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, 3 * stats.Histogrammer.CHUNK + 12345).astype(np.float32)
    x[::7] = 0.0  # the zero spike of a ReLU
    absmax = float(np.abs(x).max())
    x[-1] = -absmax  # both ends of the range, in the last, partial chunk
    counts = stats.Histogrammer()(x.reshape(1, 3, -1), absmax)  # an activation's shape, as ORT returns it

    # the same rule on the whole array at once: chunking changes nothing
    product = (x * (thresholds.BINS / (2.0 * absmax))).astype(np.float64)  # float32 product, float64 shift
    direct = (product + thresholds.BINS / 2.0).astype(np.intp)  # truncation: -M may land a hair below 0
    np.testing.assert_array_equal(counts, np.bincount(np.minimum(direct, thresholds.BINS - 1),
                                                      minlength=thresholds.BINS))
    # numpy.histogram (TVM's) differs only by values within rounding of an edge, each one bin away
    expected, _ = np.histogram(x, bins=thresholds.BINS, range=(-absmax, absmax))
    moved = np.abs(np.cumsum(counts - expected))  # values carried across each edge
    assert counts.sum() == expected.sum() and moved.max() <= 2 and moved.sum() <= x.size * 1e-4
