"""Loading the official checkpoint layout: exact keys, both prefixes, and every bad-input case."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from conftest import LAYOUT, REPO
from pipeline.core.errors import PipelineError
from pipeline.demo.checkpoint import demo_state_dict
from pipeline.model.checkpoint import load_modnet
from pipeline.model.modnet import MODNet

OFFICIAL = json.loads(LAYOUT.read_text())["tensors"]
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def test_our_model_has_the_official_layout_exactly():
    ours = MODNet().state_dict()
    assert ["module." + k for k in ours] == list(OFFICIAL)  # same keys, same order
    for key, tensor in ours.items():
        spec = OFFICIAL["module." + key]
        assert list(tensor.shape) == spec["shape"] and tensor.dtype == DTYPES[spec["dtype"]], key
    # the layout's 6,487,075 parameters: trainable tensors, the shared backbone counted once
    assert sum(p.numel() for p in MODNet().parameters()) == 6_487_075


def test_demo_checkpoint_matches_the_official_file_layout(demo_ckpt):
    state = torch.load(demo_ckpt, weights_only=True)
    assert list(state) == list(OFFICIAL)
    for key, tensor in state.items():
        assert list(tensor.shape) == OFFICIAL[key]["shape"] and tensor.dtype == DTYPES[OFFICIAL[key]["dtype"]]
    running_var = state["module.backbone.model.features.0.1.running_var"]
    assert not torch.allclose(running_var, torch.ones_like(running_var))  # non-trivial BatchNorm statistics
    assert torch.equal(state["module.backbone.model.features.5.conv.0.weight"],
                       state["module.lr_branch.backbone.model.features.5.conv.0.weight"])


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_prefixed_and_plain_state_dicts_load_the_same_weights(demo_ckpt, tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({k[len("module."):]: v for k, v in torch.load(demo_ckpt, weights_only=True).items()}, plain)
    a, b = load_modnet(demo_ckpt), load_modnet(plain)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert not a.training


def _save(tmp_path, obj, name="bad.ckpt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _edited(edit):
    state = demo_state_dict(seed=1)
    edit(state)
    return state


CASES = {
    "missing key": (lambda s: s.pop("module.f_branch.conv_f.1.layers.0.bias"),
                    "1 missing: f_branch.conv_f.1.layers.0.bias"),
    "unexpected key": (lambda s: s.__setitem__("module.extra.weight", torch.zeros(1)),
                       "1 unexpected: extra.weight"),
    "wrong shape": (lambda s: s.__setitem__("module.hr_branch.conv_hr.1.layers.0.weight", torch.zeros(1, 16, 1, 1)),
                    "1 with the wrong shape: hr_branch.conv_hr.1.layers.0.weight [1, 16, 1, 1] != [1, 32, 1, 1]"),
    "backbone copies differ": (lambda s: s.__setitem__("module.lr_branch.backbone.model.features.0.0.weight",
                                                       torch.zeros(32, 3, 3, 3)),
                               "the two copies of the shared backbone differ at backbone.model.features.0.0.weight"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layout_errors_list_the_offending_keys(tmp_path, case):
    edit, words = CASES[case]
    path = _save(tmp_path, _edited(edit))
    with pytest.raises(PipelineError) as err:
        load_modnet(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value), str(err.value)


def test_many_missing_keys_are_summarised(tmp_path):
    state = {k: v for k, v in demo_state_dict(seed=1).items() if "hr_branch" not in k}
    with pytest.raises(PipelineError, match=r"missing: hr_branch\.[^;]+\(\+\d+ more\)"):
        load_modnet(_save(tmp_path, state))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


SOURCE = "; the official one comes from the official MODNet repository (github.com/ZHKKKe/MODNet"


@pytest.mark.parametrize("content, words", [
    (b"", "not a checkpoint: the file is empty"),
    (b"\x00garbage" * 100, "not a checkpoint (it starts with b'\\x00garbage', not a PyTorch archive)"),
    (pickle.dumps({"a": Payload()}), "not a readable PyTorch checkpoint (it holds Python objects other than tensors, "
                                     "which are never loaded)"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 25\n",
     "not a checkpoint: it is a text file (starting 'version https://git-lfs.github')"),
    (b"\n<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>\n",
     "not a checkpoint: it looks like a web page (what a failed download saves): download it again"),
    (torch.zeros(1).numpy().tobytes() + b"PK", "not a checkpoint (it starts with"),
], ids=["empty", "garbage", "plain pickle with code", "text (a git-lfs pointer)", "web page", "raw floats"])
def test_files_that_are_not_checkpoints(tmp_path, content, words):
    path = tmp_path / "not.ckpt"
    path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        load_modnet(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {words}") and SOURCE in message and "\n" not in message
    assert "weights_only" not in message  # torch's advice to load it unsafely is no fix


@pytest.mark.parametrize("content", [b"just some notes\n", b"<html><body>Sign in</body></html>"],
                         ids=["text", "web page"])
def test_cli_says_in_one_line_that_a_text_or_html_file_is_no_checkpoint(tmp_path, capsys, content):
    from pipeline.cli import main
    path = tmp_path / "modnet_photographic_portrait_matting.ckpt"
    path.write_bytes(content)
    code = main(["export", "--config", str(REPO / "build_configs/official_modnet_fp16.yaml"), "--ckpt", str(path),
                 "--out", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err  # the text file was a traceback, then "internal failure"
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: not a checkpoint: ")
    assert "github.com/ZHKKKe/MODNet" in err and "internal failure" not in err


def test_code_in_a_pickle_is_refused_not_run(tmp_path, capsys):
    path = _save(tmp_path, {"module.x": torch.zeros(1)})
    torch.save({"weights": Payload()}, path)
    with pytest.raises(PipelineError, match="not a readable PyTorch checkpoint .it holds Python objects"):
        load_modnet(path)
    assert "this must never run" not in capsys.readouterr().out


def test_wrong_kind_of_object(tmp_path):
    with pytest.raises(PipelineError, match="not a MODNet state_dict"):
        load_modnet(_save(tmp_path, [torch.zeros(1)]))


def test_missing_checkpoint_says_where_and_how(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_modnet(tmp_path / "modnet_photographic_portrait_matting.ckpt")
    message = str(err.value)
    assert f"checkpoint not found: {tmp_path}" in message
    assert "modnet_photographic_portrait_matting.ckpt" in message and "ZHKKKe/MODNet" in message
    assert "make demo" in message


def test_cli_export_refuses_a_bad_checkpoint_and_writes_nothing(tmp_path, capsys):
    from pipeline.cli import main
    path = _save(tmp_path, _edited(CASES["missing key"][0]))
    out = tmp_path / "out.onnx"
    code = main(["export", "--config", str(REPO / "build_configs/official_modnet_fp16.yaml"), "--ckpt", str(path),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "not the official MODNet layout: 1 missing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_the_layout_and_every_test_input_live_in_the_repository():
    assert LAYOUT.is_file() and LAYOUT.resolve().is_relative_to(REPO.resolve())
    # nothing a user runs may read a folder beside the clone (needles split so this file does not match itself)
    for path in [REPO / "Makefile", *sorted((REPO / ".ci").iterdir())]:
        assert ".." + "/shared" not in path.read_text(), path
    for path in sorted((REPO / "tests").glob("*.py")):
        assert '"sh' + 'ared" / ' not in path.read_text(), path
