"""The generated stand-ins for the official checkpoint and PPM-100 are deterministic and shaped like the real ones."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.demo.checkpoint import write_demo_checkpoint
from pipeline.demo.data import _encode, in_order, make_pair, write_demo_data


def test_demo_checkpoint_bytes_follow_the_seed(tmp_path):
    for name, seed in (("a.ckpt", 0), ("b.ckpt", 0), ("c.ckpt", 1)):
        write_demo_checkpoint(tmp_path / name, seed)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.ckpt", "b.ckpt", "c.ckpt"))
    assert a == b and a != c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "c.ckpt"]  # no temp files left


def test_demo_data_is_deterministic_and_ppm100_shaped(tmp_path):
    # the determinism at a tenth of the size (the same drawing, smaller), the photo size on one full-size pair
    names = write_demo_data(tmp_path / "one", count=3, seed=5, scale=0.1)
    again = write_demo_data(tmp_path / "two", count=3, seed=5, scale=0.1)
    assert names == again and len(set(names)) == 3
    for sub in ("image", "matte"):
        assert sorted(p.name for p in (tmp_path / "one" / sub).iterdir()) == names
        for name in names:
            assert (tmp_path / "one" / sub / name).read_bytes() == (tmp_path / "two" / sub / name).read_bytes()
    [full] = write_demo_data(tmp_path / "full", count=1, seed=5, scale=1.0)
    assert full in names  # the same drawing at another size
    for folder, name in [("full", full)] + [("one", name) for name in names]:
        image = cv2.imread(str(tmp_path / folder / "image" / name), cv2.IMREAD_UNCHANGED)
        matte = cv2.imread(str(tmp_path / folder / "matte" / name), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= (1080 if folder == "full" else 108)  # photo-sized at scale 1
        assert matte.ndim == 2 and matte.shape == image.shape[:2]  # 8-bit grey, same size
        assert matte.min() < 10 and matte.max() > 245 and ((matte > 20) & (matte < 235)).any()  # soft edges


def test_in_order_yields_in_order_and_stops_at_an_error():
    def job(index):
        time.sleep(0.02 * (5 - index))  # later indices finish first
        if index == 3:
            raise ValueError("job 3")
        return index * 10

    got = []
    with pytest.raises(ValueError, match="job 3"):
        for value in in_order(job, 6):
            got.append(value)
    assert got == [0, 10, 20]


def test_the_threaded_folder_holds_what_one_serial_pair_at_a_time_gives(tmp_path):
    names = write_demo_data(tmp_path, count=4, seed=3, scale=0.2)
    for index in range(4):
        name, image, matte = make_pair(3, index, 0.2)
        assert name in names
        assert (tmp_path / "image" / name).read_bytes() == _encode(image, name)
        assert (tmp_path / "matte" / name).read_bytes() == _encode(matte, name)


def test_a_failed_write_cancels_the_portraits_not_yet_started(tmp_path, monkeypatch):
    from pipeline.demo import data as demo_data

    started = []

    def slow_pair(seed, index, scale=1.0, stream=0):
        started.append(index)
        time.sleep(0.05)
        return f"{index}.jpg", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)

    def failing_progress(pairs, desc, total, unit="img"):  # a write fails once the first portrait is written
        for item in pairs:
            yield item
            raise OSError("disk full")

    monkeypatch.setattr(demo_data, "make_pair", slow_pair)
    with pytest.raises(OSError, match="disk full"):
        write_demo_data(tmp_path / "out", count=40, seed=0, progress=failing_progress)
    time.sleep(0.3)  # a pool that kept going would start a dozen more by now
    assert len(started) <= 1 + 2 * demo_data.THREADS and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["demo-data", "--scale", "0"], "--scale must be in (0, 1] (1: the photo sizes of PPM-100; less shrinks them), "
                                    "got 0.0"),
    (["demo-data", "--scale", "-1"], "--scale must be in (0, 1] (1: the photo sizes of PPM-100; less shrinks them), "
                                     "got -1.0"),
    (["demo-data", "--scale", "nan"], "--scale must be in (0, 1] (1: the photo sizes of PPM-100; less shrinks them), "
                                      "got nan"),
    (["demo-data", "--scale", "inf"], "--scale must be in (0, 1] (1: the photo sizes of PPM-100; less shrinks them), "
                                      "got inf"),
    (["demo-data", "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["demo-ckpt", "--steps", "0", "--seed", "-1"], "--seed must be 0 or more, got -1"),
])
def test_demo_commands_refuse_bad_numbers_in_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / ("out.ckpt" if argv[0] == "demo-ckpt" else "out")
    assert main([*argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert sorted(tmp_path.iterdir()) == []


def test_demo_commands_refuse_an_out_they_would_clobber(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# not a checkpoint\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for argv, message in (
            (["demo-data", "--count", "1", "--out", str(readme)],
             f"{readme}: is a file, not a folder; name a new or empty folder of its own"),
            (["demo-ckpt", "--steps", "0", "--out", str(readme)],
             f"{readme}: exists and is not a demo checkpoint; name a new file, or delete it yourself"),
            (["demo-ckpt", "--steps", "0", "--out", str(folder)],
             f"{folder}: is a folder; --out names the checkpoint file to write")):
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert readme.read_text() == "# not a checkpoint\n" and list(folder.iterdir()) == []
    # an earlier demo checkpoint is what `make demo-ckpt` rebuilds: it is replaced
    ckpt = tmp_path / "demo.ckpt"
    write_demo_checkpoint(ckpt, seed=1)
    assert main(["demo-ckpt", "--steps", "0", "--seed", "2", "--out", str(ckpt)]) == 0
    write_demo_checkpoint(tmp_path / "seed2.ckpt", seed=2)
    assert ckpt.read_bytes() == (tmp_path / "seed2.ckpt").read_bytes()
