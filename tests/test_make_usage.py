"""What the Makefile says to a new user: `make help`, checked variables, a safe `make clean`, the venv install.

The clean tests run on a scratch copy of the Makefile and the project files it reads, never on this checkout.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # every test here runs Make


def make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_help_starts_here_then_targets_then_variables():
    lines = make("help").stdout.splitlines()
    assert lines[0] == "Start here: make demo, make test"
    first_target = next(i for i, line in enumerate(lines) if line.startswith("  onnx "))
    variables = lines.index("Variables (override on the command line: make int8 CKPT=... DATA=...)")
    assert 0 < first_target < variables
    assert [line.split()[0] for line in lines[variables + 1:]][:3] == ["CKPT", "DATA", "CONFIG"]
    assert any(line.split()[0] == "clean-all" for line in lines[:variables] if line.startswith("  "))


def test_help_shows_defaults_as_make_expands_them():
    lines = make("help").stdout.splitlines()
    assert not [line for line in lines if "$(" in line]  # was `calib/$(patsubst %_tuned,%,...).txt`
    default = {line.split()[0]: line.rsplit("(default: ", 1)[1][:-1] for line in lines if "(default: " in line}
    assert default["CALIB_LIST"] == "calib/official_modnet_int8.txt" and default["RELEASE_ROOT"] == "artifacts/release"
    assert default["CKPT"] == "checkpoints/modnet_photographic_portrait_matting.ckpt" and default["LIMIT"] == ""
    assert default["TEST_JOBS"] == "2"
    other = {line.split()[0]: line.rsplit("(default: ", 1)[1][:-1] for line in make(
        "help", "CONFIG_INT8=build_configs/official_modnet_fp16.yaml", "ART=elsewhere").stdout.splitlines()
        if "(default: " in line}  # the defaults follow the variables they are made of
    assert other["CALIB_LIST"] == "calib/official_modnet_fp16.txt" and other["RELEASE_ROOT"] == "elsewhere/release"


@pytest.mark.parametrize("variable, value, message", [
    ("BACKEND", "onnx", "BACKEND=onnx is not a backend: use one of vamc ort"),
    ("BACKEND", "ort vamc", "BACKEND=ort vamc is not a backend: use one of vamc ort"),
    ("CONFIG_INT8", "build_configs/official_modnet_in8.yaml",
     "CONFIG_INT8=build_configs/official_modnet_in8.yaml: no such config file (the configs in build_configs/: "
     "official_modnet_fp16.yaml official_modnet_int8.yaml)"),
    ("CONFIG", "nowhere.yaml", "CONFIG=nowhere.yaml: no such config file"),
    ("LIMIT", "1O", "LIMIT=1O is not a whole number"),
    ("TEST_JOBS", "two", "TEST_JOBS=two is not a whole number"),  # it becomes pytest's -n
])
def test_a_bad_variable_is_one_line_naming_it_and_the_valid_values(variable, value, message, tmp_path):
    done = make("int8", f"{variable}={value}", f"ART={tmp_path / 'art'}")
    assert done.returncode != 0
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
    assert "No rule to make target" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "art").exists()


def test_a_failing_deps_script_stops_make_in_one_line_instead_of_leaving_the_code_prerequisites_empty(tmp_path):
    python = tmp_path / "python3"  # what pipeline/core/deps.py runs on; it fails as a broken deps.py would (and
    # runs core/layout.py, which Make reads first, as python3 does)
    python.write_text(f"#!/bin/sh\ncase \"$*\" in *deps.py*) ;; *) exec {sys.executable} \"$@\";; esac\n"
                      "echo 'Traceback (most recent call last):' >&2\necho 'SyntaxError: bad' >&2\nexit 3\n")
    python.chmod(0o755)
    done = make("help", f"PYTHON={python}")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    failed = rf"`{re.escape(str(python))} -I pipeline/core/deps\.py` failed \(exit 3\)"
    assert re.fullmatch(rf"Makefile:\d+: \*\*\* {failed}, so no stage would know its code: Traceback \(most recent "
                        r"call last\): SyntaxError: bad\.  Stop\.", done.stderr.strip()), done.stderr


def test_venv_install_takes_extra_pip_arguments_and_shows_progress(tmp_path):
    scratch = scratch_copy(tmp_path)
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    done = make("-n", "venv", f"PIP_ARGS={index}", cwd=scratch)
    assert done.returncode == 0, done.stderr
    install = next(line for line in done.stdout.splitlines() if " install " in line)
    assert install == f".venv/bin/pip install --disable-pip-version-check {index} -r requirements.txt"
    assert not (scratch / ".venv").exists()


def scratch_copy(tmp_path: Path) -> Path:
    """The files Make reads, in a folder of their own with a .git and a file of the user's beside them."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("Makefile", "requirements.txt"):
        shutil.copy2(REPO / name, root / name)
    for folder in ("build_configs", "pipeline", "calib"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "notes.txt").write_text("mine\n")
    (root / "artifacts").mkdir()
    (root / "artifacts" / "README.md").write_text("# artifacts\n")
    return root


