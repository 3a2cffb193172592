"""The search of `tune`, bounded by a number of candidates, and the choice among them; pure (a candidate's
figures come from `evaluate`, its paired comparison with the incumbent from the caller).

0. the incumbent: the input config as it is (its own calibration and skip_conv_layers);
1. calibration: every calibration with no layer skipped; the base is the one of lowest deviation among those that
   meet the target, or of lowest deviation if none does.
1b. correction (CORRECTION): every calibration of step 1 bias-corrected, nothing skipped, the base's first (the
   likeliest to help, should the budget run out); when the incumbent is corrected, also its uncorrected twin (its own
   skip list), so that the input is compared with and without correction too. One candidate per calibration, each
   minutes to build (one correction and one statistics collection on its model); each is compared as any other but
   never becomes the base: correcting each skip set below would cost minutes per candidate. If the base meets the
   target, the search ends here.
2. rank: for the `rank_count` layers worst by `prerank` (the analysis's single-layer SQNR), the base with that
   layer alone kept float; layers are ranked by how much that reduces the deviation from fp32, measured ones first.
3. bisect: the fewest top-ranked layers kept float (at most `max_float`) that meet the target: n = 1, 2, 4, ...
   until one does, then bisection between the last n that failed and the first that met. Once, when keeping more
   layers float made the deviation worse, the layers after those kept are ranked again with them kept float
   ("rerank", as NNCF re-ranks after such a revert).
4. drop: each chosen layer, least important first, is tried back in int8 and stays so when the target still holds.
Every distinct candidate counts once against `budget` (max_builds), cached or not, so a rerun follows the same
path; when the budget runs out the search stops. `decide` then chooses (docs/tuning.md, "When a candidate wins").
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from . import statistics
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
    steps: list[Step] = field(default_factory=list)  # the incumbent (the input config) first
    out_of_budget: bool = False


@dataclass
class Decision:
    chosen: Step
    verdict: str                  # "chosen" (to be confirmed), "input kept" or "target not met"
    levels: list[float | None]    # per step after the incumbent: Holm's level if significantly better, else None

    @property
    def compared(self) -> int:
        return len(self.levels)


def decide(steps: list[Step], p_values: list[float], level: float = statistics.LEVEL) -> Decision:
    """The choice among STEPS (STEPS[0] the incumbent; P_VALUES the one-sided p of each other step's paired
    improvement of deviation over it): among the candidates significantly better (Holm) that meet the target, the
    fewest Convs kept float, then the lowest deviation. None: the incumbent, "input kept" if it meets the target;
    else "target not met", with the significantly better candidate nearest the target if there is one."""
    incumbent, others = steps[0], steps[1:]
    levels = statistics.holm(p_values, level)
    better = [s for s, at in zip(others, levels) if at is not None]
    eligible = [s for s in better if s.met]
    if eligible:
        return Decision(min(eligible, key=lambda s: (len(s.candidate.skip), s.result["deviation"])), "chosen", levels)
    if incumbent.met:
        return Decision(incumbent, "input kept", levels)
    nearest = min(better, key=lambda s: (s.result["violation"], len(s.candidate.skip), s.result["deviation"]),
                  default=incumbent)
    return Decision(nearest, "target not met", levels)


def verdict(decision: Decision, gain_lower: float, violation: float) -> str:
    """The verdict: a choice made on the selection images stands ("confirmed") when, on the confirmation images,
    its deviation is significantly lower than the input config's (GAIN_LOWER, the lower bound of the paired
    improvement, above 0) and it meets the target there (VIOLATION <= 1); otherwise "not confirmed"."""
    if decision.verdict != "chosen":
        return decision.verdict
    return "confirmed" if gain_lower > 0 and violation <= 1 else "not confirmed"


class _OutOfBudget(Exception):
    pass


def search(incumbent: Candidate, calibrations: list[Candidate], evaluate: Callable[[Candidate], dict],
           prerank: Callable[[Candidate], list[int]], budget: int, rank_count: int, max_float: int,
           correction: bool = False) -> Outcome:
    outcome = Outcome()
    seen: dict[Candidate, Step] = {}

    def run(candidate: Candidate, phase: str) -> Step:
        if candidate not in seen:
            if len(outcome.steps) >= budget:
                raise _OutOfBudget
            seen[candidate] = Step(candidate, phase, evaluate(candidate))
            outcome.steps.append(seen[candidate])
        return seen[candidate]

    def ranking(kept: tuple[int, ...], reference: Step, order: list[int], phase: str) -> list[int]:
        """ORDER re-ranked: its first rank_count layers, each kept float with KEPT, by the deviation that removes
        from REFERENCE (KEPT float); the rest after them in ORDER."""
        gains = {}
        for layer in order[:rank_count]:
            trial = replace(base.candidate, skip=tuple(sorted((*kept, layer))))
            gains[layer] = reference.result["deviation"] - run(trial, phase).result["deviation"]
        return sorted(gains, key=lambda layer: -gains[layer]) + [i for i in order if i not in gains]

    try:
        run(incumbent, "input" if incumbent.skip or incumbent.corrected else "calibration")
        for candidate in calibrations:
            run(candidate, "calibration")
        plain = [s for s in outcome.steps if not s.candidate.skip and not s.candidate.corrected]
        base = min(plain, key=lambda s: (not s.met, s.result["deviation"]))
        if correction:
            corrected = [base.candidate, *[c for c in calibrations if c != base.candidate]]
            twin = [replace(incumbent, corrected=False)] if incumbent.corrected else []
            for candidate in [*[replace(c, corrected=True) for c in corrected], *twin]:
                run(candidate, "correction")
        if base.met or max_float == 0:
            return outcome
        ranked = ranking((), base, prerank(base.candidate), "rank")
        limit = min(len(ranked), max_float)
        if limit == 0:
            return outcome

        def first(n: int) -> Step:
            return run(replace(base.candidate, skip=tuple(sorted(ranked[:n]))), "bisect") if n else base

        failed, met, n, reranked = 0, None, 1, False
        while True:
            step = first(n)
            if not step.met and not reranked and step.result["deviation"] > first(failed).result["deviation"]:
                # keeping ranked[failed:n] float too made the deviation worse (their errors cancelled another's):
                # rank what follows ranked[:failed] again, measured with those kept float, once
                reranked = True
                ranked = ranked[:failed] + ranking(tuple(ranked[:failed]), first(failed), ranked[failed:], "rerank")
                step = first(n)
            if step.met:
                met = n
                break
            if n == limit:  # every Conv the search may keep float, and still short of the target
                return outcome
            failed, n = n, min(2 * n, limit)
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
