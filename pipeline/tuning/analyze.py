"""Stage `analyze`: where an int8 config loses the matte, one row per Conv (layers.py), on the selection images (tune's).

Writes OUT/layers.csv (one row per Conv, vamc order), OUT/layers.md (the same sorted by impact) and OUT/layers.png
(single and entire SQNR along the network's depth, coloured by branch). Impact: for the FLOAT_LAYERS Convs of
lowest single SQNR, the config is scored again with that Conv alone kept float (added to skip_conv_layers); the
reduction of the deviation from fp32 ranks them, ahead of the unmeasured ones (by single SQNR).

Where the error comes from (layers.md and analysis.json's `sources`): the whole model with only its weights
quantized, only its activations, and both, each scored against fp32 as a candidate is, and a sentence on which
part loses most and the remedies that follow. A row is (label, model): any model scored the same way joins them.
With the correction compared (compares_correction: one correction, minutes), the same three rows of the config's
model in the other correction state follow, and the sentence says whether bias correction helped.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import replace
from pathlib import Path

from ..backends.ort.numbering import BRANCHES, conv_order, conv_table
from ..backends.ort.thresholds import clipped_share
from ..core import layout
from ..core.config import BuildConfig
from ..core.fileio import atomic_dir, check_out_dir, write_bytes, write_json, write_text
from ..stages.correct import MODE as CORRECTION
from . import layers, plot, scoring, statistics
from .candidates import Candidate
from .workbench import Workbench, joined_deviations

SQNR_IMAGES = 4    # images the SQNRs are pooled over (the first selection images)
FLOAT_LAYERS = 8   # lowest single SQNR first: each scored with that Conv alone kept float
COLUMNS = ("rank", "vamc_index", "onnx_index", "onnx_node", "branch", "kernel", "stride", "groups", "skipped",
           "threshold", "absmax", "clipped_share", "weight_sqnr_db", "single_sqnr_db", "entire_sqnr_db",
           "float_mad_change", "float_deviation_change")

# The int8 model with one part quantized at a time (label, qdq.PARTS), then both: AIMET QuantAnalyzer's first question
SOURCES = (("weights only", "weights"), ("activations only", "activations"), ("both", "both"))
# Label suffixes of the rows of the other correction state: the config's own rows carry none (SOURCES' labels)
CORRECTED, UNCORRECTED = " + bias correction", " without bias correction"
REMEDIES = {"weights": "bias correction or finer weights",
            "activations": "the calibration mode or fp16 Convs (`skip_conv_layers`)"}


def config_candidate(wb: Workbench) -> Candidate:
    q = wb.cfg.backend.quantize
    return Candidate(q.calibrate_mode, q.calibrate_range if q.calibrate_mode == "percentile" else None,
                     q.skip_conv_layers)


def built_candidate(wb: Workbench) -> Candidate:
    """The config's candidate as `make int8` builds it: bias-corrected with `pipeline.bias_correction: empirical`."""
    return replace(config_candidate(wb), corrected=wb.cfg.pipeline.bias_correction == CORRECTION)


def compares_correction(cfg: BuildConfig) -> bool:
    """Whether analyze adds the rows of the other correction state, at the cost of one correction (minutes): asked
    as tune is asked (pipeline.tune.bias_correction), or by a corrected config, whose own rows need the correction
    anyway (so only the uncorrected rows are added, seconds)."""
    return cfg.pipeline.tune.bias_correction or cfg.pipeline.bias_correction == CORRECTION


def skip_index(wb: Workbench) -> dict[str, int]:
    """Conv name -> its skip_conv_layers number under the config's numbering."""
    return {name: i for i, name in enumerate(conv_order(wb.model, wb.cfg.pipeline.conv_numbering))}


def sqnr_rows(wb: Workbench, candidate: Candidate) -> list[dict]:
    """conv_table's rows with the statistics, thresholds and SQNRs of CANDIDATE's calibration."""
    chosen = wb.quantizer.thresholds(candidate.mode, candidate.range)
    collected = wb.quantizer.collection.tensors
    skipped = wb.quantizer.skipped(candidate.skip)
    act = layers.activation_sqnr(wb.model, chosen, wb.quantizer.per_channel,
                                 wb.images("selection").inputs[:SQNR_IMAGES], skipped)
    weight = layers.weight_sqnr(wb.model, wb.quantizer.per_channel)
    numbers = skip_index(wb)
    nodes = layers.convs(wb.model)
    rows = []
    for row in conv_table(wb.model):
        name = row["onnx_node"]
        tensor = nodes[name].input[0]
        stats = collected[tensor]
        rows.append({**row, "skip_index": numbers[name], "skipped": name in skipped,
                     "threshold": chosen[tensor], "absmax": stats.absmax,
                     "clipped_share": clipped_share(stats.hist, stats.absmax, chosen[tensor]),
                     "weight_sqnr_db": weight[name], "single_sqnr_db": act[name]["single"],
                     "entire_sqnr_db": act[name]["entire"]})
    return rows


