"""What produced an artifact: library versions and the state of this repository."""
from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "onnx", "onnxsim", "onnxruntime", "numpy", "opencv-python-headless", "pyyaml")
REPO = Path(__file__).resolve().parents[2]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def installed_packages() -> list[str]:
    """name==version of every distribution this interpreter can import, names in their canonical form, sorted."""
    found = {f"{re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower()}=={dist.version}"
             for dist in importlib.metadata.distributions() if dist.metadata["Name"]}
    return sorted(found)


def _cpu_model() -> str:
    """The CPU's model name on Linux (platform.processor() is often empty there), else ""."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    return found.group(1).strip() if found else ""


def environment() -> dict:
    """What a rebuild may differ in besides the inputs: the interpreter, every installed package, the machine."""
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "system": platform.system(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu": _cpu_model(), "packages": installed_packages()}


def _git(*args: str) -> str | None:
    """git's output in this repository, or None where git is unavailable or refuses."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def committed(path: Path) -> bool | None:
    """Whether PATH is tracked in this repository with no change since HEAD; None where git cannot say."""
    if _git("rev-parse", "HEAD") is None:
        return None
    path = Path(path).resolve()
    if not path.is_relative_to(REPO):
        return False
    rel = path.relative_to(REPO).as_posix()
    return _git("ls-files", "--error-unmatch", "--", rel) is not None and _git("status", "--porcelain", "--", rel) == ""


def meant_to_be_committed(path: Path) -> bool:
    """Whether PATH is a file a user would commit here: inside this repository and not ignored by git. The demo's
    calibration list and verify's scratch copy (under artifacts/), or a list outside the checkout, are not."""
    path = Path(path).resolve()
    if not path.is_relative_to(REPO):
        return False
    return _git("check-ignore", "-q", "--", path.relative_to(REPO).as_posix()) is None


def git_state() -> dict:
    """Commit of this repository and whether tracked files differ from it (None where git is unavailable)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "clean": None if status is None else status == ""}
