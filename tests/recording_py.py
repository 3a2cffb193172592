"""A stand-in for the Makefile's PY (`make PY=...`: PY is `:=`, so the command line wins): records every
`python -m pipeline STAGE ...` Make runs and writes the file Make's rule expects of that stage, so the dependency
graph is tested in seconds, without torch or ONNX Runtime. What the stages themselves write is tested in-process."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STUB = '''#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
assert args[:2] == ["-m", "pipeline"], args
stage, rest = args[2], args[3:]
with open({record!r}, "a") as f:
    f.write(json.dumps({{"stage": stage, "args": rest, "VAMC": os.environ.get("VAMC"),
                        "VAMC_COMMAND": os.environ.get("VAMC_COMMAND")}}) + "\\n")
value = lambda flag: rest[rest.index(flag) + 1] if flag in rest else None
# the calibration stage writes a missing list anew (test_calibrate.py): so does its stand-in, or Make would rerun it
# (before its manifest, as the stage: an older list); never a relative one, which is the checkout's own calib/
listed = value("--list") if stage == "calib" else None
if listed and Path(listed).is_absolute() and not Path(listed).exists():
    Path(listed).write_text("drawn by the stand-in\\n")
# the file under a folder --out that the Makefile's rule for STAGE names as its target
inside = {inside!r}.get(stage)
outs = [value("--out"), value("--png")] if stage != "release" else []
for out in filter(None, outs):
    path = Path(out) / inside if inside else Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(args) + "\\n")
'''

# PYTHON runs only pipeline/core/deps.py here (and would create .venv): its answer is the same for the same stages
# while the code does not change, so each one is asked once and replayed, sparing each Make run a second of parsing.
DEPS = '''#!/usr/bin/env bash
set -euo pipefail
answer={cache}/$(printf '%s\\n' "$@" | sha256sum | cut -c1-16)
if [ ! -f "$answer" ]; then {python} "$@" > "$answer.new"; mv -- "$answer.new" "$answer"; fi
cat "$answer"
'''

# Stages whose --out is a folder, and the file in it the Makefile's rule targets.
INSIDE = {"calib": "manifest.json", "build": "manifest.json", "evaluate": "metrics.json", "analyze": "layers.csv",
          "tune": "tuned.yaml", "demo-data": ".written"}


def install(folder: Path) -> tuple[dict, callable]:
    """Writes the stand-ins in FOLDER; returns the Make variables that use them (PY, PYTHON) and a reader of the
    recorded calls."""
    (folder / "deps").mkdir(parents=True, exist_ok=True)
    record = folder / "calls.jsonl"
    script, deps = folder / "py", folder / "python"
    script.write_text(STUB.format(python=sys.executable, record=str(record), inside=INSIDE))
    deps.write_text(DEPS.format(cache=shlex.quote(str(folder / "deps")), python=shlex.quote(sys.executable)))
    script.chmod(0o755), deps.chmod(0o755)

    def calls() -> list[dict]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {"PY": script, "PYTHON": deps}, calls



def run_make(variables: dict, calls, *args: str) -> list[dict]:
    """Runs make ARGS in the checkout with VARIABLES (the stand-ins' among them); returns the stages it ran."""
    before = len(calls())
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(["make", "--no-print-directory", *(f"{k}={v}" for k, v in variables.items()), *args],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return calls()[before:]


def holds(args: list[str], *part: str) -> bool:
    """Whether ARGS holds PART, in order and adjacent."""
    return any(args[i:i + len(part)] == list(part) for i in range(len(args) - len(part) + 1))
