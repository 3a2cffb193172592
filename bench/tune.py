"""Benchmark of `make analyze` and `make tune` at the official 480x288 (not a test).

    .venv/bin/python bench/tune.py --ckpt CKPT --data DATA [--work DIR]

Runs `make tune analyze BACKEND=ort` on CKPT and DATA (a PPM-100-shaped folder of 100 images: 50 for calibration,
25 selection and 25 confirmation images; `python -m pipeline demo-data` and `demo-ckpt` make them) into --work,
then the tune a second time from its cache. Prints wall time and CPU time (user + system of the child processes)
of each, the number of candidates and of forward passes (tune's last line), and the verdict. Targets (issues 10 and
19): the whole tune within 15 minutes on a 2-core machine, analyze within a few minutes, the rerun building
nothing. On a shared machine the wall time counts the other processes' load too; CPU time / 2 is what an idle
2-core machine would take at best. `make tune` exits non-zero when the verdict is not promotable; the bench still
reports it (the tuned config is then not copied).
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


def timed(variables: list[str], target: str, check: bool = True) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, the `wrote ...` line tune printed) of `make TARGET`."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", *variables, target], cwd=REPO, check=check,
                          stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="")
    after = os.times()
    wrote = next((line for line in done.stdout.splitlines() if line.startswith("wrote ") and "tuned.yaml" in line), "")
    return time.perf_counter() - start, (after.children_user - before.children_user
                                         + after.children_system - before.children_system), wrote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", help="output root (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-tune."))
    # promote writes only inside build_configs/ (or artifacts/demo/ for the demo's data): a file of the bench's own,
    # removed at the end
    demo = Path(args.data).resolve() == (REPO / "artifacts" / "demo" / "inputs" / "PPM-100").resolve()
    promoted = REPO / ("artifacts/demo/tune" if demo else "build_configs") / f"{NAME}_bench_tuned.yaml"
    if promoted.exists():
        raise SystemExit(f"{promoted} exists: remove it first (the bench promotes there and removes it)")
    variables = [f"ART={work}", f"CKPT={args.ckpt}", f"DATA={args.data}", "BACKEND=ort",
                 f"CALIB_LIST={work}/calib.txt", f"TUNED_CONFIG={promoted}"]
    timed(variables, "calib")  # export, simplify and the calibration set: not part of the figures
    rows = [("tune", *timed(variables, "tune", check=False))]
    (work / "tune" / NAME / "tuned.yaml").unlink()
    rows.append(("tune, rerun from the cache", *timed(variables, "tune", check=False)))
    rows.append(("analyze", *timed(variables, "analyze")))
    promoted.unlink(missing_ok=True)
    record = json.loads((work / "tune" / NAME / "candidates.json").read_text())
    print(f"{len(record['search'])} candidates, {len(record['cache'])} in the cache; chosen {record['chosen']}, "
          f"verdict: {record['verdict']}")
    print("| run | wall s | CPU s | tune's summary (candidates, builds, forward passes) |\n|:--|--:|--:|:--|")
    for label, wall, cpu, wrote in rows:
        print(f"| {label} | {wall:.0f} | {cpu:.0f} | {wrote.rsplit(' (', 1)[-1].rstrip(')') if wrote else ''} |")


if __name__ == "__main__":
    main()
