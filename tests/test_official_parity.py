"""Our export against the official PyTorch MODNet code (ZHKKKe/MODNet@28165a4).

The official code is not vendored here. Set MODNET_OFFICIAL_SRC to a checkout of it (the folder holding `src/`)
to run this test; it is skipped otherwise.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import SMALL_HW
from pipeline.core import runtime

OFFICIAL_SRC = os.environ.get("MODNET_OFFICIAL_SRC")


@pytest.mark.skipif(not OFFICIAL_SRC, reason="MODNET_OFFICIAL_SRC is not set (a checkout of ZHKKKe/MODNet)")
def test_simplified_onnx_matches_the_official_pytorch_model(small_sim_onnx, demo_ckpt):
    sys.path.insert(0, OFFICIAL_SRC)
    try:
        from src.models.modnet import MODNet as OfficialMODNet
    finally:
        sys.path.remove(OFFICIAL_SRC)
    official = torch.nn.DataParallel(OfficialMODNet(backbone_pretrained=False))
    official.load_state_dict(torch.load(demo_ckpt, weights_only=True))  # the official loading path, as-is
    official = official.module.eval()
    sess = runtime.session(small_sim_onnx)
    for x in runtime.probe_inputs((1, 3, *SMALL_HW), seed=3, count=3):
        with torch.no_grad():
            _, _, matte = official(torch.from_numpy(x), True)
        assert runtime.max_abs_diff(matte.numpy(), runtime.run(sess, x)) < 1e-4
