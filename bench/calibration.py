"""Benchmark of the ort int8 build: wall time and peak RSS per calibrate mode and number of images (not a test).

    .venv/bin/python bench/calibration.py [--counts 8 50 200] [--modes kl_divergence max percentile mse]
                                          [--work DIR] [--onnx SIM.onnx]

Generated data only: a seeded PPM-100-shaped folder (images shrunk to about 600 px; preprocessing resizes them to
the config's 480x288 anyway), the int8 config with get_data_num = N, `python -m pipeline calib` and
`python -m pipeline build --backend ort` each in a child process that reports its own peak RSS (VmHWM). The ONNX
is the demo model (`make demo` writes it); without it the demo checkpoint is exported and simplified here.
For comparison, N plain fp32 forward passes of the same ONNX on the same tensors are timed in this process.
Targets (issue 12): build peak RSS at most 1.0 GB and flat in N; at N=50 a build time of at most 2.5x the N
forward passes + 10 s for kl_divergence (two passes over the images) and 1.5x + 10 s for max (one pass).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable


# Runs `python -m pipeline ARGS` and, at exit, writes the process's own peak RSS (VmHWM) to a file. wait4's
# ru_maxrss would also count this benchmark's memory at the moment it spawned the child.
CHILD = ("import atexit, runpy, sys\n"
         "from pipeline.backends.ort.build import peak_rss_mb\n"
         "report = sys.argv.pop(1)\n"
         "atexit.register(lambda: open(report, 'w').write(str(peak_rss_mb())))\n"
         "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)\n")


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        start = time.perf_counter()
        done = subprocess.run([PY, "-c", CHILD, report.name, *args], cwd=REPO, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"failed: python -m pipeline {' '.join(args)}")
        return wall, float(report.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 50, 200])
    parser.add_argument("--modes", nargs="+", default=["kl_divergence", "max", "percentile", "mse"])
    parser.add_argument("--work", default=str(REPO / "artifacts" / "bench"))
    parser.add_argument("--onnx", default=str(REPO / "artifacts/demo/onnx/official_modnet_int8.sim.onnx"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config_src = REPO / "build_configs" / "official_modnet_int8.yaml"

    onnx = Path(args.onnx)
    if not onnx.is_file():
        onnx = work / "modnet.sim.onnx"
        if not onnx.is_file():
            run(["demo-ckpt", "--out", str(work / "demo.ckpt")])
            run(["export", "--config", str(config_src), "--ckpt", str(work / "demo.ckpt"), "--out", str(work / "m.onnx")])
            run(["simplify", "--config", str(config_src), "--onnx", str(work / "m.onnx"), "--out", str(onnx)])

    data = work / "PPM-100"
    if not (data / "image").is_dir() or len(list((data / "image").iterdir())) < max(args.counts):
        run(["demo-data", "--out", str(data), "--count", str(max(args.counts)), "--seed", "7", "--scale", "0.3"])

    from pipeline.core import runtime
    session = runtime.session(onnx)
    targets = {"kl_divergence": 2.5, "percentile": 2.5, "mse": 2.5, "max": 1.5}
    for n in args.counts:
        raw = yaml.safe_load(config_src.read_text())
        raw["dataset"]["sampler"]["get_data_num"] = n
        cfg = work / f"int8_n{n}.yaml"
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        calib = work / f"calib_n{n}"
        calib_s, calib_rss = run(["calib", "--config", str(cfg), "--data", str(data), "--list",
                                  str(work / f"list_n{n}.txt"), "--out", str(calib), "--redraw"])
        tensors = np.load(calib / "tensors.npy", mmap_mode="r")
        runtime.run(session, np.ascontiguousarray(tensors[:1]))  # warm-up
        start = time.perf_counter()
        for i in range(n):
            runtime.run(session, np.ascontiguousarray(tensors[i:i + 1]))
        forward_s = time.perf_counter() - start
        print(f"N={n:4d}  calib {calib_s:6.1f} s {calib_rss:5.0f} MB | {n} fp32 forwards {forward_s:6.1f} s",
              flush=True)
        for mode in args.modes:
            raw["backend"]["quantize"]["calibrate_mode"] = mode
            if mode == "percentile":
                raw["backend"]["quantize"]["calibrate_range"] = 0.99999
            mode_cfg = work / f"int8_n{n}_{mode}.yaml"
            mode_cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
            build_s, build_rss = run(["build", "--config", str(mode_cfg), "--onnx", str(onnx), "--calib",
                                      str(calib), "--backend", "ort", "--out", str(work / f"engine_n{n}_{mode}")])
            limit = targets[mode] * forward_s + 10
            verdict = "ok" if build_s <= limit else "MISSED"
            print(f"    {mode:13s} build {build_s:6.1f} s (target {limit:5.1f} s: {verdict}, "
                  f"{build_s / forward_s:4.1f}x forwards) peak RSS {build_rss:5.0f} MB "
                  f"({'ok' if build_rss <= 1024 else 'MISSED'})", flush=True)


if __name__ == "__main__":
    main()
