"""Conv numbering of skip_conv_layers: vamc's (TVM's post-order walk) against ONNX node order."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.backends.ort.numbering import NUMBERINGS, conv_order, conv_table


def conv(name: str, data: str, out: str, channels_in: int, channels_out: int, **attrs) -> tuple:
    weight = numpy_helper.from_array(np.ones((channels_out, channels_in, 3, 3), np.float32), f"{name}.w")
    return helper.make_node("Conv", [data, weight.name], [out], name=name, pads=[1, 1, 1, 1], **attrs), weight


def worked_example() -> onnx.ModelProto:
    """out = conv_c(concat([conv_b(x), conv_a(x)])), stored in the order a, b, c (the reference note's example)."""
    a, wa = conv("/hr_branch/conv_a", "x", "ya", 3, 4)
    b, wb = conv("/lr_branch/backbone/conv_b", "x", "yb", 3, 2, strides=[1, 1])
    cat = helper.make_node("Concat", ["yb", "ya"], ["cat"], name="cat", axis=1)
    c, wc = conv("/f_branch/conv_c", "cat", "out", 6, 1, group=1)
    graph = helper.make_graph([a, b, cat, c], "worked",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [wa, wb, wc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_vamc_order_is_tvm_post_order_not_onnx_order():
    model = worked_example()
    # every numbering pipeline.conv_numbering accepts is one conv_order implements, each its own order
    assert {numbering: conv_order(model, numbering) for numbering in NUMBERINGS} == {
        "onnx": ["/hr_branch/conv_a", "/lr_branch/backbone/conv_b", "/f_branch/conv_c"],
        "vamc": ["/lr_branch/backbone/conv_b", "/hr_branch/conv_a", "/f_branch/conv_c"]}
    assert conv_order(model) == conv_order(model, "vamc")  # vamc's is the default
    with pytest.raises(ValueError, match="unknown conv numbering"):
        conv_order(model, "tvm")


def test_conv_table_rows():
    rows = conv_table(worked_example())
    assert [(r["vamc_index"], r["onnx_index"], r["branch"]) for r in rows] == [(0, 1, "backbone"), (1, 0, "hr"),
                                                                              (2, 2, "fusion")]
    assert rows[2] == {"vamc_index": 2, "onnx_index": 2, "onnx_node": "/f_branch/conv_c", "branch": "fusion",
                       "kernel": [3, 3], "stride": [1, 1], "groups": 1, "input_shape": [1, 6, 8, 8],
                       "output_shape": [1, 1, 8, 8]}
    assert rows[0]["output_shape"] == [1, 2, 8, 8]


def test_modnet_numbering(small_sim_onnx):
    """The reference note's figures for MODNet: 69 Convs, the backbone 0-51 in both orders, conv_lr4x at 54."""
    model = onnx.load(str(small_sim_onnx))
    vamc, plain = conv_order(model, "vamc"), conv_order(model, "onnx")
    assert len(vamc) == 69 and sorted(vamc) == sorted(plain)
    assert vamc[:52] == plain[:52] and vamc[52:] != plain[52:]
    assert vamc[54] == "/f_branch/conv_lr4x/layers/layers.0/Conv"
    assert plain[54] == "/hr_branch/tohr_enc2x/layers/layers.0/Conv"
    assert plain.index(vamc[54]) == 65
    rows = conv_table(model)
    assert {r["branch"] for r in rows} == {"backbone", "lr", "hr", "fusion"}
    assert [r["onnx_node"] for r in rows] == vamc


def test_layers_command_marks_the_skipped_conv(tmp_path, small_sim_onnx, capsys):
    from conftest import INT8_CONFIG, small_config_dict, write_config
    from pipeline.cli import main
    raw = small_config_dict(INT8_CONFIG)
    raw["backend"]["quantize"]["skip_conv_layers"] = [54]
    config = write_config(tmp_path / "int8.yaml", raw)
    assert main(["layers", "--config", str(config), "--onnx", str(small_sim_onnx)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["vamc", "onnx", "skip", "branch"] and len(lines) == 1 + 69 + 1
    assert lines[1 + 54].split() == ["54", "65", "float", "fusion", "5x5", "1x1", "1", "1x32x32x24", "1x32x32x24",
                                     "/f_branch/conv_lr4x/layers/layers.0/Conv"]
    assert "float" not in lines[1 + 55]
    assert lines[-1].endswith("/f_branch/conv_lr4x/layers/layers.0/Conv stays float.")
    raw["backend"]["quantize"]["skip_conv_layers"] = [69]
    write_config(config, raw)
    assert main(["layers", "--config", str(config), "--onnx", str(small_sim_onnx)]) == 2
    assert "skip_conv_layers index 69 is out of range" in capsys.readouterr().err


def test_layers_command_refuses_a_file_that_is_not_onnx(capsys):
    from conftest import INT8_CONFIG, REPO
    from pipeline.cli import main
    readme = REPO / "README.md"
    assert main(["layers", "--config", str(INT8_CONFIG), "--onnx", str(readme)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {readme}: not a valid ONNX model (")
    assert err[0].endswith("); --onnx must be the simplified ONNX (`make simplify` writes it)")
