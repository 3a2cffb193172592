"""The accuracy report of `make eval` (report.md in the model card's table format, report.png contact sheet) and
the accuracy gate (each engine's change against fp32, limits from that engine's own config `pipeline.gate`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..accuracy import metrics
from ..accuracy.agreement import Agreement, agreement
from ..core import layout
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import write_bytes, write_text
from ..data.dataset import matte_path
from ..data.preprocess import decode
from ..model import flops as flops_count

# The vendor's published rows (docs/model-card.md, "Published accuracy"), as published.
VENDOR_ROWS = (
    {"model": "modnet (PyTorch, fp32)", "flops": "24.011", "params": "8.700", "mse": 0.00945, "mad": 0.01456,
     "miou": 0.970898},
    {"model": "modnet vacc fp16", "flops": "-", "params": "-", "mse": 0.00951, "mad": 0.01378, "miou": 0.970788},
    {"model": "modnet vacc int8 kl", "flops": "-", "params": "-", "mse": 0.01915, "mad": 0.02453,
     "miou": 0.946498},
)
HEAT_FULL_SCALE = 0.25  # |int8 - fp32| alpha difference shown as the hottest colour
TILE_SCALE = 0.5  # contact-sheet tiles at half the model size
HEADER_H, LABEL_H, FOOTER_H, STAMP_H = 28, 18, 34, 30  # heights (px) of the contact sheet's text bands
_NOT_MODNET = "these figures exercise the pipeline and say nothing about MODNet's accuracy"
_DEMO_CKPT = "the demo checkpoint (trained briefly on generated portraits, not MODNet's weights)"
DEMO_WARNINGS = {  # (demo data, demo checkpoint) -> the banner
    (True, True): f"Generated demo data and {_DEMO_CKPT}: {_NOT_MODNET}.",
    (True, False): f"Generated demo data, not photos with hand-made mattes: {_NOT_MODNET}.",
    (False, True): f"{_DEMO_CKPT[0].upper()}{_DEMO_CKPT[1:]}: {_NOT_MODNET}.",
}
DEMO_STAMPS = {(True, True): "DEMO: generated data, demo checkpoint", (True, False): "DEMO: generated data",
               (False, True): "DEMO: demo checkpoint"}


@dataclass(frozen=True)
class Evaluated:
    label: str  # fp32, fp16, int8
    folder: Path
    metrics: dict
    cfg: BuildConfig | None  # the engine's build config (its pipeline.gate); None for fp32


@dataclass(frozen=True)
class Scope:
    """Which scored images the engines were calibrated or tuned on (by name): the report gives its figures on every
    scored image, as the vendor's table does, and again on the others, the held-out images."""
    calibration: frozenset[str] | None = None  # every int8 engine's calibration images; None: not known
    selection: frozenset[str] = frozenset()  # tune's selection images of a tuned config
    unknown_selection: tuple[str, ...] = ()  # tuned configs reported without their selection list

    def excluded(self) -> frozenset[str]:
        return (self.calibration or frozenset()) | self.selection


