"""The vamc backend, driven against a STAND-IN for the vendor compiler (vamc itself is not installable here).

The stand-in (tests/standin_vamc.py, put on PATH by conftest's `standin` fixture) is a small script. It checks
that the YAML it receives honours the contract of docs/vamc-build-config.md, records how it was
called, and writes three small placeholder files where vamc would put the engine. It builds nothing real: these
tests check our side of the contract only.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml

from conftest import FP16_CONFIG, INT8_CONFIG, REPO, StubProgress, config_dict, write_config
from pipeline.backends.engine import build_engine
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError

ENGINE_LISTING = [".pipeline-stage", "manifest.json", "mod.json", "mod.params", "mod.so", "vamc.log", "vamc.yaml", "vdsp_params.json"]
OFFICIAL_VDSP = {
    "OpType": "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR",
    "OpConfig": {
        "IimageFormat": "RGB_PLANAR", "IimageWidth": 288, "IimageHeight": 480, "OimageWidth": 288,
        "OimageHeight": 480, "IimageWidthPitch": 288, "IimageHeightPitch": 480,
        "Mean": [127.5, 127.5, 127.5], "Std": [127.5, 127.5, 127.5], "NormaType": "MINUSMEAN_DIVSTD",
        "ColorCvtCode": "BGR2RGB", "ResizeType": "BILINEAR_CV",
    },
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "onnx" / "official_modnet.sim.onnx"
    path.parent.mkdir()
    onnx.save(tiny_model(), str(path))  # build checks the file is a whole ONNX model; the stand-in never parses it
    return path


def tiny_model():
    """A valid one-node ONNX with the official input: what `build` checks before any backend runs."""
    from onnx import TensorProto, helper
    shape = [1, 3, 480, 288]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_calib(root: Path, count: int = 3) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(count):
        path = images / f"pic_{i:02d}.jpg"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (8, 6, 3), dtype=np.uint8))
        entries.append({"name": path.name, "sha256": sha(path)})
    shape = [count, 3, 480, 288]  # the official input: what `make calib` writes for the official int8 config
    np.save(root / "tensors.npy", np.zeros(shape, np.float32))
    tensors = {"file": "tensors.npy", "dtype": "float32", "shape": shape, "sha256": sha(root / "tensors.npy")}
    (root / "manifest.json").write_text(json.dumps({"count": count, "images": entries, "tensors": tensors}))
    return root


@pytest.fixture
def calib(tmp_path) -> Path:
    return make_calib(tmp_path / "calib")


def run_build(config: Path, onnx: Path, out: Path, calib: Path | None = None) -> dict:
    os.environ["STANDIN_VAMC_SOURCE"] = str(config)
    return build_engine("vamc", load_config(config), onnx, calib, out, progress=StubProgress())


@pytest.fixture(autouse=True)
def _source_env(monkeypatch):
    monkeypatch.setenv("STANDIN_VAMC_SOURCE", "")  # restored after each test; run_build sets it


def expected_yaml(source: Path, name: str, checkpoint: Path, dtype: str, data_path: str, num: int,
                  workspace: Path, quantize: str = "") -> str:
    return (
        f"# vamc build config written by `python -m pipeline build` from {source}: its `pipeline:` section "
        f"removed,\n# paths made absolute, output steered to <workspace.path>/<name>/mod.*\n"
        f"name: {name}\n"
        f"frontend:\n  type: onnx\n  checkpoint: {checkpoint}\n  shape:\n    input: [1, 3, 480, 288]\n"
        f"  dtype: fp32\n"
        f"backend:\n  type: tvm_vacc\n  dtype: {dtype}\n  compile:\n    data_transport_mode: 1\n"
        f"    cluster_mode: 0\n{quantize}"
        f"dataset:\n  type: tvm\n  path: {data_path}\n  sampler:\n    suffix: jpg\n    get_data_num: {num}\n"
        f"  process_ops:\n  - type: DecodeImage\n  - type: Resize\n    size: [480, 288]\n"
        f"  - type: Normalize\n    div255: false\n    mean: [127.5, 127.5, 127.5]\n"
        f"    std: [127.5, 127.5, 127.5]\n  - type: ToTensor\n"
        f"workspace:\n  path: {workspace}\n"
    )


def test_fp16_yaml_command_work_folder_and_manifest(tmp_path, standin, onnx_file, capfd):
    out = tmp_path / "engines" / "official_modnet_fp16" / "vamc"
    manifest = run_build(FP16_CONFIG, onnx_file, out)

    assert sorted(p.name for p in out.iterdir()) == ENGINE_LISTING  # work/ was left empty: removed
    yaml_text = (out / "vamc.yaml").read_text()
    assert yaml_text == expected_yaml(FP16_CONFIG, "vamc", onnx_file.resolve(), "fp16",
                                      "./datasets/seg/PPM-100/image", 50, out.parent)

    calls = standin()
    assert calls[0] == {"argv": ["--version"], "cwd": calls[0]["cwd"]}
    assert calls[1] == {"argv": ["compile", str(out / "vamc.yaml")], "cwd": str(out / "work")}
    assert calls[2] == {"yaml": yaml_text}
    assert len(calls) == 3

    for name in ("mod.so", "mod.json", "mod.params"):
        assert (out / name).read_text() == f"STAND-IN placeholder {name}\n"
    assert json.loads((out / "vdsp_params.json").read_text()) == OFFICIAL_VDSP

    # streamed to the terminal and to the log, stdout and stderr alike
    log = (out / "vamc.log").read_text()
    shown = capfd.readouterr().out
    for text in ("STAND-IN vamc: contract checked", "stderr line from the stand-in", "exited with status 0"):
        assert text in log and text in shown
    assert log.splitlines()[0] == f"$ {standin.script} compile {out / 'vamc.yaml'}    (in {out / 'work'})"

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["backend"] == "vamc" and manifest["dtype"] == "fp16"
    assert manifest["engine"] == {n: {"sha256": sha(out / n), "bytes": (out / n).stat().st_size}
                                  for n in ("mod.so", "mod.json", "mod.params")}
    assert manifest["onnx"] == {"path": str(onnx_file.resolve()), "sha256": sha(onnx_file)}
    assert manifest["config"]["sha256"] == sha(FP16_CONFIG)
    assert manifest["vamc"] == {
        "executable": str(standin.script), "argv": ["compile", str(out / "vamc.yaml")], "cwd": str(out / "work"),
        "version": "vamc STAND-IN 0.0 (tests)", "yaml_sha256": sha(out / "vamc.yaml"),
        "yaml": yaml.safe_load(yaml_text),
    }
    assert manifest["vdsp_params"] == {"path": "vdsp_params.json", "sha256": sha(out / "vdsp_params.json")}
    assert manifest["engine_prefix"] == str(out / "mod")
    assert "calibration" not in manifest


def test_int8_official_yaml_points_at_the_calibration_images(tmp_path, standin, onnx_file, calib):
    out = tmp_path / "engines" / "official_modnet_int8" / "vamc"
    manifest = run_build(INT8_CONFIG, onnx_file, out, calib)

    quantize = "  quantize:\n    calibrate_mode: kl_divergence\n    quantize_per_channel: true\n"
    yaml_text = (out / "vamc.yaml").read_text()
    assert yaml_text == expected_yaml(INT8_CONFIG, "vamc", onnx_file.resolve(), "int8",
                                      str((calib / "images").resolve()), 3, out.parent, quantize)
    assert standin()[2] == {"yaml": yaml_text}
    assert manifest["calibration"] == {
        "path": str(calib.resolve()), "manifest_sha256": sha(calib / "manifest.json"),
        "images_path": str((calib / "images").resolve()), "count": 3,
    }
    assert manifest["vamc"]["yaml"]["dataset"]["sampler"] == {"suffix": "jpg", "get_data_num": 3}
    assert json.loads((out / "vdsp_params.json").read_text()) == OFFICIAL_VDSP


def test_keys_we_do_not_interpret_pass_through(tmp_path, standin, onnx_file, calib):
    raw = config_dict(INT8_CONFIG)
    raw["backend"]["compile"] = {"data_transport_mode": 3, "cluster_mode": 1, "opt_level": 2}
    raw["backend"]["quantize"] = {"calibrate_mode": "percentile", "quantize_per_channel": True,
                                  "calibrate_range": 0.99999, "skip_conv_layers": [0, 1, 2],
                                  "calibrate_chunk_by": -1, "overflow_adaptive": 1}
    config = write_config(tmp_path / "tuned_int8.yaml", raw)
    out = tmp_path / "engine"
    run_build(config, onnx_file, out, calib)  # the stand-in fails the build if any key changed

    doc = yaml.safe_load((out / "vamc.yaml").read_text())
    assert doc["backend"] == raw["backend"]
    assert list(doc) == ["name", "frontend", "backend", "dataset", "workspace"]
    assert list(doc["backend"]["quantize"]) == ["calibrate_mode", "quantize_per_channel", "calibrate_range",
                                                "skip_conv_layers", "calibrate_chunk_by", "overflow_adaptive"]
    assert "skip_conv_layers: [0, 1, 2]\n" in (out / "vamc.yaml").read_text()
    assert (doc["name"], doc["workspace"]) == ("engine", {"path": str(tmp_path)})


def test_vamc_and_vamc_command_variables(tmp_path, standin, onnx_file, monkeypatch):
    other = tmp_path / "bin" / "vamc-3.4-standin"
    other.write_text(standin.script.read_text())
    other.chmod(0o755)
    monkeypatch.setenv("VAMC", str(other))
    monkeypatch.setenv("VAMC_COMMAND", "build")
    monkeypatch.setenv("STANDIN_VAMC_NO_VERSION", "1")
    out = tmp_path / "engine"
    manifest = run_build(FP16_CONFIG, onnx_file, out)

    assert standin()[1] == {"argv": ["build", str(out / "vamc.yaml")], "cwd": str(out / "work")}
    assert manifest["vamc"]["executable"] == str(other)
    assert manifest["vamc"]["argv"] == ["build", str(out / "vamc.yaml")]
    assert manifest["vamc"]["version"] is None  # `--version` failed: recorded as unknown


def test_relative_vamc_is_resolved_once_against_the_folder_make_runs_in(tmp_path, standin, onnx_file, monkeypatch):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "vamc").write_text(standin.script.read_text())
    (tools / "vamc").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAMC", "tools/vamc")  # vamc itself runs in ENGINE_DIR/work, where this path means nothing
    out = tmp_path / "engine"
    manifest = run_build(FP16_CONFIG, onnx_file, out)
    assert manifest["vamc"]["executable"] == str(tools / "vamc")
    assert {"argv": ["compile", str(out / "vamc.yaml")], "cwd": str(out / "work")} in standin()
    assert (out / "mod.so").is_file()


def test_unknown_vamc_command_is_refused_before_anything_runs(tmp_path, standin, onnx_file, monkeypatch):
    monkeypatch.setenv("VAMC_COMMAND", "convert")
    with pytest.raises(PipelineError, match=r"VAMC_COMMAND='convert'.*compile.*build"):
        run_build(FP16_CONFIG, onnx_file, tmp_path / "engine")
    assert standin() == [] and not (tmp_path / "engine").exists()


def test_missing_vamc_says_how_to_get_it_and_leaves_nothing(tmp_path, onnx_file, monkeypatch, capsys):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("VAMC", raising=False)
    out = tmp_path / "engines" / "official_modnet_fp16" / "vamc"
    from pipeline.cli import main
    code = main(["build", "--config", str(FP16_CONFIG), "--onnx", str(onnx_file), "--backend", "vamc",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: the vendor compiler `vamc` is not on PATH")
    assert "Vastai VAMC toolkit" in err and "BACKEND=ort" in err
    assert not out.exists() and not out.parent.exists()


def test_vamc_failure_keeps_the_log_and_removes_partial_outputs(tmp_path, standin, onnx_file, monkeypatch):
    monkeypatch.setenv("STANDIN_VAMC_FAIL", "1")
    out = tmp_path / "engines" / "official_modnet_fp16" / "vamc"
    failed_log = out.parent / "vamc.failed.log"
    with pytest.raises(PipelineError) as info:
        run_build(FP16_CONFIG, onnx_file, out)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("`vamc compile` failed with exit status 3 (last output: STAND-IN vamc: failing on "
                              "purpose)")
    assert message.endswith(f"partial outputs removed, log kept: {failed_log}")
    assert not out.exists()  # mod.so, written before the failure, went with the rest
    assert sorted(p.name for p in out.parent.iterdir()) == ["vamc.failed.log"]
    log = failed_log.read_text()
    assert "STAND-IN vamc: failing on purpose" in log and "exited with status 3" in log


def test_missing_output_file_is_a_failure(tmp_path, standin, onnx_file, calib, monkeypatch):
    monkeypatch.setenv("STANDIN_VAMC_SKIP", "mod.params")
    out = tmp_path / "engines" / "official_modnet_int8" / "vamc"
    with pytest.raises(PipelineError, match=r"exited 0 but left mod\.params missing or empty .*log kept: "):
        run_build(INT8_CONFIG, onnx_file, out, calib)
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["vamc.failed.log"]
    assert "exited with status 0" in (out.parent / "vamc.failed.log").read_text()


def test_failure_puts_the_previous_engine_back_and_success_clears_the_old_log(tmp_path, standin, onnx_file,
                                                                               monkeypatch):
    out = tmp_path / "engine"
    run_build(FP16_CONFIG, onnx_file, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    monkeypatch.setenv("STANDIN_VAMC_FAIL", "1")
    with pytest.raises(PipelineError):
        run_build(FP16_CONFIG, onnx_file, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".engine", "engine"))) == \
        ["engine", "engine.failed.log"]

    monkeypatch.delenv("STANDIN_VAMC_FAIL")
    run_build(FP16_CONFIG, onnx_file, out)
    assert not (tmp_path / "engine.failed.log").exists()


@pytest.mark.parametrize("damage, message", [
    ("extra", r"holds 'notes\.txt', which is not a `\*jpg` image"),
    ("count", r"manifest\.json: records 3 images and tensors of shape \[3, 3, 480, 288\], but .* needs "
              r"\[4, 3, 480, 288\]"),
    ("content", r"pic_01\.jpg: content differs from its sha256"),
])
def test_calibration_folder_must_match_its_manifest(tmp_path, standin, onnx_file, calib, damage, message):
    if damage == "extra":
        (calib / "images" / "notes.txt").write_text("not an image")
    elif damage == "count":
        manifest = json.loads((calib / "manifest.json").read_text())
        manifest["count"] = 4
        (calib / "manifest.json").write_text(json.dumps(manifest))
    else:
        (calib / "images" / "pic_01.jpg").write_bytes(b"changed")
    with pytest.raises(PipelineError, match=message):
        run_build(INT8_CONFIG, onnx_file, tmp_path / "engine", calib)
    assert standin() == [] and not (tmp_path / "engine").exists()


def test_vdsp_params_follow_the_config(tmp_path):
    from pipeline.backends.vamc.build import vdsp_params
    raw = config_dict(FP16_CONFIG)
    raw["dataset"]["process_ops"][2] = {"type": "Normalize", "div255": True, "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225]}
    params = vdsp_params(load_config(write_config(tmp_path / "imagenet.yaml", raw)))["OpConfig"]
    # the vendor's convention for div255: its own NormaType, mean and std as written (0..1), not times 255
    assert params["NormaType"] == "DIV255_MINUSMEAN_DIVSTD"
    assert params["Mean"] == [0.485, 0.456, 0.406] and params["Std"] == [0.229, 0.224, 0.225]
    assert {k: v for k, v in params.items() if k not in ("NormaType", "Mean", "Std")} == \
        {k: v for k, v in OFFICIAL_VDSP["OpConfig"].items() if k not in ("NormaType", "Mean", "Std")}

    raw["dataset"]["process_ops"].insert(1, {"type": "CvtColor", "code": "COLOR_RGB2BGR"})
    with pytest.raises(PipelineError, match="end in BGR order"):
        vdsp_params(load_config(write_config(tmp_path / "bgr.yaml", raw)))


@pytest.mark.slow
def test_make_exports_vamc_variables():
    text = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "VAMC" in text and "VAMC_COMMAND" in text
    makefile = (REPO / "Makefile").read_text()
    assert "\nexport VAMC VAMC_COMMAND\n" in makefile and "\nBACKEND ?= vamc##" in makefile