def worst_first(rows: list[dict]) -> list[int]:
    """skip_conv_layers numbers of the quantized Convs, lowest single SQNR first."""
    quantized = [r for r in rows if not r["skipped"]]
    return [r["skip_index"] for r in sorted(quantized, key=lambda r: (r["single_sqnr_db"], r["skip_index"]))]


def measure_float(wb: Workbench, candidate: Candidate, rows: list[dict], count: int) -> None:
    """Adds float_mad_change / float_deviation_change to the COUNT worst rows: CANDIDATE with that Conv float."""
    base = wb.evaluate(candidate)
    by_index = {r["skip_index"]: r for r in rows}
    for index in worst_first(rows)[:count]:
        got = wb.evaluate(replace(candidate, skip=tuple(sorted((*candidate.skip, index)))))
        by_index[index]["float_mad_change"] = got["mad"] - base["mad"]
        by_index[index]["float_deviation_change"] = got["deviation"] - base["deviation"]


def source_models(wb: Workbench, candidate: Candidate, twin: bool = False) -> list[tuple[str, bytes]]:
    """(label, Q/DQ model) of CANDIDATE with only its weights, only its activations, then both quantized; TWIN: then
    the same of CANDIDATE in the other correction state (its labels suffixed CORRECTED or UNCORRECTED). A corrected
    model is the one tune scores (Quantizer.corrected: the config's calibration and skip list, its own thresholds)."""
    other = replace(candidate, corrected=not candidate.corrected)
    suffix = CORRECTED if other.corrected else UNCORRECTED
    return [(label, wb.quantizer.build(candidate, parts)) for label, parts in SOURCES] + \
        ([(label + suffix, wb.quantizer.build(other, parts)) for label, parts in SOURCES] if twin else [])


def source_rows(wb: Workbench, models: list[tuple[str, bytes]]) -> list[dict]:
    """Each (label, model) of MODELS against fp32 on the selection images, scored as a candidate is: `quantized`
    (the label), the summary (means and one-sided 95% bounds, scoring.summary) and the per-image deviations."""
    rows = []
    for label, model in models:
        figures = wb.score(model)
        rows.append({"quantized": label, **wb.summary(figures, "selection"),
                     "per_image_deviation": joined_deviations(figures)})
    return rows


def reading(rows: list[dict], seed: int) -> dict:
    """Which part loses most (the larger deviation, when the paired difference's lower bound is above 0) and the
    remedies that follow, as a sentence: from the `weights only` and `activations only` rows of ROWS; then, when ROWS
    hold both correction states, whether bias correction helped (correction_reading)."""
    row = {r["quantized"]: r for r in rows}
    correction = correction_reading(row, seed)
    weights, activations = row["weights only"], row["activations only"]
    worse, better = ("weights", "activations") if weights["deviation"] >= activations["deviation"] \
        else ("activations", "weights")
    high, low = row[f"{worse} only"], row[f"{better} only"]
    difference = high["deviation"] - low["deviation"]
    lower = statistics.lower(scoring.gain(high["per_image_deviation"], low["per_image_deviation"], seed))
    paired = f"paired difference {difference:+.5f}, one-sided 95% lower bound {lower:+.5f}"
    if lower > 0:
        text = (f"Reading: quantizing the {worse} alone loses most (deviation {high['deviation']:.5f} against "
                f"{low['deviation']:.5f} with the {better} alone; {paired}), so the remedies to try are "
                f"{REMEDIES[worse]}.")
    else:
        text = (f"Reading: the weights alone and the activations alone lose about as much (deviation "
                f"{weights['deviation']:.5f} and {activations['deviation']:.5f}; {paired}, not significant on "
                f"{high['images']} images), so neither kind of remedy comes first: {REMEDIES['weights']} for the "
                f"weights, {REMEDIES['activations']} for the activations.")
    return {"loses_most": worse if lower > 0 else None, "difference": difference, "lower_bound": lower,
            "bias_correction": correction, "text": text if correction is None else f"{text} {correction['text']}"}


