"""A brief, seeded CPU training of our MODNet on generated portraits, so the demo checkpoint behaves like a trained
network (a matte that follows the person, activations with a trained network's ranges) instead of random noise.

Honest by construction: the portraits come from demo_data's generator on its training stream, never on stream 0,
which is the demo data set the pipeline evaluates. MODNet is fully convolutional, so it trains at a third of the
model's input size (photos generated at a third of their size too, so resampling ratios match) and runs at full
size afterwards; the BatchNorm statistics are then measured again over the training set with the final weights.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..accuracy.metrics import gt_from_matte
from ..core.config import BuildConfig, Resize
from ..data.preprocess import apply_ops
from ..model.modnet import MODNet
from .data import in_order, make_pair

TRAIN_STREAM = 1  # demo_data stream of the training portraits; stream 0 is the evaluated demo set
TRAIN_HW = (160, 96)  # (H, W): a third of 480x288, both multiples of MODNet's stride 32
PHOTO_SCALE = 1 / 3
SAMPLES = 192  # generated once, then drawn in shuffled batches with random horizontal flips
BATCH = 8
STEPS = 80  # the CLI's default
LEARNING_RATE = 3e-3
WARMUP_STEPS = 10
THREADS = 2  # fixed, so that the same seed gives the same float reductions, hence the same bytes


def at_size(cfg: BuildConfig, hw: tuple[int, int]) -> BuildConfig:
    """CFG with its input shape and Resize set to HW: the same preprocessing at the training size."""
    ops = tuple(replace(op, size=hw) if isinstance(op, Resize) else op for op in cfg.dataset.process_ops)
    return replace(cfg, frontend=replace(cfg.frontend, shape=(*cfg.input_shape[:2], *hw)),
                   dataset=replace(cfg.dataset, process_ops=ops))


def training_set(cfg: BuildConfig, seed: int, count: int, hw: tuple[int, int] = TRAIN_HW,
                 scale: float = PHOTO_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, 3, H, W) through the config's preprocessing at HW, and target alphas (N, 1, H, W) in 0..1
    resized as evaluation resizes the ground truth."""
    small = at_size(cfg, hw)

    def sample(index: int) -> tuple[np.ndarray, np.ndarray]:
        _, photo, matte = make_pair(seed, index, scale, stream=TRAIN_STREAM)
        return apply_ops(small, photo), gt_from_matte(matte, *hw)[None, None].astype(np.float32) / 255.0

    images, alphas = zip(*in_order(sample, count))
    return np.concatenate(images), np.concatenate(alphas)


def matte_loss(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MODNet's matte L1 plus binary cross-entropy: the L1 alone gives a near-zero gradient where a random network
    outputs ~0.5 everywhere, BCE pulls the foreground/background split (what mIoU measures) into place quickly."""
    return F.l1_loss(alpha, target) + F.binary_cross_entropy(alpha.clamp(1e-6, 1 - 1e-6), target)


def _learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then a cosine decay to zero, so the last steps settle instead of jumping."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(steps - WARMUP_STEPS, 1)))


def _batches(rng: np.random.Generator, count: int, steps: int) -> Iterator[tuple[np.ndarray, bool]]:
    """Indices of each step's batch (shuffled epochs) and whether to flip it horizontally."""
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if order.size < BATCH:
            order = np.concatenate([order, rng.permutation(count)])
        yield order[:BATCH], bool(rng.random() < 0.5)
        order = order[BATCH:]


@contextlib.contextmanager
def deterministic_torch(threads: int = THREADS):
    """Fixed thread count and deterministic kernels for the duration, restored afterwards.

    Deterministic mode also fills every fresh tensor with NaN by default, to catch reads of uninitialised memory;
    the model never reads one (the bytes are the same without the fill), and the fill cost 7% of a training step."""
    settings = torch.utils.deterministic
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_fill = settings.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    settings.fill_uninitialized_memory = False
    try:
        yield
    finally:
        settings.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def train(model: MODNet, x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> Iterator[float]:
    """Adam on MODEL in place, yielding each step's loss (callers draw the progress bar from it)."""
    rng = np.random.default_rng([seed, TRAIN_STREAM])
    trained = [p for name, p in model.named_parameters() if not name.startswith(("lr_branch.conv_lr.",
                                                                                 "hr_branch.conv_hr."))]
    optimizer = torch.optim.Adam(trained, lr=LEARNING_RATE)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for step, (index, flip) in enumerate(_batches(rng, len(x), steps)):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps)
        inputs, target = xs[index], ys[index]
        if flip:
            inputs, target = inputs.flip(-1), target.flip(-1)
        loss = matte_loss(model(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield float(loss.detach())


def measure_batchnorm(model: MODNet, x: np.ndarray) -> None:
    """Replace every BatchNorm's running statistics by the average of its batch statistics over X under the final
    weights: the moving averages of training lag behind weights that were still changing."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            model(torch.from_numpy(x[start:start + BATCH]))
    for norm in norms:
        norm.momentum = 0.1  # PyTorch's default, as in the official checkpoint's modules
    model.eval()
