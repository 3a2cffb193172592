"""Stage `hwcheck`: what only a VACC card can settle, in one command (docs/first-run-on-a-card.md).

1. Channel order: the fp16 vamc engine on a few calibration images, fed host-BGR and host-RGB (the same pixels
   otherwise), each against ONNX Runtime fp32. The right order agrees with fp32; the wrong one must be an order of
   magnitude further. `pipeline.vsx.input_order` selects it.
2. Resize path: host resize (ours) against card resize (the vendor's sample: the full-size photo in), each
   against fp32. `pipeline.vsx.resize` selects it.
3. Numbering: one vamc int8 engine built with a `skip_conv_layers` list that means different convs under the
   two numberings, against the two reference engines (ort backend) that read the list each way. The one the
   card is near tells what to set in `pipeline.conv_numbering`; near neither, or when check 4 fails (our int8
   does not stand for the card's), no verdict ("inconclusive").
4. Prediction: the vamc int8 engine against our reference int8 (same config, same calibration images), judged
   against how far our int8 is from fp32 (HWCHECK_PREDICTS), and the vendor metrics of both on those images'
   mattes.

The comparison and verdict functions are pure; `run` (the edge) opens the engines, builds the reference
engines and writes OUT/report.md.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml

from ..accuracy import metrics
from ..accuracy.agreement import Agreement, agreement
from ..backends.runners import open_runner
from ..core import layout
from ..core.config import (HWCHECK_AGREE_MEAN_ABS, HWCHECK_NUMBERING_IMAGE_SHARE, HWCHECK_NUMBERING_MIN_GAP,
                           HWCHECK_NUMBERING_NEAR, HWCHECK_PREDICTS, HWCHECK_SEPARATION, BuildConfig, load_config)
from ..core.errors import PipelineError
from ..core.fileio import claim_dir, write_text

ORDER_IMAGES = 5  # calibration images of the channel-order and resize checks

# --- comparisons (pure) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    check: str
    status: str  # ok | change | fail | inconclusive
    finding: str
    action: str  # what to change; empty when nothing
    failing: bool  # makes `hwcheck` exit non-zero
    value: str | None = None  # the setting the card says is right, when it settled one


def order_verdict(bgr: Agreement, rgb: Agreement, configured: str, configs: str) -> Verdict:
    """Which channel order into the card agrees with fp32; the other must stand out by HWCHECK_SEPARATION."""
    found = {"bgr": bgr, "rgb": rgb}
    right = min(found, key=lambda k: found[k].mean_abs)
    wrong = "rgb" if right == "bgr" else "bgr"
    best, other = found[right].mean_abs, found[wrong].mean_abs
    if best > HWCHECK_AGREE_MEAN_ABS:
        return Verdict("channel order", "fail", f"neither order agrees with fp32 (mean |diff| BGR {bgr.mean_abs:.4f}, "
                                                f"RGB {rgb.mean_abs:.4f}; agreeing is <= {HWCHECK_AGREE_MEAN_ABS})",
                       "the engine or its vdsp_params.json differs from the model in more than the channel order: "
                       "compare vdsp_params.json (Mean, Std, NormaType, sizes) with the config's process_ops", True)
    if not (other > best and other >= HWCHECK_SEPARATION * best):
        return Verdict("channel order", "inconclusive", f"both orders give nearly the same matte (mean |diff| BGR "
                                                        f"{bgr.mean_abs:.4f}, RGB {rgb.mean_abs:.4f})",
                       "rerun on colourful photos (another calibration folder, --calib)", True)
    finding = (f"host {right.upper()} agrees with fp32 (mean |diff| {best:.4f}), host {wrong.upper()} does not "
               f"({other:.4f}, {other / best:.0f}x further)" if best else
               f"host {right.upper()} matches fp32 exactly, host {wrong.upper()} does not ({other:.4f})")
    if right == configured:
        return Verdict("channel order", "ok", finding, "", False, right)
    return Verdict("channel order", "change", finding, f"set `pipeline.vsx.input_order: {right}` in {configs}", True,
                   right)


def resize_verdict(host: Agreement, card: Agreement, configured: str, configs: str) -> Verdict:
    """Whether the card's resize of the full-size photo agrees with fp32 as well as our host resize does."""
    agrees = {"host": host.mean_abs <= HWCHECK_AGREE_MEAN_ABS, "card": card.mean_abs <= HWCHECK_AGREE_MEAN_ABS}
    seen = f"mean |diff| host {host.mean_abs:.4f}, card {card.mean_abs:.4f}"
    if not any(agrees.values()):
        return Verdict("resize path", "fail", f"neither resize path agrees with fp32 ({seen})",
                       "settle the channel order first; then compare vdsp_params.json with the config", True)
    if all(agrees.values()):
        return Verdict("resize path", "ok", f"both paths agree with fp32 ({seen}); `{configured}` stays",
                       "", False, configured)
    right = "host" if agrees["host"] else "card"
    finding = f"only the {right} resize agrees with fp32 ({seen})"
    if right == configured:
        return Verdict("resize path", "ok", finding, "", False, right)
    return Verdict("resize path", "change", finding, f"set `pipeline.vsx.resize: {right}` in {configs}", True, right)


