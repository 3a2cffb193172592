"""Benchmark of tune's paired statistics (pipeline/tuning/statistics.py; not a test).

    .venv/bin/python bench/statistics.py [--datasets 20000]

1. Size: how often "significantly better" is declared when the true mean improvement is 0, on 25 images (PPM-100's
   selection share), at 0.05 and at Holm's levels for 5, 20 and 40 candidates, for the studentized bootstrap tune
   uses and for the percentile bootstrap it replaced. Printed as the rate over the nominal level (1.0 is exact;
   above is a test that takes luck for a gain). Cases: normal differences, and three left-skewed ones (many images
   a little better, a few much worse: the case that must not pass).
2. Time: the statistics of a whole tune, 40 candidates on 25 selection and 1000 extra images (target: 5 s).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.core.config import Tune  # noqa: E402
from pipeline.tuning import scoring, statistics  # noqa: E402

N = 25
LEVELS = (0.05, 0.05 / 5, 0.05 / 20, 0.05 / 40)
CASES = {
    "normal": lambda r: r.normal(size=N),
    "left-skewed, 1 - Exp(1)": lambda r: 1.0 - r.exponential(size=N),
    "left-skewed, lognormal s=0.5": lambda r: np.exp(0.125) - r.lognormal(0, 0.5, N),
    "left-skewed, lognormal s=1": lambda r: np.exp(0.5) - r.lognormal(0, 1.0, N),
}


def rates(sample, datasets: int, seed: int) -> tuple[list[float], list[float]]:
    """Rejection rates over the nominal level, studentized and percentile, at each of LEVELS."""
    rng = np.random.default_rng(seed)
    counts = statistics.draws(N, 0)
    t_p, pct_p = [], []
    for _ in range(datasets):
        x = sample(rng)
        t_p.append(statistics.p_value(statistics.mean(x, counts)))
        pct_p.append(np.mean(counts @ x / N <= 0))  # the rule it replaced, for comparison
    t_p, pct_p = np.array(t_p), np.array(pct_p)
    return [float(np.mean(t_p < a) / a) for a in LEVELS], [float(np.mean(pct_p < a) / a) for a in LEVELS]


def whole_tune_seconds() -> float:
    tune = Tune(None, None, 0.002, 0.002, 0.003, 40, 5)
    rng = np.random.default_rng(0)
    labelled = {"mse": list(rng.uniform(0, 0.1, N)), "mad": list(rng.uniform(0, 0.2, N)),
                "tp": [100] * N, "fp": [10] * N, "fn": [10] * N, "tn": [880] * N}
    fidelity = {"deviation": list(rng.uniform(0, 0.1, 1000 + N)), "flips": list(rng.uniform(0, 0.01, 1000 + N))}
    statistics.draws.cache_clear()
    started = time.perf_counter()
    for _ in range(40):
        scoring.summary(fidelity, labelled, labelled, tune, 0)
        statistics.p_value(scoring.gain(fidelity["deviation"], fidelity["flips"], 0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=20000, help="simulated data sets per case")
    args = parser.parse_args()
    print(f"size / nominal on {N} images, {args.datasets} data sets of mean 0 per case, {statistics.RESAMPLES} "
          f"resamples; levels {', '.join(f'{a:.4g}' for a in LEVELS)}")
    for k, (name, sample) in enumerate(CASES.items()):
        t, pct = rates(sample, args.datasets, k)
        print(f"  {name:30s} studentized {' '.join(f'{r:5.2f}' for r in t)}   percentile "
              f"{' '.join(f'{r:5.2f}' for r in pct)}", flush=True)
    print(f"whole tune's statistics (40 candidates, 25 + 1000 images): {whole_tune_seconds():.2f} s")


if __name__ == "__main__":
    main()
