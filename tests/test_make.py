"""The Makefile's promises: exact dependencies, clear failure on a missing checkpoint, `make help`.

The dependency tests drive the stand-in PY of recording_py.py (each stage recorded, its target written); the missing
checkpoint goes through the real CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

import recording_py
from conftest import REPO

pytestmark = pytest.mark.slow  # Make itself: every run reads the whole Makefile


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture()
def build(tmp_path, demo_ckpt, small_config):
    ckpt = tmp_path / "model.ckpt"
    shutil.copy2(demo_ckpt, ckpt)
    config = tmp_path / "small.yaml"
    shutil.copy2(small_config, config)
    return {"ART": str(tmp_path / "art"), "CKPT": str(ckpt), "CONFIG": str(config)}


@pytest.fixture()
def graph(build, tmp_path):
    """BUILD run by the stand-ins, and the reader of the stages they recorded."""
    standins, calls = recording_py.install(tmp_path / "standins")
    return {**build, **standins}, calls


def variables(build: dict) -> list[str]:
    return [f"{k}={v}" for k, v in build.items()]


def touch_after_outputs(path: str, art: str) -> None:
    """Make PATH newer than every output without dating anything in the future."""
    now = time.time()
    for root, _, files in os.walk(art):
        for name in files:
            os.utime(os.path.join(root, name), (now - 100, now - 100))
    os.utime(path, (now - 50, now - 50))


def stages_run(target: str, build: dict) -> list[str]:
    """The pipeline subcommands a make run executed (`make -q` cannot tell: the CKPT/DATA records always run)."""
    done = make(target, *variables(build))
    assert done.returncode == 0, done.stderr
    return [line.split()[3] for line in done.stdout.splitlines() if " -m pipeline " in line]


def test_simplify_is_incremental(graph):
    build, calls = graph
    assert stages_run("simplify", build) == ["export", "simplify"]
    onnx, sim = f"{build['ART']}/onnx/small.onnx", f"{build['ART']}/onnx/small.sim.onnx"
    assert [c["args"] for c in calls()] == [["--config", build["CONFIG"], "--ckpt", build["CKPT"], "--out", onnx],
                                            ["--config", build["CONFIG"], "--onnx", onnx, "--out", sim]]
    assert stages_run("simplify", build) == []  # nothing changed, nothing done
    touch_after_outputs(build["CONFIG"], build["ART"])
    assert stages_run("simplify", build) == ["export", "simplify"]
    touch_after_outputs(build["CKPT"], build["ART"])
    assert stages_run("simplify", build) == ["export", "simplify"]
    assert stages_run("sim", build) == []


def test_pointing_ckpt_at_another_file_rebuilds_even_if_it_is_older(graph, tmp_path):
    build, calls = graph
    assert stages_run("onnx", build) == ["export"]
    other = tmp_path / "other.ckpt"
    shutil.copy2(build["CKPT"], other)
    os.utime(other, (1_000_000, 1_000_000))
    assert stages_run("onnx", {**build, "CKPT": str(other)}) == ["export"]
    assert calls()[-1]["args"][:4] == ["--config", build["CONFIG"], "--ckpt", str(other)]
    assert stages_run("onnx", {**build, "CKPT": str(other)}) == []


def test_missing_checkpoint_is_explained(build, tmp_path):
    missing = str(tmp_path / "nowhere" / "modnet_photographic_portrait_matting.ckpt")
    done = make("onnx", *variables({**build, "CKPT": missing}))
    assert done.returncode != 0
    assert f"error: checkpoint not found: {missing}" in done.stderr and "make demo" in done.stderr
    assert not os.path.exists(f"{build['ART']}/onnx/small.onnx")


def test_help_lists_targets_and_variables():
    done = make("help")
    assert done.returncode == 0
    names = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert {"onnx", "simplify", "sim", "calib", "fp16", "int8", "demo", "test", "test-fast", "help", "CKPT", "DATA", "CONFIG",
            "BACKEND", "ART"} <= names
