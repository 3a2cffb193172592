"""Release bundles: contents and hashes, naming by inputs, refusal to overwrite, and verify's comparison."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import FP16_CONFIG, INT8_CONFIG
from pipeline.errors import PipelineError
from pipeline.release import (MANIFEST, ReleaseInputs, assemble, compare, file_hashes, inputs_digest,
                              inputs_record, tampered)


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture()
def fake_build(tmp_path) -> ReleaseInputs:
    """The outputs of `make fp16 int8 eval` as files with known contents (the stages are tested elsewhere)."""
    art = tmp_path / "art"
    configs = tmp_path / "configs"
    configs.mkdir()
    fp16_cfg, int8_cfg = (Path(shutil.copy(c, configs)) for c in (FP16_CONFIG, INT8_CONFIG))
    calib = art / "calib" / "official_modnet_int8"
    images = [{"name": "a.jpg", "sha256": "1" * 64}, {"name": "b.jpg", "sha256": "2" * 64}]
    _write(calib / "manifest.json", json.dumps({"images": images}).encode())
    for name in ("official_modnet_fp16", "official_modnet_int8"):
        _write(art / "onnx" / f"{name}.sim.onnx", b"onnx-bytes")
        _write(art / "onnx" / f"{name}.sim.onnx.json", b"{}")
        _write(art / "engines" / name / "ort" / "model.onnx", f"{name} engine".encode())
        _write(art / "engines" / name / "ort" / "manifest.json", b"{\"backend\": \"ort\"}")
    _write(art / "eval" / "fp32" / "metrics.json", b"{\"mad\": 0.1}")
    return ReleaseInputs(
        name="official_modnet", ckpt=_write(tmp_path / "ckpt" / "modnet.ckpt", b"weights"), data=tmp_path / "data",
        backend="ort", config_fp16=fp16_cfg, config_int8=int8_cfg,
        calib_list=_write(tmp_path / "lists" / "official_modnet_int8.txt", b"1111  a.jpg\n"), calib_dir=calib,
        onnx_fp16=art / "onnx" / "official_modnet_fp16.sim.onnx", onnx_int8=art / "onnx" / "official_modnet_int8.sim.onnx",
        engine_fp16=art / "engines" / "official_modnet_fp16" / "ort",
        engine_int8=art / "engines" / "official_modnet_int8" / "ort",
        report=(_write(art / "report.md", b"# report"), _write(art / "report.png", b"png")), eval_dir=art / "eval")


EXPECTED_FILES = [
    "calib/official_modnet_int8.txt",
    "configs/official_modnet_fp16.yaml",
    "configs/official_modnet_int8.yaml",
    "engines/official_modnet_fp16/ort/manifest.json",
    "engines/official_modnet_fp16/ort/model.onnx",
    "engines/official_modnet_int8/ort/manifest.json",
    "engines/official_modnet_int8/ort/model.onnx",
    "onnx/official_modnet_fp16.sim.onnx",
    "onnx/official_modnet_fp16.sim.onnx.json",
    "onnx/official_modnet_int8.sim.onnx",
    "onnx/official_modnet_int8.sim.onnx.json",
    "report/eval/fp32/metrics.json",
    "report/report.md",
    "report/report.png",
]


def test_bundle_contents_and_manifest(fake_build, tmp_path):
    bundle, written = assemble(fake_build, tmp_path / "release")
    assert written
    manifest = json.loads((bundle / MANIFEST).read_text())
    digest = manifest["inputs_digest"]
    assert bundle.name == f"official_modnet-{digest[:12]}" == manifest["name"]
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == sorted(EXPECTED_FILES + [MANIFEST])
    assert list(manifest["files"]) == EXPECTED_FILES
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == sha
    assert (bundle / "engines/official_modnet_int8/ort/model.onnx").read_bytes() == b"official_modnet_int8 engine"
    assert manifest["inputs"]["checkpoint"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert manifest["inputs"]["configs"]["int8"] == {"file": "official_modnet_int8.yaml",
                                                     "sha256": hashlib.sha256(INT8_CONFIG.read_bytes()).hexdigest()}
    assert manifest["calibration_images"] == [{"name": "a.jpg", "sha256": "1" * 64},
                                              {"name": "b.jpg", "sha256": "2" * 64}]
    assert {"torch", "onnxruntime", "numpy"} <= set(manifest["versions"])
    assert set(manifest["repository"]) == {"commit", "clean"}
    assert not any(p.stat().st_mode & stat.S_IWUSR for p in bundle.rglob("*") if p.is_file())  # read-only
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == [bundle.name]  # no temp folder left


def test_same_inputs_same_name_and_never_overwritten(fake_build, tmp_path):
    bundle, _ = assemble(fake_build, tmp_path / "release")
    before = file_hashes(bundle)
    os.chmod(fake_build.engine_int8 / "model.onnx", 0o644)
    (fake_build.engine_int8 / "model.onnx").write_bytes(b"a rebuilt engine")  # outputs are not inputs
    again, written = assemble(fake_build, tmp_path / "release")
    assert (again, written) == (bundle, False)
    assert file_hashes(bundle) == before


@pytest.mark.parametrize("change", ["checkpoint", "config", "calibration list", "backend"])
def test_different_inputs_get_a_different_name(fake_build, tmp_path, change):
    first, _ = assemble(fake_build, tmp_path / "release")
    if change == "checkpoint":
        fake_build.ckpt.write_bytes(b"other weights")
    elif change == "config":
        fake_build.config_int8.write_text(fake_build.config_int8.read_text().replace("seed: 0", "seed: 1"))
    elif change == "calibration list":
        fake_build.calib_list.write_bytes(b"2222  b.jpg\n")
    else:
        fake_build = ReleaseInputs(**{**fake_build.__dict__, "backend": "vamc"})
    second, written = assemble(fake_build, tmp_path / "release")
    assert written and second != first and second.name.startswith("official_modnet-")


def test_digest_ignores_where_inputs_live(fake_build, tmp_path):
    moved = tmp_path / "elsewhere.ckpt"
    shutil.copy(fake_build.ckpt, moved)
    a = inputs_digest(inputs_record(fake_build))
    b = inputs_digest(inputs_record(ReleaseInputs(**{**fake_build.__dict__, "ckpt": moved})))
    assert a == b


def test_missing_outputs_are_named(fake_build, tmp_path):
    (fake_build.report[0]).unlink()
    with pytest.raises(PipelineError, match=r"report\.md: missing; `make release` needs the outputs of "
                                            r"`make fp16 int8 eval`"):
        assemble(fake_build, tmp_path / "release")
    assert not (tmp_path / "release").exists() or list((tmp_path / "release").iterdir()) == []


def test_compare_classifies_every_file(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    metrics = {"mad": 0.1, "manifest_sha256": "a", "engine": {"sha256": "a", "model_files": {"model.onnx": "m"}}}
    files = {
        "engines/a/ort/model.onnx": (b"1", b"1"),
        "engines/a/ort/manifest.json": (b"{\"time\": 1}", b"{\"time\": 2}"),
        "onnx/x.onnx": (b"3", b"Y"),
        "report/eval/fp32/metrics.json": (json.dumps(metrics).encode(),
                                          json.dumps({**metrics, "manifest_sha256": "b",
                                                      "engine": {**metrics["engine"], "sha256": "b"}}).encode()),
        "report/eval/int8/metrics.json": (json.dumps(metrics).encode(), json.dumps({**metrics, "mad": 0.2}).encode()),
        "gone.txt": (b"5", None),
        "new.txt": (None, b"6"),
    }
    for rel, (a, b) in files.items():
        if a is not None:
            _write(ours / rel, a)
        if b is not None:
            _write(theirs / rel, b)
    rows = {rel: status for rel, status, _ in compare(ours, theirs)}
    assert rows == {"engines/a/ort/model.onnx": "equal", "engines/a/ort/manifest.json": "expected",
                    "onnx/x.onnx": "DIFFERENT", "report/eval/fp32/metrics.json": "expected",
                    "report/eval/int8/metrics.json": "DIFFERENT", "gone.txt": "MISSING", "new.txt": "EXTRA"}


def test_tampering_is_detected_against_the_bundle_manifest(fake_build, tmp_path):
    bundle, _ = assemble(fake_build, tmp_path / "release")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert tampered(bundle, manifest) == []
    engine = bundle / "engines/official_modnet_int8/ort/model.onnx"
    os.chmod(engine, 0o644)
    data = bytearray(engine.read_bytes())
    data[0] ^= 1
    engine.write_bytes(bytes(data))
    assert tampered(bundle, manifest) == ["engines/official_modnet_int8/ort/model.onnx"]
