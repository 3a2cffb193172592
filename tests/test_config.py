"""The config loader: official values, and one clear line for every kind of bad config."""
from __future__ import annotations

import copy

import pytest

from conftest import FP16_CONFIG, INT8_CONFIG, config_dict, write_config
from pipeline.core.config import Normalize, Resize, load_config
from pipeline.core.errors import PipelineError


def test_official_configs_carry_the_vendor_recipe():
    fp16, int8 = load_config(FP16_CONFIG), load_config(INT8_CONFIG)
    for cfg in (fp16, int8):
        assert cfg.input_shape == (1, 3, 480, 288)
        assert cfg.frontend.input_name == "input"
        assert cfg.backend.type == "tvm_vacc"
        assert cfg.dataset.suffix == "jpg" and cfg.dataset.get_data_num == 50
        assert [type(op).__name__ for op in cfg.dataset.process_ops] == ["DecodeImage", "Resize", "Normalize",
                                                                          "ToTensor"]
        assert cfg.normalize == Normalize(div255=False, mean=(127.5,) * 3, std=(127.5,) * 3)
        assert next(op for op in cfg.dataset.process_ops if isinstance(op, Resize)).size == (480, 288)
        assert cfg.pipeline.opset == 17 and cfg.pipeline.parity_tolerance == 1e-4
        assert "pipeline" not in cfg.vamc and set(cfg.vamc) == {"name", "frontend", "backend", "dataset", "workspace"}
    assert (fp16.name, fp16.backend.dtype, fp16.backend.quantize) == ("official_modnet_fp16", "fp16", None)
    assert int8.name == "official_modnet_int8" and int8.backend.dtype == "int8"
    assert int8.backend.quantize.calibrate_mode == "kl_divergence"
    assert int8.backend.quantize.quantize_per_channel is True
    assert int8.backend.compile == {"data_transport_mode": 1, "cluster_mode": 0}


def _mutate(raw, path, value):
    *parents, last = path
    node = raw
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value


BAD = [
    # (path to change, new value, expected key path in the message, expected words)
    (("extra",), 1, "extra", "unknown key"),
    (("backend", "compile", "data_transport"), 1, "backend.compile.data_transport", "unknown key"),
    (("frontend", "shape"), KeyError, "frontend.shape", "missing required key"),
    (("frontend", "shape", "input"), "1x3x480x288", "frontend.shape.input", "expected a list"),
    (("frontend", "shape", "input"), [1, 3, 480], "frontend.shape.input", "expected 4 items"),
    (("frontend", "shape", "input"), [1, 3, -480, 288], "frontend.shape.input[2]", "must be >= 1"),
    (("frontend", "shape", "input"), [1, 3, 480.0, 288], "frontend.shape.input[2]", "expected an integer"),
    (("frontend", "shape", "input"), [1, 3, 481, 288], "frontend.shape.input", "multiples of 32"),
    (("dataset", "process_ops", 2, "std"), [127.5, 0, 127.5], "dataset.process_ops[2].std", "std of 0"),
    (("dataset", "process_ops", 1, "type"), "Warp", "dataset.process_ops[1].type", "unknown or unsupported op"),
    (("dataset", "process_ops", 1, "size"), [512, 288], "dataset.process_ops", "does not match"),
    (("dataset", "sampler", "get_data_num"), "50", "dataset.sampler.get_data_num", "expected an integer"),
    (("backend", "dtype"), "int4", "backend.dtype", "not one of fp16, int8"),
    (("pipeline", "parity_tolerance"), "1e-4", "pipeline.parity_tolerance", "write 1.0e-4"),
    (("pipeline", "seed"), True, "pipeline.seed", "expected an integer"),
    # issue 9: batch 1 only, a positive std, a gate that can fail, names that stay inside their folders
    (("frontend", "shape", "input"), [2, 3, 480, 288], "frontend.shape.input[0]", "batch size must be 1"),
    (("dataset", "process_ops", 2, "std"), [127.5, -1.0, 127.5], "dataset.process_ops[2].std", "must be > 0"),
    (("pipeline", "gate"), KeyError, "pipeline.gate", "missing required key"),
    (("pipeline",), KeyError, "pipeline.gate", "missing required key"),
    (("pipeline", "gate", "max_mad_increase"), KeyError, "pipeline.gate.max_mad_increase", "missing required key"),
    (("name",), "../outside", "name", "path separator"),
    (("name",), "..", "name", "starts with a dot"),
    (("name",), ".hidden", "name", "starts with a dot"),
    (("name",), "a..b", "name", "holds `..`"),
    (("dataset", "sampler", "suffix"), "jpg/../../x", "dataset.sampler.suffix", "path separator"),
    (("pipeline", "conv_numbering"), "tvm", "pipeline.conv_numbering", "not one of vamc, onnx"),
]


@pytest.mark.parametrize("path,value,where,words", BAD, ids=[".".join(map(str, b[0])) + "=" + repr(b[1])
                                                             for b in BAD])