def load_metrics(folder: str | Path) -> dict:
    path = layout.metrics(folder)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file (run `python -m pipeline evaluate ... --out {folder}`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable metrics ({type(exc).__name__})") from None


def evaluated(fp32: str | Path, engines: list[tuple[str, str | Path, str | Path]]
              ) -> tuple[Evaluated, list[Evaluated]]:
    """The fp32 metrics folder and each engine's (label, metrics folder, build config), read."""
    from ..core.config import load_config
    return (Evaluated("fp32", Path(fp32), load_metrics(fp32), None),
            [Evaluated(label, Path(folder), load_metrics(folder), load_config(cfg)) for label, folder, cfg in engines])


def scope(calib: list[Path], selections: list[Path], data: Path, engines: list[Evaluated]) -> Scope:
    """Which images of DATA the engines were calibrated or tuned on: the calibration folders' manifests and tune's
    selection lists, checked as data (a selection image of DATA must be the file that was tuned on)."""
    from ..data.dataset import check_listed_images, read_image_list
    from ..tuning.tuned_yaml import is_tuned
    from .calibrate import read_calibration_manifest
    calibration = None
    for folder in calib:
        names = {entry["name"] for entry in read_calibration_manifest(folder)["images"]}
        calibration = (calibration or frozenset()) | names
    selection: frozenset[str] = frozenset()
    for path in selections:
        _, entries = read_image_list(path, "tune's selection list")
        if not entries:
            raise PipelineError(f"{path}: tune's selection list names no images; tune again (make tune)")
        check_listed_images(data, entries, path, "restore it, or tune again on this data (make tune)")
        selection |= {name for name, _ in entries}
    unknown = () if selections else tuple(
        ev.cfg.source.name for ev in engines if ev.cfg is not None and is_tuned(ev.cfg.source))
    return Scope(calibration, selection, unknown)


# --- the gate ----------------------------------------------------------------------------------------------------

def gate_checks(fp32: Evaluated, engine: Evaluated) -> list[dict]:
    """One row per gated metric: the engine's change against fp32 and the limit from its config."""
    if engine.cfg is None:
        raise PipelineError(f"{engine.label}: no config given for its gate")
    ref, got, gate = fp32.metrics, engine.metrics, engine.cfg.pipeline.gate
    if ref["images"] != got["images"]:
        raise PipelineError(f"{engine.folder}: scored {got['images']} images, fp32 ({fp32.folder}) {ref['images']}; "
                            f"compare engines on the same images")
    rows = [("mse", got["mse"] - ref["mse"], gate.max_mse_increase, "max_mse_increase"),
            ("mad", got["mad"] - ref["mad"], gate.max_mad_increase, "max_mad_increase"),
            ("miou", ref["miou"] - got["miou"], gate.max_miou_drop, "max_miou_drop")]
    return [{"engine": engine.label, "metric": metric, "change": change, "limit": limit,
             "key": f"pipeline.gate.{key}", "config": str(engine.cfg.source), "ok": change <= limit}
            for metric, change, limit, key in rows]


def gate(fp32: Evaluated, engines: list[Evaluated]) -> list[dict]:
    return [row for engine in engines for row in gate_checks(fp32, engine)]


def gate_failures(rows: list[dict]) -> str | None:
    failed = [r for r in rows if not r["ok"]]
    if not failed:
        return None
    what = {"mse": "MSE increase", "mad": "MAD increase", "miou": "mIoU drop"}
    return "accuracy gate failed: " + "; ".join(
        f"{r['engine']} {what[r['metric']]} {r['change']:.5f} > {r['limit']:g} ({r['key']} in {r['config']})"
        for r in failed)


# --- agreement with fp32 --------------------------------------------------------------------------------------

def engine_agreement(fp32: Evaluated, engine: Evaluated, images: list[str] | None = None) -> Agreement | None:
    """How far an engine's predictions are from fp32's on the same images (not gated: metrics against the ground
    truth can stay put while the predictions move, e.g. with random weights), on every saved prediction or on those
    of IMAGES (image names). None if predictions are missing."""
    stems = None if images is None else {Path(n).stem for n in images}
    names = [n for n in fp32.metrics.get("predictions", []) if (engine.folder / "preds" / n).is_file()
             and (stems is None or Path(n).stem in stems)]
    if not names:
        return None
    return agreement([_pred(engine, n) for n in names], [_pred(fp32, n) for n in names])


# --- held-out figures -------------------------------------------------------------------------------------------

def scored_names(ev: Evaluated) -> list[str]:
    """The image names EV's metrics.json has per-image figures for, in scoring order."""
    try:
        return [row["name"] for row in ev.metrics["per_image"]]
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{layout.metrics(ev.folder)}: no per-image figures ({type(exc).__name__}: {exc}); "
                            f"rerun `make eval`") from None