NUMBERING_RETRY = ("try another probe layer (`make hwcheck HWCHECK_SKIP=N`, N an index whose two readings differ: "
                   "`make layers`) or more images (a copy of the int8 config with a larger "
                   "`dataset.sampler.get_data_num`, as CONFIG_INT8)")


def numbering_verdict(to_vamc: Agreement, to_onnx: Agreement, between: Agreement, configured: str, config: str,
                      matters: bool, predicts: bool = True) -> Verdict:
    """Which reference engine the vamc engine agrees with: the one that reads skip_conv_layers in vamc's
    (TVM's) numbering, or in ONNX node order. A verdict only when the vamc engine is near one of them
    (HWCHECK_NUMBERING_NEAR of the distance between the two) and closer to it on most images, and only when
    our int8 predicts the card's (PREDICTS, from prediction_verdict): otherwise neither reference stands for the
    card. Inconclusive fails only when the int8 config skips layers, so the numbering matters to it."""
    seen = (f"mean |diff| to the vamc-numbering reference {to_vamc.mean_abs:.4f}, to the ONNX-order one "
            f"{to_onnx.mean_abs:.4f}; references {between.mean_abs:.4f} apart")
    if not predicts:
        return Verdict("numbering", "inconclusive", f"not judged: our reference int8 does not predict this card's "
                                                    f"int8 (see prediction), so neither reference stands for it "
                                                    f"({seen})", "settle the prediction first (its fix)", matters)
    if between.mean_abs < HWCHECK_NUMBERING_MIN_GAP:
        return Verdict("numbering", "inconclusive", f"this skip list barely changes the matte ({seen})",
                       NUMBERING_RETRY, matters)
    found = {"vamc": to_vamc, "onnx": to_onnx}
    closer = min(found, key=lambda k: found[k].mean_abs)
    other = "onnx" if closer == "vamc" else "vamc"
    near = found[closer].mean_abs / between.mean_abs
    share = float(np.mean([c < o for c, o in zip(found[closer].per_image, found[other].per_image)]))
    if near > HWCHECK_NUMBERING_NEAR or share < HWCHECK_NUMBERING_IMAGE_SHARE:
        return Verdict("numbering", "inconclusive",
                       f"the vamc engine is near neither reference ({seen}; the nearer, {closer}, is {near:.2f} of "
                       f"that distance away, closer on {share:.0%} of images; a verdict needs <= "
                       f"{HWCHECK_NUMBERING_NEAR:.2f} and >= {HWCHECK_NUMBERING_IMAGE_SHARE:.0%})",
                       NUMBERING_RETRY, matters)
    finding = f"vamc counts skip_conv_layers in {closer} numbering ({seen})"
    if closer == configured:
        return Verdict("numbering", "ok", finding, "", False, closer)
    return Verdict("numbering", "change", finding, f"set `pipeline.conv_numbering: {closer}` in {config}", True,
                   closer)


