"""The search of `tune`, bounded by a number of candidates; pure (a candidate's figures come from `evaluate`).

1. calibration: every calibration with no layer skipped; the one nearest the target is the base.
2. rank: for the `rank_count` layers worst by `prerank` (the analysis's single-layer SQNR), the base with that
   layer alone kept float; layers are ranked by how much that reduces the deviation from fp32, measured ones first.
3. bisect: the fewest top-ranked layers kept float that meet the target: n = 1, 2, 4, ... until one does, then
   bisection between the last n that failed and the first that met.
4. drop: each chosen layer, least important first, is tried back in int8 and stays so when the target still holds.
Every distinct candidate counts once against `budget` (max_builds), cached or not, so a rerun follows the same
path; when the budget runs out the search stops and returns the best seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from .candidates import Candidate


@dataclass
class Step:
    candidate: Candidate
    phase: str
    result: dict  # at least "violation" (<= 1: target met) and "deviation"

    @property
    def met(self) -> bool:
        return self.result["violation"] <= 1.0


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    out_of_budget: bool = False

    @property
    def best(self) -> Step:
        """Meeting the target: the fewest skipped layers, then the smallest violation; else the smallest violation."""
        met = [s for s in self.steps if s.met]
        if met:
            return min(met, key=lambda s: (len(s.candidate.skip), s.result["violation"], s.result["deviation"]))
        return min(self.steps, key=lambda s: (s.result["violation"], s.result["deviation"], len(s.candidate.skip)))

    @property
    def met(self) -> bool:
        return self.best.met


class _OutOfBudget(Exception):
    pass


def search(calibrations: list[Candidate], evaluate: Callable[[Candidate], dict],
           prerank: Callable[[Candidate], list[int]], budget: int, rank_count: int) -> Outcome:
    outcome = Outcome()
    seen: dict[Candidate, Step] = {}

    def run(candidate: Candidate, phase: str) -> Step:
        if candidate not in seen:
            if len(outcome.steps) >= budget:
                raise _OutOfBudget
            seen[candidate] = Step(candidate, phase, evaluate(candidate))
            outcome.steps.append(seen[candidate])
        return seen[candidate]

    try:
        for candidate in calibrations:
            run(candidate, "calibration")
        base = min(outcome.steps, key=lambda s: (s.result["violation"], s.result["deviation"]))
        if base.met:
            return outcome
        order = prerank(base.candidate)
        gains = {}
        for layer in order[:rank_count]:
            gains[layer] = base.result["deviation"] - run(replace(base.candidate, skip=(layer,)), "rank") \
                .result["deviation"]
        ranked = sorted(gains, key=lambda layer: -gains[layer]) + [i for i in order if i not in gains]

        def first(n: int) -> Step:
            return run(replace(base.candidate, skip=tuple(sorted(ranked[:n]))), "bisect")

        failed, met, n = 0, None, 1
        while n <= len(ranked):
            if first(n).met:
                met = n
                break
            failed, n = n, min(2 * n, len(ranked))
            if n == failed:  # every ranked layer float and still short of the target
                break
        if met is None:
            return outcome
        while met - failed > 1:
            mid = (failed + met) // 2
            failed, met = (failed, mid) if first(mid).met else (mid, met)
        chosen = set(ranked[:met])
        for layer in reversed(ranked[:met]):
            trial = tuple(sorted(chosen - {layer}))
            if trial and run(replace(base.candidate, skip=trial), "drop").met:
                chosen.discard(layer)
    except _OutOfBudget:
        outcome.out_of_budget = True
    return outcome