def subset_figures(ev: Evaluated, names: list[str]) -> dict:
    """EV's dataset figures on NAMES only, recomputed from its per-image records exactly as `evaluate` computed them
    on every image (means over images; mIoU from the summed confusion counts)."""
    path = layout.metrics(ev.folder)
    by_name = dict(zip(scored_names(ev), ev.metrics["per_image"]))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PipelineError(f"{path}: no per-image figures of {missing[0]}, which fp32 scored; compare engines on the "
                            f"same images (rerun `make eval`)")
    try:
        return metrics.Accumulator([by_name[n] for n in names]).summary()
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: malformed per-image figures ({type(exc).__name__}: {exc}); rerun `make eval`") \
            from None


# --- report.md ---------------------------------------------------------------------------------------------------

def _f(value, digits: int = 5) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _shape(m: dict) -> str:
    n, c, h, w = m["input_shape"]
    return f"{c}x{h}x{w}"


def _model_rows(fp32: Evaluated, engines: list[Evaluated], counted: dict, label: str, figures) -> list[str]:
    """The table's rows of ours, FIGURES(ev) giving each engine's dataset figures."""
    lines = []
    for i, ev in enumerate([fp32, *engines]):
        m, engine = figures(ev), ev.metrics["engine"]
        runtime = "ONNX Runtime" if engine["backend"] in ("onnx", "ort") else "vaststreamx"
        backend = "simplified ONNX" if engine["backend"] == "onnx" else f"{engine['backend']} engine"
        fl = f"{counted['flops'] / 1e9:.3f}" if i == 0 else "-"
        pa = f"{counted['params'] / 1e6:.3f}" if i == 0 else "-"
        lines.append(f"| ours ({label}): {ev.label}, {backend} on {runtime} | {fl} | {pa} | {_f(m['mse'])} | "
                     f"{_f(m['mad'])} | {_f(m['sad'], 3)} | {_f(m['grad'], 3)} | {_f(m['conn'], 3)} | "
                     f"{_f(m['miou'], 6)} | {_shape(ev.metrics)} |")
    return lines


TABLE_HEAD = ["| Model | FLOPs(G) | Params(M) | MSE | MAD | SAD | Grad | Conn | mIoU | Shape |",
              "|:--|--:|--:|--:|--:|--:|--:|--:|--:|:--|"]


@dataclass(frozen=True)
class HeldOut:
    """The scored images outside the calibration (and selection) images, and how the report names them."""
    names: list[str]  # in scoring order; empty if every scored image was calibrated or tuned on
    label: str  # "25 outside calibration and selection"
    text: list[str]  # what the report says about which images each table scored


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def held_out(fp32: Evaluated, engines: list[Evaluated], scope: Scope) -> HeldOut | None:
    """None when no scored image is known to have been calibrated or tuned on (nothing to hold out)."""
    scored = scored_names(fp32)
    notes = [f"`{config}` is a tuned config whose selection images are unknown (no selection list given: `make "
             f"tune` writes ART/tune/NAME/selection.txt), so the held-out figures exclude only the calibration "
             f"images." for config in scope.unknown_selection]
    int8 = [ev.label for ev in engines if ev.cfg is not None and ev.cfg.backend.dtype == "int8"]
    if scope.calibration is None and int8:
        notes.append(f"The calibration images of {', '.join(int8)} are unknown (no calibration folder given; `make "
                     f"eval` gives it): these figures may include them.")
    calibrated = [n for n in scored if n in (scope.calibration or ())]
    selected = [n for n in scored if n in scope.selection and n not in calibrated]
    kinds = [(kind, count) for kind, count, known in (("calibration", len(calibrated), scope.calibration is not None),
                                                      ("selection", len(selected), bool(scope.selection))) if known]
    if not calibrated and not selected:
        if kinds:
            notes.insert(0, f"None of the {len(scored)} scored images is one of the "
                            f"{' or '.join(kind for kind, _ in kinds)} images.")
        return HeldOut([], "", notes) if notes else None
    names = [n for n in scored if n not in scope.excluded()]
    among = " and ".join(_count(count, f"{kind} image") for kind, count in kinds)
    what = " and ".join({"calibration": "the calibration subset", "selection": "tune's selection images"}[kind]
                        for kind, _ in kinds)
    text = [f"The table above scores all {len(scored)} images, {among} among them, as the vendor's table does (its "
            f"50 calibration images are 50 of PPM-100's 100). "
            + (f"The table below gives the same rows on the {_count(len(names), 'image')} outside {what}, which no "
               f"engine here was calibrated or tuned on." if names else
               f"**No scored image lies outside {what}: every figure of this report was measured on images the "
               f"engines were calibrated or tuned on; score more images (DATA, LIMIT).**"), *notes]
    label = f"{len(names)} outside {' and '.join(kind for kind, _ in kinds)}"
    return HeldOut(names, label, text)


