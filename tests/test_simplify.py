"""ONNX -> simplified ONNX: parity gate, the JSON record, and nothing written on failure."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import pipeline.stages.simplify as simplify
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError


def test_record_beside_the_simplified_model(small_sim_onnx, small_onnx, small_config):
    record = json.loads(small_sim_onnx.with_name(small_sim_onnx.name + ".json").read_text())
    assert record["sha256"] == {"input": hashlib.sha256(small_onnx.read_bytes()).hexdigest(),
                                "output": hashlib.sha256(small_sim_onnx.read_bytes()).hexdigest()}
    assert record["parity"]["max_abs"] <= record["parity"]["tolerance"] == 1e-4
    assert record["parity"]["inputs"] == 3
    assert record["nodes_after"] < record["nodes_before"]
    after = onnx.load(str(small_sim_onnx))
    assert record["ops_after"] == simplify.op_counts(after)
    assert record["ops_after"]["Conv"] == record["ops_before"]["Conv"] == 69
    assert "Constant" not in record["ops_after"] or record["ops_after"]["Constant"] < record["ops_before"]["Constant"]


def test_drift_past_the_tolerance_fails_and_writes_nothing(small_onnx, small_config, tmp_path, monkeypatch):
    real = simplify.onnxsim.simplify

    def drifting(model, **kwargs):
        out, ok = real(model, **kwargs)
        last_conv = [n for n in out.graph.node if n.op_type == "Conv"][-1]
        bias = next(t for t in out.graph.initializer if t.name == last_conv.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
        return out, ok

    monkeypatch.setattr(simplify.onnxsim, "simplify", drifting)
    out = tmp_path / "x.sim.onnx"
    with pytest.raises(PipelineError, match=r"simplified model differs from .*max abs 0\.\d+ > tolerance 0\.0001 "
                                            r"\(pipeline\.parity_tolerance in .*\); nothing written"):
        simplify.simplify_onnx(load_config(small_config), small_onnx, out)
    assert list(tmp_path.iterdir()) == []


def test_missing_input(small_config, tmp_path):
    with pytest.raises(PipelineError, match=r"no such ONNX file \(run `make onnx` first\)"):
        simplify.simplify_onnx(load_config(small_config), tmp_path / "absent.onnx", tmp_path / "out.onnx")


def test_truncated_onnx_is_one_line_and_writes_nothing(small_onnx, small_config, tmp_path, capsys):
    from pipeline.cli import main
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(small_onnx.read_bytes()[:-1000])
    out = tmp_path / "out" / "x.sim.onnx"
    code = main(["simplify", "--config", str(small_config), "--onnx", str(broken), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {broken}: not a valid ONNX model (") and err.endswith("make onnx`")
    assert not (tmp_path / "out").exists()


def test_the_record_is_written_before_the_model(small_onnx, small_config, tmp_path, monkeypatch):
    """Make checks OUT: a run killed between the two writes must not leave OUT without OUT.json."""
    def killed(dest, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(simplify, "write_bytes", killed)
    out = tmp_path / "x.sim.onnx"
    with pytest.raises(KeyboardInterrupt):
        simplify.simplify_onnx(load_config(small_config), small_onnx, out)
    assert not out.exists() and (tmp_path / "x.sim.onnx.json").is_file()
