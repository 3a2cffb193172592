"""The demo checkpoint's brief training: deterministic, learning, in the official layout, and never on the images the
demo evaluates."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch

from conftest import StubProgress
from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.demo import training as demo_training
from pipeline.demo.checkpoint import trained_state_dict
from pipeline.demo.data import make_pair
from pipeline.model.checkpoint import load_modnet, read_state_dict
from pipeline.model.modnet import MODNet

TINY = dict(samples=8, hw=(64, 32), scale=0.05)  # a few seconds of training instead of minutes


def _train(cfg, seed: int, steps: int) -> tuple[bytes, list[float]]:
    losses: list[float] = []
    shown = StubProgress()

    def record(items, desc, total, unit="img"):  # what the CLI's bar is given: the losses, one per step
        for loss in shown(items, desc, total, unit):
            losses.append(loss)
            yield loss

    buffer = io.BytesIO()
    torch.save(trained_state_dict(cfg, seed, steps, record, **TINY), buffer)
    assert shown.loops == [("training", steps)]
    return buffer.getvalue(), losses


@pytest.fixture(scope="module")
def cfg(small_config):
    return load_config(small_config)


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_short_training_is_deterministic_learns_and_loads_strictly(cfg, tmp_path, demo_ckpt):
    first, losses = _train(cfg, seed=0, steps=8)
    again, losses_again = _train(cfg, seed=0, steps=8)
    assert first == again and losses == losses_again
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert _train(cfg, seed=1, steps=8)[0] != first

    path = tmp_path / "trained.ckpt"
    path.write_bytes(first)
    state = read_state_dict(path)
    assert len(state) == 751 and all(k.startswith("module.") for k in state)
    backbone = [k for k in state if k.startswith("module.backbone.")]
    assert backbone and all(torch.equal(state[k], state["module.lr_branch." + k[len("module."):]]) for k in backbone)
    trained = load_modnet(path).state_dict()  # strict: every key and shape of the official layout
    random = load_modnet(demo_ckpt).state_dict()  # seed 0, steps 0: the starting point, random weights
    assert not torch.equal(trained["f_branch.conv_f.1.layers.0.weight"], random["f_branch.conv_f.1.layers.0.weight"])
    # the training-only heads are not in the inference graph: they keep their starting values
    assert torch.equal(trained["lr_branch.conv_lr.layers.0.weight"], random["lr_branch.conv_lr.layers.0.weight"])


def test_cli_trains_with_steps_and_refuses_negative_steps(tmp_path, small_config, capsys):
    assert main(["demo-ckpt", "--out", str(tmp_path / "x.ckpt"), "--steps", "-1", "--config", str(small_config)]) == 2
    assert "--steps" in capsys.readouterr().err and not (tmp_path / "x.ckpt").exists()


def test_training_images_are_not_the_evaluated_demo_images(cfg):
    """The demo set is stream 0 of demo_data's generator; training draws stream TRAIN_STREAM: other pixels."""
    from pipeline.data.preprocess import apply_ops
    scale, hw = 0.05, (64, 32)
    evaluated = [make_pair(0, i, scale) for i in range(12)]
    trained = [make_pair(0, i, scale, stream=demo_training.TRAIN_STREAM) for i in range(12)]
    assert not {name for name, _, _ in evaluated} & {name for name, _, _ in trained}
    for _, image, _ in trained:
        for _, other, _ in evaluated:
            if image.shape == other.shape:
                assert np.abs(image.astype(int) - other.astype(int)).mean() > 10
    # what the training feeds the model is none of the evaluated photos through the same preprocessing
    x, _ = demo_training.training_set(cfg, seed=0, count=12, hw=hw, scale=scale)
    shown = [apply_ops(demo_training.at_size(cfg, hw), photo)[0] for _, photo, _ in evaluated]
    assert min(np.abs(a - b).mean() for a in x for b in shown) > 10 / 127.5
    # stream 0 is still what demo-data wrote before streams existed: the name it drew for (seed 0, image 3)
    assert make_pair(0, 3, scale)[0] == "86181029240_5d2144e2b7_o.jpg"


def test_training_set_goes_through_the_config_preprocessing(cfg):
    x, y = demo_training.training_set(cfg, seed=0, count=2, hw=(64, 32), scale=0.05)
    assert x.shape == (2, 3, 64, 32) and y.shape == (2, 1, 64, 32) and x.dtype == y.dtype == np.float32
    _, photo, matte = make_pair(0, 1, 0.05, stream=demo_training.TRAIN_STREAM)
    rgb = cv2.cvtColor(cv2.resize(photo, (32, 64), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(x[1], ((rgb - 127.5) / 127.5).transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(y[1, 0], cv2.resize(matte, (32, 64), interpolation=cv2.INTER_AREA) / 255.0, atol=1e-6)


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_measured_batchnorm_statistics_are_the_batch_averages():
    torch.manual_seed(0)
    model = MODNet()
    x = np.random.default_rng(0).uniform(-1, 1, (2 * demo_training.BATCH, 3, 64, 32)).astype(np.float32)
    demo_training.measure_batchnorm(model, x)
    assert not model.training
    conv, norm = model.backbone.model.features[0][0], model.backbone.model.features[0][1]
    with torch.no_grad():
        halves = [conv(torch.from_numpy(h)) for h in np.split(x, 2)]
    expected_mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in halves]).mean(0)
    expected_var = torch.stack([h.var(dim=(0, 2, 3), unbiased=True) for h in halves]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1


def test_deterministic_torch_restores_what_it_changed():
    settings = torch.utils.deterministic
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), settings.fill_uninitialized_memory
    with demo_training.deterministic_torch(threads=1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert settings.fill_uninitialized_memory is False  # the NaN fill costs 7% of a step and changes no byte
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            settings.fill_uninitialized_memory) == before