def correction_reading(row: dict[str, dict], seed: int) -> dict | None:
    """Whether bias correction helped the config's int8 (the two `both` rows of ROW, by label; None without them):
    the paired per-image improvement of deviation, uncorrected minus corrected, with its one-sided 95% bounds;
    `helped` is True when the lower bound is above 0, False when the upper one is below 0, else None."""
    if f"both{CORRECTED}" in row:
        plain, corrected = row["both"], row[f"both{CORRECTED}"]
    elif f"both{UNCORRECTED}" in row:
        plain, corrected = row[f"both{UNCORRECTED}"], row["both"]
    else:
        return None
    e = scoring.gain(plain["per_image_deviation"], corrected["per_image_deviation"], seed)
    improvement = plain["deviation"] - corrected["deviation"]
    lower, upper = statistics.lower(e), statistics.upper(e)
    helped = True if lower > 0 else False if upper < 0 else None
    figures = (f"deviation {plain['deviation']:.5f} without it, {corrected['deviation']:.5f} with it; paired "
               f"improvement {improvement:+.5f}, one-sided 95% bounds [{lower:+.5f}, {upper:+.5f}]")
    verdict = {True: "helps the int8 model", False: "makes the int8 model worse",
               None: "is not shown to help or to hurt the int8 model"}[helped]
    tail = f", not significant on {plain['images']} images" if helped is None else ""
    return {"helped": helped, "improvement": improvement, "lower_bound": lower, "upper_bound": upper,
            "text": f"Bias correction {verdict} ({figures}{tail})."}


def sources_markdown(rows: list[dict], read: dict) -> list[str]:
    interval = scoring.interval
    labels = {r["quantized"] for r in rows}
    twin = ""
    if f"both{CORRECTED}" in labels:
        twin = (f" The rows `{CORRECTED.strip()}` are the same for the model `python -m pipeline correct` makes for "
                f"the config's calibration and skip list, quantized at thresholds recalibrated on it (what `make "
                f"int8` builds with `pipeline.bias_correction: empirical`).")
    elif f"both{UNCORRECTED}" in labels:
        twin = (f" The config is bias-corrected: the first three rows are its corrected model (what `make int8` "
                f"builds), the rows `{UNCORRECTED.strip()}` the same for the simplified ONNX as it is.")
    lines = ["Where the error comes from: the whole model on the same images against fp32, with only its weights "
             "quantized (activations float), only its activations (weights float), and both (the config's int8, "
             "as above); the Convs the config skips stay float in every row." + twin + " Each figure is a mean "
             "with [lower, upper] one-sided 95% bounds; deviation is mean |alpha - fp32 alpha| of the 8-bit mattes, "
             "flips the share of pixels whose label flips.", "",
             "| quantized | deviation | flips | ΔMSE | ΔMAD | mIoU drop |", "|:--|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['quantized']} | {interval(r, 'deviation', '')} | {interval(r, 'flips', '')} | "
              f"{interval(r, 'mse_increase')} | {interval(r, 'mad_increase')} | {interval(r, 'miou_drop')} |"
              for r in rows]
    return [*lines, "", read["text"], ""]


def by_impact(rows: list[dict]) -> list[dict]:
    measured = sorted((r for r in rows if "float_deviation_change" in r),
                      key=lambda r: (r["float_deviation_change"], r["skip_index"]))
    rest = sorted((r for r in rows if "float_deviation_change" not in r),
                  key=lambda r: (r["skipped"], r["single_sqnr_db"], r["skip_index"]))
    return measured + rest


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    if isinstance(value, list):
        return "x".join(map(str, value))
    return "" if value is None else str(value)


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    rank = {r["onnx_node"]: k for k, r in enumerate(by_impact(rows), 1)}
    for row in sorted(rows, key=lambda r: r["vamc_index"]):
        writer.writerow([_cell(rank[row["onnx_node"]] if c == "rank" else row.get(c)) for c in COLUMNS])
    return buffer.getvalue()