def prediction_verdict(vamc_vs_ref: Agreement, ref_vs_fp32: Agreement, vamc_scores: dict,
                       ref_scores: dict) -> Verdict:
    """Whether our reference int8 predicts the card's: within HWCHECK_PREDICTS of how far our int8 is from fp32."""
    scores = ", ".join(f"{label} {vamc_scores[k]:.5f} vs {ref_scores[k]:.5f}"
                       for k, label in (("mse", "MSE"), ("mad", "MAD"), ("miou", "mIoU")))
    ours, gap = ref_vs_fp32.mean_abs, vamc_vs_ref.mean_abs
    relative = f"{gap / ours:.2f} of" if ours else "against"
    finding = (f"vamc int8 vs our reference int8 on {vamc_vs_ref.images} calibration images: mean |diff| {gap:.4f}, "
               f"{relative} our int8's distance from fp32 ({ours:.4f}; predicting needs <= {HWCHECK_PREDICTS:.2f}), "
               f"max {vamc_vs_ref.max_abs:.3f}, label flips {vamc_vs_ref.flips:.2%}; against the mattes (vamc vs "
               f"ours) {scores}")
    if gap <= HWCHECK_PREDICTS * ours:
        return Verdict("prediction", "ok", finding, "", False)
    return Verdict("prediction", "fail", finding,
                   "tuning advice from the reference backend (make analyze, make tune) does not transfer to this card "
                   "until the emulation (pipeline/backends/ort) is fixed; no numbering verdict until then", True)


# --- which skip list tells the numberings apart (pure) ------------------------------------------------------


def differing_indices(order_vamc: list[str], order_onnx: list[str]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(order_vamc, order_onnx)) if a != b]


def choose_skip(order_vamc: list[str], order_onnx: list[str], sensitivity: dict[str, float]) -> int:
    """The index whose two readings keep the convs that matter most to the matte in float: the largest sum of
    both convs' sensitivity (mean |alpha change| when that conv alone is quantized); the smallest index on a tie."""
    candidates = differing_indices(order_vamc, order_onnx)
    if not candidates:
        raise PipelineError("the two numberings agree on every Conv of this model: no skip list tells them apart")
    return max(candidates, key=lambda i: (sensitivity[order_vamc[i]] + sensitivity[order_onnx[i]], -i))


def fake_quantize_conv(model: onnx.ModelProto, conv: str, input_absmax: float) -> onnx.ModelProto:
    """MODEL with one Conv fake-quantized for the numbering probe's sensitivity: weights symmetric int8 per output
    channel, its input symmetric int8 (zero point 0), both with scale max|x|/127 (INPUT_ABSMAX for the input), not
    the reference backend's T/128 (qdq.py): a ranking of Convs, not a prediction of the engine. The rest stays
    float."""
    from ..backends.ort.numbering import node_name
    out = copy.deepcopy(model)
    graph = out.graph
    position, node = next((i, n) for i, n in enumerate(graph.node) if node_name(n, i) == conv)
    weights = next(init for init in graph.initializer if init.name == node.input[1])
    w = onnx.numpy_helper.to_array(weights).astype(np.float32)
    scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (w.ndim - 1)))
    weights.CopyFrom(onnx.numpy_helper.from_array((np.clip(np.round(w / scale), -127, 127) * scale)
                                                  .astype(np.float32), weights.name))
    if input_absmax > 0:
        prefix = f"hwcheck_fq_{position}"
        graph.initializer.extend([
            onnx.numpy_helper.from_array(np.array(input_absmax / 127, np.float32), f"{prefix}_scale"),
            onnx.numpy_helper.from_array(np.array(0, np.int8), f"{prefix}_zero")])
        q = onnx.helper.make_node("QuantizeLinear", [node.input[0], f"{prefix}_scale", f"{prefix}_zero"],
                                  [f"{prefix}_q"], name=f"{prefix}_Q")
        dq = onnx.helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero"],
                                   [f"{prefix}_dq"], name=f"{prefix}_DQ")
        node.input[0] = f"{prefix}_dq"
        graph.node.insert(position, dq)
        graph.node.insert(position, q)
    return out


