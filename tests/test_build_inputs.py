"""`build` refuses a truncated or corrupt ONNX and a damaged calibration folder before any backend runs: one line
naming the file, exit 2, no engine folder left (backend-neutral: the check is in pipeline.backends.engine.check_inputs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import INT8_CONFIG, small_config_dict, write_config
from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.stages.calibrate import make_calibration_set


@pytest.fixture(scope="module")
def int8_calib(tmp_path_factory):
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("calib")
    write_demo_data(root / "PPM-100", count=3, seed=2, scale=0.1)
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 2
    config = write_config(root / "small_int8.yaml", raw)
    make_calibration_set(load_config(config), root / "PPM-100", root / "calib", root / "list.txt")
    return config, root / "calib"


def build(config, onnx, calib, out, capsys) -> tuple[int, str]:
    code = main(["build", "--config", str(config), "--onnx", str(onnx), "--calib", str(calib), "--backend", "ort",
                 "--out", str(out)])
    return code, capsys.readouterr().err.strip()


def damaged_copy(calib, tmp_path, damage):
    import shutil
    copy = tmp_path / "calib"
    shutil.copytree(calib, copy)
    tensors, manifest_path = copy / "tensors.npy", copy / "manifest.json"
    if damage == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:-4096])
    elif damage == "padded":
        tensors.write_bytes(tensors.read_bytes() + b"\0" * 4)
    elif damage == "changed":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 1
        tensors.write_bytes(bytes(data))
    elif damage == "header":
        np.save(tensors, np.zeros((2, 3, 64, 96), np.float32))
    elif damage == "not json":
        manifest_path.write_text("{")
    elif damage == "no tensors key":
        manifest = json.loads(manifest_path.read_text())
        del manifest["tensors"]
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "name":
        manifest = json.loads(manifest_path.read_text())
        manifest["images"][0]["name"] = "../../etc/passwd"
        manifest_path.write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"tensors\.npy: \d+ bytes, but float32 \[2, 3, 128, 96\] needs \d+ \(truncated or padded\)"),
    ("padded", r"tensors\.npy: \d+ bytes, but float32 \[2, 3, 128, 96\] needs \d+ \(truncated or padded\)"),
    ("changed", r"tensors\.npy: content differs from the sha256 in .*manifest\.json"),
    ("header", r"tensors\.npy: holds float32 \[2, 3, 64, 96\], not float32 \[2, 3, 128, 96\]"),
    ("not json", r"manifest\.json: not a calibration manifest \(JSONDecodeError"),
    ("no tensors key", r"manifest\.json: not a calibration manifest \(KeyError: 'tensors'\)"),
    ("name", r"manifest\.json: images: '\.\./\.\./etc/passwd' holds a path separator"),
])
def test_damaged_calibration_folder(int8_calib, small_sim_onnx, tmp_path, capsys, damage, message):
    import re
    config, calib = int8_calib
    out = tmp_path / "engines" / "int8"
    code, err = build(config, small_sim_onnx, damaged_copy(calib, tmp_path, damage), out, capsys)
    assert code == 2 and "\n" not in err and re.search(message, err), err
    assert err.endswith("rerun `make calib`") or damage == "name"
    assert not out.parent.exists()


def test_corrupt_onnx(int8_calib, small_sim_onnx, tmp_path, capsys):
    config, calib = int8_calib
    broken = tmp_path / "model.sim.onnx"
    broken.write_bytes(small_sim_onnx.read_bytes()[: small_sim_onnx.stat().st_size // 2])
    out = tmp_path / "engines" / "int8"
    code, err = build(config, broken, calib, out, capsys)
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {broken}: not a valid ONNX model (") and "make simplify" in err
    assert not out.parent.exists()


def test_an_onnx_of_another_input_shape_is_one_line(int8_calib, small_sim_onnx, tmp_path, capsys):
    # the simplified ONNX of another config (another input size): refused by name and shape before any backend runs,
    # not a stream of calibration tensors of the wrong shape
    import onnx
    config, calib = int8_calib
    model = onnx.load(str(small_sim_onnx))
    dim = model.graph.input[0].type.tensor_type.shape.dim[2]
    expected = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    dim.dim_value += 32
    other = tmp_path / "other.sim.onnx"
    onnx.save(model, str(other))
    got = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    code, err = build(config, other, calib, tmp_path / "engine", capsys)
    assert code == 2 and err == (f"error: {other}: takes 'input' {got}, but {config} builds 'input' {expected}: not "
                                 f"the simplified ONNX of this config (`make simplify CONFIG={config}` writes it)")
    assert not (tmp_path / "engine").exists()
