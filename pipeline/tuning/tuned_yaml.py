"""The tuned config: the input YAML with only `backend.quantize` replaced (and `pipeline.bias_correction` when the
choice changes it), under a header comment.

The text is edited in place (the `quantize:` block under `backend:`, the `bias_correction:` line under `pipeline:`) so
every other line, comments included, stays as the release engineer wrote it; the result is checked by parsing it
back. A layout the edit cannot
handle (e.g. a flow-style `quantize: {...}`) falls back to dumping the whole document.

The header starts with MARK and ends with the sha256 of its verdict line and the body (everything after it), so a
tuned config is recognised as one, a hand edit of its body or of the verdict `make tune` promotes by is noticed (`make tune` will not overwrite it, `build` warns), and
tuning a tuned config replaces its header instead of stacking a second one. Its `Verdict:` line is what `make
tune` promotes by (promote.py): confirmed or input kept, or anything with FORCE=1, which then says so below it.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.errors import PipelineError
from ..core.fileio import sha256_bytes
from ..core.names import SHA256

MARK = "Tuned by `python -m pipeline tune`"
TUNED_SUFFIX = "_tuned"  # TUNED_CONFIG's default name, NAME_tuned.yaml (the Makefile strips it: patsubst %_tuned,%)
BODY_LINE = re.compile(rf"# Body sha256: ({SHA256})")
MODEL_LINE = re.compile(rf"# Model: .* sha256 ({SHA256})")
VERDICT_PREFIX = "Verdict: "
VERDICTS = ("confirmed", "not confirmed", "target not met", "input kept")
PROMOTABLE = ("confirmed", "input kept")  # what `make tune` copies to TUNED_CONFIG without FORCE=1
FORCED_PREFIX = "Promoted with FORCE=1 although the verdict is "


@dataclass(frozen=True)
class Header:
    onnx_sha256: str | None  # the simplified ONNX it was tuned for
    body_sha256: str | None  # None: written before the header recorded it
    verdicts: tuple[str, ...] = ()  # the text after "# Verdict: " of every such line (one, as tune writes it)


def body_digest(body: str, verdicts: tuple[str, ...] = ()) -> str:
    """sha256 of the verdict lines and BODY: the verdict is what promote trusts, so a hand edit of it counts as an
    edit of the config (the FORCE=1 line written after it is not covered: promote adds it after the digest)."""
    signed = "".join(f"# {VERDICT_PREFIX}{v}\n" for v in verdicts) + body
    return sha256_bytes(signed.encode("utf-8"))


def escape(line: str) -> str:
    """LINE with every control character and line break (YAML's include U+0085, U+2028, U+2029) escaped, so a value
    put in the header (a file name, the command) cannot end the comment and start a YAML key."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)


def _lines(text: str) -> list[str]:
    """TEXT cut after each newline only (str.splitlines also cuts at characters a YAML body may hold in quotes)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def split(text: str) -> tuple[Header | None, str]:
    """(the header of a tuned config, its body); (None, TEXT) for a config that was not tuned."""
    if not text.startswith(f"# {MARK}"):
        return None, text
    lines = _lines(text)
    comments = [line.rstrip("\n") for line in lines[:next((i for i, line in enumerate(lines)
                                                            if not line.startswith("#")), len(lines))]]
    onnx = next((m.group(1) for m in map(MODEL_LINE.fullmatch, comments) if m), None)
    for i, line in enumerate(comments):
        body = BODY_LINE.fullmatch(line)
        if body:  # verdicts of the header only: the body's own leading comments may say anything
            verdicts = tuple(c[len(f"# {VERDICT_PREFIX}"):] for c in comments[:i] if c.startswith(f"# {VERDICT_PREFIX}"))
            return Header(onnx, body.group(1), verdicts), "".join(lines[i + 1:])
    # written before the header recorded the body's sha256: it ended with an empty comment line
    end = comments.index("#") if "#" in comments else -1
    return Header(onnx, None), "".join(lines[end + 1:])


def is_tuned(path: Path) -> bool:
    """PATH is a config `make tune` wrote (its header) or named as one: NAME_tuned.yaml, tuned from NAME.yaml, whose
    calibration and selection lists are NAME's."""
    if path.stem.endswith(TUNED_SUFFIX):
        return True
    try:
        return split(path.read_text(encoding="utf-8"))[0] is not None
    except (OSError, UnicodeDecodeError):
        return False  # load_config read it a moment ago; a file that vanished since is not worth an error here


def edited(header: Header, body: str) -> bool:
    return header.body_sha256 != body_digest(body, header.verdicts)


def verdict(header: Header) -> str | None:
    """The verdict the header records, if it records exactly one of VERDICTS (else None: not tune's as written)."""
    return header.verdicts[0] if len(header.verdicts) == 1 and header.verdicts[0] in VERDICTS else None


def forced(text: str, verdict_: str) -> str:
    """TEXT (a tuned config) with a header line, after its verdict, saying it was promoted anyway."""
    mark = f"# {VERDICT_PREFIX}{verdict_}\n"
    at = text.index(mark) + len(mark)
    return text[:at] + f"# {FORCED_PREFIX}{verdict_} (see the tune folder's tune.md)\n" + text[at:]


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


def _set_bias_correction(text: str, value: str) -> str:
    """TEXT with `bias_correction: VALUE` under the top-level `pipeline:`: an existing line at the block's indentation
    replaced, else one added right after `pipeline:` (or a `pipeline:` block appended). Indented, as the Makefile's
    sed, which reads the key before Python can, expects it."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"pipeline:\s*(#.*)?$", line)), None)
    if start is None:
        return "".join(lines) + ("" if not lines or lines[-1].endswith("\n") else "\n") + \
            f"pipeline:\n  bias_correction: {value}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i].startswith((" ", "#"))),
               len(lines))
    child = next((line for line in lines[start + 1:end] if line.strip() and not line.lstrip().startswith("#")), "  x")
    entry = " " * (len(child) - len(child.lstrip(" "))) + f"bias_correction: {value}\n"
    at = next((i for i in range(start + 1, end) if lines[i].startswith(entry.split(":")[0] + ":")), None)
    if at is None:
        return "".join(lines[:start + 1]) + entry + "".join(lines[start + 1:])
    return "".join(lines[:at]) + entry + "".join(lines[at + 1:])


def tuned_text(text: str, block: dict, header: list[str], bias_correction: bool | str | None = None) -> str:
    """TEXT (a config YAML, tuned or not) with backend.quantize = BLOCK and, unless None, pipeline.bias_correction =
    BIAS_CORRECTION (False or "empirical"), under HEADER (comment lines without '# ') and the body's sha256."""
    _, text = split(text)  # a tuned config's earlier header goes: one header, this run's
    raw = yaml.safe_load(text)
    expected = copy.deepcopy(raw)
    try:
        expected["backend"]["quantize"] = block
    except (TypeError, KeyError):
        raise PipelineError("the input config has no backend mapping to tune") from None
    if bias_correction is not None:
        pipeline = expected.get("pipeline")
        expected["pipeline"] = {**(pipeline if isinstance(pipeline, dict) else {}), "bias_correction": bias_correction}
        text = _set_bias_correction(text, "false" if bias_correction is False else bias_correction)
    body = _replace_block(text, block)
    if body is None or yaml.safe_load(body) != expected:
        body = yaml.safe_dump(expected, sort_keys=False, default_flow_style=None)
    verdicts = tuple(line[len(VERDICT_PREFIX):] for line in header if line.startswith(VERDICT_PREFIX))
    lines = [*header, f"Body sha256: {body_digest(body, verdicts)}"]
    return "".join(f"# {escape(line)}".rstrip() + "\n" for line in lines) + body