def markdown(fp32: Evaluated, engines: list[Evaluated], counted: dict, onnx: Path, data_label: str,
             demo: tuple[bool, bool], gate_rows: list[dict], sheet: str | None, scope: Scope = Scope()) -> str:
    """DEMO: (the data is the generated demo set, the checkpoint is the demo one)."""
    lines = ["# MODNet accuracy report", ""]
    if any(demo):
        lines += [f"**{DEMO_WARNINGS[demo]} Only the vendor's rows are real measurements.**", ""]
    m0 = fp32.metrics
    lines += [f"Data: {data_label} ({m0['images']} images). Measured as the vendor measured its "
              f"table (docs/model-card.md, \"How the accuracy is measured\"): OpenCV decode, bilinear resize to "
              f"288x480, `(x - 127.5) / 127.5`; ground truth = matte as grey, INTER_AREA to 288x480; prediction = "
              f"`(alpha * 255).astype(uint8)` at 480x288; no trimap; mIoU from one confusion matrix over the "
              f"dataset; the other figures are means over images.", "", *TABLE_HEAD]
    for row in VENDOR_ROWS:
        lines.append(f"| vendor (published, PPM-100): {row['model']} | {row['flops']} | {row['params']} | "
                     f"{row['mse']:.5f} | {row['mad']:.5f} | - | - | - | {row['miou']:.6f} | 3x480x288 |")
    lines += _model_rows(fp32, engines, counted, f"{data_label}, {m0['images']} images", lambda ev: ev.metrics)
    held = held_out(fp32, engines, scope)
    for text in held.text if held else ():
        lines += ["", text]
    if held and held.names:
        lines += ["", *TABLE_HEAD, *_model_rows(fp32, engines, counted, f"{data_label}, {held.label}",
                                                lambda ev: subset_figures(ev, held.names))]
    lines += ["", f"FLOPs and params of ours are counted from `{Path(onnx).name}`: {counted['rule']}. "
              f"That gives {counted['macs'] / 1e9:.3f} GMACs ({counted['flops'] / 1e9:.3f} GFLOPs) and "
              f"{counted['params']:,} params; the card gives 6.49 M params and about 8.16 GMACs for the official "
              f"model. The vendor's published 24.011 G / 8.700 M follow no rule we could reproduce.", ""]
    on = f"all {m0['images']} scored images" + (", calibration images included" if held and held.names else "")
    lines += [f"## Accuracy gate (change against our fp32 on {on}; limits from each engine's config)", "",
              "| Engine | Metric | Change | Limit | Result |", "|:--|:--|--:|--:|:--|"]
    for r in gate_rows:
        lines.append(f"| {r['engine']} | {r['metric']} {'drop' if r['metric'] == 'miou' else 'increase'} | "
                     f"{r['change']:.5f} | {r['limit']:g} (`{r['key']}`, {Path(r['config']).name}) | "
                     f"{'pass' if r['ok'] else '**FAIL**'} |")
    failure = gate_failures(gate_rows)
    lines += ["", f"Gate: {'FAILED: ' + failure.split(': ', 1)[1] if failure else 'passed'}.", ""]
    agreements = [(ev.label, engine_agreement(fp32, ev)) for ev in engines]
    held_rows = bool(held and held.names)
    if held_rows:
        agreements = [pair for ev, whole in zip(engines, agreements)
                      for pair in (whole, (f"{ev.label} ({held.label})", engine_agreement(fp32, ev, held.names)))]
    if any(a for _, a in agreements):
        lines += ["## Agreement with fp32 (informational, not gated)", "",
                  "Mean and largest |engine - fp32| of the 8-bit predictions (as alpha), and the share of pixels "
                  "whose foreground/background label (>= 128) differs from fp32's"
                  + (", on every scored image and on the held-out images" if held_rows else "") + ".", "",
                  "| Engine | Images | Mean abs diff | Max abs diff | Label flips |", "|:--|--:|--:|--:|--:|"]
        for label, a in agreements:
            if a:
                lines.append(f"| {label} | {a.images} | {a.mean_abs:.5f} | {a.max_abs:.4f} | {100 * a.flips:.3f}% |")
        lines += [""]
    why_fp32 = ""
    if fp32.metrics["engine"]["backend"] == "onnx":  # its file is named after a config, often the fp16 one
        why_fp32 = (f" fp32 is `{next(iter(fp32.metrics['engine']['model_files']))}` itself on ONNX Runtime: a "
                    f"simplified ONNX holds the model in fp32 whichever config it was exported with (an fp16 in its "
                    f"name is the precision of the engine its config builds from it).")
    lines += ["## Engines", "", "The files that computed each row (paths and timings of the runs: eval/*/run.json)."
              + why_fp32, "", "| Engine | Backend | File | sha256 |", "|:--|:--|:--|:--|"]
    for ev in [fp32, *engines]:
        e = ev.metrics["engine"]
        for name, digest in e["model_files"].items():
            lines.append(f"| {ev.label} | {e['backend']} | {name} | `{digest[:16]}…` |")
    if sheet:
        lines += ["", "## Contact sheet", "",
                  f"Columns: input, ground truth, fp32, {', '.join(ev.label for ev in engines)}, and "
                  f"|{engines[-1].label} - fp32| as a heat map (JET; dark blue = 0, red = an alpha difference of "
                  f"{HEAT_FULL_SCALE:g} or more, as the colour bar under it shows); each row is headed by its image "
                  f"name.", "", f"![contact sheet]({sheet})"]
    return "\n".join(lines) + "\n"


