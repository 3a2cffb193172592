"""`python -m pipeline SUBCOMMAND ...`: the edge where files are named, stages are called and errors are reported.

Stage modules are imported inside each handler so that `--help` and quick commands do not pay for torch.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from pathlib import Path

from .core import layout
from .core.errors import PipelineError
from .core.fileio import check_out_dir
from .core.progress import progress, showing

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "build_configs" / "official_modnet_fp16.yaml"


def _config(path: str):
    from .core.config import load_config
    return load_config(path)


def cmd_export(args) -> None:
    from .model.export import export_onnx
    export_onnx(_config(args.config), args.ckpt, args.out)
    print(f"wrote {args.out}")


def cmd_simplify(args) -> None:
    from .stages.simplify import simplify_onnx
    report = simplify_onnx(_config(args.config), args.onnx, args.out)
    p = report["parity"]
    print(f"wrote {args.out}: {report['nodes_before']} -> {report['nodes_after']} nodes, parity max abs "
          f"{p['max_abs']:.3g} (tolerance {p['tolerance']:g})")


def _check_seed(seed: int) -> None:
    if seed < 0:  # NumPy's generators take no negative seed
        raise PipelineError(f"--seed must be 0 or more, got {seed}")


def cmd_demo_ckpt(args) -> None:
    from .demo.checkpoint import check_out, write_demo_checkpoint
    from .demo.training import STEPS
    steps = STEPS if args.steps is None else args.steps
    if steps < 0:
        raise PipelineError(f"--steps must be 0 (random weights) or more, got {steps}")
    _check_seed(args.seed)
    check_out(Path(args.out))
    write_demo_checkpoint(args.out, args.seed, steps, _config(args.config),
                          progress=showing(lambda loss: f"loss={loss:.4f}"))
    how = f"trained {steps} steps on generated portraits" if steps else "random weights"
    print(f"wrote {args.out} (seed {args.seed}, {how}: not the official model)")


def cmd_demo_data(args) -> None:
    from .demo.data import write_demo_data
    _check_seed(args.seed)
    names = write_demo_data(args.out, args.count, args.seed, args.scale, progress=progress)
    print(f"wrote {len(names)} generated portraits and mattes to {args.out}")


def cmd_calib(args) -> None:
    from .stages.calibrate import default_list_path, make_calibration_set
    cfg = _config(args.config)
    list_path = Path(args.list) if args.list else default_list_path(cfg)
    manifest = make_calibration_set(cfg, args.data, args.out, list_path, redraw=args.redraw,
                                    progress=progress)
    how = "reused" if manifest["list"]["reused"] else "drew"
    print(f"wrote {args.out}: {manifest['count']} images ({how} {list_path})")


def cmd_build(args) -> None:
    from .backends.engine import build_engine, tuned_config_warnings
    cfg = _config(args.config)
    calib = Path(args.calib) if args.calib else None
    build_engine(args.backend, cfg, Path(args.onnx), calib, Path(args.out), progress)
    print(f"wrote {cfg.backend.dtype} engine ({args.backend}) to {args.out}")
    for warning in tuned_config_warnings(cfg, Path(args.onnx)):
        print(f"warning: {warning}", file=sys.stderr)


def cmd_correct(args) -> None:
    from .stages.correct import correct_onnx
    record, seconds, rss = correct_onnx(_config(args.config), Path(args.onnx), Path(args.calib), Path(args.out),
                                        progress)
    last = record["rounds"][-1]
    print(f"wrote {args.out} and {args.out}.json: {len(record['convs'])} Convs corrected, "
          f"{record['rounds_run']} round(s) ({record['passes_per_round']} int8 passes each), last threshold move "
          f"{last['largest_threshold_move']:.2%}{'' if record['settled'] else ' (not settled)'}; fp32 deviation from "
          f"the input {record['fp32_deviation']['mean_abs_alpha_diff']:.5f} ({seconds:.0f} s, peak RSS {rss:.0f} MB)")


def cmd_layers(args) -> None:
    from .stages.layers import layers
    print(layers(_config(args.config), args.onnx))


def _workbench(args, cache: Path | None = None):
    from .model.checkpoint import is_demo_checkpoint
    from .tuning.workbench import Workbench
    demo = (args.demo, bool(args.ckpt) and is_demo_checkpoint(Path(args.ckpt)))
    extra = getattr(args, "extra_images", None)
    return Workbench(_config(args.config), Path(args.onnx), Path(args.calib), Path(args.data),
                     progress, cache, demo, Path(extra) if extra else None)


def cmd_analyze(args) -> None:
    from .tuning.analyze import analyze
    result = analyze(_workbench(args), Path(args.out))
    f = result["figures"]
    worst = ", ".join(f"{r['skip_index']} ({r['onnx_node']})" for r in result["worst"][:3])
    print(f"wrote {args.out}/layers.csv, layers.md, layers.png: MAD {f['mad_increase']:+.5f} and mIoU drop "
          f"{f['miou_drop']:+.5f} against fp32; most impact: {worst} ({result['seconds']:.0f} s)")
    print(result["reading"]["text"])


def cmd_tune(args) -> None:
    import shlex

    from .tuning.tune import summary_line, tune
    out = Path(args.out)
    check_out_dir(out, "tune")  # before any work; tune marks the folder as its own when it starts writing
    wb = _workbench(args, out / "candidates.json")
    for notice in wb.notices:
        print(f"warning: {notice}", file=sys.stderr)
    command = "python -m pipeline " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    bar = progress(None, "tune", wb.cfg.pipeline.tune.max_builds, unit="build")
    try:
        result = tune(wb, out, command, bar)
    finally:
        bar.close()
    print(f"wrote {out}/tuned.yaml, tune.md, tune.png, candidates.json, selection.txt, confirmation.txt: "
          f"{summary_line(wb, result)} ({len(result.outcome.steps)} candidates, {wb.built} built and {wb.passes} "
          f"forward passes in this run)")


def cmd_promote(args) -> None:
    from .tuning.promote import check_target, promote
    target, config = Path(args.to), Path(args.config)
    if args.check:
        check_target(target, config, args.demo, args.overwrite)
        return
    if not args.tuned:
        raise PipelineError("promote: --tuned FILE is required (or --check to only check --to)")
    overridden = promote(Path(args.tuned), target, config, args.demo, args.force, args.overwrite)
    build = "as `make demo-tune` says" if args.demo else f"with `make int8 CONFIG_INT8={target}`"
    forced = f", promoted with FORCE=1 although the verdict is {overridden}" if overridden else ""
    print(f"wrote {target} (a copy of {args.tuned}{forced}): build it {build}")


def cmd_evaluate(args) -> None:
    from .stages.evaluate import evaluate
    report = evaluate(_config(args.config), args.engine, args.data, args.out, limit=args.limit, progress=progress)
    t = report["timing"]
    print(f"wrote {layout.metrics(args.out)}: {report['images']} images, MSE {report['mse']:.5f}, MAD "
          f"{report['mad']:.5f}, SAD {report['sad']:.3f}, Grad {report['grad']:.3f}, Conn {report['conn']:.3f}, "
          f"mIoU {report['miou']:.6f} ({t['images_per_second']:.2f} img/s)")


def _evaluated(args):
    from .stages.report import evaluated
    return evaluated(args.fp32, args.engine or [])


def cmd_report(args) -> None:
    from .model.checkpoint import is_demo_checkpoint
    from .stages.report import described, gate_failures, scope, write_report
    fp32, engines = _evaluated(args)
    held = scope([Path(f) for f in args.calib or ()], [Path(f) for f in args.exclude_selection or ()],
                 Path(args.data), engines)
    out = Path(args.out)
    before = described(out.read_text(encoding="utf-8", errors="replace")) if out.is_file() else None
    rows = write_report(fp32, engines, _config(args.config), Path(args.onnx), Path(args.data), args.demo,
                        out, Path(args.png), demo_ckpt=bool(args.ckpt) and is_demo_checkpoint(Path(args.ckpt)),
                        scope=held)
    now = described(out.read_text(encoding="utf-8"))
    if before and before != now:
        print(f"replaced {out}: was {before}, now {now}")
    failure = gate_failures(rows)
    print(f"wrote {args.out} and {args.png} (gate: {'FAILED, see the report' if failure else 'passed'})")


def cmd_gate(args) -> None:
    from .stages.report import gate, gate_failures
    fp32, engines = _evaluated(args)
    failure = gate_failures(gate(fp32, engines))
    if failure:
        raise PipelineError(failure)
    print(f"accuracy gate passed: {', '.join(e.label for e in engines)} within their limits against fp32")


def _engine_args(p) -> None:
    p.add_argument("--fp32", required=True, help="metrics folder of the fp32 ONNX (from `evaluate`)")
    p.add_argument("--engine", nargs=3, action="append", metavar=("LABEL", "METRICS_DIR", "CONFIG"),
                   help="an engine's label (fp16, int8), its metrics folder and its build config (whose "
                        "pipeline.gate holds its limits); repeat for each engine")


def cmd_release(args) -> None:
    from .stages.release import ReleaseInputs, assemble, release_name, uncommitted_list_warning
    name = release_name(_config(args.config_fp16).name, _config(args.config_int8).name)
    inputs = ReleaseInputs(name=name, ckpt=Path(args.ckpt), data=Path(args.data), backend=args.backend,
                           config_fp16=Path(args.config_fp16), config_int8=Path(args.config_int8),
                           calib_list=Path(args.calib_list), calib_dir=Path(args.calib), onnx_fp16=Path(args.onnx_fp16),
                           onnx_int8=Path(args.onnx_int8), engine_fp16=Path(args.engine_fp16),
                           engine_int8=Path(args.engine_int8), report=tuple(Path(p) for p in args.report),
                           eval_dir=Path(args.eval_dir), limit=args.limit,
                           selection=Path(args.selection) if args.selection else None)
    bundle, written = assemble(inputs, Path(args.out_root))
    print(f"wrote release {bundle}" if written else
          f"release {bundle} is already there (same inputs); nothing written")
    warning = uncommitted_list_warning(bundle, args.calib_list) if written else None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_verify(args) -> None:
    from .stages.verify import verify
    optional = {name: Path(getattr(args, name)) if getattr(args, name) else None
                for name in ("scratch", "scratch_root", "ckpt", "data", "venv_cache")}
    print(verify(Path(args.release), say=lambda line: print(line, flush=True), **optional))


def cmd_hwcheck(args) -> None:
    from .stages.hwcheck import Inputs, run
    check_out_dir(Path(args.out), "hwcheck")  # before any work; claim_dir checks again
    skip = None
    if args.skip_conv_layers is not None:
        try:
            skip = tuple(int(v) for v in args.skip_conv_layers.split(",") if v.strip())
        except ValueError:
            raise PipelineError(f"--skip-conv-layers {args.skip_conv_layers!r}: expected indices like 54 or "
                                f"54,60") from None
        if not skip or min(skip) < 0:
            raise PipelineError(f"--skip-conv-layers {args.skip_conv_layers!r}: expected indices >= 0")
    inputs = Inputs(config_fp16=Path(args.config_fp16), config_int8=Path(args.config_int8),
                    onnx_fp16=Path(args.onnx_fp16), onnx_int8=Path(args.onnx_int8),
                    engine_fp16=Path(args.engine_fp16), engine_int8=Path(args.engine_int8), calib=Path(args.calib),
                    data=Path(args.data), skip=skip)
    verdicts, text = run(inputs, Path(args.out), progress)
    print(text, end="")
    failing = [v.check for v in verdicts if v.failing]
    if failing:
        report = layout.hwcheck_report(args.out)
        raise PipelineError(f"hwcheck: {', '.join(failing)}: see the fix above and in {report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="official checkpoint -> static-shape ONNX")
    p.add_argument("--config", required=True, help="build config YAML (shape, opset)")
    p.add_argument("--ckpt", required=True, help="modnet_photographic_portrait_matting.ckpt or a demo checkpoint")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("simplify", help="ONNX -> onnxsim-simplified ONNX, checked for parity")
    p.add_argument("--config", required=True)
    p.add_argument("--onnx", required=True, help="exported ONNX")
    p.add_argument("--out", required=True, help="simplified ONNX to write (and OUT.json beside it)")
    p.set_defaults(func=cmd_simplify)

    p = sub.add_parser("calib", help="draw the deterministic calibration subset and preprocess it")
    p.add_argument("--config", required=True, help="int8 build config YAML (seed, get_data_num, suffix, process_ops)")
    p.add_argument("--data", required=True, help="PPM-100-shaped folder (images in DATA/image/)")
    p.add_argument("--list", help="committed record of the subset (default: calib/<config name>.txt)")
    p.add_argument("--out", required=True, help="calibration folder to write")
    p.add_argument("--redraw", action="store_true", help="draw anew and rewrite --list instead of reusing it")
    p.set_defaults(func=cmd_calib)

    p = sub.add_parser("build", help="compile the simplified ONNX into an fp16 or int8 engine")
    p.add_argument("--config", required=True, help="build config YAML (fp16 or int8)")
    p.add_argument("--onnx", required=True, help="simplified ONNX")
    p.add_argument("--calib", help="calibration folder from `calib` (int8 only)")
    p.add_argument("--backend", required=True, choices=("ort", "vamc"),
                   help="ort: reference engine on ONNX Runtime; vamc: the vendor compiler")
    p.add_argument("--out", required=True, help="engine folder to write")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("correct", help="bias-correct the simplified ONNX for an int8 config's quantization (the "
                                       "ONNX `pipeline.bias_correction: empirical` builds from)")
    p.add_argument("--config", required=True, help="int8 build config YAML with pipeline.bias_correction: empirical")
    p.add_argument("--onnx", required=True, help="simplified ONNX")
    p.add_argument("--calib", required=True, help="calibration folder from `calib`")
    p.add_argument("--out", required=True, help="corrected ONNX to write (and OUT.json, its record, beside it)")
    p.set_defaults(func=cmd_correct)

    p = sub.add_parser("layers", help="list every Conv: vamc and ONNX index (skip_conv_layers), branch, shapes")
    p.add_argument("--config", required=True, help="build config YAML (skip_conv_layers, pipeline.conv_numbering)")
    p.add_argument("--onnx", required=True, help="simplified ONNX")
    p.set_defaults(func=cmd_layers)

    for name, text, func in (
            ("analyze", "per-Conv quantization error of an int8 config, and whether its weights or its activations "
                        "lose most: layers.csv, layers.md, layers.png, analysis.json; with pipeline.tune."
                        "bias_correction: true or pipeline.bias_correction: empirical, the same rows in the other "
                        "bias-correction state and whether the correction helped (one correction: minutes)",
             cmd_analyze),
            ("tune", "search vamc quantize settings that meet pipeline.tune's target: tuned.yaml and its record",
             cmd_tune)):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="int8 build config YAML (its pipeline.tune section)")
        p.add_argument("--onnx", required=True, help="simplified ONNX")
        p.add_argument("--calib", required=True, help="calibration folder from `calib`")
        p.add_argument("--data", required=True, help="PPM-100-shaped folder; the selection and confirmation images are drawn from it")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--demo", action="store_true", help="DATA is the generated demo set: say so in the outputs")
        p.add_argument("--ckpt", help="the checkpoint the ONNX came from: the outputs say so if it is the demo one")
        if name == "tune":
            p.add_argument("--extra-images", help="folder of unlabelled photos whose deviation from fp32 joins the "
                                                  "selection figures (none may be a calibration image)")
        p.set_defaults(func=func)

    p = sub.add_parser("promote", help="copy tune's tuned.yaml to TUNED_CONFIG, only where that is tune's to write")
    p.add_argument("--config", required=True, help="the int8 config that was tuned (never overwritten)")
    p.add_argument("--to", required=True, help="TUNED_CONFIG: a *.yaml in build_configs/ (with --demo: in "
                                               "artifacts/demo/), new or an earlier tuned config")
    p.add_argument("--tuned", help="tune's tuned.yaml to copy")
    p.add_argument("--check", action="store_true", help="only check --to (make tune does, before tuning)")
    p.add_argument("--demo", action="store_true", help="tuned on the generated demo set")
    p.add_argument("--force", action="store_true", help="promote whatever the verdict (the copy's header says so)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier tuned config edited by hand")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("evaluate", help="score an engine on a PPM-100-shaped folder (MSE, MAD, SAD, Grad, Conn, mIoU)")
    p.add_argument("--config", required=True, help="build config YAML (shape, preprocessing, image suffix)")
    p.add_argument("--engine", required=True,
                   help="simplified fp32 .onnx, or an engine folder (ort or vamc) with manifest.json")
    p.add_argument("--data", required=True, help="PPM-100-shaped folder (image/ and matte/)")
    p.add_argument("--out", required=True, help="report folder to write (metrics.json, preds/)")
    p.add_argument("--limit", type=int, help="score only the first N images (by name)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="report.md (the model card's table) and report.png (contact sheet)")
    _engine_args(p)
    p.add_argument("--config", required=True, help="config of the fp32 model (shape, for the contact sheet)")
    p.add_argument("--onnx", required=True, help="simplified fp32 ONNX (FLOPs and params are counted on it)")
    p.add_argument("--data", required=True, help="the evaluated folder (inputs and mattes of the contact sheet)")
    p.add_argument("--demo", action="store_true", help="DATA is the generated demo set: say so in the report")
    p.add_argument("--ckpt", help="the checkpoint evaluated: the report says so if it is the demo checkpoint")
    p.add_argument("--calib", action="append", metavar="DIR",
                   help="calibration folder of an int8 engine (its manifest.json names the images): the report adds "
                        "its figures on the images outside them; repeat for each int8 engine")
    p.add_argument("--exclude-selection", action="append", metavar="FILE",
                   help="tune's selection.txt of a tuned config (`<sha256>  <name>` lines): its images are left "
                        "out of the held-out figures too")
    p.add_argument("--out", required=True, help="report.md to write")
    p.add_argument("--png", required=True, help="report.png to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("gate", help="fail if an engine's MSE/MAD/mIoU change against fp32 exceeds its config's gate")
    _engine_args(p)
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("release", help="assemble the release bundle named by its inputs")
    for flag, text in (("--config-fp16", "fp16 build config"), ("--config-int8", "int8 build config"),
                       ("--ckpt", "the checkpoint the ONNX came from"), ("--data", "PPM-100-shaped folder used"),
                       ("--backend", "backend of both engines"), ("--calib-list", "committed calibration list"),
                       ("--calib", "calibration folder"), ("--onnx-fp16", "simplified ONNX of the fp16 engine"),
                       ("--onnx-int8", "simplified ONNX of the int8 engine"), ("--engine-fp16", "fp16 engine folder"),
                       ("--engine-int8", "int8 engine folder"), ("--eval-dir", "evaluation folder (metrics.json)"),
                       ("--out-root", "folder that receives NAME-HASH/")):
        p.add_argument(flag, required=True, help=text)
    p.add_argument("--limit", type=int, help="LIMIT the evaluation ran with (part of the release's identity)")
    p.add_argument("--selection", help="a tuned config's selection list, which the report read (`make eval` passes it "
                                       "as --exclude-selection): bundled, so verify's rebuild reads it too")
    p.add_argument("--report", nargs="+", required=True, help="report files (report.md, report.png)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("verify", help="rebuild a release bundle from its manifest and compare it file by file")
    p.add_argument("--release", required=True, help="bundle folder (artifacts/release/NAME-HASH)")
    p.add_argument("--ckpt", help="checkpoint, if it moved since the release (its sha256 must match)")
    p.add_argument("--data", help="PPM-100-shaped folder, if it moved since the release")
    p.add_argument("--scratch", help="folder for the rebuild (default: a new one under --scratch-root)")
    p.add_argument("--scratch-root", default=None, help="where the default scratch folder is made")
    p.add_argument("--venv-cache", help="where venvs made for releases whose environment differs from this one are "
                                        "kept, by requirements.txt sha256 (default: artifacts/verify/venvs)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("hwcheck", help="on a machine with a VACC card: channel order, resize path, skip_conv_layers "
                                       "numbering and int8 prediction, with the fix for each")
    for flag, text in (("--config-fp16", "fp16 build config"), ("--config-int8", "int8 build config"),
                       ("--onnx-fp16", "simplified ONNX of the fp16 config"),
                       ("--onnx-int8", "simplified ONNX of the int8 config"),
                       ("--engine-fp16", "fp16 vamc engine folder"), ("--engine-int8", "int8 vamc engine folder"),
                       ("--calib", "calibration folder from `calib`"),
                       ("--data", "PPM-100-shaped folder the calibration images come from (their mattes)"),
                       ("--out", "folder for report.md, the reference engines and configs")):
        p.add_argument(flag, required=True, help=text)
    p.add_argument("--skip-conv-layers", help="skip list of the numbering check, e.g. 54 (default: chosen)")
    p.set_defaults(func=cmd_hwcheck)

    p = sub.add_parser("demo-ckpt", help="train MODNet briefly on generated portraits; write it in the official layout")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: STEPS in pipeline/demo/training.py; 0: random weights, as the "
                        "tests use)")
    p.add_argument("--config", default=str(DEFAULT_DEMO_CONFIG),
                   help="build config whose preprocessing the training inputs go through (default: %(default)s)")
    p.set_defaults(func=cmd_demo_ckpt)

    p = sub.add_parser("demo-data", help="write a synthetic PPM-100-shaped folder")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="shrink the photo sizes (tests use small images)")
    p.set_defaults(func=cmd_demo_data)
    return parser


class Terminated(BaseException):
    """SIGTERM (a CI timeout, `kill`), raised where the stage is so that its `finally` blocks and context managers
    run: the default action would end the process there and leave its scratch folders (correct's activations, an
    engine's .part folder) behind. Not an Exception: no handler of a bug may swallow it."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception:  # a bug, not bad input: keep the traceback, but end on one line that says so
        traceback.print_exc()
        print(f"error: internal failure in `{args.command}` (a bug: please report it with the traceback above)",
              file=sys.stderr)
        return 3
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
