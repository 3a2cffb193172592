"""Stage `tune`: vamc settings closer to fp32 than the input config's, within the target, confirmed on images the
search never saw, handed back as a config vamc builds as is.

Runs the search (search.py) with candidates scored on the selection images (workbench.py), chooses by the paired
rule (search.decide), scores the chosen and the input config on the confirmation images, and writes in OUT:
selection.txt and confirmation.txt (the image lists, `sha256  name`), candidates.json (the cache, with every
per-image figure, updated after each build, plus this run's search and verdict), tune.md, tune.png and, last,
tuned.yaml (tuned_yaml.py), whose header carries the verdict `make tune` promotes by. A run interrupted or failing
leaves no tuned.yaml, only the cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..core import layout
from ..core.fileio import mark_stage, write_bytes, write_text
from ..stages.correct import MODE as CORRECTION
from . import plot, scoring, statistics, tuned_yaml
from .analyze import built_candidate, sqnr_rows, worst_first
from .candidates import Candidate, calibrations
from .search import Decision, Outcome, Step, decide, search, verdict
from .workbench import Workbench, listing

RANK_LAYERS = 10  # layers measured alone kept float to rank them (search.py, step 2)
PHASES = ("input", "calibration", "correction", "rank", "bisect", "rerank", "drop")


@dataclass
class Result:
    outcome: Outcome
    decision: Decision
    verdict: str                   # one of tuned_yaml.VERDICTS
    p_values: list[float]          # per step after the incumbent
    figures: dict[str, dict]       # {"selection" | "confirmation": {"chosen": summary, "input": summary}}
    gains: dict[str, list[float]]  # per image set: [mean, lower bound] of the chosen's improvement over the input

    @property
    def chosen(self) -> Step:
        return self.decision.chosen

    @property
    def incumbent(self) -> Step:
        return self.outcome.steps[0]


def run_search(wb: Workbench, bar) -> Outcome:
    def evaluate(candidate: Candidate) -> dict:
        result = wb.evaluate(candidate)
        wb.cache.save()
        bar.update(1)
        bar.set_postfix_str(f"{candidate.label()}: deviation {result['deviation']:.4f}", refresh=True)
        return result

    def prerank(candidate: Candidate) -> list[int]:
        ranks = wb.cache.extra.setdefault("worst_first", {})
        if candidate.key not in ranks:
            ranks[candidate.key] = worst_first(sqnr_rows(wb, candidate))
            wb.cache.save()
        return ranks[candidate.key]

    tune = wb.cfg.pipeline.tune
    incumbent = built_candidate(wb)
    return search(incumbent, calibrations(wb.cfg), evaluate, prerank, tune.max_builds, RANK_LAYERS,
                  tune.max_float_layers, tune.bias_correction)


def _gain(wb: Workbench, incumbent: Candidate, candidate: Candidate, image_set: str):
    return scoring.gain(wb.deviations(incumbent, image_set), wb.deviations(candidate, image_set),
                              wb.cfg.pipeline.seed)


def judge(wb: Workbench, outcome: Outcome) -> Result:
    """The choice on the selection images, then the confirmation of it (module docstring; docs/tuning.md)."""
    incumbent = outcome.steps[0]
    p_values = [statistics.p_value(_gain(wb, incumbent.candidate, s.candidate, "selection"))
                for s in outcome.steps[1:]]
    decision = decide(outcome.steps, p_values)
    chosen = decision.chosen
    figures = {"selection": {"chosen": chosen.result, "input": incumbent.result},
               "confirmation": {"chosen": wb.confirm(chosen.candidate), "input": wb.confirm(incumbent.candidate)}}
    wb.cache.save()
    gains = {}
    for image_set in figures:
        e = _gain(wb, incumbent.candidate, chosen.candidate, image_set)
        at = statistics.LEVEL
        if image_set == "selection" and chosen is not incumbent:
            at = decision.levels[outcome.steps.index(chosen) - 1] or statistics.LEVEL
        mean = figures[image_set]["input"]["deviation"] - figures[image_set]["chosen"]["deviation"]
        gains[image_set] = [mean, statistics.lower(e, at), at]
    final = verdict(decision, gains["confirmation"][1], figures["confirmation"]["chosen"]["violation"])
    return Result(outcome, decision, final, p_values, figures, gains)


def target_text(wb: Workbench) -> str:
    t = wb.cfg.pipeline.tune
    return (f"MSE increase <= {t.max_mse_increase:g}, MAD increase <= {t.max_mad_increase:g}, mIoU drop <= "
            f"{t.max_miou_drop:g}, upper 95% bounds")


def summary_line(wb: Workbench, result: Result) -> str:
    return f"verdict: {result.verdict}: {reason(wb, result)}"


def reason(wb: Workbench, result: Result) -> str:
    """Why the verdict is what it is, in a sentence."""
    chosen, incumbent = result.chosen.candidate.label(), result.incumbent.candidate.label()
    m = result.decision.compared
    budget = f"; max_builds={wb.cfg.pipeline.tune.max_builds} spent" if result.outcome.out_of_budget else ""
    if result.verdict == "confirmed":
        why = (f"{chosen} is closer to fp32 than the input config ({incumbent}) on the selection images (significant "
               f"against {m} candidates, Holm) and again on the confirmation images, within the target")
    elif result.verdict == "not confirmed":
        conf = result.figures["confirmation"]["chosen"]
        misses = [] if result.gains["confirmation"][1] > 0 else ["its deviation is not significantly lower than the "
                                                                 "input config's"]
        misses += [] if conf["violation"] <= 1 else ["it misses the target"]
        why = (f"{chosen}, chosen over the input config ({incumbent}) on the selection images, does not hold on the "
               f"confirmation images: {' and '.join(misses)}")
    elif result.verdict == "input kept":
        why = (f"no candidate of {m} is significantly closer to fp32 than the input config ({incumbent}) and meets "
               f"the target; the input config is kept")
    else:
        why = (f"no candidate of {m} that is significantly closer to fp32 than the input config ({incumbent}) meets "
               f"the target ({target_text(wb)}), nor does the input config; best found: {chosen}")
    return f"{why}{budget}"


def figures_text(r: dict) -> str:
    interval = scoring.interval
    return (f"deviation {interval(r, 'deviation', '')}, flips {interval(r, 'flips', '')}, ΔMSE "
            f"{interval(r, 'mse_increase')}, ΔMAD {interval(r, 'mad_increase')}, mIoU drop {interval(r, 'miou_drop')}")


def images_text(wb: Workbench, image_set: str) -> str:
    n = len(wb.sets[image_set])
    extra = f" and {len(wb.extra_entries)} unlabelled extra images (deviation and flips only)" \
        if image_set == "selection" and wb.extra_entries else ""
    return f"{n} {image_set} images{extra}"


def report_lines(wb: Workbench, result: Result) -> list[str]:
    """The figures of the chosen and the input config on both image sets: what tune.md and the header give."""
    lines = [f"{result.decision.compared} candidates compared with the input config; each figure is a mean with "
             f"[lower, upper] one-sided 95% bounds (paired per-image studentized bootstrap, "
             f"{statistics.RESAMPLES} seeded resamples; mIoU from the pooled confusion counts), changes against fp32 on the same images:"]
    for image_set in ("selection", "confirmation"):
        mean, low, at = result.gains[image_set]
        caveat = "; optimistic: the search chose on these images" if image_set == "selection" else \
            "; scored once, after the search"
        lines.append(f"on {images_text(wb, image_set)}: improvement of deviation over the input {mean:+.5f}, lower "
                     f"bound {low:+.5f} (level {at:.4g}){caveat}")
        for who, label in (("chosen", f"this config ({result.chosen.candidate.label()})"),
                           ("input", f"the input config ({result.incumbent.candidate.label()})")):
            lines.append(f"  {label}: {figures_text(result.figures[image_set][who])}")
    return lines


def markdown(wb: Workbench, result: Result, seconds: float) -> str:
    tune, outcome = wb.cfg.pipeline.tune, result.outcome
    fp32 = scoring.labelled_means(wb.fp32())
    built = sum(not s.result["cached"] for s in outcome.steps)
    promotable = result.verdict in tuned_yaml.PROMOTABLE
    lines = [f"# Quantization tuning: {wb.cfg.source.name}", "",
             *([f"**{wb.demo_banner}**", ""] if wb.demo_banner else []),
             f"**{summary_line(wb, result)}.**", "",
             *[line for notice in wb.notices for line in (f"**Warning:** {notice}.", "")],
             f"Verdict: **{result.verdict}**: `make tune` " + ("promotes tuned.yaml." if promotable else
                                                            "does not promote tuned.yaml (FORCE=1 does)."), "",
             f"Target: {target_text(wb)}. {len(outcome.steps)} candidates of max_builds={tune.max_builds} "
             f"(max_float_layers={tune.max_float_layers}); {built} built in this run, {len(outcome.steps) - built} "
             f"from the cache; {wb.passes} forward passes; {seconds:.0f} s. Weights "
             f"{'per channel' if wb.quantizer.per_channel else 'per tensor'}; skip_conv_layers in "
             f"{wb.cfg.pipeline.conv_numbering} order. fp32 on the selection images: MSE {fp32['mse']:.5f}, MAD "
             f"{fp32['mad']:.5f}, mIoU {fp32['miou']:.5f}. `dev` = deviation from fp32: mean |alpha - fp32 alpha| "
             f"(flips, the share of pixels whose label flips, are reported beside it).", "",
             *report_lines(wb, result), "",
             "Every candidate on the selection images; `p` is the one-sided p of its paired improvement of deviation "
             "over the input config, `Holm` the level it passed at (blank: not significantly better).", "",
             "| # | phase | settings | skipped | dev | ΔMSE upper | ΔMAD upper | mIoU drop upper | target | p | Holm | |",
             "|--:|:--|:--|--:|--:|--:|--:|--:|:--|--:|--:|:--|"]
    ps, levels = [None, *result.p_values], [None, *result.decision.levels]
    for k, s in enumerate(outcome.steps):
        r, b = s.result, s.result["bounds"]
        mark = ", **chosen**" if s is result.chosen else ""
        lines.append(f"| {k + 1} | {s.phase} | {s.candidate.label()} | {len(s.candidate.skip)} | {r['deviation']:.5f} | "
                     f"{b['mse_increase'][1]:+.5f} | {b['mad_increase'][1]:+.5f} | {b['miou_drop'][1]:+.5f} | "
                     f"{'met' if s.met else '-'} | {'input' if k == 0 else f'{ps[k]:.4f}'} | "
                     f"{'' if levels[k] is None else f'{levels[k]:.4g}'} | "
                     f"{'cached' if r['cached'] else 'built'}{mark} |")
    for image_set in ("selection", "confirmation"):
        lines += ["", f"{image_set.capitalize()} images ({image_set}.txt: sha256, name):", ""]
        lines += [f"- `{name}` `{digest}`" for name, digest in wb.sets[image_set]]
    if wb.extra_entries:
        lines += ["", f"Unlabelled extra images from {wb.extra_dir} (extra.txt):", ""]
        lines += [f"- `{name}` `{digest}`" for name, digest in wb.extra_entries]
    return "\n".join(lines) + "\n"


def png(wb: Workbench, result: Result) -> bytes:
    steps, chosen = result.outcome.steps, result.chosen
    series = [(phase, [(len(s.candidate.skip), s.result["deviation"]) for s in steps if s.phase == phase], k, True)
              for k, phase in enumerate(PHASES)]
    return plot.scatter([s for s in series if s[1]], f"{wb.cfg.source.name}: every candidate of the search",
                        "skip_conv_layers (Convs kept float)", "deviation from fp32 (selection images)",
                        marked=[(len(chosen.candidate.skip), chosen.result["deviation"], result.verdict)],
                        integer_x=True, stamp=wb.demo_stamp)


def bias_correction(wb: Workbench, candidate: Candidate) -> bool | str | None:
    """What the tuned config's pipeline.bias_correction becomes for CANDIDATE (None: the input's, unchanged)."""
    if candidate.corrected == (wb.cfg.pipeline.bias_correction == CORRECTION):
        return None
    return CORRECTION if candidate.corrected else False


def header(wb: Workbench, result: Result, command: str) -> list[str]:
    d = wb.digests
    banner = [f"DEMO: {wb.demo_banner}"] if wb.demo_banner else []
    changed = "backend.quantize" + ("" if bias_correction(wb, result.chosen.candidate) is None else
                                    " and pipeline.bias_correction")
    return [f"{tuned_yaml.MARK} (docs/tuning.md): {wb.cfg.source.name} with only {changed} changed.",
            *banner,
            f"{tuned_yaml.VERDICT_PREFIX}{result.verdict}",
            *[f"Warning: {notice}" for notice in wb.notices],
            f"{reason(wb, result)}; {len(result.outcome.steps)} candidates of max_builds="
            f"{wb.cfg.pipeline.tune.max_builds}. Target: {target_text(wb)}.",
            *report_lines(wb, result),
            f"skip_conv_layers counts Convs in {wb.cfg.pipeline.conv_numbering} order (pipeline.conv_numbering), "
            f"measured on the reference backend: unconfirmed for vamc until `make hwcheck` has run on a card "
            f"(docs/first-run-on-a-card.md).",
            f"Model: {wb.onnx_path.name} sha256 {d['onnx_sha256']}",
            f"Calibration: {d['calibration_images']} images, manifest.json sha256 {d['calibration_manifest_sha256']}, "
            f"tensors sha256 {d['calibration_tensors_sha256']}",
            f"Images: selection.txt sha256 {d['selection_list_sha256']}, confirmation.txt sha256 "
            f"{d['confirmation_list_sha256']}, extra.txt sha256 {d['extra_list_sha256']} (names and sha256 in "
            f"candidates.json and the tune folder)",
            f"Command: {command}"]


def tune(wb: Workbench, out: Path, command: str, bar) -> Result:
    text = wb.cfg.source.read_text(encoding="utf-8")  # before the unlink below: the input may be OUT's tuned.yaml
    # Checked by the CLI before the workbench opened; not again here, since the workbench may have set an invalid
    # candidates.json of this folder aside, which would then read as a file tune did not write.
    out.mkdir(parents=True, exist_ok=True)
    mark_stage(out, "tune")
    (out / layout.TUNED_YAML).unlink(missing_ok=True)  # until this run writes its own
    for name, entries in wb.sets.items():
        write_text(layout.image_list(out, name), listing(entries))
    started = time.perf_counter()
    wb.preload(*wb.sets)
    result = judge(wb, run_search(wb, bar))
    seconds = time.perf_counter() - started
    chosen = result.chosen
    wb.cache.save(search=[{"phase": s.phase, **s.candidate.to_json(), "deviation": s.result["deviation"],
                           "violation": s.result["violation"], "p": p, "holm_level": at}
                          for s, p, at in zip(result.outcome.steps, [None, *result.p_values],
                                              [None, *result.decision.levels])],
                  chosen=chosen.candidate.to_json(), verdict=result.verdict)
    write_text(out / "tune.md", markdown(wb, result, seconds))
    write_bytes(out / "tune.png", png(wb, result))
    block = tuned_yaml.quantize_block(wb.cfg.vamc["backend"]["quantize"], chosen.candidate.mode,
                                      chosen.candidate.range, list(chosen.candidate.skip))
    write_text(out / layout.TUNED_YAML, tuned_yaml.tuned_text(text, block, header(wb, result, command),
                                                         bias_correction(wb, chosen.candidate)))
    return result
