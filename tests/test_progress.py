"""Progress in logs: a line with n/N every few seconds when stderr is not a terminal (CI), instead of silence."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.core.progress import LogBar


def test_a_line_each_time_the_interval_has_passed():
    ticks = iter([100.0, 101.0, 104.9, 105.0, 106.0, 111.0, 111.5])  # start, then one reading per item
    stream = io.StringIO()
    items = list(LogBar("calibration", None, stream, 5.0, lambda: next(ticks)).wrap(range(6)))
    assert items == list(range(6))
    # 5.0 s after the start at the 3rd item, then 6.0 s after that at the 5th; the others are under 5 s apart
    assert stream.getvalue().splitlines() == ["calibration: 3/6 (5 s)", "calibration: 5/6 (11 s)"]


def test_unknown_total_and_given_total():
    ticks = iter([0.0, 10.0, 20.0])
    stream = io.StringIO()
    list(LogBar("demo images", None, stream, 5.0, lambda: next(ticks)).wrap(iter("ab")))
    assert stream.getvalue().splitlines() == ["demo images: 1/? (10 s)", "demo images: 2/? (20 s)"]
    ticks = iter([0.0, 10.0])
    stream = io.StringIO()
    list(LogBar("evaluate", 40, stream, 5.0, lambda: next(ticks)).wrap(iter("a")))
    assert stream.getvalue() == "evaluate: 1/40 (10 s)\n"


@pytest.mark.slow
def test_the_cli_helper_logs_when_stderr_is_a_pipe():
    code = ("import pipeline.core.progress as c\n"
            "c.LOG_PROGRESS_EVERY = 0.0\n"
            "for _ in c.progress(range(3), 'stage', 3): pass\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["stage: 1/3", "stage: 2/3", "stage: 3/3"]
    assert "\r" not in done.stderr


def test_the_stages_name_their_loops_as_the_log_showed_them(tmp_path, capsys, monkeypatch):
    from conftest import INT8_CONFIG, small_config_dict, write_config
    from pipeline import cli
    from pipeline.core import progress
    monkeypatch.setattr(progress, "LOG_PROGRESS_EVERY", 0.0)  # a line per item
    assert cli.main(["demo-data", "--out", str(tmp_path / "data"), "--count", "3", "--scale", "0.05"]) == 0
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 2
    config = write_config(tmp_path / "small_int8.yaml", raw)
    assert cli.main(["calib", "--config", str(config), "--data", str(tmp_path / "data"), "--out",
                     str(tmp_path / "calib"), "--list", str(tmp_path / "list.txt")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["demo images: 1/3", "demo images: 2/3", "demo images: 3/3",
                                                      "calibration set: 1/2", "calibration set: 2/2"]
