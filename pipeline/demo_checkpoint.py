"""A seeded stand-in for the official checkpoint, in its exact layout, for the demo and the tests.

The official weights cannot be downloaded on these machines. This file has the same keys, shapes, dtypes and
`module.` prefix, and non-trivial BatchNorm statistics, so every loading path the real file takes is exercised.
Its values are random: nothing measured with it says anything about MODNet's accuracy.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .checkpoint import DATAPARALLEL_PREFIX
from .fileio import write_bytes
from .model import MODNet


def _tensor(rng: np.random.Generator, name: str, template: torch.Tensor) -> torch.Tensor:
    shape = tuple(template.shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(int(rng.integers(1_000, 100_000)), dtype=torch.int64)
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


def write_demo_checkpoint(out: str | Path, seed: int) -> None:
    # Serialised in memory: saved to a path, torch names the archive's root folder after the (temporary) file
    # name, and the same seed would give different bytes, hence a different release name.
    buffer = io.BytesIO()
    torch.save(demo_state_dict(seed), buffer)
    write_bytes(out, buffer.getvalue())
