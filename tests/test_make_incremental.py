"""The Makefile reruns exactly the stages whose inputs changed, beyond export/simplify (test_make.py): calibration,
fp16/int8, evaluation on a change of DATA's contents, release, a lost calibration list, a BACKEND switch, and the
vamc compiler (VAMC_COMMAND, its --version). Make drives the stand-in PY of recording_py.py (each stage recorded, its
target written), step by step; each step names the `python -m pipeline` stages Make ran. The real stages keep to the
targets the stand-in writes: test_verify.py's `make release` twice runs only the gate and release the second time."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter

import cv2
import pytest

import recording_py
from conftest import INT8_CONFIG, REPO, small_config_dict, write_config

pytestmark = pytest.mark.slow  # Make itself: every run starts deps.py and reads the whole Makefile

STANDIN_VAMC = '''#!{python}
"""Stand-in vendor compiler's --version (the builds themselves are the stand-in PY's): prints STANDIN_VERSION."""
import os, sys
assert sys.argv[1:] == ["--version"], sys.argv
print(os.environ.get("STANDIN_VERSION", "vamc stand-in 1.0"))
'''


def make(variables: dict, *targets: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(["make", "--no-print-directory", *args, *targets], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def stages(variables: dict, *targets: str, env: dict | None = None) -> Counter:
    done = make(variables, *targets, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Counter(line.split()[3] for line in done.stdout.splitlines() if " -m pipeline " in line)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_ckpt):
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("incremental")
    write_demo_data(root / "PPM-100", count=4, seed=5, scale=0.1)
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 2
    raw["backend"]["quantize"]["calibrate_mode"] = "max"
    raw["pipeline"]["gate"] = {"max_mse_increase": 1.0, "max_mad_increase": 1.0, "max_miou_drop": 1.0}
    fp16 = small_config_dict()
    fp16["pipeline"]["gate"] = raw["pipeline"]["gate"]  # random weights: the gate is not what is tested here
    vamc = root / "bin" / "vamc"
    vamc.parent.mkdir()
    vamc.write_text(STANDIN_VAMC.format(python=sys.executable))
    vamc.chmod(0o755)
    standins, calls = recording_py.install(root / "py")
    variables = {**standins, "ART": root / "art", "CKPT": demo_ckpt, "DATA": root / "PPM-100",
                 "BACKEND": "ort",
                 "CONFIG": write_config(root / "small_fp16.yaml", fp16),
                 "CONFIG_FP16": root / "small_fp16.yaml", "CONFIG_INT8": write_config(root / "small_int8.yaml", raw),
                 "CALIB_LIST": root / "small_int8.txt"}
    return root, variables, vamc, calls


EVAL = Counter(evaluate=3, report=1, gate=1)


def test_each_change_reruns_exactly_its_stages(setup):
    root, v, vamc, calls = setup
    everything = Counter(export=2, simplify=2, calib=1, build=2, release=1) + EVAL
    assert stages(v, "release") == everything
    assert stages(v, "release") == Counter(gate=1, release=1)  # nothing changed: the gate and "already there"

    # DATA's contents change (one matte edited in place, same path, same size): evaluation and a new release
    matte = sorted((root / "PPM-100" / "matte").iterdir())[0]
    cv2.imwrite(str(matte), 255 - cv2.imread(str(matte), cv2.IMREAD_GRAYSCALE))
    assert stages(v, "release") == EVAL + Counter(release=1)
    # (the new bundle's name, from the data it scored: test_release.py::test_different_inputs_get_a_different_name)

    # a lost calibration list is drawn again by the stage that writes it (then int8 and its evaluation follow)
    os.remove(root / "small_int8.txt")
    assert stages(v, "release") == Counter(calib=1, build=1, evaluate=1, report=1, gate=1, release=1)
    assert (root / "small_int8.txt").is_file()

    # LIMIT is an input of evaluation
    assert stages({**v, "LIMIT": 2}, "eval") == EVAL

    # BACKEND switch: the vamc engines are built beside the ort ones, nothing upstream reruns
    vamc_vars = {**v, "BACKEND": "vamc", "VAMC": vamc}
    assert stages(vamc_vars, "fp16", "int8") == Counter(build=2)
    built = calls()[-2:]
    assert [(c["args"][c["args"].index("--backend") + 1], c["VAMC"]) for c in built] == [("vamc", str(vamc))] * 2
    assert stages(vamc_vars, "fp16", "int8") == Counter()
    assert stages(v, "fp16", "int8") == Counter()  # and back: the ort engines are still current
    # the compiler is an input of vamc engines: another --version, another VAMC_COMMAND
    assert stages(vamc_vars, "fp16", "int8", env={"STANDIN_VERSION": "vamc stand-in 1.1"}) == Counter(build=2)
    assert stages({**vamc_vars, "VAMC_COMMAND": "build"}, "fp16", "int8",
                  env={"STANDIN_VERSION": "vamc stand-in 1.1"}) == Counter(build=2)
    # the build reaches vamc with VAMC_COMMAND from Make's environment (test_backend_vamc.py: it runs `vamc build`)
    assert [c["VAMC_COMMAND"] for c in calls()[-2:]] == ["build", "build"]


def test_demo_count_is_honoured(tmp_path):
    """DEMO_COUNT is an input of the generated folder, recorded like CKPT and DATA (DEMO moved to a scratch place)."""
    demo = {"DEMO": tmp_path / "demo"}
    images = tmp_path / "demo" / "inputs" / "PPM-100" / "image"
    assert stages({**demo, "DEMO_COUNT": 2}, "demo-data") == Counter({"demo-data": 1})
    assert len(list(images.iterdir())) == 2
    assert stages({**demo, "DEMO_COUNT": 2}, "demo-data") == Counter()
    assert stages({**demo, "DEMO_COUNT": 3}, "demo-data") == Counter({"demo-data": 1})
    assert len(list(images.iterdir())) == 3


def test_data_record_with_a_relative_art(tmp_path):
    """The record's command changes folder; the recipe must still write it under a relative ART (`make demo`)."""
    (tmp_path / "data" / "image").mkdir(parents=True)
    (tmp_path / "data" / "matte").mkdir()
    (tmp_path / "data" / "image" / "a.jpg").write_bytes(b"photo")
    (tmp_path / "data" / "matte" / "a.jpg").write_bytes(b"matte!")
    art = f"artifacts/test-relative-{tmp_path.name}"  # relative, inside the project: the only relative ART allowed
    try:
        done = make({"ART": art, "DATA": tmp_path / "data"}, f"{art}/inputs/data.contents")
        assert done.returncode == 0, done.stderr
        rows = [line.split("\t")[:2] for line in (REPO / art / "inputs" / "data.contents").read_text().splitlines()]
        assert rows == [["image/a.jpg", "5"], ["matte/a.jpg", "6"]]
    finally:
        shutil.rmtree(REPO / art, ignore_errors=True)
