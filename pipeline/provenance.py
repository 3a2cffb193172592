"""What produced an artifact: library versions and the state of this repository."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "onnx", "onnxsim", "onnxruntime", "numpy", "opencv-python-headless", "pyyaml")
REPO = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_state() -> dict:
    """Commit of this repository and whether tracked files differ from it (None where git is unavailable)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "clean": None if status is None else status == ""}