def to_markdown(rows: list[dict], wb: Workbench, candidate: Candidate, figures: dict, sources: list[str],
                seconds: float) -> str:
    """SOURCES: the lines of sources_markdown, after the whole model's figures (CANDIDATE's: corrected when the config
    is; the per-Conv table is always the simplified model's)."""
    fp32 = scoring.labelled_means(wb.fp32())
    uncorrected = (" The per-Conv table is measured on the simplified ONNX, uncorrected: correcting again for each "
                   "Conv kept float would cost a correction (minutes) each.") if candidate.corrected else ""
    lines = [f"# Quantization analysis: {wb.cfg.source.name}", "",
             *([f"**{wb.demo_banner}**", ""] if wb.demo_banner else []),
             f"Calibration {candidate.label()}, {'per channel' if wb.quantizer.per_channel else 'per tensor'} "
             f"weights, skip_conv_layers counted in {wb.cfg.pipeline.conv_numbering} order. "
             f"{wb.quantizer.collection.images} calibration images; SQNRs pooled over {SQNR_IMAGES} and matte "
             f"figures over {len(wb.selection_entries)} selection images (not in the calibration subset). "
             f"{seconds:.0f} s.{uncorrected}", "",
             f"Whole model on the selection images: MAD {figures['mad']:.5f} (fp32 {fp32['mad']:.5f}, "
             f"{figures['mad_increase']:+.5f}), MSE {figures['mse']:.5f} ({figures['mse_increase']:+.5f}), mIoU "
             f"{figures['miou']:.5f} (fp32 {fp32['miou']:.5f}, drop {figures['miou_drop']:+.5f}); deviation from "
             f"fp32 (mean |alpha - fp32 alpha|) {figures['deviation']:.5f}, flips {figures['flips']:.5f}.", "",
             *sources,
             "Sorted by impact: first the Convs measured kept float alone, by how much that reduces the deviation "
             "from fp32 (ΔMAD and Δdev are that run's changes; negative = better), then the rest by single SQNR. "
             "`skip` is the number to put in `backend.quantize.skip_conv_layers`.", "",
             "| skip | vamc | onnx | node | branch | k/g | T / max abs | clipped | W SQNR | single | entire | "
             "ΔMAD float | Δdev float |", "|--:|--:|--:|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for r in by_impact(rows):
        lines.append(
            f"| {r['skip_index']} | {r['vamc_index']} | {r['onnx_index']} | `{r['onnx_node']}` | {r['branch']} | "
            f"{_cell(r['kernel'])}/{r['groups']} | {r['threshold']:.3g} / {r['absmax']:.3g} | "
            f"{100 * r['clipped_share']:.3f}% | {_cell(r['weight_sqnr_db'])} | {_cell(r['single_sqnr_db'])} | "
            f"{_cell(r['entire_sqnr_db'])} | {_cell(r.get('float_mad_change'))} | "
            f"{_cell(r.get('float_deviation_change'))} |" + (" (skipped)" if r["skipped"] else ""))
    return "\n".join(lines) + "\n"


def to_png(rows: list[dict], title: str, stamp: str | None = None) -> bytes:
    branches = [label for _, label in BRANCHES] + ["other"]
    series = []
    for k, branch in enumerate(branches):
        mine = [r for r in rows if r["branch"] == branch]
        if mine:
            series.append((f"single, {branch}", [(r["vamc_index"], r["single_sqnr_db"]) for r in mine], k, True))
            series.append((f"entire, {branch}", [(r["vamc_index"], r["entire_sqnr_db"]) for r in mine], k, False))
    return plot.scatter(series, title, "Conv (vamc index, along depth)", "SQNR dB", integer_x=True, stamp=stamp)


def analyze(wb: Workbench, out: Path) -> dict:
    check_out_dir(out, "analyze")
    started = time.perf_counter()
    wb.preload("selection", "extra")  # the sets wb.evaluate scores
    candidate, built = config_candidate(wb), built_candidate(wb)  # the per-Conv analysis is of the simplified ONNX
    rows = sqnr_rows(wb, candidate)
    measure_float(wb, candidate, rows, FLOAT_LAYERS)
    figures = wb.evaluate(built)
    sources = source_rows(wb, source_models(wb, built, compares_correction(wb.cfg)))
    read = reading(sources, wb.cfg.pipeline.seed)
    seconds = time.perf_counter() - started
    with atomic_dir(out, "analyze") as tmp:
        write_text(tmp / layout.LAYERS_CSV, to_csv(rows))
        write_text(tmp / "layers.md", to_markdown(rows, wb, built, figures, sources_markdown(sources, read),
                                                  seconds))
        write_bytes(tmp / "layers.png", to_png(rows, f"{wb.cfg.source.name}: {candidate.label()}, single (filled) "
                                                     f"and entire (ring) SQNR per Conv", wb.demo_stamp))
        write_json(tmp / "analysis.json", {"candidate": built.to_json(), "figures": figures,
                                           "fp32": scoring.labelled_means(wb.fp32()),
                                           **wb.digests, "selection": wb.cache.context["selection"],
                                           "sources": {"rows": sources, "reading": read}})
    return {"rows": rows, "figures": figures, "seconds": seconds, "worst": by_impact(rows)[:5], "sources": sources,
            "reading": read}