# --- report (pure) ----------------------------------------------------------------------------------------


STATUS_WORD = {"ok": "OK", "change": "CHANGE", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def summary(verdicts: list[Verdict], report: Path, width: int = 118) -> str:
    """One screen: a status word and the finding of each check, the fix under it, the overall outcome last."""
    lines = [f"hwcheck: {report}"]
    indent = " " * 30
    for v in verdicts:
        wrap = {"width": width, "break_on_hyphens": False, "break_long_words": False}
        lines += textwrap.wrap(v.finding, initial_indent=f"  {v.check:<14} {STATUS_WORD[v.status]:<13}",
                               subsequent_indent=indent, **wrap)
        if v.action:
            lines += textwrap.wrap(v.action, initial_indent=f"{indent}fix: ", subsequent_indent=indent + "     ",
                                   **wrap)
    failing = [v.check for v in verdicts if v.failing]
    unsettled = [v.check for v in verdicts if v.status == "inconclusive" and not v.failing]
    if failing:
        lines.append(f"hwcheck: needs attention: {', '.join(failing)}")
    elif unsettled:
        lines.append(f"hwcheck: nothing to change; not settled, and not needed by these configs: "
                     f"{', '.join(unsettled)}")
    else:
        lines.append("hwcheck: all settled")
    return "\n".join(lines) + "\n"


def markdown(verdicts: list[Verdict], tables: dict[str, list[tuple[str, Agreement]]], skip: dict,
             scores: dict[str, dict]) -> str:
    out = ["# hwcheck: what the card settled", "",
           "What each verdict means and what to change: docs/first-run-on-a-card.md.", "",
           "| Check | Verdict | Finding | Fix |", "|:--|:--|:--|:--|"]
    def cell(text: str) -> str:
        return text.replace("|", "\\|") or "-"
    out += [f"| {v.check} | {STATUS_WORD[v.status]} | {cell(v.finding)} | {cell(v.action)} |" for v in verdicts]
    for title, rows in tables.items():
        out += ["", f"## {title}", "", "| Engine and input | Against | Images | Mean abs diff | Max abs diff | "
                                        "Label flips |", "|:--|:--|--:|--:|--:|--:|"]
        out += [f"| {label.split(' vs ')[0]} | {label.split(' vs ')[1]} | {a.images} | {a.mean_abs:.5f} | "
                f"{a.max_abs:.4f} | {a.flips:.3%} |" for label, a in rows]
    if skip:
        out += ["", "## The skip list of the numbering check", "",
                f"`skip_conv_layers: {skip['list']}`: {skip['why']}", "",
                "| Index | vamc numbering keeps in float | ONNX order keeps in float |", "|--:|:--|:--|"]
        out += [f"| {i} | {a} | {b} |" for i, a, b in skip["rows"]]
    if scores:
        keys = ("mse", "mad", "sad", "grad", "conn", "miou")
        out += ["", "## Vendor metrics on the calibration images' mattes", "",
                "| Engine | MSE | MAD | SAD | Grad | Conn | mIoU |",
                "|:--|" + "--:|" * len(keys)]
        out += [f"| {label} | " + " | ".join(f"{s[k]:.5f}" for k in keys) + " |" for label, s in scores.items()]
    return "\n".join(out) + "\n"


# --- the edge: engines, builds, files -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    config_fp16: Path
    config_int8: Path
    onnx_fp16: Path  # simplified fp32 ONNX of each config
    onnx_int8: Path
    engine_fp16: Path  # vamc engine folders
    engine_int8: Path
    calib: Path  # calibration folder (images/, manifest.json)
    data: Path  # PPM-100-shaped folder: the mattes of the calibration images
    skip: tuple[int, ...] | None = None  # the numbering check's skip list; None: chosen here


def with_vsx(cfg: BuildConfig, **settings) -> BuildConfig:
    vsx = dataclasses.replace(cfg.pipeline.vsx, **settings)
    return dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, vsx=vsx))


