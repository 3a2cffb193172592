"""A seeded stand-in for the official checkpoint, in its exact layout, for the demo and the tests.

The official weights cannot be downloaded on these machines. This file has the same keys, shapes, dtypes and
`module.` prefix, and non-trivial BatchNorm statistics, so every loading path the real file takes is exercised.
With `steps=0` (the tests) its values are random; `make demo` trains it briefly on generated portraits
(pipeline/demo/training.py) so that its mattes and activations look like a trained network's. Either way nothing
measured with it says anything about MODNet's accuracy on real photos.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import write_bytes
from ..core.progress import Progress, quiet
from ..model.checkpoint import DATAPARALLEL_PREFIX, DEMO_MARK, is_demo_checkpoint, strip_prefix
from ..model.modnet import MODNet
from .training import PHOTO_SCALE, SAMPLES, TRAIN_HW, deterministic_torch, measure_batchnorm, train, training_set


def _tensor(rng: np.random.Generator, name: str, template: torch.Tensor) -> torch.Tensor:
    shape = tuple(template.shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(DEMO_MARK, dtype=torch.int64)
    if leaf == "running_mean":
        values = rng.normal(0.0, 0.2, shape)
    elif leaf == "running_var":
        values = rng.uniform(0.5, 2.0, shape)
    elif leaf == "bias":
        values = rng.normal(0.0, 0.05, shape)
    elif template.dim() == 1:  # BatchNorm gamma
        values = rng.uniform(0.7, 1.3, shape)
    else:  # Conv / Linear weights: He initialisation keeps activations in a sane range through 50+ layers
        fan_in = int(np.prod(shape[1:]))
        values = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def demo_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Official layout, `module.`-prefixed, with both copies of the shared backbone equal (as in the real file)."""
    rng = np.random.default_rng(seed)
    template = MODNet().state_dict()
    values: dict[str, torch.Tensor] = {}
    for name, tensor in template.items():
        shared = name[len("lr_branch."):] if name.startswith("lr_branch.backbone.") else None
        values[name] = values[shared] if shared in values else _tensor(rng, name, tensor)
    return {DATAPARALLEL_PREFIX + k: v for k, v in values.items()}


def trained_state_dict(cfg: BuildConfig, seed: int, steps: int, progress: Progress = quiet, samples: int = SAMPLES,
                       hw: tuple[int, int] = TRAIN_HW, scale: float = PHOTO_SCALE) -> dict[str, torch.Tensor]:
    """demo_state_dict(SEED) trained for STEPS on SAMPLES generated portraits, in the same layout; deterministic.
    PROGRESS is given the iterator of step losses (the CLI's bar shows them)."""
    with deterministic_torch():
        model = MODNet()
        model.load_state_dict(strip_prefix(demo_state_dict(seed)))
        x, y = training_set(cfg, seed, samples, hw, scale)
        losses = train(model, x, y, steps, seed)
        for _ in progress(losses, "training", steps, unit="step"):
            pass
        measure_batchnorm(model, x)
    return {DATAPARALLEL_PREFIX + k: v.detach().clone() for k, v in model.state_dict().items()}


def check_out(out: Path) -> None:
    """OUT may be written: a new file, or an earlier demo checkpoint (replaced); nothing else."""
    if out.is_dir():
        raise PipelineError(f"{out}: is a folder; --out names the checkpoint file to write")
    if out.exists() and not is_demo_checkpoint(out):
        raise PipelineError(f"{out}: exists and is not a demo checkpoint; name a new file, or delete it yourself")


def write_demo_checkpoint(out: str | Path, seed: int, steps: int = 0, cfg: BuildConfig | None = None,
                          progress: Progress = quiet) -> None:
    """Random weights when STEPS is 0, else trained for STEPS (CFG gives the input preprocessing)."""
    if steps and cfg is None:
        raise ValueError("training the demo checkpoint needs the build config of its input preprocessing")
    state = trained_state_dict(cfg, seed, steps, progress) if steps else demo_state_dict(seed)
    for name, value in state.items():  # training counted its batches: the mark says "demo" whatever it did
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(DEMO_MARK, dtype=torch.int64)
    # Serialised in memory: saved to a path, torch names the archive's root folder after the (temporary) file
    # name, and the same seed would give different bytes, hence a different release name.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(out, buffer.getvalue())
