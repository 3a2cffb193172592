"""pipeline/core/deps.py: the code each stage imports, which the Makefile uses as the stage's prerequisites."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.core import deps


def _tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture()
def fake_repo(tmp_path, monkeypatch):
    """A pipeline package laid out as the real one, with a backend that is a package (pipeline/backends/ort/)."""
    _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/__main__.py": "from .cli import main\n",
        "pipeline/errors.py": "",
        "pipeline/config.py": "from .errors import E\n",
        "pipeline/export.py": "from .config import load\n",
        "pipeline/report.py": "import numpy\nfrom .metrics import m\n",
        "pipeline/metrics.py": "",
        "pipeline/cli.py": ("from .errors import PipelineError\n"
                            "def _config(p):\n    from .config import load_config\n"
                            "def cmd_export(a):\n    from .export import export_onnx\n    _config(a)\n"
                            "def cmd_build(a):\n    from .backends import build_engine\n"
                            "def cmd_report(a):\n    from .report import write\n"),
        "pipeline/backends/__init__.py": "import importlib\nfrom ..config import C\n",
        "pipeline/backends/vamc/__init__.py": "",
        "pipeline/backends/vamc/build.py": "from .. import base_manifest\n",
        "pipeline/backends/ort/__init__.py": "",
        "pipeline/backends/ort/build.py": "from .quantize import q\n",
        "pipeline/backends/ort/quantize.py": "from ...fileio import write\nfrom .kl import kl\n",
        "pipeline/backends/ort/kl.py": "import numpy as np\n",
        "pipeline/fileio.py": "",
    })
    monkeypatch.setattr(deps, "ROOT", tmp_path)
    monkeypatch.setattr(deps, "CLI", tmp_path / "pipeline" / "cli.py")
    return tmp_path


COMMON = ["pipeline/__init__.py", "pipeline/__main__.py", "pipeline/cli.py", "pipeline/errors.py"]


def test_a_stage_depends_on_what_its_handler_imports_and_nothing_else(fake_repo):
    assert deps.stage_files("export") == sorted(COMMON + ["pipeline/config.py", "pipeline/export.py"])
    assert deps.stage_files("report") == sorted(COMMON + ["pipeline/metrics.py", "pipeline/report.py"])


def test_a_backend_package_is_followed_through_its_modules(fake_repo):
    assert deps.stage_files("build:ort") == sorted(COMMON + [
        "pipeline/backends/__init__.py", "pipeline/config.py", "pipeline/fileio.py",
        "pipeline/backends/ort/__init__.py", "pipeline/backends/ort/build.py", "pipeline/backends/ort/quantize.py",
        "pipeline/backends/ort/kl.py"])
    assert deps.stage_files("build:vamc") == sorted(COMMON + [
        "pipeline/backends/__init__.py", "pipeline/config.py", "pipeline/backends/vamc/__init__.py",
        "pipeline/backends/vamc/build.py"])


def test_an_import_in_any_nested_block_is_found(fake_repo):
    # the reader visits statements only: every kind of block that holds statements must be entered
    nested = {
        "if": "if X:\n    pass\nelse:\n    from .m_if import a\n",
        "try": "try:\n    pass\nexcept E:\n    from .m_try import a\nfinally:\n    import pipeline.m_fin\n",
        "loop": "for i in x:\n    pass\nelse:\n    while y:\n        with z:\n            from . import m_loop\n",
        "def": "class C:\n    def f(self):\n        async def g():\n            from .m_def import a\n",
        "match": "match v:\n    case 1:\n        from .m_match import a\n",
    }
    _tree(fake_repo, {"pipeline/report.py": "".join(nested.values()),
                      **{f"pipeline/{m}.py": "" for m in ("m_if", "m_try", "m_fin", "m_loop", "m_def", "m_match")}})
    assert deps.stage_files("report") == sorted(COMMON + ["pipeline/report.py"] + [
        f"pipeline/{m}.py" for m in ("m_if", "m_try", "m_fin", "m_loop", "m_def", "m_match")])


@pytest.mark.slow
def test_the_real_stages_as_make_reads_them():
    done = subprocess.run([sys.executable, "-I", "pipeline/core/deps.py", "export", "build:ort", "evaluate"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = {word.split("=")[0]: word.split("=")[1].split(",") for word in done.stdout.split()}
    assert {"pipeline/model/export.py", "pipeline/model/modnet.py", "pipeline/model/checkpoint.py",
            "pipeline/core/config.py"} <= \
        set(found["export"])
    assert "pipeline/stages/report.py" not in found["export"] and "pipeline/stages/evaluate.py" not in found["build:ort"]
    assert any(f.startswith("pipeline/backends/ort") for f in found["build:ort"])
    assert {"pipeline/stages/evaluate.py", "pipeline/backends/runners.py", "pipeline/accuracy/metrics.py"} <= set(found["evaluate"])
    assert all((REPO / f).is_file() for files in found.values() for f in files)


@pytest.mark.slow
def test_an_unknown_stage_is_one_line():
    done = subprocess.run([sys.executable, "-I", "pipeline/core/deps.py", "nonsense"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode != 0 and done.stderr.strip() == ("pipeline/core/deps.py: no handler cmd_nonsense in "
                                                            "pipeline/cli.py for stage 'nonsense'")
