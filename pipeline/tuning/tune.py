"""Stage `tune`: vamc settings that keep the matte within the target, handed back as a config vamc builds as is.

Runs the search (search.py) with candidates scored on the validation images (workbench.py), then writes in OUT:
candidates.json (the cache: every candidate ever scored in this context, updated after each build, plus this
run's search), tune.md (every candidate of the search), tune.png (skipped layers against MAD, the chosen point
ringed) and, last, tuned.yaml (tuned_yaml.py). A run interrupted or failing leaves no tuned.yaml, only the cache.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..fileio import mark_stage, write_bytes, write_text
from . import plot, tuned_yaml
from .analyze import sqnr_rows, worst_first
from .candidates import Candidate, calibrations
from .search import Outcome, Step, search
from .workbench import Workbench

RANK_LAYERS = 10  # layers measured alone kept float to rank them (search.py, step 2)
PHASES = ("calibration", "rank", "bisect", "drop")


def _figures(r: dict) -> str:
    return (f"MSE {r['mse']:.5f} ({r['mse_increase']:+.5f}), MAD {r['mad']:.5f} ({r['mad_increase']:+.5f}), "
            f"mIoU {r['miou']:.5f} (drop {r['miou_drop']:+.5f})")


def run_search(wb: Workbench, bar) -> Outcome:
    seen = Outcome()

    def evaluate(candidate: Candidate) -> dict:
        result = wb.evaluate(candidate)
        wb.cache.save()
        seen.steps.append(Step(candidate, "", result))
        best = seen.best
        bar.update(1)
        bar.set_postfix_str(f"best {best.candidate.label()}: ΔMAD {best.result['mad_increase']:+.4f}, "
                            f"mIoU drop {best.result['miou_drop']:+.4f}", refresh=True)
        return result

    def prerank(candidate: Candidate) -> list[int]:
        ranks = wb.cache.extra.setdefault("worst_first", {})
        if candidate.key not in ranks:
            ranks[candidate.key] = worst_first(sqnr_rows(wb, candidate))
            wb.cache.save()
        return ranks[candidate.key]

    return search(calibrations(wb.cfg), evaluate, prerank, wb.cfg.pipeline.tune.max_builds, RANK_LAYERS)


def summary_line(wb: Workbench, outcome: Outcome) -> str:
    tune, best = wb.cfg.pipeline.tune, outcome.best
    target = f"MAD increase <= {tune.max_mad_increase:g} and mIoU drop <= {tune.max_miou_drop:g}"
    if outcome.met:
        return f"target ({target}) met by {best.candidate.label()}"
    why = f"max_builds={tune.max_builds} spent" if outcome.out_of_budget else "not even with every ranked layer float"
    return f"target ({target}) NOT met ({why}); best found: {best.candidate.label()}"


def markdown(wb: Workbench, outcome: Outcome, seconds: float) -> str:
    tune, fp32, best = wb.cfg.pipeline.tune, wb.fp32, outcome.best
    built = sum(not s.result["cached"] for s in outcome.steps)
    lines = [f"# Quantization tuning: {wb.cfg.source.name}", "",
             *([f"**{wb.demo_banner}**", ""] if wb.demo_banner else []),
             ("" if outcome.met else "**") + summary_line(wb, outcome) + ("." if outcome.met else ".**"), "",
             f"{len(outcome.steps)} candidates of max_builds={tune.max_builds}; {built} built in this run, "
             f"{len(outcome.steps) - built} from the cache; {seconds:.0f} s. Scored on "
             f"{len(wb.validation_entries)} validation images (not in the calibration subset) against fp32: MSE "
             f"{fp32['mse']:.5f}, MAD {fp32['mad']:.5f}, mIoU {fp32['miou']:.5f}. Weights "
             f"{'per channel' if wb.quantizer.per_channel else 'per tensor'}; skip_conv_layers in "
             f"{wb.cfg.pipeline.conv_numbering} order. `dev` = mean |alpha - fp32 alpha|.", "",
             "| # | phase | settings | skipped | MSE | MAD | mIoU | ΔMSE | ΔMAD | mIoU drop | dev | target | |",
             "|--:|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|:--|:--|"]
    for k, s in enumerate(outcome.steps, 1):
        r = s.result
        lines.append(f"| {k} | {s.phase} | {s.candidate.label()} | {len(s.candidate.skip)} | {r['mse']:.5f} | "
                     f"{r['mad']:.5f} | {r['miou']:.5f} | {r['mse_increase']:+.5f} | {r['mad_increase']:+.5f} | "
                     f"{r['miou_drop']:+.5f} | {r['deviation']:.5f} | {'met' if s.met else '-'} | "
                     f"{'cached' if r['cached'] else 'built'}{', **chosen**' if s is best else ''} |")
    lines += ["", "Validation images (name, sha256):", ""]
    lines += [f"- `{name}` `{digest}`" for name, digest in wb.validation_entries]
    return "\n".join(lines) + "\n"


def png(wb: Workbench, outcome: Outcome) -> bytes:
    fp32, tune, best = wb.fp32, wb.cfg.pipeline.tune, outcome.best
    series = [(phase, [(len(s.candidate.skip), s.result["mad"]) for s in outcome.steps if s.phase == phase], k, True)
              for k, phase in enumerate(PHASES)]
    return plot.scatter([s for s in series if s[1]], f"{wb.cfg.source.name}: every candidate of the search",
                        "skip_conv_layers (Convs kept float)", "MAD vs ground truth",
                        hline=(fp32["mad"] + tune.max_mad_increase,
                               f"target: fp32 MAD + max_mad_increase = {fp32['mad'] + tune.max_mad_increase:.5f}"),
                        marked=[(len(best.candidate.skip), best.result["mad"], "chosen")], integer_x=True,
                        stamp=wb.demo_stamp)


def header(wb: Workbench, outcome: Outcome, command: str) -> list[str]:
    best, first, fp32 = outcome.best, outcome.steps[0], wb.fp32
    d = wb.digests
    banner = [f"DEMO: {wb.demo_banner}"] if wb.demo_banner else []
    return [f"{tuned_yaml.MARK} (docs/tuning.md): {wb.cfg.source.name} with only backend.quantize changed.",
            *banner,
            f"{summary_line(wb, outcome)}; {len(outcome.steps)} candidates of max_builds="
            f"{wb.cfg.pipeline.tune.max_builds}.",
            f"On {len(wb.validation_entries)} validation images outside the calibration subset, against fp32 "
            f"(MSE {fp32['mse']:.5f}, MAD {fp32['mad']:.5f}, mIoU {fp32['miou']:.5f}):",
            f"  this config ({best.candidate.label()}): {_figures(best.result)}",
            f"  the input's calibration ({first.candidate.label()}): {_figures(first.result)}",
            f"skip_conv_layers counts Convs in {wb.cfg.pipeline.conv_numbering} order (pipeline.conv_numbering), "
            f"measured on the reference backend: unconfirmed for vamc until `make hwcheck` has run on a card "
            f"(docs/first-run-on-a-card.md).",
            f"Model: {wb.onnx_path.name} sha256 {d['onnx_sha256']}",
            f"Calibration: {d['calibration_images']} images, manifest.json sha256 {d['calibration_manifest_sha256']}, "
            f"tensors sha256 {d['calibration_tensors_sha256']}",
            f"Validation: list sha256 {d['validation_list_sha256']} (names and sha256 in candidates.json)",
            f"Command: {command}"]


def tune(wb: Workbench, out: Path, command: str, bar) -> Outcome:
    text = wb.cfg.source.read_text(encoding="utf-8")  # before the unlink below: the input may be OUT's tuned.yaml
    # Checked by the CLI before the workbench opened; not again here, since the workbench may have set an invalid
    # candidates.json of this folder aside, which would then read as a file tune did not write.
    out.mkdir(parents=True, exist_ok=True)
    mark_stage(out, "tune")
    (out / "tuned.yaml").unlink(missing_ok=True)  # until this run writes its own
    started = time.perf_counter()
    outcome = run_search(wb, bar)
    seconds = time.perf_counter() - started
    best = outcome.best
    wb.cache.save(search=[{"phase": s.phase, **s.candidate.to_json(), **s.result} for s in outcome.steps],
                  chosen=best.candidate.to_json(), met=outcome.met)
    write_text(out / "tune.md", markdown(wb, outcome, seconds))
    write_bytes(out / "tune.png", png(wb, outcome))
    block = tuned_yaml.quantize_block(wb.cfg.vamc["backend"]["quantize"], best.candidate.mode, best.candidate.range,
                                      list(best.candidate.skip))
    write_text(out / "tuned.yaml", tuned_yaml.tuned_text(text, block, header(wb, outcome, command)))
    return outcome
