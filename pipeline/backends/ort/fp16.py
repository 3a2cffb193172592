"""The fp16 reference model: every float tensor and op in float16, float32 at the graph's input and output.

onnxruntime.transformers.float16 converts the model (a Cast at each end). Where ONNX Runtime's CPU provider has
no float16 kernel for an op it does not fail: it wraps that node in Casts to float32 itself (its
InsertCastTransformer; the inserted Casts are named `InsertedPrecisionFreeCast_*`). So the model always loads,
and which op types actually run in float32 is read back from the graph ONNX Runtime runs and recorded in the
manifest. On x86 with ONNX Runtime 1.32 that is every op type of MODNet, and at the default optimization level
ONNX Runtime also drops the float32 -> float16 -> float32 Cast pairs between consecutive such ops: the model then
computes in float32 from float16-rounded weights (measured: within 1e-6 of the fp32 model with its weights
rounded to float16). It shows the effect of float16 weights, not of float16 activations.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

INSERTED_CAST = "InsertedPrecisionFreeCast_"


def float32_fallback_ops(optimized: onnx.ModelProto) -> list[str]:
    """Op types that ONNX Runtime wrapped in its own float32 Casts (in an optimized graph it saved)."""
    return sorted({node.op_type for node in optimized.graph.node
                   if node.op_type != "Cast" and any(i.startswith(INSERTED_CAST) for i in node.input)})


def optimized_graph(data: bytes) -> onnx.ModelProto:
    """DATA's own nodes as ONNX Runtime's CPU provider places them (no fusion, so op types keep their names)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="ort-fp16.") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def convert_fp16(model: onnx.ModelProto) -> tuple[bytes, dict]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    data = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False).SerializeToString()
    kept = float32_fallback_ops(optimized_graph(data))
    note = ("all ops float16; Cast to/from float32 at the graph input and output" if not kept else
            f"ONNX Runtime has no float16 CPU kernel for {', '.join(kept)}: it runs them in float32 (float16 "
            f"weights and constants, Cast to float32)")
    return data, {"io_dtype": "float32", "kept_float32_op_types": kept, "note": note}
