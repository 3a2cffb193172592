"""Calibration subset: exact, deterministic, reusable through the committed list, and failing cleanly."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import INT8_CONFIG, small_config_dict, write_config
from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.stages.calibrate import RULE, draw, format_list, make_calibration_set, parse_list

COUNT = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("ppm") / "PPM-100"
    write_demo_data(root, count=7, seed=1, scale=0.15)
    return root


def make_cfg(tmp_path: Path, count: int = COUNT, suffix: str = "jpg", seed: int = 0):
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"].update(get_data_num=count, suffix=suffix)
    raw["pipeline"]["seed"] = seed
    return load_config(write_config(tmp_path / f"int8_{count}_{suffix}_{seed}.yaml", raw))


def names_of(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "image").iterdir())


def test_draw_ignores_order_and_moves_little():
    names = [f"{i:05d}_o.jpg" for i in range(100)]
    chosen = draw(names, seed=0, count=10)
    for trial in range(5):
        shuffled = names[:]
        random.Random(trial).shuffle(shuffled)
        assert draw(shuffled, seed=0, count=10) == chosen
    assert draw(names, seed=1, count=10) != chosen
    grown = draw(names + [f"new{i}.jpg" for i in range(10)], seed=0, count=10)
    entered = [n for n in grown if n.startswith("new")]
    assert len(set(chosen) - set(grown)) == len(entered)  # only names that rank in front displace chosen ones


def test_subset_is_exact_and_independent_of_listing_and_times(tmp_path, data):
    cfg = make_cfg(tmp_path)
    manifest = make_calibration_set(cfg, data, tmp_path / "calib", tmp_path / "list.txt")
    chosen = [item["name"] for item in manifest["images"]]
    assert chosen == draw(names_of(data), cfg.pipeline.seed, COUNT)
    images = tmp_path / "calib" / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(chosen)
    for p in images.iterdir():
        assert not p.is_symlink()  # a hard link or a copy, never a link out of the folder
        assert os.path.samefile(p, data / "image" / p.name) or p.read_bytes() == (data / "image" / p.name).read_bytes()
    assert {"config_name", "seed", "count", "rule", "suffix", "source", "images"} <= set(manifest)
    assert manifest["count"] == COUNT and manifest["rule"] == RULE and manifest["source"] == str(data.resolve())
    tensors = np.load(tmp_path / "calib" / "tensors.npy")
    assert tensors.shape == (COUNT, 3, cfg.height, cfg.width) and tensors.dtype == np.float32
    _, entries = parse_list(tmp_path / "list.txt")
    assert [n for n, _ in entries] == chosen

    # The same files copied in reverse order with shuffled modification times give the same subset.
    other = tmp_path / "other"
    (other / "image").mkdir(parents=True)
    for i, name in enumerate(reversed(names_of(data))):
        shutil.copyfile(data / "image" / name, other / "image" / name)
        os.utime(other / "image" / name, (1_000_000 + 977 * i, 1_000_000 + 977 * i))
    again = make_calibration_set(cfg, other, tmp_path / "calib2", tmp_path / "list2.txt")
    assert [i["name"] for i in again["images"]] == chosen
    assert np.array_equal(np.load(tmp_path / "calib2" / "tensors.npy"), tensors)


def test_committed_list_is_reused_and_checked(tmp_path, data):
    cfg = make_cfg(tmp_path)
    listed = names_of(data)[-COUNT:]  # not what a draw would give
    from pipeline.core.fileio import sha256_file
    entries = [(n, sha256_file(data / "image" / n)) for n in listed]
    list_path = tmp_path / "list.txt"
    list_path.write_text(format_list(cfg, entries))
    manifest = make_calibration_set(cfg, data, tmp_path / "calib", list_path)
    assert [i["name"] for i in manifest["images"]] == listed and manifest["list"]["reused"]
    assert list_path.read_text() == format_list(cfg, entries)

    # --redraw ignores it and rewrites it with the seeded draw
    redrawn = make_calibration_set(cfg, data, tmp_path / "calib", list_path, redraw=True)
    assert [i["name"] for i in redrawn["images"]] == draw(names_of(data), 0, COUNT)

    # a changed file, or a missing one: one clear error, and the existing folder is left as it was
    before = sorted(p.name for p in (tmp_path / "calib" / "images").iterdir())
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    name = redrawn["images"][1]["name"]
    (changed / "image" / name).write_bytes((changed / "image" / name).read_bytes() + b"\0")
    with pytest.raises(PipelineError, match=f"{name}: sha256 .* differs"):
        make_calibration_set(cfg, changed, tmp_path / "calib", list_path)
    (changed / "image" / name).unlink()
    with pytest.raises(PipelineError, match=f"drawn from {data}, not from {changed} \\({name} is not in it\\)"):
        make_calibration_set(cfg, changed, tmp_path / "calib", list_path)
    # a list written before lists recorded their folder: the file itself is named
    old_format = tmp_path / "old_format.txt"
    old_format.write_text(format_list(cfg, [(i["name"], i["sha256"]) for i in redrawn["images"]]))
    with pytest.raises(PipelineError, match=f"{name}: listed in .* but missing"):
        make_calibration_set(cfg, changed, tmp_path / "calib", old_format)
    assert sorted(p.name for p in (tmp_path / "calib" / "images").iterdir()) == before
    with pytest.raises(PipelineError, match="lists 3 images but .* get_data_num=2"):
        make_calibration_set(make_cfg(tmp_path, count=2), data, tmp_path / "calib", list_path)


def run_cli(cfg, data, out, list_path, capsys) -> tuple[int, str]:
    code = main(["calib", "--config", str(cfg.source), "--data", str(data), "--out", str(out),
                 "--list", str(list_path)])
    return code, capsys.readouterr().err.strip()


def assert_clean(out: Path, list_path: Path) -> None:
    assert not out.exists() and not list_path.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]


def test_errors_are_one_line_and_write_nothing(tmp_path, data, capsys):
    out, list_path = tmp_path / "out" / "calib", tmp_path / "list.txt"
    (tmp_path / "out").mkdir()
    cases = {
        "no_image_dir": (make_cfg(tmp_path), tmp_path, "image: no such folder"),
        # `make calib` without PPM-100 says where it comes from, as a missing checkpoint does
        "where_ppm_100_comes_from": (make_cfg(tmp_path), tmp_path / "PPM-100", "PPM-100 comes from its official "
                                     "repository, github.com/ZHKKKe/PPM (a download link in its README): unpack it "
                                     "into datasets/PPM-100/ or pass DATA=/path/to/PPM-100; or run `make demo`"),
        "too_few": (make_cfg(tmp_path, count=50), data, "7 *.jpg images, fewer than get_data_num=50 in "),
        "too_few_ways_out": (make_cfg(tmp_path, count=50), data, ": add images to the folder, or calibrate on fewer "
                             "with a copy of the config whose dataset.sampler.get_data_num is at most 7"),
        "suffix": (make_cfg(tmp_path, suffix="png"), data, "no *.png files"),
    }
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    cfg = make_cfg(tmp_path, count=7)
    (broken / "image" / names_of(data)[0]).write_bytes(b"not a jpeg")
    cases["undecodable"] = (cfg, broken, f"{names_of(data)[0]}: cannot decode")
    for label, (cfg, root, message) in cases.items():
        code, err = run_cli(cfg, root, out, list_path, capsys)
        assert code == 2, label
        assert err.startswith("error: ") and message in err and "\n" not in err, (label, err)
        assert_clean(out, list_path)


@pytest.mark.parametrize("name, problem", [
    ("../matte/x.jpg", "holds a path separator"),
    ("/etc/passwd", "holds a path separator"),
    ("..", "starts with a dot"),
    (".hidden.jpg", "starts with a dot"),
])
def test_list_names_stay_in_the_image_folder(tmp_path, data, capsys, name, problem):
    cfg = make_cfg(tmp_path, count=1)
    list_path = tmp_path / "list.txt"
    list_path.write_text(format_list(cfg, [(name, "0" * 64)]))
    out = tmp_path / "out" / "calib"
    code, err = run_cli(cfg, data, out, list_path, capsys)
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {list_path}:5: {name!r} {problem}")
    assert not out.parent.exists()


def test_list_records_its_folder_and_another_folder_is_named(tmp_path, data):
    """A trial on other data (e.g. the demo's) drew the list: a run on the real folder names that as the cause."""
    cfg = make_cfg(tmp_path)
    list_path = tmp_path / "list.txt"
    make_calibration_set(cfg, data, tmp_path / "calib", list_path)
    header, _ = parse_list(list_path)
    names = names_of(data)
    expected = hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()
    assert header["data"] == str(data)
    assert header["data names sha256"] == f"{expected} ({len(names)} images)"

    other = tmp_path / "real" / "PPM-100"
    from pipeline.demo.data import write_demo_data
    write_demo_data(other, count=4, seed=7, scale=0.15)
    with pytest.raises(PipelineError) as err:
        make_calibration_set(cfg, other, tmp_path / "calib2", list_path)
    message = str(err.value)
    assert message.startswith(f"{list_path} was drawn from {data}, not from {other} (")
    assert "REDRAW=1" in message and "CALIB_LIST=" in message and "\n" not in message
    assert not (tmp_path / "calib2").exists()

    # the same folder reached by another path (same names, same files) reuses the list
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    again = make_calibration_set(cfg, moved, tmp_path / "calib3", list_path)
    assert again["list"]["reused"]