def described(report_text: str) -> str | None:
    """`N images of DATA` from a report's `Data:` line, to say what a new report replaced; None if absent."""
    match = re.search(r"^Data: (.+) \((\d+) images\)\.", report_text, re.MULTILINE)
    return f"{match.group(2)} images of {match.group(1).strip('`')}" if match else None


# --- report.png --------------------------------------------------------------------------------------------------

def _tile(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    size = (round(width * TILE_SCALE), round(height * TILE_SCALE))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _pred(ev: Evaluated, name: str) -> np.ndarray:
    path = ev.folder / "preds" / name
    image = decode(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise PipelineError(f"{path}: missing saved prediction (re-run evaluate)")
    return image


def _band(height: int, width: int, text: str, colour=(0, 0, 0), scale: float = 0.45, x: int = 6) -> np.ndarray:
    band = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(band, text, (x, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return band


def colour_bar(width: int, tile_w: int, column: int, label: str) -> np.ndarray:
    """A footer whose bar, under heat-map column COLUMN, runs the JET scale from 0 to HEAT_FULL_SCALE."""
    footer = _band(FOOTER_H, width, label, scale=0.4)
    x0, x1 = column * tile_w + 6, (column + 1) * tile_w - 6
    ramp = np.linspace(0, 255, x1 - x0).astype(np.uint8)[None, :]
    footer[4:18, x0:x1] = cv2.applyColorMap(np.repeat(ramp, 14, axis=0), cv2.COLORMAP_JET)
    for text, x in (("0", x0), (f"{HEAT_FULL_SCALE:g}+", x1 - 30)):
        cv2.putText(footer, text, (x, FOOTER_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return footer


def contact_sheet(fp32: Evaluated, engines: list[Evaluated], cfg: BuildConfig, data: Path,
                  demo: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Columns: input, ground truth, fp32, each engine, the heat map; a band naming each row's image, a colour bar
    under the heat map, and a red stamp on top when DEMO (as in `markdown`) says the figures are not MODNet's."""
    from .evaluate import photo_and_gt
    height, width = cfg.height, cfg.width
    by_stem = {Path(row["name"]).stem: row["name"] for row in fp32.metrics["per_image"]}
    names = [n for n in fp32.metrics.get("sheet", [])
             if all((ev.folder / "preds" / n).is_file() for ev in engines)]
    if not names:
        raise PipelineError(f"{fp32.folder}: no saved predictions shared by every engine; nothing to show")
    headers = ["input", "ground truth", fp32.label, *[ev.label for ev in engines],
               f"|{engines[-1].label} - {fp32.label}|" if engines else "-"]
    rows = []
    for name in names:
        image = data / "image" / by_stem[Path(name).stem]
        bgr, gt = photo_and_gt(image, matte_path(image), cfg)  # one decode of the photo, checked against its matte
        shown = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        preds = [_pred(fp32, name), *[_pred(ev, name) for ev in engines]]
        diff = np.abs(preds[-1].astype(np.int16) - preds[0].astype(np.int16)).astype(np.float64) / 255.0
        heat = cv2.applyColorMap(np.clip(diff / HEAT_FULL_SCALE * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        tiles = np.hstack([_tile(t, height, width) for t in [shown, gt, *preds, heat]])
        rows += [_band(LABEL_H, tiles.shape[1], by_stem[Path(name).stem], scale=0.4), tiles]
    full_w = rows[-1].shape[1]
    tile_w = full_w // len(headers)
    header = np.full((HEADER_H, full_w, 3), 255, np.uint8)
    for i, text in enumerate(headers):
        cv2.putText(header, text, (i * tile_w + 6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    stamp = [_band(STAMP_H, full_w, DEMO_STAMPS[demo], colour=(0, 0, 220), scale=0.6)] if any(demo) else []
    footer = colour_bar(full_w, tile_w, len(headers) - 1, f"colour scale of {headers[-1]} (alpha difference):")
    return np.vstack([*stamp, header, *rows, footer])


def write_report(fp32: Evaluated, engines: list[Evaluated], cfg: BuildConfig, onnx: Path, data: Path,
                 demo: bool, out_md: Path, out_png: Path, demo_ckpt: bool = False,
                 scope: Scope = Scope()) -> list[dict]:
    """Writes report.png and report.md (the gate's outcome included, whatever it is); returns the gate rows.
    DEMO: DATA is the generated demo set; DEMO_CKPT: the checkpoint is a demo one (checkpoint.is_demo_checkpoint);
    SCOPE: the scored images the engines were calibrated or tuned on."""
    counted = flops_count.count(onnx)
    gate_rows = gate(fp32, engines)
    data_label = "generated demo set" if demo else "PPM-100" if Path(data).name == "PPM-100" else f"`{data}`"
    sheet = contact_sheet(fp32, engines, cfg, Path(data), (demo, demo_ckpt))
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        raise PipelineError(f"{out_png}: could not encode the contact sheet")
    rel = Path(out_png).name if Path(out_png).parent == Path(out_md).parent else str(out_png)
    text = markdown(fp32, engines, counted, onnx, data_label, (demo, demo_ckpt), gate_rows, rel, scope)
    write_bytes(out_png, buf.tobytes())
    write_text(out_md, text)
    return gate_rows
