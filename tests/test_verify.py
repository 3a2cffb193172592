"""make release + verify end to end on generated data (small shape, reference backend): a rebuild reproduces the
bundle, and one changed byte of an engine is caught and named."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import INT8_CONFIG, REPO, small_config_dict, write_config


@pytest.fixture(scope="module")
def released(tmp_path_factory, demo_ckpt):
    from pipeline.demo_data import write_demo_data
    root = tmp_path_factory.mktemp("release")
    data = root / "PPM-100"
    write_demo_data(data, count=6, seed=3, scale=0.1)
    fp16 = write_config(root / "small_fp16.yaml", small_config_dict())
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 4
    int8 = write_config(root / "small_int8.yaml", raw)
    variables = [f"ART={root / 'art'}", f"CKPT={demo_ckpt}", f"DATA={data}", "BACKEND=ort",
                 f"CONFIG_FP16={fp16}", f"CONFIG_INT8={int8}", f"CALIB_LIST={root / 'small_int8.txt'}"]
    done = subprocess.run(["make", "--no-print-directory", *variables, "release"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bundles = list((root / "art" / "release").iterdir())
    assert len(bundles) == 1
    again = subprocess.run(["make", "--no-print-directory", *variables, "release"], cwd=REPO, capture_output=True,
                           text=True)
    assert again.returncode == 0 and f"release {bundles[0]} is already there (same inputs)" in again.stdout
    return bundles[0], root


def verify(bundle, scratch) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "verify", "--release", str(bundle), "--scratch",
                           str(scratch)], cwd=REPO, capture_output=True, text=True)


def rows(stdout: str) -> dict[str, str]:
    table = stdout[stdout.index("file "):].splitlines()[2:]
    return {line.split()[0]: line.split()[1] for line in table if line and not line.startswith("verified")}


def test_release_manifest_covers_the_bundle(released):
    bundle, _ = released
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "MANIFEST.json"]
    assert {"engines/small_fp16/ort/model.onnx", "engines/small_int8/ort/model.onnx", "onnx/small_fp16.sim.onnx",
            "configs/small_int8.yaml", "calib/small_int8.txt", "report/report.md",
            "report/eval/int8-ort/metrics.json"} <= set(files)
    assert len(manifest["calibration_images"]) == 4
    assert bundle.name == f"official_modnet-{manifest['inputs_digest'][:12]}"


def test_verify_reproduces_then_catches_one_changed_byte(released):
    bundle, root = released
    scratch = root / "scratch"
    first = verify(bundle, scratch)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    status = rows(first.stdout)
    assert status["engines/small_int8/ort/model.onnx"] == "equal"
    assert status["engines/small_fp16/ort/model.onnx"] == "equal"
    assert status["report/report.md"] == "equal"
    assert status["engines/small_int8/ort/manifest.json"] == "expected"
    assert set(status.values()) == {"equal", "expected"}
    assert "verified:" in first.stdout

    engine = bundle / "engines/small_int8/ort/model.onnx"
    os.chmod(engine, 0o644)
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    second = verify(bundle, scratch)  # same scratch: the rebuild is already there, only the comparison runs
    assert second.returncode == 2
    assert rows(second.stdout)["engines/small_int8/ort/model.onnx"] == "DIFFERENT"
    assert "changed since release" in second.stdout
    assert second.stderr.strip().splitlines()[-1] == (f"error: 1 file(s) of {bundle.name} differ from the rebuild: "
                                                      f"engines/small_int8/ort/model.onnx")