def test_bad_values_name_file_and_key(tmp_path, path, value, where, words):
    raw = config_dict(FP16_CONFIG)
    _mutate(raw, path, value)
    cfg_path = write_config(tmp_path / "bad.yaml", raw)
    with pytest.raises(PipelineError) as err:
        load_config(cfg_path)
    message = str(err.value)
    assert message.startswith(f"config error: {cfg_path}: {where}: "), message
    assert words in message and "\n" not in message


# Every float setting (issue 17): NaN passes any range check, so a limit of .nan would be a gate that cannot fail.
FLOAT_KEYS = [
    (("pipeline", "parity_tolerance"), "pipeline.parity_tolerance"),
    (("pipeline", "gate", "max_mse_increase"), "pipeline.gate.max_mse_increase"),
    (("pipeline", "gate", "max_mad_increase"), "pipeline.gate.max_mad_increase"),
    (("pipeline", "gate", "max_miou_drop"), "pipeline.gate.max_miou_drop"),
    (("pipeline", "tune", "max_mad_increase"), "pipeline.tune.max_mad_increase"),
    (("pipeline", "tune", "max_miou_drop"), "pipeline.tune.max_miou_drop"),
    (("dataset", "process_ops", 2, "mean", 0), "dataset.process_ops[2].mean[0]"),
    (("dataset", "process_ops", 2, "std", 1), "dataset.process_ops[2].std[1]"),
    (("backend", "quantize", "calibrate_range"), "backend.quantize.calibrate_range"),
]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path,where", FLOAT_KEYS, ids=[w for _, w in FLOAT_KEYS])
def test_every_float_setting_refuses_nan_and_infinity(tmp_path, path, where, value):
    raw = config_dict(INT8_CONFIG)
    raw["backend"]["quantize"].update(calibrate_mode="percentile", calibrate_range=0.99999)
    raw["pipeline"].setdefault("tune", {})
    _mutate(raw, path, value)
    cfg_path = write_config(tmp_path / "bad.yaml", raw)
    assert (".nan" if value != value else ".inf") in cfg_path.read_text()  # as a user would write it in YAML
    with pytest.raises(PipelineError) as err:
        load_config(cfg_path)
    assert str(err.value) == f"config error: {cfg_path}: {where}: must be a finite number, got {value}"


def test_int8_needs_known_calibrate_mode(tmp_path):
    raw = config_dict(INT8_CONFIG)
    raw["backend"]["quantize"]["calibrate_mode"] = "entropy"
    with pytest.raises(PipelineError, match=r"backend\.quantize\.calibrate_mode: 'entropy' is not one of "
                                            r"kl_divergence, max, percentile, mse"):
        load_config(write_config(tmp_path / "bad.yaml", raw))


def test_percentile_needs_a_range_and_passthrough_keys_are_kept(tmp_path):
    raw = config_dict(INT8_CONFIG)
    raw["backend"]["quantize"]["calibrate_mode"] = "percentile"
    with pytest.raises(PipelineError, match=r"calibrate_range: required when calibrate_mode is percentile"):
        load_config(write_config(tmp_path / "a.yaml", raw))
    raw["backend"]["quantize"].update(calibrate_range=0.99999, skip_conv_layers=[2, 0])
    cfg = load_config(write_config(tmp_path / "b.yaml", raw))
    assert cfg.backend.quantize.calibrate_range == 0.99999
    assert cfg.backend.quantize.skip_conv_layers == (0, 2)
    assert cfg.vamc["backend"]["quantize"]["skip_conv_layers"] == [2, 0]  # vamc gets the file as written


def test_conv_numbering_defaults_to_vamc(tmp_path):
    raw = config_dict(INT8_CONFIG)
    assert load_config(write_config(tmp_path / "a.yaml", raw)).pipeline.conv_numbering == "vamc"
    raw["pipeline"]["conv_numbering"] = "onnx"
    assert load_config(write_config(tmp_path / "b.yaml", raw)).pipeline.conv_numbering == "onnx"


def test_unreadable_files(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PipelineError, match=r"not valid YAML at line \d"):
        load_config(broken)
    for empty in ("", "# only a comment\n"):
        broken.write_text(empty)
        with pytest.raises(PipelineError) as err:
            load_config(broken)
        assert str(err.value) == f"config error: {broken} is empty (copy one of build_configs/*.yaml to start from)"
    broken.write_text("- just\n- a list\n")
    with pytest.raises(PipelineError, match="expected a mapping, got list"):
        load_config(broken)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, capsys):
    from pipeline.cli import main
    raw = copy.deepcopy(config_dict(FP16_CONFIG))
    raw["frontend"]["shape"]["input"] = [1, 3, 480]
    cfg_path = write_config(tmp_path / "bad.yaml", raw)
    out = tmp_path / "never.onnx"
    assert main(["export", "--config", str(cfg_path), "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: config error: {cfg_path}: frontend.shape.input: "
                                                    f"expected 4 items, got 3"]
    assert not out.exists()
