"""Measurement, not a product path: issue 21's other bias-correction variant against `correct`'s sequential one.

    .venv/bin/python bench/correct_variants.py CONFIG.yaml --onnx SIM.onnx --calib CALIB_DIR --data DATA \
        --images CONFIRMATION.txt [--exclude SELECTION.txt] --work DIR [--json OUT.json]

"Own error only": every Conv corrected at once by its own error alone, each fed the fp32 input it sees in the
network (the analysis's conv bank, layers.conv_bank, quantized by the backend's Q/DQ writer with CONFIG's
thresholds of the original model): per output channel, the mean over the calibration images of (the bank Conv's
output, its input and weight quantized) minus (its fp32 output). Upstream errors are not in it, so nothing is
counted twice, and it needs no sequence of passes; what it misses is how a Conv's error grows with a quantized,
already shifted input. One correction, no recalibration loop (the scoring recalibrates the corrected model, as
vamc calibrates what it is given; the largest threshold move is printed).

Scored as bench/correct_accuracy.py scores (its `measure`): CONFIG without correction and with this variant
(DIR/<CONFIG stem>_own.corrected.onnx, reused when there), each against the original fp32, and the paired
improvement. `correct`'s sequential correction on the same images is bench/correct_accuracy.py's row (the same
images and seed give the same figures for CONFIG).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from correct_accuracy import common_arguments, label_of, measure, report  # noqa: E402

from pipeline.backends.ort import qdq, stats  # noqa: E402
from pipeline.backends.ort.bias_correction import (THRESHOLD_MOVE, Deviation, biases_of, calibrate,  # noqa: E402
                                                   channel_means, largest_move, set_biases, with_biases)
from pipeline.backends.ort.build import skipped_convs  # noqa: E402
from pipeline.core import runtime  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.fileio import write_bytes, write_json  # noqa: E402
from pipeline.core.progress import quiet  # noqa: E402
from pipeline.core.runtime import read_onnx  # noqa: E402
from pipeline.stages.calibrate import TENSORS  # noqa: E402
from pipeline.tuning.layers import BANK_INPUT, conv_bank  # noqa: E402


def own_error_correction(cfg, model, calib_tensors: Path) -> tuple[bytes, dict]:
    """MODEL with every quantized Conv's bias corrected by its own mean error (conv bank), and a record."""
    q = cfg.backend.quantize
    skip = set(skipped_convs(model, q.skip_conv_layers, cfg.pipeline.conv_numbering, cfg.source))
    current, convs, added = with_biases(model, skip)
    outputs = [c.output for c in convs]
    fp32_means = channel_means(current, outputs, calib_tensors, quiet)
    tensors = qdq.quantized_tensors(current, skip)
    output = model.graph.output[0].name
    scratch = tempfile.TemporaryDirectory(prefix="correct-variants-")
    original_output = Path(scratch.name) / "fp32-output.bin"  # what correct's record compares with, as it does
    with open(original_output, "wb") as handle:
        thresholds, _ = calibrate(current, tensors, cfg, calib_tensors, quiet,
                                  observe=lambda values: values[output].tofile(handle))
    # every Conv of the bank quantized (the skipped ones are simply not read); inputs from the fp32 network
    bank = runtime.session(qdq.write_qdq(conv_bank(current), {BANK_INPUT + t: v for t, v in thresholds.items()},
                                         set(), q.quantize_per_channel))
    bank_inputs = [i.name for i in bank.get_inputs()]
    sources = list(dict.fromkeys(name[len(BANK_INPUT):] for name in bank_inputs))
    data, shapes = stats._outputs(current, sources)  # the whole fp32 model: every Conv input is in it
    input_name = current.graph.input[0].name
    input_shape = [d.dim_value for d in current.graph.input[0].type.tensor_type.shape.dim]
    sums: dict[str, np.ndarray] = {}
    positions: dict[str, int] = {}

    def add(values: dict[str, np.ndarray]) -> None:
        got = bank.run(outputs, {i: values[i[len(BANK_INPUT):]] for i in bank_inputs})
        for o, value in zip(outputs, got):
            sums[o] = sums.get(o, 0.0) + value.sum(axis=(0, 2, 3), dtype=np.float64)
            positions[o] = value.shape[2] * value.shape[3]

    images = stats._stream(runtime.session(data), input_name, shapes, calib_tensors, input_shape, quiet, "bias correction", add)
    biases = biases_of(current, convs)
    original = dict(biases)
    for conv in convs:
        error = sums[conv.output] / (images * positions[conv.output]) - fp32_means[conv.output]
        biases[conv.bias] = (biases[conv.bias].astype(np.float64) - error).astype(np.float32)
    set_biases(current, biases)
    with open(original_output, "rb") as handle:
        deviation = Deviation(handle, output)
        recalibrated, _ = calibrate(current, tensors, cfg, calib_tensors, quiet, observe=deviation)
        move, tensor = largest_move(thresholds, recalibrated)
    scratch.cleanup()
    rows = [{"onnx_node": c.name, "bias_added": c.name in added,
             "correction_l2": float(np.linalg.norm(biases[c.bias].astype(np.float64) - original[c.bias])),
             "bias_l2": float(np.linalg.norm(original[c.bias].astype(np.float64)))} for c in convs]
    record = {"method": "bench/correct_variants.py: own error only (conv bank, fp32 inputs), every Conv at once, "
                        "one correction; a measurement, not what `correct` writes",
              "rounds_run": 1, "settled": move <= THRESHOLD_MOVE,
              "rounds": [{"round": 1, "largest_threshold_move": move, "tensor": tensor}],
              "convs": rows, "fp32_deviation": deviation.record()}
    return current.SerializeToString(), record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="an int8 config without bias correction (KL: the vendor's)")
    common_arguments(parser)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config)
    label = label_of(cfg)
    timings = {}
    own = args.work / f"{args.config.stem}_own.corrected.onnx"
    if not own.is_file():
        started = time.perf_counter()
        data, own_record = own_error_correction(cfg, read_onnx(args.onnx, "rebuild it"), args.calib / TENSORS)
        timings["own"] = time.perf_counter() - started
        write_json(Path(f"{own}.json"), own_record)
        write_bytes(own, data)
    else:
        timings["own"] = None
    own_record = json.loads(Path(f"{own}.json").read_text())
    print(f"own error only: correction {timings['own']} s; threshold move after recalibration "
          f"{own_record['rounds'][0]['largest_threshold_move']:.2%} ({own_record['rounds'][0]['tensor']})", flush=True)
    entries = [{"label": label, "cfg": cfg, "source": args.onnx, "record": None, "baseline": None},
               {"label": f"{label}, bias-corrected (own error only, this bench)", "cfg": cfg, "source": own,
                "record": own_record, "baseline": 0}]
    started = time.perf_counter()
    rows, gains, fp32 = measure(entries, args)
    report(rows, gains, fp32, args, {"correct_seconds": timings, "scoring_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
