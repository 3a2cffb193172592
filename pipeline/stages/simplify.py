"""Stage 2: ONNX -> simplified ONNX (onnxsim), accepted only if ONNX Runtime gives the same output."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxsim

from ..core import runtime
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.fileio import sha256_bytes, sha256_file, write_bytes, write_json

PARITY_INPUTS = 3


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def parity(reference: bytes, candidate: bytes, cfg: BuildConfig) -> dict:
    """Max and mean absolute output difference over seeded inputs."""
    ref_sess, cand_sess = runtime.session(reference), runtime.session(candidate)
    diffs = []
    for batch in runtime.probe_inputs(cfg.input_shape, cfg.pipeline.seed, PARITY_INPUTS):
        a, b = runtime.run(ref_sess, batch), runtime.run(cand_sess, batch)
        diffs.append(np.abs(a.astype(np.float64) - b.astype(np.float64)))
    return {"inputs": PARITY_INPUTS, "seed": cfg.pipeline.seed, "tolerance": cfg.pipeline.parity_tolerance,
            "max_abs": float(max(d.max() for d in diffs)), "mean_abs": float(np.mean([d.mean() for d in diffs]))}


def simplify_onnx(cfg: BuildConfig, src: str | Path, out: str | Path) -> dict:
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise PipelineError(f"{src}: no such ONNX file (run `make onnx` first)")
    original = runtime.read_onnx(src, "re-export it with `make onnx`")
    input_name = cfg.frontend.input_name
    if [i.name for i in original.graph.input] != [input_name]:
        raise PipelineError(f"{src}: expected one input named {input_name!r} (from {cfg.source}), found "
                            f"{[i.name for i in original.graph.input]}")
    try:
        simplified, ok = onnxsim.simplify(original, check_n=0,
                                          overwrite_input_shapes={input_name: list(cfg.input_shape)})
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from C++; report them as a stage failure
        raise PipelineError(f"onnxsim failed on {src}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not ok:
        raise PipelineError(f"onnxsim could not validate the simplified model of {src}")
    data = simplified.SerializeToString()
    report = {
        "parity": parity(original.SerializeToString(), data, cfg),
        "ops_before": op_counts(original), "ops_after": op_counts(simplified),
        "nodes_before": len(original.graph.node), "nodes_after": len(simplified.graph.node),
        "sha256": {"input": sha256_file(src), "output": sha256_bytes(data)},
        "input_shape": list(cfg.input_shape),
        "config": {"file": cfg.source.name, "sha256": sha256_file(cfg.source)},  # no path: reproducible anywhere
    }
    if report["parity"]["max_abs"] > cfg.pipeline.parity_tolerance:
        raise PipelineError(f"simplified model differs from {src}: max abs {report['parity']['max_abs']:.3g} > "
                            f"tolerance {cfg.pipeline.parity_tolerance:g} (pipeline.parity_tolerance in "
                            f"{cfg.source}); nothing written")
    # The record first: OUT is the target Make checks, so a kill in between leaves no finished-looking model.
    write_json(Path(f"{out}.json"), report)
    write_bytes(out, data)
    return report
