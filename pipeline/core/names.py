"""Names and paths that come from data (lists, configs, bundles) checked before they reach a path or a command.

A file name from a calibration list, a config's `name` or `suffix`, or a name read from a bundle must stay inside
the folder it is joined to: no path separator, no `..`, no leading dot (hidden files and `.`/`..` themselves).
A path read from a bundle's MANIFEST.json becomes a Make command-line variable, so it must hold no character
that the shell or Make would interpret.
"""
from __future__ import annotations

import re

from .errors import PipelineError

SHA256 = "[0-9a-f]{64}"  # a sha256 as sha256sum writes it: 64 lowercase hex digits (a regular expression)

# Characters the shell or Make give a meaning to (expansion, quoting, command separators, redirection, globs,
# Make's variable/function syntax, comments and escapes), plus whitespace, which splits a Make variable.
UNSAFE_PATH_CHARS = frozenset("$`'\"\\;&|<>(){}[]*?#%~\n\r\t ")


def name_problem(name: object) -> str | None:
    """Why NAME cannot be a plain file name inside a folder, or None if it can."""
    if not isinstance(name, str) or not name:
        return "expected a non-empty file name"
    if "/" in name or "\\" in name:
        return "holds a path separator: only a plain file name is allowed"
    if name.startswith("."):
        return "starts with a dot (., .. and hidden files are refused)"
    if ".." in name:
        return "holds `..`"
    if any(ord(c) < 32 for c in name):
        return "holds a control character"
    return None


def is_sha256(value: object) -> bool:
    """VALUE is a sha256 as sha256sum writes it (SHA256): lists, caches, manifests and cache folders name files by
    it, so it is checked as data before it names one."""
    return isinstance(value, str) and re.fullmatch(SHA256, value) is not None


def _refused(value: object, where: str, problem: str | None) -> str:
    if problem:
        raise PipelineError(f"{where}: {value!r} {problem}")
    return value


def check_name(name: object, where: str) -> str:
    """NAME if it is a plain file name; otherwise one line naming WHERE it came from."""
    return _refused(name, where, name_problem(name))


def path_problem(value: object) -> str | None:
    """Why VALUE cannot be passed safely as a path on a Make command line, or None if it can."""
    if not isinstance(value, str) or not value:
        return "expected a non-empty path"
    bad = sorted({c for c in value if c in UNSAFE_PATH_CHARS or ord(c) < 32})
    if bad:
        return f"holds {', '.join(repr(c) for c in bad)}, which the shell or Make would interpret"
    return None


def check_path(value: object, where: str) -> str:
    """VALUE if it can be passed as a path on a Make command line; otherwise one line naming WHERE."""
    return _refused(value, where, path_problem(value))
