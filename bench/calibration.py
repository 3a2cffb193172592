"""Benchmark of the ort int8 build: wall time and peak RSS per number of calibration images (not a test).

    .venv/bin/python bench/calibration.py [--counts 8 50 200] [--work DIR] [--onnx SIM.onnx]

Generated data only: a seeded PPM-100-shaped folder (images shrunk to about 600 px; preprocessing resizes them to
the config's 480x288 anyway), the int8 config with get_data_num = N, `python -m pipeline calib` and
`python -m pipeline build --backend ort` each in a child process that reports its own peak RSS (VmHWM). The ONNX
is the demo model (`make demo` writes it); without it the demo checkpoint is exported and simplified here.
For comparison, N plain fp32 forward passes of the same ONNX on the same tensors are timed in this process.
Targets: build peak RSS at N=50 under 3 GB and flat in N; build time under 3x the N forward passes plus a fixed
overhead.
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
         "from pipeline.backends.ort import peak_rss_mb\n"
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

    from pipeline import runtime
    session = runtime.session(onnx)
    rows = []
    for n in args.counts:
        raw = yaml.safe_load(config_src.read_text())
        raw["dataset"]["sampler"]["get_data_num"] = n
        cfg = work / f"int8_n{n}.yaml"
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        calib, engine = work / f"calib_n{n}", work / f"engine_n{n}"
        calib_s, calib_rss = run(["calib", "--config", str(cfg), "--data", str(data), "--list",
                                  str(work / f"list_n{n}.txt"), "--out", str(calib), "--redraw"])
        build_s, build_rss = run(["build", "--config", str(cfg), "--onnx", str(onnx), "--calib", str(calib),
                                  "--backend", "ort", "--out", str(engine)])
        tensors = np.load(calib / "tensors.npy", mmap_mode="r")
        runtime.run(session, np.ascontiguousarray(tensors[:1]))  # warm-up
        start = time.perf_counter()
        for i in range(n):
            runtime.run(session, np.ascontiguousarray(tensors[i:i + 1]))
        forward_s = time.perf_counter() - start
        rows.append((n, calib_s, calib_rss, build_s, build_rss, forward_s))
        print(f"N={n:4d}  calib {calib_s:6.1f} s {calib_rss:7.0f} MB | int8 build {build_s:6.1f} s "
              f"peak RSS {build_rss:7.0f} MB | {n} fp32 forwards {forward_s:6.1f} s "
              f"(build / forwards = {build_s / forward_s:4.1f}x)", flush=True)
    if len(rows) > 1:
        (n0, *_, b0, _, f0), (n1, *_, b1, _, f1) = rows[0], rows[-1]
        print(f"marginal build time per image {(b1 - b0) / (n1 - n0):.2f} s vs forward {(f1 - f0) / (n1 - n0):.2f} s "
              f"({(b1 - b0) / (f1 - f0):.1f}x); fixed overhead about {b0 - (b1 - b0) / (n1 - n0) * n0:.1f} s")


if __name__ == "__main__":
    main()
