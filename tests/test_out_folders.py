"""A stage replaces its --out folder only when that folder is missing, empty or its own (issue 17, section 1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FP16_CONFIG, INT8_CONFIG, REPO, small_config_dict, write_config
from pipeline.cli import main
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import EARLIER_OUTPUTS, STAGE_MARKER, atomic_dir, check_out_dir, out_dir_problem

STAGES = ("demo-data", "calib", "build", "evaluate", "analyze", "release")


def plant_victim(folder: Path) -> dict[str, bytes]:
    """A user's folder: a file and a subfolder with a file; returns every file's bytes."""
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_bytes(b"the only copy\n")
    (folder / "sub" / "keep.txt").write_bytes(b"keep me\n")
    return tree_bytes(folder)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage", STAGES)
def test_a_folder_of_foreign_files_is_refused_and_left_byte_for_byte(tmp_path, stage):
    victim = tmp_path / "victim"
    before = plant_victim(victim)
    message = (f"{victim}: holds files `{stage}` did not write (precious.txt, sub/); choose an empty or new folder, "
               f"or delete it yourself")
    with pytest.raises(PipelineError) as err:
        check_out_dir(victim, stage)
    assert str(err.value) == message
    with pytest.raises(PipelineError) as err, atomic_dir(victim, stage) as tmp:
        (tmp / "output").write_text("never placed")
    assert str(err.value) == message
    assert tree_bytes(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temporary folder left beside it


@pytest.mark.parametrize("stage", STAGES)
def test_missing_empty_and_own_folders_are_replaced(tmp_path, stage):
    out = tmp_path / "out"
    assert out_dir_problem(out, stage) is None
    out.mkdir()
    assert out_dir_problem(out, stage) is None
    for run in ("first", "second"):
        with atomic_dir(out, stage) as tmp:
            (tmp / "result.txt").write_text(run)
        assert tree_bytes(out) == {STAGE_MARKER: f"{stage}\n".encode(), "result.txt": run.encode()}
    (out / ".complete").touch()  # what Make's demo-data rule adds inside the folder: the marker still counts
    assert out_dir_problem(out, stage) is None


def test_another_stages_folder_is_refused_naming_that_stage(tmp_path):
    calib = tmp_path / "calib"
    with atomic_dir(calib, "calib") as tmp:
        (tmp / "manifest.json").write_text("{}")
    with pytest.raises(PipelineError) as err:
        check_out_dir(calib, "build")
    assert str(err.value) == (f"{calib}: was written by `calib`, not `build` ({STAGE_MARKER}); name a new or empty "
                              f"folder of its own, or delete it yourself")
    assert (calib / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("stage", sorted(EARLIER_OUTPUTS))
def test_a_folder_written_before_markers_existed_is_its_stages_alone(tmp_path, stage):
    name, key = EARLIER_OUTPUTS[stage]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / name).write_text(json.dumps({key: 1}) if key else "")
    (earlier / "other-output.bin").write_bytes(b"x")
    assert out_dir_problem(earlier, stage) is None
    others = [s for s in STAGES if s != stage and EARLIER_OUTPUTS.get(s) != EARLIER_OUTPUTS[stage]]
    for other in others:  # calib's manifest.json does not make the folder build's
        assert out_dir_problem(earlier, other).startswith(f"holds files `{other}` did not write")
    if key:  # a file of that name without the stage's key is not enough
        (earlier / name).write_text(json.dumps({"something": "else"}))
        assert out_dir_problem(earlier, stage).startswith(f"holds files `{stage}` did not write")


def test_the_current_folder_the_checkout_and_repositories_are_always_refused(tmp_path, monkeypatch):
    own = "name a new or empty folder of its own"
    sandbox = tmp_path / "sandbox"
    with atomic_dir(sandbox, "analyze"):  # an output of analyze, and the shell in a folder inside it
        pass
    (sandbox / "inner").mkdir()
    monkeypatch.chdir(sandbox / "inner")
    assert out_dir_problem(".", "analyze") == f"is the current folder; {own}"
    assert out_dir_problem("..", "analyze") == f"is the current folder or holds it; {own}"
    assert out_dir_problem(REPO, "analyze") == f"is the checkout ({REPO}); {own}"
    assert out_dir_problem(REPO.parent, "analyze") == f"is the checkout or holds it ({REPO}); {own}"
    assert out_dir_problem("/", "analyze") == f"is the checkout or holds it ({REPO}); {own}"
    monkeypatch.chdir(REPO)
    assert out_dir_problem(".", "analyze") == f"is the checkout ({REPO}); {own}"
    monkeypatch.chdir(tmp_path)
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / STAGE_MARKER).write_text("analyze\n")  # even a marker does not make a repository replaceable
    assert out_dir_problem(clone, "analyze") == f"holds .git (a repository); {own}"
    (tmp_path / "file").write_text("a file")
    assert out_dir_problem(tmp_path / "file", "analyze") == f"is a file, not a folder; {own}"
    (tmp_path / "link").symlink_to(clone)
    assert out_dir_problem(tmp_path / "link", "analyze") == f"is a symbolic link; {own}"


def test_a_folder_filled_while_the_stage_ran_is_refused_at_the_end(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match="holds files `evaluate` did not write"):
        with atomic_dir(out, "evaluate") as tmp:
            (tmp / "metrics.json").write_text("{}")
            plant_victim(out)
    assert tree_bytes(out) == {"precious.txt": b"the only copy\n", "sub/keep.txt": b"keep me\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- the stages call it: in-process runs of the CLI ---------------------------------------------------------

def refused(capsys, argv: list[str], victim: Path, stage: str) -> None:
    before = plant_victim(victim)
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {victim}: holds files `{stage}` did not write (precious.txt, sub/); choose an empty or new folder, "
        f"or delete it yourself"]
    assert tree_bytes(victim) == before


def test_demo_data_refuses_a_foreign_folder_and_replaces_its_own(tmp_path, capsys):
    victim = tmp_path / "victim"
    demo = ["demo-data", "--count", "1", "--scale", "0.05", "--out"]
    refused(capsys, [*demo, str(victim)], victim, "demo-data")
    out = tmp_path / "PPM-100"
    assert main([*demo, str(out), "--seed", "1"]) == 0
    (out / ".complete").touch()  # as the Makefile's demo-data rule does
    first = tree_bytes(out)
    assert main([*demo, str(out), "--seed", "2"]) == 0
    second = tree_bytes(out)
    assert second[STAGE_MARKER] == b"demo-data\n" and ".complete" not in second
    assert sorted(second) != sorted(first)  # another seed, other names: the folder was replaced, not added to
    # a folder the Makefile wrote before the marker existed: image/, matte/ and its .complete
    (out / STAGE_MARKER).unlink()
    (out / ".complete").touch()
    assert main([*demo, str(out), "--seed", "2"]) == 0
    assert tree_bytes(out) == second


def test_calib_refuses_a_foreign_folder_before_reading_anything_and_replaces_its_own(tmp_path, capsys):
    from pipeline.demo.data import write_demo_data
    data = tmp_path / "PPM-100"
    write_demo_data(data, count=2, seed=1, scale=0.1)
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 2
    config = write_config(tmp_path / "int8.yaml", raw)
    victim = tmp_path / "victim"
    calib = ["calib", "--config", str(config), "--list", str(tmp_path / "list.txt")]
    refused(capsys, [*calib, "--data", str(tmp_path / "absent"), "--out", str(victim)], victim, "calib")
    out = tmp_path / "calib"
    for _ in range(2):
        assert main([*calib, "--data", str(data), "--out", str(out)]) == 0
        assert (out / STAGE_MARKER).read_text() == "calib\n" and json.loads((out / "manifest.json").read_text())[
            "count"] == 2


@pytest.mark.parametrize("backend", ["ort", "vamc"])
def test_build_refuses_a_foreign_folder_before_reading_its_inputs(tmp_path, capsys, backend):
    victim = tmp_path / "victim"
    refused(capsys, ["build", "--config", str(FP16_CONFIG), "--onnx", str(tmp_path / "absent.onnx"), "--backend",
                     backend, "--out", str(victim)], victim, "build")


def test_evaluate_refuses_a_foreign_folder_before_reading_its_inputs(tmp_path, capsys):
    victim = tmp_path / "victim"
    refused(capsys, ["evaluate", "--config", str(FP16_CONFIG), "--engine", str(tmp_path / "absent.onnx"),
                     "--data", str(tmp_path / "absent"), "--out", str(victim)], victim, "evaluate")


def test_analyze_refuses_before_any_work(tmp_path):
    from pipeline.tuning.analyze import analyze
    victim = tmp_path / "victim"
    before = plant_victim(victim)
    with pytest.raises(PipelineError, match="holds files `analyze` did not write"):
        analyze(None, victim)  # the workbench is never touched
    assert tree_bytes(victim) == before


def _adding_stage_flags(command: str) -> list[str]:
    return (["--config", "c.yaml", "--onnx", "m.onnx", "--calib", "calib", "--data", "data"] if command == "tune"
            else [a for flag in ("--config-fp16", "--config-int8", "--onnx-fp16", "--onnx-int8", "--engine-fp16",
                                 "--engine-int8", "--calib", "--data") for a in (flag, "absent")])


@pytest.mark.parametrize("command", ["tune", "hwcheck"])
def test_stages_writing_into_a_folder_refuse_a_file_as_out(tmp_path, capsys, command):
    readme = tmp_path / "README.md"
    readme.write_text("mine\n")
    assert main([command, *_adding_stage_flags(command), "--out", str(readme)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {readme}: is a file, not a folder; name a new or empty folder of its own"]
    assert readme.read_text() == "mine\n"


@pytest.mark.parametrize("command", ["tune", "hwcheck"])
def test_stages_writing_into_a_folder_refuse_the_checkout_and_the_current_folder(tmp_path, capsys, monkeypatch,
                                                                                  command):
    # tune and hwcheck never replace their folder, but they delete and write report.md / tuned.yaml in it
    monkeypatch.chdir(tmp_path)
    for out, why in ((REPO, f"is the checkout ({REPO})"), (REPO.parent, f"is the checkout or holds it ({REPO})"),
                     (Path("."), "is the current folder")):
        assert main([command, *_adding_stage_flags(command), "--out", str(out)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {out}: {why}; name a new or empty folder of its own"]


def test_a_folder_inside_a_release_bundle_is_never_replaced(tmp_path):
    # a bundle's copy of an evaluation folder looks like evaluate's own earlier output
    bundle = tmp_path / "release" / "official_modnet-0123abcd4567"
    fp32 = bundle / "report" / "eval" / "fp32"
    fp32.mkdir(parents=True)
    (bundle / "MANIFEST.json").write_text("{}\n")
    (fp32 / "metrics.json").write_text(json.dumps({"per_image": []}))
    for dest, stage in ((fp32, "evaluate"), (bundle / "engines" / "new", "build"), (bundle, "release")):
        assert out_dir_problem(dest, stage) == (f"is inside the release bundle {bundle}, which is never rewritten; "
                                                f"name a new or empty folder of its own")


@pytest.mark.parametrize("command", ["tune", "hwcheck"])
def test_stages_writing_into_a_folder_refuse_one_of_foreign_files(tmp_path, capsys, command):
    victim = tmp_path / "victim"
    before = plant_victim(victim)
    assert main([command, *_adding_stage_flags(command), "--out", str(victim)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {victim}: holds files `{command}` did not write (precious.txt, sub/); choose an empty or new folder, "
        f"or delete it yourself"]
    assert tree_bytes(victim) == before


@pytest.mark.slow
def test_sigterm_mid_stage_leaves_no_scratch_folder_and_exits_143(tmp_path):
    # a CI timeout or `kill` sends SIGTERM: the stage's context managers must still remove its .part folder
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "demo-data", "--out", str(out), "--count", "100"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".data.*.part")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".data.*.part")), "the stage never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.splitlines()[-1] == "interrupted; nothing half-written was kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
