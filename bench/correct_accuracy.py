"""Measurement (not a product path): int8 with and without bias correction on held-out images, scored as tune scores.

    .venv/bin/python bench/correct_accuracy.py --onnx SIM.onnx --calib CALIB_DIR --data DATA \
        --images CONFIRMATION.txt [--exclude SELECTION.txt] --work DIR [--json OUT.json] CONFIG.yaml ...

Each CONFIG is an int8 config. One with `pipeline.bias_correction: empirical` is built from its corrected ONNX,
DIR/<config stem>.corrected.onnx, made with `python -m pipeline correct`'s own function when missing or when its
record does not describe these inputs (SIM's sha256, the calibration tensors, the config's quantize block); the
time it took is printed. Every int8 model is the reference backend's Q/DQ model, as tune builds a candidate
(candidates.Quantizer: thresholds recomputed on the ONNX it quantizes, as vamc calibrates what it is given).

IMAGES: `sha256  name` lines (tune's confirmation list); each file's sha256 is checked, and none may be a
calibration image or one of EXCLUDE (tune's selection list). Every figure is against the ORIGINAL fp32 (SIM run in
float): deviation (mean |alpha - fp32 alpha| of the 8-bit mattes), flips, and against the ground truth ΔMSE, ΔMAD,
mIoU drop, each a mean with one-sided 95% bounds (scoring.summary, the bootstrap of statistics.py, seeded by
pipeline.seed). A corrected config adds the corrected model's own fp32 row and the paired improvement of
deviation from the correction (the config without minus with: scoring.gain, its one-sided 95% lower bound), paired
with the config given just before it when that one is the same config without correction.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.fileio import sha256_file  # noqa: E402
from pipeline.core.progress import quiet  # noqa: E402
from pipeline.core.runtime import read_onnx  # noqa: E402
from pipeline.data.dataset import image_dir  # noqa: E402
from pipeline.stages.calibrate import read_calibration_folder  # noqa: E402
from pipeline.stages.correct import MODE, correct_onnx, record_path  # noqa: E402
from pipeline.tuning import scoring, statistics  # noqa: E402
from pipeline.tuning.candidates import Candidate, Quantizer  # noqa: E402


def read_list(path: Path) -> list[tuple[str, str]]:
    """[(name, sha256)] of a `sha256  name` list."""
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise SystemExit(f"{path}:{k}: not a `sha256  name` line: {line!r}")
        out.append((parts[1], parts[0]))
    return out


def check_images(images: list[tuple[str, str]], data: Path, calib_manifest: dict, exclude: list[tuple[str, str]]):
    held = {d: f"calibration image {e}" for e, d in ((e["name"], e["sha256"]) for e in calib_manifest["images"])}
    held.update({d: f"excluded image {n}" for n, d in exclude})
    folder = image_dir(data)
    for name, digest in images:
        if sha256_file(folder / name) != digest:
            raise SystemExit(f"{folder / name}: sha256 is not the list's {digest[:12]}...")
        if digest in held:
            raise SystemExit(f"{name}: is the {held[digest]}; measure on images calibration and tuning did not use")


def corrected(cfg, config: Path, onnx: Path, calib: Path, work: Path) -> tuple[Path, float | None, dict]:
    """The corrected ONNX of CONFIG (made when missing or stale), the seconds correct took (None: reused), its
    record."""
    out = work / f"{config.stem}.corrected.onnx"
    q = cfg.backend.quantize
    want = {**{k: getattr(q, k) for k in ("calibrate_mode", "calibrate_range", "quantize_per_channel")},
            "skip_conv_layers": list(q.skip_conv_layers)}
    tensors = read_calibration_folder(cfg, calib)["tensors"]["sha256"]
    if out.is_file() and record_path(out).is_file():
        record = json.loads(record_path(out).read_text())
        fits = (record.get("input_onnx", {}).get("sha256") == sha256_file(onnx)
                and record.get("calibration", {}).get("tensors_sha256") == tensors
                and record.get("output_onnx", {}).get("sha256") == sha256_file(out)
                and all(record["quantize"].get(k) == v for k, v in want.items()))
        if fits:
            return out, None, record
    print(f"correct {config} -> {out}", flush=True)
    record, seconds, rss = correct_onnx(cfg, onnx, calib, out, quiet)
    print(f"correct took {seconds:.0f} s, peak RSS {rss:.0f} MB, {record['rounds_run']} round(s)", flush=True)
    return out, seconds, record


def candidate_of(cfg) -> Candidate:
    q = cfg.backend.quantize
    return Candidate(q.calibrate_mode, q.calibrate_range if q.calibrate_mode == "percentile" else None,
                     tuple(sorted(q.skip_conv_layers)))


def row(label: str, preds, fp32_preds, images, fp32_gt, cfg) -> dict:
    figures = scoring.image_figures(preds, fp32_preds, images.gts)
    fidelity = {k: figures[k] for k in scoring.FIDELITY}
    out = scoring.summary(fidelity, figures, fp32_gt, cfg.pipeline.tune, cfg.pipeline.seed)
    return {"label": label, **out, "per_image_deviation": figures["deviation"]}


def markdown(rows: list[dict], gains: list[dict]) -> str:
    iv = scoring.interval
    lines = ["| model | deviation from fp32 | flips | ΔMSE | ΔMAD | mIoU drop |", "|:--|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['label']} | {iv(r, 'deviation', '')} | {iv(r, 'flips', '')} | {iv(r, 'mse_increase')} | "
              f"{iv(r, 'mad_increase')} | {iv(r, 'miou_drop')} |" for r in rows]
    if gains:
        lines += ["", "| paired improvement of deviation from the correction (without - with) | mean | one-sided "
                      "95% lower bound |", "|:--|--:|--:|"]
        lines += [f"| {g['label']} | {g['value']:+.5f} | {g['lower']:+.5f} |" for g in gains]
    return "\n".join(lines) + "\n"


def label_of(cfg) -> str:
    q = cfg.backend.quantize
    return q.calibrate_mode + (f" {q.calibrate_range}" if q.calibrate_mode == "percentile" else "") + \
        (f", skip {list(q.skip_conv_layers)}" if q.skip_conv_layers else "")


def measure(entries: list[dict], args) -> tuple[list[dict], list[dict], dict]:
    """ENTRIES: {label, cfg, source (the float ONNX to quantize), record (its correction record, None for SIM),
    baseline (the index of the entry it is paired with, or None)} -> (rows, gains, fp32's means) on ARGS.images."""
    base = entries[0]["cfg"]
    images_list = read_list(args.images)
    check_images(images_list, args.data, read_calibration_folder(base, args.calib),
                 read_list(args.exclude) if args.exclude else [])
    images = scoring.load_labelled(base, args.data, [n for n, _ in images_list])
    fp32_preds = scoring.predict(args.onnx, images.inputs)
    fp32_gt = scoring.ground_truth_figures(fp32_preds, images.gts)
    quantizers: dict[tuple, Quantizer] = {}
    rows, int8_rows, gains = [], [], []
    started = time.perf_counter()
    for entry in entries:
        cfg, source = entry["cfg"], entry["source"]
        # one statistics collection per ONNX (tune's Quantizer); the configs of one ONNX differ only in calibration
        key = (source, cfg.backend.quantize.quantize_per_channel, cfg.pipeline.conv_numbering)
        if key not in quantizers:
            quantizers[key] = Quantizer(cfg, read_onnx(source, "rebuild it"), args.calib, quiet)
        model = quantizers[key].build(candidate_of(cfg))
        int8 = row(f"int8 {entry['label']}", scoring.predict(model, images.inputs), fp32_preds, images, fp32_gt, cfg)
        rows.append(int8)
        int8_rows.append(int8)
        if entry["record"] is not None:
            int8["correction"] = {k: entry["record"].get(k) for k in ("rounds_run", "settled", "rounds",
                                                                      "fp32_deviation")}
            rows.append(row(f"fp32 of the corrected model ({entry['label']})", scoring.predict(source, images.inputs),
                            fp32_preds, images, fp32_gt, cfg))
        if entry["baseline"] is not None:
            without = int8_rows[entry["baseline"]]
            e = scoring.gain(without["per_image_deviation"], int8["per_image_deviation"], cfg.pipeline.seed)
            gains.append({"label": f"{without['label']} -> {int8['label']}", "value": e.value,
                          "lower": statistics.lower(e), "p_value": statistics.p_value(e)})
        print(f"{int8['label']}: scored ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows, gains, scoring.labelled_means(fp32_gt)


def report(rows: list[dict], gains: list[dict], fp32: dict, args, extra: dict) -> None:
    print(f"\n{len(rows[0]['per_image_deviation'])} images ({args.images}); fp32 MSE {fp32['mse']:.5f}, "
          f"MAD {fp32['mad']:.5f}, mIoU {fp32['miou']:.5f}; {extra}\n")
    print(markdown(rows, gains))
    if args.json:
        args.json.write_text(json.dumps({"images": read_list(args.images), "fp32": fp32, "rows": rows,
                                         "gains": gains, **extra}, indent=1))


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True, help="the simplified ONNX (the original fp32)")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="`sha256  name` lines of the images to score")
    parser.add_argument("--exclude", type=Path, help="`sha256  name` lines no scored image may be (selection)")
    parser.add_argument("--work", type=Path, required=True, help="where the corrected ONNX are kept")
    parser.add_argument("--json", type=Path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    common_arguments(parser)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    entries, timings = [], {}
    for config in args.configs:
        cfg = load_config(config)
        entry = {"label": label_of(cfg), "cfg": cfg, "source": args.onnx, "record": None, "baseline": None}
        if cfg.pipeline.bias_correction == MODE:
            entry["source"], timings[config.stem], entry["record"] = corrected(cfg, config, args.onnx, args.calib,
                                                                               args.work)
            # paired with the config just before it when that is this one without correction
            if entries and entries[-1]["record"] is None and entries[-1]["label"] == entry["label"]:
                entry["baseline"] = len(entries) - 1
            entry["label"] += ", bias-corrected"
        entries.append(entry)
    started = time.perf_counter()
    rows, gains, fp32 = measure(entries, args)
    report(rows, gains, fp32, args, {"correct_seconds": timings, "scoring_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
