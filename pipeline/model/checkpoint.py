"""Loading the official checkpoint (`modnet_photographic_portrait_matting.ckpt`) into our MODNet, strictly."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..core.errors import PipelineError
from .modnet import MODNet

OFFICIAL_NAME = "modnet_photographic_portrait_matting.ckpt"
OFFICIAL_SOURCE = ("the official MODNet repository (github.com/ZHKKKe/MODNet, see pretrained/README.md: "
                   f"download {OFFICIAL_NAME} into checkpoints/)")
DATAPARALLEL_PREFIX = "module."
SHOWN = 5  # offending keys listed in an error
# Every `num_batches_tracked` of a demo checkpoint holds this value (a counter inference never reads): it marks the
# file as a demo one inside the official layout, so a report can say so wherever the file was copied, whatever the
# training did to its weights.
DEMO_MARK = 20_260_101
# What torch.save writes: a zip archive (PyTorch 1.6+), or a pickle (protocol 2+ starts with 0x80) in the legacy
# format. Anything else is no checkpoint, whatever torch's unpickler would make of it.
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def not_a_checkpoint(path: Path) -> str | None:
    """Why the file at PATH cannot be a checkpoint, from its first bytes; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(CHECKPOINT_MAGIC):
        return None
    if not head:
        return "not a checkpoint: the file is empty"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):  # HTML or XML: an error page saved as the file
        return "not a checkpoint: it looks like a web page (what a failed download saves): download it again"
    if not any(byte < 32 and byte not in b"\t\r\n" or byte == 127 for byte in head):  # no control bytes: text
        return f"not a checkpoint: it is a text file (starting {head[:30].decode('utf-8', 'replace')!r})"
    return f"not a checkpoint (it starts with {head[:8]!r}, not a PyTorch archive)"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file; weights_only, so a pickle can never run code."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}. Get {OFFICIAL_SOURCE}, or run `make demo` to try the "
                            f"pipeline on a generated checkpoint")
    source = f"the official one comes from {OFFICIAL_SOURCE}"
    why = not_a_checkpoint(path)
    if why:
        raise PipelineError(f"{path}: {why}; {source}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc):  # torch's advice to load it unsafely is no fix: the file is not ours
            raise PipelineError(f"{path}: not a readable PyTorch checkpoint (it holds Python objects other than "
                                f"tensors, which are never loaded); {source}") from None
        raise PipelineError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); {source}") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as exc:
        # a truncated or corrupt archive or pickle: the legacy unpickler raises KeyError/IndexError too
        raise PipelineError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); {source}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineError(f"{path}: not a MODNet state_dict (expected a mapping of names to tensors, got "
                            f"{type(obj).__name__})")
    return obj


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_demo_checkpoint(path: str | Path) -> bool:
    """True for a readable checkpoint written by `python -m pipeline demo-ckpt` (DEMO_MARK)."""
    try:
        counters = [v for k, v in read_state_dict(path).items() if k.endswith("num_batches_tracked")]
    except PipelineError:
        return False
    return bool(counters) and all(int(v) == DEMO_MARK for v in counters)


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept both the official nn.DataParallel layout (`module.` keys) and a plain one."""
    prefixed = [k.startswith(DATAPARALLEL_PREFIX) for k in state]
    if all(prefixed):
        return {k[len(DATAPARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def check_layout(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {_listing(wrong)}")
    if problems:
        raise PipelineError(f"{source}: not the official MODNet layout: " + "; ".join(problems))


def check_shared_backbone(state: dict[str, torch.Tensor], source: Path) -> None:
    """The backbone is stored twice (model.backbone and lr_branch.backbone); both copies must agree or the load is
    ambiguous (load_state_dict would silently keep whichever came last)."""
    for key, value in state.items():
        if key.startswith("backbone."):
            twin = state.get("lr_branch." + key)
            if twin is not None and not torch.equal(value, twin):
                raise PipelineError(f"{source}: the two copies of the shared backbone differ at {key} and "
                                    f"lr_branch.{key}; the checkpoint is inconsistent")


def load_modnet(path: str | Path) -> MODNet:
    """Our MODNet with the checkpoint's weights, in eval mode; every key and shape must match."""
    path = Path(path)
    state = strip_prefix(read_state_dict(path))
    model = MODNet()
    check_layout(state, model.state_dict(), path)
    check_shared_backbone(state, path)
    model.load_state_dict(state, strict=True)
    return model.eval()
