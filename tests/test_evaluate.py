"""`evaluate`, `report` and `gate` on tiny generated data (small-shape ONNX from conftest, photos at 0.1 scale)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FP16_CONFIG, INT8_CONFIG, StubProgress, small_config_dict, write_config
from pipeline.accuracy import metrics
from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.model.flops import count
from pipeline.stages.evaluate import evaluate
from pipeline.stages.report import Evaluated, Scope, gate, gate_failures, write_report

KEYS = {"mse", "mad", "sad", "grad", "conn", "miou", "images", "per_image", "manifest_sha256"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("data") / "PPM-100"
    write_demo_data(root, 3, seed=1, scale=0.1)
    return root


@pytest.fixture(scope="module")
def engines(tmp_path_factory, small_config, small_sim_onnx, data) -> dict[str, Path]:
    """Real fp16 and int8 engines of the reference backend (max calibration on 2 images: quick, still int8)."""
    from pipeline.backends.engine import build_engine
    from pipeline.stages.calibrate import make_calibration_set
    root = tmp_path_factory.mktemp("engines")
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 2
    raw["backend"]["quantize"]["calibrate_mode"] = "max"
    int8 = load_config(write_config(root / "small_int8.yaml", raw))
    make_calibration_set(int8, data, root / "calib", root / "list.txt")
    build_engine("ort", load_config(small_config), small_sim_onnx, None, root / "fp16", StubProgress())
    build_engine("ort", int8, small_sim_onnx, root / "calib", root / "int8", StubProgress())
    return {"fp16": root / "fp16", "int8": root / "int8", "calib": root / "calib"}


@pytest.fixture(scope="module")
def ort_engine(engines) -> Path:
    return engines["fp16"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, small_config, small_sim_onnx, engines, data):
    cfg = load_config(small_config)
    out = tmp_path_factory.mktemp("eval")
    fp32 = evaluate(cfg, small_sim_onnx, data, out / "fp32", sheet=2)
    fp16 = evaluate(cfg, engines["fp16"], data, out / "fp16", sheet=2)
    evaluate(cfg, engines["int8"], data, out / "int8", sheet=2)
    return cfg, out, fp32, fp16


def test_metrics_json_has_the_card_figures_and_the_engine_hash(evaluated, ort_engine, small_sim_onnx):
    cfg, out, fp32, fp16 = evaluated
    written = json.loads((out / "fp16" / "metrics.json").read_text())
    assert KEYS <= set(written)
    assert written["images"] == 3 and len(written["per_image"]) == 3
    from pipeline.core.fileio import sha256_file
    assert written["manifest_sha256"] == sha256_file(ort_engine / "manifest.json")
    assert sorted(p.name for p in (out / "fp16" / "preds").iterdir()) == sorted(written["predictions"])
    assert len(written["predictions"]) == 3 and written["sheet"] == written["predictions"][:2]
    # a real fp16 engine (float16 weights: not the fp32 file) whose dataset figures are the means of its rows
    assert sha256_file(ort_engine / "model.onnx") != sha256_file(small_sim_onnx)
    for key in ("mse", "mad", "sad", "grad", "conn"):
        assert written[key] == pytest.approx(np.mean([row[key] for row in written["per_image"]]), abs=1e-12)
    assert written["engine"]["model_files"] == {"model.onnx": sha256_file(ort_engine / "model.onnx")}
    assert "timing" not in written and "path" not in written["engine"]  # metrics.json must reproduce to the byte
    run = json.loads((out / "fp16" / "run.json").read_text())
    assert run["engine_path"] == str(ort_engine)
    t = run["timing"]
    assert 0 <= t["share_outside_inference"] <= 1 and t["images_per_second"] > 0


@pytest.mark.parametrize("label", ["fp32", "fp16", "int8"])
def test_per_image_rows_are_the_metrics_of_the_saved_prediction(evaluated, data, label):
    cfg, out, _, _ = evaluated
    written = json.loads((out / label / "metrics.json").read_text())
    for name in written["predictions"]:
        pred = cv2.imread(str(out / label / "preds" / name), cv2.IMREAD_GRAYSCALE)
        row = next(r for r in written["per_image"] if Path(r["name"]).stem == Path(name).stem)
        matte = cv2.imread(str(data / "matte" / row["name"]), cv2.IMREAD_GRAYSCALE)
        gt = cv2.resize(matte, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
        assert pred.shape == (cfg.height, cfg.width)
        assert row["mad"] == pytest.approx(float(np.mean(np.abs(pred / 255.0 - gt / 255.0))))
        assert row["mse"] == pytest.approx(float(np.mean((pred / 255.0 - gt / 255.0) ** 2)))
    # dataset mIoU comes from the summed confusion matrix
    c = written["confusion"]
    assert written["miou"] == pytest.approx((c["tp"] / (c["tp"] + c["fp"] + c["fn"]) +
                                             c["tn"] / (c["tn"] + c["fp"] + c["fn"])) / 2)


def test_missing_matte_is_an_error_naming_it(tmp_path, small_config, small_sim_onnx, data, capsys):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    victim = sorted((broken / "matte").iterdir())[1]
    victim.unlink()
    with pytest.raises(PipelineError, match=victim.name):
        evaluate(load_config(small_config), small_sim_onnx, broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    rc = main(["evaluate", "--config", str(small_config), "--engine", str(small_sim_onnx), "--data", str(broken),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and victim.name in capsys.readouterr().err


def test_unreadable_matte_is_an_error_naming_it(tmp_path, small_config, small_sim_onnx, data):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    victim = sorted((broken / "matte").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(PipelineError, match=f"{victim.name}: cannot read this matte"):
        evaluate(load_config(small_config), small_sim_onnx, broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_matte_of_another_size_is_an_error_naming_it(tmp_path, small_config, small_sim_onnx, data):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    victim = sorted((broken / "matte").iterdir())[2]
    grey = cv2.imread(str(victim), cv2.IMREAD_GRAYSCALE)
    h, w = grey.shape
    cv2.imwrite(str(victim), cv2.resize(grey, (w // 2, h // 2)))
    with pytest.raises(PipelineError, match=rf"{victim.name}: {w // 2}x{h // 2} does not match its image "
                                            rf"{victim.name} \({w}x{h}\)"):
        evaluate(load_config(small_config), small_sim_onnx, broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vamc_engine_without_vaststreamx_is_a_clear_error(tmp_path, small_config, data):
    engine = tmp_path / "vamc"
    engine.mkdir()
    for name in ("mod.so", "mod.json", "mod.params", "vdsp_params.json"):
        (engine / name).write_text("{}")
    (engine / "manifest.json").write_text(json.dumps({"backend": "vamc", "dtype": "int8"}))
    with pytest.raises(PipelineError, match="install the vaststreamx wheel into .venv"):
        evaluate(load_config(small_config), engine, data, tmp_path / "out")


@pytest.mark.parametrize("text, words", [
    ("{", "unreadable manifest (JSONDecodeError)"),
    ("[1, 2]", "malformed engine manifest (expected a JSON object; rebuild the engine)"),
    ('{"backend": "ort"}', "expected \"backend\" ort or vamc and \"dtype\" fp16 or int8, got 'ort' and None"),
])
def test_malformed_engine_manifest_is_one_line(tmp_path, small_config, data, capsys, text, words):
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "manifest.json").write_text(text)
    code = main(["evaluate", "--config", str(small_config), "--engine", str(engine), "--data", str(data), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {engine / 'manifest.json'}: {words}"
    assert not (tmp_path / "out").exists()


def test_not_an_engine(tmp_path, small_config, data):
    with pytest.raises(PipelineError, match="not an engine"):
        evaluate(load_config(small_config), tmp_path, data, tmp_path / "out")


def _gate_config(tmp_path: Path, mse: float, mad: float, miou: float, base: Path = FP16_CONFIG,
                 name: str | None = None) -> Path:
    raw = small_config_dict(base)
    raw["pipeline"]["gate"] = {"max_mse_increase": mse, "max_mad_increase": mad, "max_miou_drop": miou}
    kind = "int8_" if base == INT8_CONFIG else ""
    return write_config(tmp_path / (name or f"gate_{kind}{mse}_{mad}_{miou}.yaml"), raw)


def _ev(label, m, cfg=None):
    return Evaluated(label, Path(label), {"images": 10, **m}, cfg)


def test_gate_passes_within_limits_and_fails_naming_engine_and_metric(tmp_path):
    ref = _ev("fp32", {"mse": 0.010, "mad": 0.015, "miou": 0.97})
    limits = load_config(_gate_config(tmp_path, 0.001, 0.002, 0.002))
    ok = _ev("fp16", {"mse": 0.0105, "mad": 0.0165, "miou": 0.9685}, limits)  # +0.0005, +0.0015, -0.0015
    assert gate_failures(gate(ref, [ok])) is None
    # improvements never fail
    better = _ev("fp16", {"mse": 0.001, "mad": 0.001, "miou": 0.99}, limits)
    assert gate_failures(gate(ref, [better])) is None
    bad = _ev("int8", {"mse": 0.0105, "mad": 0.0185, "miou": 0.9685}, limits)  # MAD +0.0035 > 0.002
    failure = gate_failures(gate(ref, [ok, bad]))
    assert failure is not None and "int8 MAD increase 0.00350 > 0.002" in failure
    assert "fp16" not in failure and "mIoU" not in failure and "max_mad_increase" in failure
    drop = _ev("int8", {"mse": 0.010, "mad": 0.015, "miou": 0.96}, limits)  # mIoU -0.01 > 0.002
    assert "int8 mIoU drop 0.01000 > 0.002" in gate_failures(gate(ref, [drop]))


def test_gate_cli_exit_codes(evaluated, tmp_path, capsys):
    _, out, _, _ = evaluated
    loose = _gate_config(tmp_path, 1.0, 1.0, 1.0)
    assert main(["gate", "--fp32", str(out / "fp32"), "--engine", "fp16", str(out / "fp16"), str(loose)]) == 0
    tampered = tmp_path / "int8"
    shutil.copytree(out / "fp16", tampered)
    m = json.loads((tampered / "metrics.json").read_text())
    m["mse"] += 0.5
    (tampered / "metrics.json").write_text(json.dumps(m))
    strict = _gate_config(tmp_path, 0.001, 0.002, 0.002)
    assert main(["gate", "--fp32", str(out / "fp32"), "--engine", "int8", str(tampered), str(strict)]) == 2
    change = m["mse"] - json.loads((out / "fp32" / "metrics.json").read_text())["mse"]
    assert f"int8 MSE increase {change:.5f} > 0.001" in capsys.readouterr().err


def _gt(data: Path, name: str, cfg) -> np.ndarray:
    matte = cv2.imread(str(data / "matte" / name), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(matte, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)


def test_report_table_and_contact_sheet(evaluated, engines, tmp_path, small_sim_onnx, data):
    cfg, out, _, _ = evaluated
    from pipeline.stages.calibrate import read_calibration_manifest
    from pipeline.stages.report import load_metrics
    fp32 = Evaluated("fp32", out / "fp32", load_metrics(out / "fp32"), None)
    loose = load_config(_gate_config(tmp_path, 1.0, 1.0, 1.0))  # random weights: int8 is far from fp32
    int8_cfg = load_config(_gate_config(tmp_path, 1.0, 1.0, 1.0, INT8_CONFIG))
    engines_ = [Evaluated("fp16", out / "fp16", load_metrics(out / "fp16"), loose),
                Evaluated("int8", out / "int8", load_metrics(out / "int8"), int8_cfg)]
    calibrated = {e["name"] for e in read_calibration_manifest(engines["calib"])["images"]}
    rows = write_report(fp32, engines_, cfg, small_sim_onnx, data, True, tmp_path / "report.md",
                        tmp_path / "report.png", demo_ckpt=True, scope=Scope(frozenset(calibrated)))
    assert all(r["ok"] for r in rows)
    text = (tmp_path / "report.md").read_text()
    assert "| Model | FLOPs(G) | Params(M) | MSE | MAD | SAD | Grad | Conn | mIoU | Shape |" in text
    assert "vendor (published, PPM-100): modnet vacc int8 kl | - | - | 0.01915 | 0.02453" in text
    assert "not MODNet's weights" in text and "generated demo set" in text
    assert "ours (generated demo set, 3 images): int8, ort engine on ONNX Runtime" in text and "3x128x96" in text
    # the calibration subset is 2 of the 3 images: the same rows on the third, computed here from its prediction
    (held,) = [n for n in sorted(p.name for p in (data / "image").iterdir()) if n not in calibrated]
    assert len(calibrated) == 2 and ("The table above scores all 3 images, 2 calibration images among them, as the "
                                     "vendor's table does") in text
    assert "the same rows on the 1 image outside the calibration subset, which no engine" in text
    assert "## Accuracy gate (change against our fp32 on all 3 scored images, calibration images included;" in text
    gt = _gt(data, held, cfg)
    for label in ("fp32", "fp16", "int8"):
        pred = cv2.imread(str(out / label / "preds" / f"{Path(held).stem}.png"), cv2.IMREAD_GRAYSCALE)
        p, g = pred / 255.0, gt / 255.0
        fg, bg = pred >= 128, gt >= 128
        iou_fg = np.sum(fg & bg) / np.sum(fg | bg) if np.any(fg | bg) else 1.0
        iou_bg = np.sum(~fg & ~bg) / np.sum(~fg | ~bg) if np.any(~fg | ~bg) else 1.0
        (row,) = [line for line in text.splitlines()
                  if line.startswith(f"| ours (generated demo set, 1 outside calibration): {label}, ")]
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[3:5] == [f"{np.mean((p - g) ** 2):.5f}", f"{np.mean(np.abs(p - g)):.5f}"]
        assert cells[5] == f"{np.sum(np.abs(p - g)) / 1000:.3f}"
        assert cells[8] == f"{(iou_fg + iou_bg) / 2:.6f}" and cells[9] == "3x128x96"
    # the fp32 row's file is named after its config (official_modnet_fp16.sim.onnx in `make eval`): why
    assert (f"fp32 is `{small_sim_onnx.name}` itself on ONNX Runtime: a simplified ONNX holds the model in fp32 "
            f"whichever config it was exported with") in text
    # each engine's agreement with fp32, computed here directly from the saved 8-bit predictions
    for label in ("fp16", "int8"):
        names = fp32.metrics["predictions"]
        a = [cv2.imread(str(out / "fp32" / "preds" / n), cv2.IMREAD_GRAYSCALE).astype(int) for n in names]
        b = [cv2.imread(str(out / label / "preds" / n), cv2.IMREAD_GRAYSCALE).astype(int) for n in names]
        diff = np.abs(np.stack(a) - np.stack(b))
        flips_of = lambda x, y: (x >= 128) != (y >= 128)  # noqa: E731
        flips = np.mean(flips_of(np.stack(a), np.stack(b)))
        assert f"| {label} | 3 | {diff.mean() / 255:.5f} | {diff.max() / 255:.4f} | {100 * flips:.3f}% |" in text
        assert label == "fp16" or diff.max() > 0  # the int8 engine really is another model
        i = names.index(f"{Path(held).stem}.png")  # and on the held-out image alone
        assert (f"| {label} (1 outside calibration) | 1 | {diff[i].mean() / 255:.5f} | {diff[i].max() / 255:.4f} | "
                f"{100 * np.mean(flips_of(a[i], b[i])):.3f}% |") in text
    sheet = cv2.imread(str(tmp_path / "report.png"))
    tile_h, tile_w = round(cfg.height * 0.5), round(cfg.width * 0.5)
    assert sheet.shape[1] == 6 * tile_w  # input, gt, fp32, fp16, int8, heat map
    # demo stamp 30, header 28, per saved prediction a name band 18 and the tiles, colour bar 34
    assert sheet.shape[0] == 30 + 28 + 2 * (18 + tile_h) + 34
    stamp, footer = sheet[:30], sheet[-34:]
    reddish = (stamp[..., 2] > 150) & (stamp[..., 0] < 100) & (stamp[..., 1] < 100)
    assert reddish.sum() > 50  # the red DEMO stamp
    bar = footer[4:18, 5 * tile_w + 6:6 * tile_w - 6]  # under the heat-map column, JET from 0 to full scale
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0]
    assert np.array_equal(bar[7, 0], jet[0]) and np.array_equal(bar[7, -1], jet[1])
    first_name = sheet[58:58 + 18]  # the band naming the first row's image holds dark text
    assert (first_name.min(axis=2) < 100).sum() > 20


def test_report_flags_a_demo_checkpoint_and_says_what_it_replaced(evaluated, tmp_path, small_sim_onnx, data,
                                                                  demo_ckpt, small_config, capsys):
    import torch

    from pipeline.model.checkpoint import DEMO_MARK, read_state_dict
    from pipeline.stages.report import described
    _, out, _, _ = evaluated
    engines = ["--engine", "fp16", str(out / "fp16"), str(small_config)]
    real = tmp_path / "elsewhere" / "PPM-100"
    shutil.copytree(data, real)
    md, png = tmp_path / "report.md", tmp_path / "report.png"
    base = ["report", "--fp32", str(out / "fp32"), *engines, "--config", str(small_config), "--onnx",
            str(small_sim_onnx), "--out", str(md), "--png", str(png)]
    copied = tmp_path / "renamed.ckpt"
    shutil.copy2(demo_ckpt, copied)
    # real-looking data, but the demo checkpoint (copied under another name): the banner says so
    assert main([*base, "--data", str(real), "--ckpt", str(copied)]) == 0
    text = md.read_text()
    assert "**The demo checkpoint (trained briefly on generated portraits, not MODNet's weights)" in text
    assert "generated demo set" not in text
    assert described(text) == "3 images of PPM-100"
    assert "replaced" not in capsys.readouterr().out  # nothing was there before
    # another checkpoint: no banner; the same data: no "replaced" line
    state = read_state_dict(demo_ckpt)  # the same weights without the demo mark, like a real checkpoint
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert counters and all(int(state[k]) == DEMO_MARK for k in counters)
    state.update({k: torch.tensor(7, dtype=torch.int64) for k in counters})
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    assert main([*base, "--data", str(real), "--ckpt", str(other)]) == 0
    assert "demo checkpoint" not in md.read_text() and "replaced" not in capsys.readouterr().out
    # another data folder: one line says what was replaced by what
    assert main([*base, "--data", str(data), "--demo", "--ckpt", str(other)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"replaced {md}: was 3 images of PPM-100, now 3 images of generated demo set"
    assert "**Generated demo data, not photos with hand-made mattes" in md.read_text()


def test_flops_and_params_of_a_tiny_graph_by_hand(tmp_path):
    # Conv 3->4, 3x3, pad 1 on 1x3x8x8: MACs = 1*4*8*8 (outputs) * 3*3*3 = 6912; params 4*3*3*3 + 4 = 112.
    # MatMul (1, 256) x (256, 2): MACs = 2 * 256 = 512; params 512. FLOPs = 2 * 7424. Int64 shape: not counted.
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    m = numpy_helper.from_array(np.zeros((256, 2), np.float32), "m")
    shape = numpy_helper.from_array(np.array([1, 256], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["y", "shape"], ["f"]),
         helper.make_node("MatMul", ["f", "m"], ["z"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])], [w, b, m, shape])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    counted = count(path)
    assert counted["by_op"] == {"Conv": 6912, "MatMul": 512}
    assert counted["flops"] == 2 * 7424 and counted["params"] == 112 + 512


def _constructed(label: str, rows: list[dict], cfg=None) -> Evaluated:
    """metrics.json as `evaluate` writes it, for per-image records chosen by hand (dataset figures of all of them)."""
    acc = metrics.Accumulator([{**row} for row in rows])
    engine = {"backend": "onnx" if cfg is None else "ort", "model_files": {f"{label}.onnx": "0" * 64}}
    return Evaluated(label, Path(label), {**acc.summary(), "per_image": rows, "engine": engine,
                                          "input_shape": [1, 3, 8, 8], "predictions": []}, cfg)


def _image(name, mse, mad, sad, grad, conn, tp, fp, fn, tn):
    return {"name": name, "mse": mse, "mad": mad, "sad": sad, "grad": grad, "conn": conn,
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


COUNTED = {"flops": 2e9, "params": 1e6, "macs": 1e9, "rule": "by hand"}


def test_held_out_rows_are_the_per_image_figures_of_the_other_images_by_hand(tmp_path):
    from pipeline.stages.report import markdown
    rows = [_image("a.jpg", 0.9, 0.9, 9.0, 9.0, 9.0, 0, 50, 50, 0),  # calibration
            _image("b.jpg", 0.7, 0.8, 7.0, 7.0, 7.0, 1, 40, 40, 19),  # tune's selection
            _image("c.jpg", 0.1, 0.2, 1.0, 2.0, 3.0, 10, 2, 3, 85),
            _image("d.jpg", 0.3, 0.4, 3.0, 4.0, 5.0, 20, 0, 5, 75)]
    int8 = load_config(_gate_config(tmp_path, 1.0, 1.0, 1.0, INT8_CONFIG))
    fp32, engine = _constructed("fp32", rows), _constructed("int8", rows, int8)
    text = markdown(fp32, [engine], COUNTED, Path("m.onnx"), "PPM-100", (False, False), [], None,
                    Scope(frozenset({"a.jpg", "z.jpg"}), frozenset({"b.jpg"})))
    # c and d: means 0.2, 0.3, 2, 3, 4; confusion summed 30, 2, 8, 160: IoU 30/40 and 160/170
    miou = (30 / 40 + 160 / 170) / 2
    assert (f"| ours (PPM-100, 2 outside calibration and selection): int8, ort engine on ONNX Runtime | - | - | "
            f"0.20000 | 0.30000 | 2.000 | 3.000 | 4.000 | {miou:.6f} | 3x8x8 |") in text
    assert ("| ours (PPM-100, 2 outside calibration and selection): fp32, simplified ONNX on ONNX Runtime | 2.000 | "
            "1.000 | 0.20000 |") in text
    # the table of all 4 stays, as evaluate computed it
    assert "| ours (PPM-100, 4 images): int8, ort engine on ONNX Runtime | - | - | 0.50000 | 0.57500 |" in text
    assert ("The table above scores all 4 images, 1 calibration image and 1 selection image among them, as the "
            "vendor's table does (its 50 calibration images are 50 of PPM-100's 100). The table below gives the "
            "same rows on the 2 images outside the calibration subset and tune's selection images") in text
    assert "on all 4 scored images, calibration images included;" in text

    # nothing left outside: said in bold, no second table
    text = markdown(fp32, [engine], COUNTED, Path("m.onnx"), "PPM-100", (False, False), [], None,
                    Scope(frozenset({"a.jpg", "b.jpg"}), frozenset({"c.jpg", "d.jpg"})))
    assert ("**No scored image lies outside the calibration subset and tune's selection images: every figure of "
            "this report was measured on images the engines were calibrated or tuned on") in text
    assert "outside calibration and selection" not in text
    # an int8 engine whose calibration images are unknown: said so
    text = markdown(fp32, [engine], COUNTED, Path("m.onnx"), "PPM-100", (False, False), [], None, Scope())
    assert "The calibration images of int8 are unknown (no calibration folder given" in text

    # an engine that did not score a held-out image is one line naming its metrics.json
    partial = _constructed("int8", rows[:3], int8)
    with pytest.raises(PipelineError, match=r"^int8/metrics\.json: no per-image figures of d\.jpg, which fp32 scored"):
        markdown(fp32, [partial], COUNTED, Path("m.onnx"), "PPM-100", (False, False), [], None,
                 Scope(frozenset({"a.jpg"})))


@pytest.fixture
def report_cli(evaluated, tmp_path, small_sim_onnx, small_config, data):
    """`report` on the evaluated engines, the int8 one under a tuned config's name; a calibration folder of one
    image (the first) and what else to pass; returns (exit code, stderr, report.md or None)."""
    _, out, _, _ = evaluated
    tuned = _gate_config(tmp_path, 1.0, 1.0, 1.0, INT8_CONFIG, name="small_int8_tuned.yaml")
    loose = _gate_config(tmp_path, 1.0, 1.0, 1.0)
    first, second, third = sorted(p.name for p in (data / "image").iterdir())
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "manifest.json").write_text(json.dumps({"images": [{"name": first, "sha256": "0" * 64}]}))
    md = tmp_path / "report.md"

    def run(*extra: str):
        code = main(["report", "--fp32", str(out / "fp32"), "--engine", "fp16", str(out / "fp16"), str(loose),
                     "--engine", "int8", str(out / "int8"), str(tuned), "--config", str(small_config), "--onnx",
                     str(small_sim_onnx), "--data", str(data), "--out", str(md), "--png", str(tmp_path / "r.png"),
                     "--calib", str(calib), *extra])
        return code, md.read_text() if md.is_file() else None
    run.names, run.out = (first, second, third), out
    return run


def _selection(path: Path, data: Path, *names: str) -> Path:
    from pipeline.core.fileio import sha256_file
    from pipeline.data.dataset import format_image_list
    path.write_text(format_image_list([(n, sha256_file(data / "image" / n)) for n in names]))
    return path


def test_report_leaves_out_a_tuned_configs_selection_images(report_cli, tmp_path, data, capsys):
    first, second, third = report_cli.names
    # no selection list: the held-out rows exclude the calibration image only, and say why
    code, text = report_cli()
    assert code == 0
    assert ("`small_int8_tuned.yaml` is a tuned config whose selection images are unknown (no selection list given: "
            "`make tune` writes ART/tune/NAME/selection.txt), so the held-out figures exclude only the calibration "
            "images.") in text
    assert "ours (PPM-100, 2 outside calibration): int8" in text
    # its selection list: the third image is left out too, so the held-out rows are the second image's own figures
    code, text = report_cli("--exclude-selection", str(_selection(tmp_path / "selection.txt", data, third)))
    assert code == 0 and "selection images are unknown" not in text
    assert "all 3 images, 1 calibration image and 1 selection image among them" in text
    for label in ("fp32", "fp16", "int8"):
        m = json.loads((report_cli.out / label / "metrics.json").read_text())
        (row,) = [r for r in m["per_image"] if r["name"] == second]
        line = next(line for line in text.splitlines()
                    if line.startswith(f"| ours (PPM-100, 1 outside calibration and selection): {label}, "))
        assert f"| {row['mse']:.5f} | {row['mad']:.5f} | {row['sad']:.3f} | {row['grad']:.3f} | {row['conn']:.3f} | " \
               f"{metrics.miou(row['confusion']):.6f} |" in line


@pytest.mark.parametrize("content, words", [
    ("nonsense\n", "{sel}:1: expected `<sha256>  <file name>`, got 'nonsense'"),
    (f"# selection\n{'a' * 64}  ../x.jpg\n", "{sel}:2: '../x.jpg' holds a path separator: only a plain file name is "
                                           "allowed"),
    (f"{'A' * 64}  x.jpg\n", f"{{sel}}:1: expected `<sha256>  <file name>`, got '{'A' * 64}  x.jpg'"),
    ("# nothing listed\n", "{sel}: tune's selection list names no images; tune again (make tune)"),
    (f"{'a' * 64}  x.jpg\n{'b' * 64}  x.jpg\n", "{sel}: a file is listed twice"),
    ("changed", "{image}: sha256 {actual}... differs from 000000000000... recorded in {sel}: the image changed "
                "since it was listed; restore it, or tune again on this data (make tune)"),
])
def test_a_bad_selection_list_is_one_line_and_no_report(report_cli, tmp_path, data, capsys, content, words):
    from pipeline.core.fileio import sha256_file
    sel = tmp_path / "selection.txt"
    image = data / "image" / report_cli.names[2]
    sel.write_text(f"{'0' * 64}  {image.name}\n" if content == "changed" else content)
    code, text = report_cli("--exclude-selection", str(sel))
    expected = words.format(sel=sel, image=image, actual=sha256_file(image)[:12])
    assert (code, capsys.readouterr().err, text) == (2, f"error: {expected}\n", None)


def test_a_bad_calibration_manifest_is_one_line_and_no_report(report_cli, tmp_path, capsys):
    manifest = tmp_path / "calib" / "manifest.json"
    manifest.write_text(json.dumps({"images": [{"name": "../a.jpg", "sha256": "0" * 64}]}))
    assert report_cli() == (2, None)
    assert capsys.readouterr().err == (f"error: {manifest}: images: '../a.jpg' holds a path separator: only a plain "
                                       f"file name is allowed\n")
    manifest.write_text(json.dumps({"images": "x"}))
    assert report_cli() == (2, None)
    assert capsys.readouterr().err.startswith(f"error: {manifest}: not a calibration manifest (TypeError")