def pipeline_outputs(art: Path) -> list[Path]:
    """A tree as the stages leave it, with read-only release bundles; returns the paths `clean` must remove."""
    removed = []
    for rel in ("inputs/ckpt.path", "onnx/x.sim.onnx", "calib/x/manifest.json", "engines/x/ort/model.onnx",
                "eval/fp32/metrics.json", "verify/verify-1/x", "report.md", "report.png"):
        path = art / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("output\n")
        removed.append(art / rel.split("/")[0])
    for bundle in ("official_modnet-0123456789ab", "official_modnet-ba9876543210"):
        folder = art / "release" / bundle
        folder.mkdir(parents=True)
        (folder / "MANIFEST.json").write_text("{}\n")
        (folder / "MANIFEST.json").chmod(0o444)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    return removed


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("art, message", [
    ("", "ART is empty"),
    (".", "ART=. is the checkout or a folder holding it"),
    ("./", "ART=./ is the checkout or a folder holding it"),
    ("..", "ART=.. is the checkout or a folder holding it"),
    ("artifacts/..", "is the checkout or a folder holding it"),
    ("/", "ART=/ is the checkout or a folder holding it"),
    ("../elsewhere", "ART=../elsewhere is outside the project"),
])
def test_clean_refuses_an_art_that_is_not_a_folder_of_its_own(tmp_path, art, message):
    root = scratch_copy(tmp_path)
    pipeline_outputs(root / "artifacts")
    before = tree(tmp_path)
    for target in ("clean", "clean-all"):
        done = make(target, f"ART={art}", cwd=root)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert tree(tmp_path) == before


def test_clean_removes_only_pipeline_outputs_and_keeps_releases_clean_all_removes_them(tmp_path):
    root = scratch_copy(tmp_path)
    art = root / "artifacts"
    removed = pipeline_outputs(art) + pipeline_outputs(art / "demo")
    (art / "mine.txt").write_text("not the pipeline's\n")
    (art / "hwcheck" / "engines").mkdir(parents=True)  # the card's verdicts: kept by clean, removed by clean-all
    (art / "hwcheck" / "report.md").write_text("# hwcheck\n")
    kept = tree(root) - {str(p.relative_to(root)) for r in removed for p in [r, *r.rglob("*")]}
    done = make("clean", cwd=root)
    assert done.returncode == 0, done.stderr
    assert tree(root) == kept
    assert "keeping artifacts/release artifacts/demo/release" in done.stdout
    assert {"artifacts/release/official_modnet-0123456789ab/MANIFEST.json", "artifacts/mine.txt", "notes.txt",
            ".git/HEAD", "Makefile", "artifacts/README.md", "artifacts/hwcheck/report.md"} <= kept

    done = make("clean-all", cwd=root)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    for bundle in ("artifacts/release/official_modnet-0123456789ab", "artifacts/demo/release/official_modnet-ba9876543210"):
        assert f"removing release bundle {bundle}" in printed
    assert not (art / "release").exists() and not (art / "demo").exists() and not (art / "hwcheck").exists()
    assert {"artifacts/mine.txt", "notes.txt", ".git/HEAD", "Makefile", "artifacts/README.md"} <= tree(root)


def test_clean_of_an_absolute_art_elsewhere_touches_only_outputs(tmp_path):
    root = scratch_copy(tmp_path)
    out = tmp_path / "outputs"
    removed = pipeline_outputs(out)
    (out / "keep.txt").write_text("x\n")
    done = make("clean", f"ART={out}", cwd=root)
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in removed)
    assert (out / "keep.txt").is_file() and (out / "release" / "official_modnet-0123456789ab").is_dir()


def test_the_report_is_told_the_calibration_folders_and_a_tuned_configs_selection_list(tmp_path):
    """`make eval`'s report rule: CONFIG_INT8's calibration folder, the vendor engine's while it is there, and for
    NAME_tuned the selection list `make tune` wrote for NAME, only when it exists (what Make runs, the stages stood
    in for by recording_py.py's)."""
    import recording_py
    from recording_py import holds
    art = tmp_path / "art"
    tuned = tmp_path / "mine_tuned.yaml"
    shutil.copyfile(REPO / "build_configs" / "official_modnet_int8.yaml", tuned)
    standins, calls = recording_py.install(tmp_path / "standins")

    def stage_args(config: Path, goal: str = f"{art}/report.md", stage: str = "report") -> list[str]:
        """STAGE's arguments when Make brings GOAL up to date (made anew: the report's inputs are not what varies)."""
        (art / "report.md").unlink(missing_ok=True)
        ran = recording_py.run_make({**standins, "ART": art, "BACKEND": "ort", "CONFIG_INT8": config}, calls, goal)
        [args] = [c["args"] for c in ran if c["stage"] == stage]
        return args

    selection = art / "tune" / "mine" / "selection.txt"
    assert holds(stage_args(tuned), "--calib", f"{art}/calib/mine_tuned")
    assert "--exclude-selection" not in stage_args(tuned)  # not there yet: the report says so itself
    selection.parent.mkdir(parents=True)
    selection.write_text("")
    assert holds(stage_args(tuned), "--exclude-selection", str(selection))
    assert holds(stage_args(tuned, "release", "release"), "--selection", str(selection))  # bundled: verify reads it
    untuned = tmp_path / "mine.yaml"
    shutil.copyfile(tuned, untuned)
    assert "--exclude-selection" not in stage_args(untuned)  # a selection list belongs to a tuned config
    # the vendor row's calibration folder, once its engine and folder exist
    vendor = [art / "engines" / "official_modnet_int8" / "ort", art / "calib" / "official_modnet_int8"]
    for folder in vendor:
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
    args = stage_args(tuned)
    assert holds(args, "--calib", f"{art}/calib/mine_tuned", "--calib", str(vendor[1]))
    assert holds(args, "--engine", "int8 vendor config (KL, per channel, no skip)", f"{art}/eval/int8-vendor-ort")
