"""Checkpoint -> ONNX: static shape, names, opset, parity with PyTorch, byte-identical re-export."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from conftest import SMALL_HW, small_config_dict, write_config
from pipeline.core import runtime
from pipeline.core.config import load_config
from pipeline.model.checkpoint import load_modnet
from pipeline.model.export import export_onnx


def _dims(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_static_shape_names_and_opset(small_onnx):
    model = onnx.load(str(small_onnx))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert _dims(model.graph.input[0]) == [1, 3, *SMALL_HW]
    assert _dims(model.graph.output[0]) == [1, 1, *SMALL_HW]
    assert model.opset_import[0].version == 17
    assert model.graph.node[-1].op_type == "Sigmoid"  # alpha in 0..1 comes out of the graph itself


def test_onnx_matches_pytorch(small_onnx, demo_ckpt):
    model = load_modnet(demo_ckpt)
    sess = runtime.session(small_onnx)
    for x in runtime.probe_inputs((1, 3, *SMALL_HW), seed=7, count=2):
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = runtime.run(sess, x)
        assert got.shape == (1, 1, *SMALL_HW)
        assert runtime.max_abs_diff(expected, got) < 1e-4
        assert 0.0 <= got.min() and got.max() <= 1.0 and got.std() > 1e-3  # a real, non-constant matte


def test_reexport_is_byte_identical(small_onnx, small_config, demo_ckpt, tmp_path):
    again = tmp_path / "again.onnx"
    export_onnx(load_config(small_config), demo_ckpt, again)
    assert again.read_bytes() == small_onnx.read_bytes()


def test_opset_comes_from_the_config(tmp_path, demo_ckpt):
    raw = small_config_dict()
    raw["pipeline"]["opset"] = 13
    out = tmp_path / "opset13.onnx"
    export_onnx(load_config(write_config(tmp_path / "c.yaml", raw)), demo_ckpt, out)
    assert onnx.load(str(out)).opset_import[0].version == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "opset13.onnx"]  # no temp files left
