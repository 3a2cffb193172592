"""Loading the official checkpoint (`modnet_photographic_portrait_matting.ckpt`) into our MODNet, strictly."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .errors import PipelineError
from .model import MODNet

OFFICIAL_NAME = "modnet_photographic_portrait_matting.ckpt"
OFFICIAL_SOURCE = ("the official MODNet repository (github.com/ZHKKKe/MODNet, see pretrained/README.md: "
                   f"download {OFFICIAL_NAME} into checkpoints/)")
DATAPARALLEL_PREFIX = "module."
SHOWN = 5  # offending keys listed in an error
# Every `num_batches_tracked` of a demo checkpoint holds this value (a counter inference never reads): it marks the
# file as a demo one inside the official layout, so a report can say so wherever the file was copied, whatever the
# training did to its weights.
DEMO_MARK = 20_260_101


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file; weights_only, so a pickle can never run code."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}. Get {OFFICIAL_SOURCE}, or run `make demo` to try the "
                            f"pipeline on a generated checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineError(f"{path}: not a MODNet state_dict (expected a mapping of names to tensors, got "
                            f"{type(obj).__name__})")
    return obj


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
