"""Benchmark of `python -m pipeline correct` against the int8 build it precedes: wall time and peak RSS (not a test).

    .venv/bin/python bench/correct.py [--counts 8 50] [--modes kl_divergence] [--work DIR] [--onnx SIM.onnx]

The same generated inputs as bench/calibration.py (whose child-process runner it uses): a seeded PPM-100-shaped
folder, the int8 config with get_data_num = N and `pipeline.bias_correction: empirical`, then per calibrate mode
`python -m pipeline build --backend ort` of the simplified ONNX and `python -m pipeline correct` of it, each in a
child process that reports its own peak RSS (VmHWM). Targets (issue 21): at N=50, `correct` within 3x the int8
build's time, peak RSS within the build's 1 GB, and flat in N.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import REPO, run  # noqa: E402  (bench/ is no package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 50])
    parser.add_argument("--modes", nargs="+", default=["kl_divergence"])
    parser.add_argument("--work", default=str(REPO / "artifacts" / "bench"))
    parser.add_argument("--onnx", default=str(REPO / "artifacts/demo/onnx/official_modnet_int8.sim.onnx"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise SystemExit(f"{onnx}: missing; `make demo` writes it (or run bench/calibration.py once, then pass "
                         f"--onnx {work / 'modnet.sim.onnx'})")
    data = work / "PPM-100"
    if not (data / "image").is_dir() or len(list((data / "image").iterdir())) < max(args.counts):
        run(["demo-data", "--out", str(data), "--count", str(max(args.counts)), "--seed", "7", "--scale", "0.3"])
    config_src = REPO / "build_configs" / "official_modnet_int8.yaml"
    for n in args.counts:
        raw = yaml.safe_load(config_src.read_text())
        raw["dataset"]["sampler"]["get_data_num"] = n
        raw["pipeline"]["bias_correction"] = "empirical"
        calib = work / f"calib_n{n}"
        if not (calib / "manifest.json").is_file():
            cfg = work / f"bc_n{n}.yaml"
            cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
            run(["calib", "--config", str(cfg), "--data", str(data), "--list", str(work / f"bc_list_n{n}.txt"),
                 "--out", str(calib), "--redraw"])
        for mode in args.modes:
            raw["backend"]["quantize"]["calibrate_mode"] = mode
            if mode == "percentile":
                raw["backend"]["quantize"]["calibrate_range"] = 0.99999
            build_cfg, bc_cfg = work / f"int8_n{n}_{mode}.yaml", work / f"bc_n{n}_{mode}.yaml"
            build_cfg.write_text(yaml.safe_dump({**raw, "pipeline": {**raw["pipeline"], "bias_correction": False}},
                                                sort_keys=False))
            bc_cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
            build_s, build_rss = run(["build", "--config", str(build_cfg), "--onnx", str(onnx), "--calib", str(calib),
                                      "--backend", "ort", "--out", str(work / f"engine_n{n}_{mode}")])
            out = work / f"bc_n{n}_{mode}.corrected.onnx"
            correct_s, correct_rss = run(["correct", "--config", str(bc_cfg), "--onnx", str(onnx), "--calib",
                                          str(calib), "--out", str(out)])
            record = json.loads(Path(f"{out}.json").read_text())
            ratio = correct_s / build_s
            print(f"N={n:4d} {mode:13s} build {build_s:6.1f} s {build_rss:5.0f} MB | correct {correct_s:6.1f} s "
                  f"({ratio:.1f}x the build: {'ok' if ratio <= 3 else 'MISSED'}) {correct_rss:5.0f} MB "
                  f"({'ok' if correct_rss <= 1024 else 'MISSED'}) | {record['rounds_run']} round(s) of "
                  f"{record['passes_per_round']} passes, last threshold move "
                  f"{record['rounds'][-1]['largest_threshold_move']:.2%}", flush=True)


if __name__ == "__main__":
    main()
