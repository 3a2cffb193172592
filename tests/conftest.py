"""Shared fixtures. Everything here is generated: no official checkpoint or PPM-100 is needed.

Shared by every test module: add fixtures with small edits, do not rewrite this file.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Two test processes share two cores (make test's TEST_JOBS): torch's OpenMP threads spinning while they wait take
# the other process's core (a fifth of the wall time of the torch-heavy files). Alone, one process runs faster
# with the spin, so only test workers wait passively; set before torch loads, inherited by the stages they run.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FP16_CONFIG = REPO / "build_configs" / "official_modnet_fp16.yaml"
INT8_CONFIG = REPO / "build_configs" / "official_modnet_int8.yaml"
# The official tensor names and shapes (data, kept in the repository: a clone has nothing beside it).
LAYOUT = REPO / "tests" / "data" / "modnet_checkpoint_layout.json"
SMALL_HW = (128, 96)  # a static shape MODNet accepts (multiples of 32) that keeps tests fast


# The longest files (1.5 to 2 minutes of work each), first: make test hands its two processes whole files in
# collection order (--no-loadscope-reorder; xdist would start the files of most tests first, and these have few),
# and a long file started late is a tail the other process waits out.
LONGEST_FIRST = ("test_verify.py", "test_tune.py", "test_tune_inputs.py", "test_tune_correction.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: each file keeps its order


def config_dict(path: Path = FP16_CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def small_config_dict(path: Path = FP16_CONFIG, hw: tuple[int, int] = SMALL_HW) -> dict:
    raw = copy.deepcopy(config_dict(path))
    raw["frontend"]["shape"]["input"] = [1, 3, *hw]
    for op in raw["dataset"]["process_ops"]:
        if op["type"] == "Resize":
            op["size"] = list(hw)
    return raw


class StubProgress:
    """The stages' progress protocol (pipeline/core/progress.py) without output, for every test that passes one:
    `loops` records each loop's (desc, total); called without items it is its own bar to advance by hand, whose
    advances add up in `done` (the last postfix in `postfix`)."""

    def __init__(self):
        self.loops: list[tuple[str, int | None]] = []
        self.done, self.postfix = 0, ""

    def __call__(self, items, desc: str, total: int | None, unit: str = "img"):
        self.loops.append((desc, total))
        return self if items is None else items

    def update(self, n: int = 1) -> None:
        self.done += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def demo_ckpt(tmp_path_factory) -> Path:
    from pipeline.demo.checkpoint import write_demo_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "modnet_photographic_portrait_matting.ckpt"
    write_demo_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    """The official fp16 config at a small input shape."""
    return write_config(tmp_path_factory.mktemp("cfg") / "small_fp16.yaml", small_config_dict())


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory, demo_ckpt, small_config) -> Path:
    """The demo checkpoint exported at the small shape."""
    from pipeline.core.config import load_config
    from pipeline.model.export import export_onnx
    out = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(load_config(small_config), demo_ckpt, out)
    return out


@pytest.fixture(scope="session")
def small_sim_onnx(tmp_path_factory, small_onnx, small_config) -> Path:
    from pipeline.core.config import load_config
    from pipeline.stages.simplify import simplify_onnx
    out = tmp_path_factory.mktemp("sim") / "small.sim.onnx"
    simplify_onnx(load_config(small_config), small_onnx, out)
    return out


def put_standin_on_path(folder: Path, monkeypatch) -> callable:
    """Puts the stand-in for vamc (tests/standin_vamc.py) first on PATH as `vamc`, in FOLDER/bin; returns a reader
    of its recorded calls. STANDIN_VAMC_SOURCE must name the build config each build comes from."""
    from standin_vamc import STANDIN
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vamc"
    script.write_text(STANDIN.format(python=sys.executable))
    script.chmod(0o755)
    record = folder / "standin_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_VAMC_RECORD", str(record))
    for var in ("VAMC", "VAMC_COMMAND", "STANDIN_VAMC_FAIL", "STANDIN_VAMC_SKIP", "STANDIN_VAMC_NO_VERSION"):
        monkeypatch.delenv(var, raising=False)

    def calls() -> list[dict]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    calls.script = script
    return calls


@pytest.fixture
def standin(tmp_path, monkeypatch):
    return put_standin_on_path(tmp_path, monkeypatch)
