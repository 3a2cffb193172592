"""Throughput of `evaluate` on the fp32 ONNX: images per second, and the share of wall time spent outside
inference (decode, resize, scoring and writing that the thread pool did not hide behind the engine).

    .venv/bin/python bench/evaluate.py [--onnx SIM.onnx] [--data DIR | --count 100 --scale 1.0]

Without --data it generates COUNT demo images (photo sizes 1080p to 2560x1440, as PPM-100's, at --scale 1.0) into a
temporary folder first; generation is not timed. The ONNX defaults to the demo's simplified model (`make demo`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages.evaluate import WORKERS, evaluate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default=str(REPO / "artifacts/demo/onnx/official_modnet_fp16.sim.onnx"))
    parser.add_argument("--config", default=str(REPO / "build_configs/official_modnet_fp16.yaml"))
    parser.add_argument("--data", help="an existing PPM-100-shaped folder (default: generate one)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--scale", type=float, default=1.0, help="photo size scale of generated images")
    args = parser.parse_args()
    if not Path(args.onnx).is_file():
        print(f"{args.onnx}: no such file; run `make demo` (or `make simplify`) first, or pass --onnx",
              file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            from pipeline.demo.data import write_demo_data
            t0 = time.perf_counter()
            write_demo_data(data, args.count, seed=0, scale=args.scale)
            print(f"generated {args.count} images at scale {args.scale} in {time.perf_counter() - t0:.1f} s "
                  f"(not timed below)")
        report = evaluate(cfg, args.onnx, data, Path(tmp) / "eval")
    t = report["timing"]
    print(f"fp32 {Path(args.onnx).name}: {report['images']} images in {t['seconds']:.2f} s = "
          f"{t['images_per_second']:.2f} images/s; inference {t['inference_seconds']:.2f} s; share of time outside "
          f"inference {100 * t['share_outside_inference']:.1f}% ({WORKERS} loader threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
