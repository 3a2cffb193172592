"""Benchmark of `make analyze` and `make tune` at the official 480x288 (not a test).

    .venv/bin/python bench/tune.py --ckpt CKPT --data DATA [--work DIR]

Runs `make tune analyze BACKEND=ort` on CKPT and DATA (a PPM-100-shaped folder with at least 70 images: 50 for
calibration, 20 for validation; `python -m pipeline demo-data` and `demo-ckpt` make them) into --work, then the
tune a second time from its cache. Prints wall time and CPU time (user + system of the child processes) of
each. Targets (issue 10): the whole tune within 15 minutes on a 2-core machine, analyze within a few minutes,
the rerun building nothing. On a shared machine the wall time counts the other processes' load too; CPU time / 2
is what an idle 2-core machine would take at best.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "official_modnet_int8"


def timed(variables: list[str], target: str) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of `make TARGET`."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run(["make", "--no-print-directory", *variables, target], cwd=REPO, check=True)
    after = os.times()
    return time.perf_counter() - start, (after.children_user - before.children_user
                                         + after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", help="output root (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-tune."))
    variables = [f"ART={work}", f"CKPT={args.ckpt}", f"DATA={args.data}", "BACKEND=ort",
                 f"CALIB_LIST={work}/calib.txt", f"TUNED_CONFIG={work}/tuned.yaml"]
    timed(variables, "calib")  # export, simplify and the calibration set: not part of the figures
    rows = [("tune", *timed(variables, "tune"))]
    (work / "tune" / NAME / "tuned.yaml").unlink()
    rows.append(("tune, rerun from the cache", *timed(variables, "tune")))
    rows.append(("analyze", *timed(variables, "analyze")))
    record = json.loads((work / "tune" / NAME / "candidates.json").read_text())
    print(f"{len(record['search'])} candidates, {len(record['cache'])} in the cache; chosen {record['chosen']}, "
          f"target met: {record['met']}")
    print("| run | wall s | CPU s |\n|:--|--:|--:|")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
