"""The config's process_ops equal the vendor's inference preprocessing (model card) to the last bit."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import INT8_CONFIG, small_config_dict, write_config
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.data.preprocess import load_input


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("pre") / "PPM-100"
    write_demo_data(root, count=3, seed=2, scale=0.15)
    return sorted((root / "image").iterdir())


def vendor_reference(path: Path, height: int, width: int) -> np.ndarray:
    """Model card, written out by hand: cv2 decode (BGR), INTER_LINEAR resize, BGR->RGB, (x-127.5)/127.5, NCHW."""
    bgr = cv2.imread(str(path))
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1]
    normalised = (rgb.astype(np.float64) - 127.5) / 127.5
    return normalised.astype(np.float32).transpose(2, 0, 1)[None].copy()


def test_official_config_equals_vendor_preprocessing(images):
    cfg = load_config(INT8_CONFIG)
    for path in images:
        ours = load_input(cfg, path)
        ref = vendor_reference(path, 480, 288)
        assert ours.dtype == np.float32 and ours.shape == (1, 3, 480, 288) and ours.flags.c_contiguous
        assert np.array_equal(ours, ref), path.name
        assert ours.min() >= -1.0 and ours.max() <= 1.0


def test_other_shape_and_ops(tmp_path, images):
    raw = small_config_dict(INT8_CONFIG)
    ops = raw["dataset"]["process_ops"]
    ops.insert(2, {"type": "CvtColor", "code": "COLOR_RGB2BGR"})  # after Resize: back to BGR
    for op in ops:
        if op["type"] == "Normalize":
            op.update(div255=True, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    cfg = load_config(write_config(tmp_path / "other.yaml", raw))
    height, width = cfg.height, cfg.width
    for path in images:
        bgr = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_LINEAR)
        ref = ((bgr / 255.0 - np.array([0.5, 0.25, 0.0])) / np.array([0.5, 0.25, 1.0])).astype(np.float32)
        assert np.array_equal(load_input(cfg, path), ref.transpose(2, 0, 1)[None])


def test_undecodable_image_is_named(tmp_path):
    bad = tmp_path / "broken_o.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(PipelineError, match="broken_o.jpg: cannot decode"):
        load_input(load_config(INT8_CONFIG), bad)
