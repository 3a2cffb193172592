"""The output layout is written once, in pipeline/core/layout.py: the Makefile's paths are the ones Python computes,
Make stops on one line when the layout cannot be read, and `make demo` names the bundle the release stage recorded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from pipeline.core import layout


def make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_make_expands_every_layout_function_to_the_path_python_computes(tmp_path):
    probe = tmp_path / "probe.mk"
    calls = []
    for i, function in enumerate(layout.MAKE):
        arguments = [f"a{i}{j}" for j in range(function.__code__.co_argcount)]
        calls.append((function, arguments))
    probe.write_text("probe:\n" + "".join(f"\t@echo '$(call layout.{f.__name__},{','.join(a)})'\n" for f, a in calls)
                     + "\t@echo '$(ART) $(DEMO) $(OUTPUTS)'\n")
    done = make("-f", "Makefile", "-f", str(probe), "probe")
    assert done.returncode == 0, done.stderr
    *paths, constants = done.stdout.splitlines()
    assert paths == [str(f(*a)) for f, a in calls]
    assert paths[1] == "a10/onnx/a11.onnx"  # one by hand: the arguments land where the template says
    assert constants.split() == [str(layout.ART), str(layout.DEMO), *layout.OUTPUTS]


def test_the_recipes_write_where_the_layout_says(tmp_path):
    art = tmp_path / "art"
    done = make("-n", "-B", f"ART={art}", "BACKEND=ort", "LIMIT=2", "eval")
    assert done.returncode == 0, done.stderr
    fp16, int8 = "official_modnet_fp16", "official_modnet_int8"
    for out in (layout.onnx(art, fp16), layout.sim_onnx(art, int8), layout.calib(art, int8),
                layout.engine(art, fp16, "ort"), layout.engine(art, int8, "ort"), layout.eval_fp32(art),
                layout.eval_engine(art, "int8", "ort"), layout.report_md(art), layout.report_png(art)):
        assert f"'{out}'" in done.stdout, out


def test_a_failing_layout_script_stops_make_on_one_line(tmp_path):
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\nprintf 'Traceback (most recent call last):\\n  File \"layout.py\"\\n' >&2\n"
                      "echo 'SyntaxError: invalid syntax' >&2\nexit 1\n")
    python.chmod(0o755)
    done = make(f"PYTHON={python}", "help")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"*** pipeline/core/layout.py failed under {python}, so the outputs' paths are unknown: "
                             f"SyntaxError: invalid syntax.  Stop.")


STUB = """#!{python}
# Stands in for the pipeline's stages: writes nothing but what `make demo` reads after them, through the real
# release stage's writer of RELEASE_ROOT/.latest.
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
args = sys.argv[4:]  # PY -m pipeline STAGE ARGS...
stage = sys.argv[3]
if stage == "demo-data":
    Path(args[args.index("--out") + 1]).mkdir(parents=True)
if stage == "release":
    from pipeline.stages.release import record_latest
    root = Path(args[args.index("--out-root") + 1])
    root.mkdir(parents=True, exist_ok=True)
    record_latest(root / "official_modnet-0123abcd4567")
"""


def test_make_demo_names_the_bundle_the_release_stage_recorded(tmp_path):
    py = tmp_path / "py"
    py.write_text(STUB.format(python=sys.executable, repo=str(REPO)))
    py.chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than requirements.txt: no venv is made
    demo = tmp_path / "demo"
    done = make(f"PY={py}", f"VENV={venv}", f"DEMO={demo}", "demo")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bundle = demo / "release" / "official_modnet-0123abcd4567"
    assert (demo / "release" / layout.LATEST).read_text() == bundle.name + "\n"
    assert done.stdout.splitlines()[-3:] == [f"report:  {demo}/report.md and {demo}/report.png",
                                             f"release: {bundle}", f"verify:  make verify RELEASE={bundle}"]
