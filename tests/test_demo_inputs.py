"""The generated stand-ins for the official checkpoint and PPM-100 are deterministic and shaped like the real ones."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from pipeline.demo_checkpoint import write_demo_checkpoint
from pipeline.demo_data import _encode, in_order, make_pair, write_demo_data


def test_demo_checkpoint_bytes_follow_the_seed(tmp_path):
    for name, seed in (("a.ckpt", 0), ("b.ckpt", 0), ("c.ckpt", 1)):
        write_demo_checkpoint(tmp_path / name, seed)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.ckpt", "b.ckpt", "c.ckpt"))
    assert a == b and a != c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "c.ckpt"]  # no temp files left


def test_demo_data_is_deterministic_and_ppm100_shaped(tmp_path):
    names = write_demo_data(tmp_path / "one", count=3, seed=5, scale=1.0)
    again = write_demo_data(tmp_path / "two", count=3, seed=5, scale=1.0)
    assert names == again and len(set(names)) == 3
    for sub in ("image", "matte"):
        assert sorted(p.name for p in (tmp_path / "one" / sub).iterdir()) == names
        for name in names:
            assert (tmp_path / "one" / sub / name).read_bytes() == (tmp_path / "two" / sub / name).read_bytes()
    for name in names:
        image = cv2.imread(str(tmp_path / "one" / "image" / name), cv2.IMREAD_UNCHANGED)
        matte = cv2.imread(str(tmp_path / "one" / "matte" / name), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 1080  # photo-sized
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
    from pipeline import demo_data

    started = []

    def slow_pair(seed, index, scale=1.0, stream=0):
        started.append(index)
        time.sleep(0.05)
        return f"{index}.jpg", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)

    def failing_progress(pairs):
        for item in pairs:
            yield item
            raise OSError("disk full")

    monkeypatch.setattr(demo_data, "make_pair", slow_pair)
    with pytest.raises(OSError, match="disk full"):
        write_demo_data(tmp_path / "out", count=40, seed=0, progress=failing_progress)
    time.sleep(0.3)  # a pool that kept going would start a dozen more by now
    assert len(started) <= 1 + 2 * demo_data.THREADS and not (tmp_path / "out").exists()