def calibration_photos(calib: Path) -> list[Path]:
    try:
        names = [entry["name"] for entry in json.loads(layout.manifest(calib).read_text())["images"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{layout.manifest(calib)}: not a calibration manifest ({exc}); run `make calib`") \
            from None
    return [calib / "images" / name for name in names]


def predict(runner, cfg: BuildConfig, images: list[Path], progress, label: str) -> list[np.ndarray]:
    from ..data.preprocess import decode_bgr
    return [metrics.pred_from_alpha(runner.infer(runner.prepare(cfg, decode_bgr(path))))
            for path in progress(images, label, len(images))]


def _vamc_engine(engine: Path):
    from ..backends.runners import describe
    info = describe(engine)
    if info.backend != "vamc":
        raise PipelineError(f"{engine}: hwcheck compares vamc engines with the card, this is an {info.backend} "
                            f"engine (build them with `make fp16 int8 BACKEND=vamc`)")
    return info


def _open_vamc(engine: Path):
    from ..backends.vamc.runner import VaststreamxRunner
    return VaststreamxRunner(_vamc_engine(engine))


def check_kinds(inputs: Inputs, cfg16: BuildConfig, cfg8: BuildConfig) -> None:
    """Each config and engine is the kind its flag names, before any check runs: an fp16 config given as the int8
    one would otherwise fail only at check 3, minutes in."""
    from ..backends.vamc.runner import vdsp_size
    for flag, cfg, dtype in (("--config-fp16", cfg16, "fp16"), ("--config-int8", cfg8, "int8")):
        if cfg.backend.dtype != dtype:
            raise PipelineError(f"{cfg.source}: {flag} names an {cfg.backend.dtype} config (backend.dtype); pass "
                                f"the {dtype} one, e.g. build_configs/official_modnet_{dtype}.yaml")
    for flag, engine, dtype in (("--engine-fp16", inputs.engine_fp16, "fp16"),
                                ("--engine-int8", inputs.engine_int8, "int8")):
        info = _vamc_engine(engine)
        if info.dtype != dtype:
            raise PipelineError(f"{engine}: {flag} names an {info.dtype} engine; pass the {dtype} one "
                                f"(artifacts/engines/NAME/vamc of the {dtype} config)")
        vdsp_size(info)


def _run(runner_factory, cfg, images, progress, label) -> list[np.ndarray]:
    runner = runner_factory()
    try:
        return predict(runner, cfg, images, progress, label)
    finally:
        runner.close()


def variant_config(source: Path, out: Path, skip: list[int], numbering: str) -> BuildConfig:
    """SOURCE with another skip_conv_layers list and conv_numbering, written to OUT (vamc is given a file)."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    raw["backend"]["quantize"]["skip_conv_layers"] = skip
    raw.setdefault("pipeline", {})["conv_numbering"] = numbering
    header = f"# written by `python -m pipeline hwcheck` from {source}: skip_conv_layers and conv_numbering changed\n"
    write_text(out, header + yaml.safe_dump(raw, sort_keys=False))
    return load_config(out)


def sensitivity(model: onnx.ModelProto, convs: list[str], inputs: list[np.ndarray], progress) -> dict[str, float]:
    """Mean |alpha change| on INPUTS when each of CONVS alone is quantized (fake_quantize_conv), on ORT fp32."""
    from ..backends.ort.numbering import node_name
    from ..core import runtime
    conv_inputs = {node_name(n, i): n.input[0] for i, n in enumerate(model.graph.node) if n.op_type == "Conv"}
    probe = copy.deepcopy(model)
    wanted = sorted({conv_inputs[c] for c in convs} - {o.name for o in probe.graph.output})
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in wanted)
    session = runtime.session(probe.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    absmax = dict.fromkeys(names, 0.0)
    base = []
    for x in inputs:
        outs = session.run(None, {session.get_inputs()[0].name: x})
        base.append(outs[0])
        for name, value in zip(names, outs):
            absmax[name] = max(absmax[name], float(np.abs(value).max()))
    found = {}
    for conv in progress(convs, "conv sensitivity", len(convs)):
        quantized = runtime.session(fake_quantize_conv(model, conv, absmax[conv_inputs[conv]]).SerializeToString())
        found[conv] = float(np.mean([np.abs(runtime.run(quantized, x) - b).mean() for x, b in zip(inputs, base)]))
    return found


def check_input(inputs: Inputs, cfg16: BuildConfig, images: list[Path], progress):
    """Checks 1-2: the fp16 engine on the card, fed each way, against fp32 on the same photos."""
    configs = f"{inputs.config_fp16} and {inputs.config_int8}"
    fp32 = _run(lambda: open_runner(inputs.onnx_fp16), cfg16, images, progress, "fp32")

    def card(order: str, resize: str) -> Agreement:
        preds = _run(lambda: _open_vamc(inputs.engine_fp16), with_vsx(cfg16, input_order=order, resize=resize),
                     images, progress, f"fp16 {order} {resize}")
        return agreement(preds, fp32)

    ran = {("bgr", "host"): card("bgr", "host"), ("rgb", "host"): card("rgb", "host")}
    order = order_verdict(ran["bgr", "host"], ran["rgb", "host"], cfg16.pipeline.vsx.input_order, configs)
    use_order = order.value or cfg16.pipeline.vsx.input_order
    ran[use_order, "card"] = card(use_order, "card")
    resize = resize_verdict(ran[use_order, "host"], ran[use_order, "card"], cfg16.pipeline.vsx.resize, configs)
    rows = [(f"fp16 vamc, host {o.upper()}, {r} resize vs fp32", a) for (o, r), a in ran.items()]
    return order, resize, rows


def check_numbering(vamc_engine: Path, references: dict[str, Path], cfg8: BuildConfig, images: list[Path],
                    progress, predicts: bool = True):
    """Check 3: the vamc engine against the reference engines that read its skip list in each numbering.
    CFG8 is the int8 config as written (its numbering, whether it skips layers), feeding the card as checks 1-2
    settled; PREDICTS: whether check 4 found our int8 predicts the card's."""
    vamc = _run(lambda: _open_vamc(vamc_engine), cfg8, images, progress, "int8 vamc (numbering)")
    refs = {n: _run(lambda n=n: open_runner(references[n]), cfg8, images, progress, f"int8 reference ({n})")
            for n in ("vamc", "onnx")}
    to = {n: agreement(vamc, refs[n]) for n in refs}
    between = agreement(refs["vamc"], refs["onnx"])
    verdict = numbering_verdict(to["vamc"], to["onnx"], between, cfg8.pipeline.conv_numbering, str(cfg8.source),
                                bool(cfg8.backend.quantize.skip_conv_layers), predicts)
    rows = [("vamc int8 vs reference, vamc numbering", to["vamc"]), ("vamc int8 vs reference, ONNX order", to["onnx"]),
            ("reference, vamc numbering vs reference, ONNX order", between)]
    return verdict, rows


def choose_skip_list(model: onnx.ModelProto, cfg8: BuildConfig, images: list[Path], progress) -> tuple[list[int], str]:
    from ..backends.ort.numbering import conv_order
    from ..data.preprocess import load_input
    orders = {n: conv_order(model, n) for n in ("vamc", "onnx")}
    candidates = differing_indices(orders["vamc"], orders["onnx"])
    convs = sorted({orders[n][i] for i in candidates for n in orders})
    sens = sensitivity(model, convs, [load_input(cfg8, p) for p in images], progress)
    i = choose_skip(orders["vamc"], orders["onnx"], sens)
    return [i], (f"of the {len(candidates)} indices whose two readings differ, the one whose two convs matter most "
                 f"to the matte when quantized alone (mean |alpha change| {sens[orders['vamc'][i]]:.4f} and "
                 f"{sens[orders['onnx'][i]]:.4f} on fp32)")


def run(inputs: Inputs, out: Path, progress) -> tuple[list[Verdict], str]:
    """Every check; writes OUT/report.md (and the reference engines and configs under OUT). Returns the
    verdicts and the one-screen summary."""
    from ..backends.engine import build_engine
    from ..backends.ort.numbering import conv_order
    from .evaluate import load_gt
    cfg16, cfg8 = load_config(inputs.config_fp16), load_config(inputs.config_int8)
    check_kinds(inputs, cfg16, cfg8)
    images = calibration_photos(inputs.calib)
    # read (and their sizes checked) before any build: a bad matte is one line, not minutes in
    gts = [load_gt(inputs.data / "image" / p.name, cfg8) for p in images]
    few = images[:ORDER_IMAGES]
    model = onnx.load(str(inputs.onnx_int8))
    orders = {n: conv_order(model, n) for n in ("vamc", "onnx")}
    bad = [i for i in inputs.skip or () if i >= len(orders["vamc"])]
    if bad:
        raise PipelineError(f"--skip-conv-layers {bad[0]} is out of range: {inputs.onnx_int8} has "
                            f"{len(orders['vamc'])} Conv nodes (0..{len(orders['vamc']) - 1})")
    claim_dir(out, "hwcheck")
    layout.hwcheck_report(out).unlink(missing_ok=True)  # a report from an earlier run must not pass for this one's

    order, resize, rows = check_input(inputs, cfg16, few, progress)
    tables = {"Channel order and resize path (fp16 vamc engine vs ONNX Runtime fp32)": rows}
    vsx = {"input_order": order.value or cfg8.pipeline.vsx.input_order,
           "resize": resize.value or cfg8.pipeline.vsx.resize}

    if inputs.skip is not None:
        skip, why = list(inputs.skip), "given on the command line"
    else:
        skip, why = choose_skip_list(model, cfg8, few, progress)
    variants = {n: variant_config(inputs.config_int8, out / "configs" / f"numbering_{n}.yaml", skip, n)
                for n in ("vamc", "onnx")}
    engines = out / "engines"
    build_engine("vamc", variants["vamc"], inputs.onnx_int8, inputs.calib, engines / "numbering" / "vamc",
                 progress)
    for n, variant in variants.items():
        build_engine("ort", variant, inputs.onnx_int8, inputs.calib, engines / f"numbering_{n}" / "ort", progress)
    build_engine("ort", cfg8, inputs.onnx_int8, inputs.calib, engines / "reference" / "ort", progress)
    card8 = with_vsx(cfg8, **vsx)
    # the prediction first: the numbering check reads the card through our int8, so it is judged only if that holds
    vamc8 = _run(lambda: _open_vamc(inputs.engine_int8), card8, images, progress, "int8 vamc")
    ref8 = _run(lambda: open_runner(engines / "reference" / "ort"), cfg8, images, progress, "int8 reference")
    fp32 = _run(lambda: open_runner(inputs.onnx_int8), cfg8, images, progress, "fp32")
    scores = {label: _scores(preds, gts, images) for label, preds in (("vamc int8", vamc8), ("reference int8", ref8))}
    vs_ref, ref_vs_fp32 = agreement(vamc8, ref8), agreement(ref8, fp32)
    prediction = prediction_verdict(vs_ref, ref_vs_fp32, scores["vamc int8"], scores["reference int8"])
    numbering, rows = check_numbering(engines / "numbering" / "vamc",
                                      {n: engines / f"numbering_{n}" / "ort" for n in variants}, card8, images,
                                      progress, prediction.status == "ok")
    tables[f"Numbering (int8, skip_conv_layers: {skip})"] = rows
    tables["Prediction (int8, calibration images)"] = [("vamc int8 vs reference int8", vs_ref),
                                                       ("reference int8 vs fp32", ref_vs_fp32)]

    verdicts = [order, resize, numbering, prediction]
    skipped = [(i, orders["vamc"][i], orders["onnx"][i]) for i in skip]
    report = layout.hwcheck_report(out)
    write_text(report, markdown(verdicts, tables, {"list": skip, "why": why, "rows": skipped}, scores))
    return verdicts, summary(verdicts, report)


def _scores(preds: list[np.ndarray], gts: list[np.ndarray], images: list[Path]) -> dict:
    acc = metrics.Accumulator()
    for pred, gt, path in zip(preds, gts, images):
        acc.add(path.name, metrics.image_metrics(pred, gt))
    return acc.summary()
