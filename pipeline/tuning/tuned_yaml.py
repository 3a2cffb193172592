"""The tuned config: the input YAML with only `backend.quantize` replaced, under a header comment.

The text is edited in place (the `quantize:` block under `backend:`) so every other line, comments included,
stays as the release engineer wrote it; the result is checked by parsing it back. A layout the edit cannot
handle (e.g. a flow-style `quantize: {...}`) falls back to dumping the whole document.
"""
from __future__ import annotations

import copy
import re

import yaml

from ..errors import PipelineError


def quantize_block(original: dict, mode: str, calibrate_range: float | None, skip: list[int]) -> dict:
    """ORIGINAL's quantize mapping with the tuned settings; calibrate_range only where percentile reads it."""
    out = {k: v for k, v in original.items() if k != "calibrate_range"}
    out["calibrate_mode"] = mode
    if calibrate_range is not None:
        out["calibrate_range"] = calibrate_range
    out["skip_conv_layers"] = list(skip)
    return out


def _dump(block: dict, indent: int) -> str:
    text = yaml.safe_dump({"quantize": block}, sort_keys=False, default_flow_style=None)
    return "".join(" " * indent + line + "\n" for line in text.splitlines())


def _replace_block(text: str, block: dict) -> str | None:
    lines = text.splitlines(keepends=True)
    backend = next((i for i, line in enumerate(lines) if re.match(r"backend:\s*(#.*)?$", line)), None)
    if backend is None:
        return None
    for i in range(backend + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "#")):
            return None  # left the backend block without finding quantize
        found = re.match(r"( +)quantize:\s*(#.*)?$", line)
        if found:
            indent = len(found.group(1))
            end = i + 1
            while end < len(lines) and (not lines[end].strip()
                                        or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():  # keep blank lines that separate what follows
                end -= 1
            return "".join(lines[:i]) + _dump(block, indent) + "".join(lines[end:])
    return None


def tuned_text(text: str, block: dict, header: list[str]) -> str:
    """TEXT (a config YAML) with backend.quantize = BLOCK, under HEADER (comment lines without '# ')."""
    raw = yaml.safe_load(text)
    expected = copy.deepcopy(raw)
    try:
        expected["backend"]["quantize"] = block
    except (TypeError, KeyError):
        raise PipelineError("the input config has no backend mapping to tune") from None
    body = _replace_block(text, block)
    if body is None or yaml.safe_load(body) != expected:
        body = yaml.safe_dump(expected, sort_keys=False, default_flow_style=None)
    return "".join(f"# {line}".rstrip() + "\n" for line in header) + body
