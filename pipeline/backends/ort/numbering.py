"""Which Conv a `skip_conv_layers` index means: vamc's numbering (inferred from TVM) or plain ONNX node order.

vamc's quantizer descends from TVM's relay quantize, whose annotate pass counts `nn.conv2d` calls as it rewrites
the graph: a post-order depth-first walk from the function's outputs (graph outputs in order), each call's
inputs visited left to right before the call itself, each node once. That is not the ONNX node order: for
out = conv_c(concat([conv_b(x), conv_a(x)])) stored in the order a, b, c, TVM numbers b=0, a=1, c=2. On MODNet
the two orders agree on the backbone (0-51) and differ from 52 on (f_branch.conv_lr4x is 54 in vamc's order, 65
in ONNX's). vamc is closed, so its order is inferred; `pipeline.conv_numbering` can switch to ONNX order, and
one build on a card settles it (docs/quantization.md).
"""
from __future__ import annotations

import onnx

from ...core.config import CONV_NUMBERINGS as NUMBERINGS  # noqa: F401 - part of this module's interface

# Scope prefixes of our export (torch module paths) -> MODNet's branches.
BRANCHES = (("/lr_branch/backbone/", "backbone"), ("/lr_branch/", "lr"), ("/hr_branch/", "hr"),
            ("/f_branch/", "fusion"))


def node_name(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or `OpType_INDEX` for an unnamed one (onnxsim keeps our export's names)."""
    return node.name or f"{node.op_type}_{index}"


def _post_order(graph: onnx.GraphProto) -> list[int]:
    """Node indices in TVM's walk: from the graph outputs, inputs left to right, each node once."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order: list[int] = []
    seen: set[int] = set()
    for output in graph.output:
        if output.name not in producer:
            continue
        stack = [(producer[output.name], 0)]  # (node, next input to visit): recursion without Python's limit
        seen.add(stack[0][0])
        while stack:
            index, next_input = stack[-1]
            inputs = graph.node[index].input
            while next_input < len(inputs) and (inputs[next_input] not in producer
                                                or producer[inputs[next_input]] in seen):
                next_input += 1
            if next_input == len(inputs):
                stack.pop()
                order.append(index)
                continue
            stack[-1] = (index, next_input + 1)
            child = producer[inputs[next_input]]
            seen.add(child)
            stack.append((child, 0))
    return order


def conv_order(model: onnx.ModelProto, numbering: str = "vamc") -> list[str]:
    """Conv node names; list index == the skip_conv_layers number under NUMBERING."""
    if numbering not in NUMBERINGS:
        raise ValueError(f"unknown conv numbering {numbering!r} (one of {', '.join(NUMBERINGS)})")
    nodes = model.graph.node
    indices = _post_order(model.graph) if numbering == "vamc" else range(len(nodes))
    return [node_name(nodes[i], i) for i in indices if nodes[i].op_type == "Conv"]


def branch(name: str) -> str:
    return next((label for prefix, label in BRANCHES if name.startswith(prefix)), "other")


def _shape(info: onnx.ValueInfoProto | None) -> list[int | str] | None:
    if info is None or not info.type.HasField("tensor_type"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in info.type.tensor_type.shape.dim]


def conv_table(model: onnx.ModelProto) -> list[dict]:
    """One row per Conv, in vamc order: both indices, name, branch, kernel/stride/groups, tensor shapes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    infos = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    weights = {init.name: list(init.dims) for init in graph.initializer}
    onnx_index = {name: i for i, name in enumerate(conv_order(model, "onnx"))}
    by_name = {node_name(node, i): node for i, node in enumerate(graph.node)}
    rows = []
    for vamc_index, name in enumerate(conv_order(model, "vamc")):
        node = by_name[name]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) or _shape(infos.get(node.input[1])) or []
        rows.append({
            "vamc_index": vamc_index,
            "onnx_index": onnx_index[name],
            "onnx_node": name,
            "branch": branch(name),
            "kernel": list(attrs.get("kernel_shape", weight[2:])),
            "stride": list(attrs.get("strides", [1] * len(weight[2:]))),
            "groups": int(attrs.get("group", 1)),
            "input_shape": _shape(infos.get(node.input[0])),
            "output_shape": _shape(infos.get(node.output[0])),
        })
    return rows


def format_conv_table(rows: list[dict], skipped: set[str] = frozenset()) -> str:
    """`conv_table` as aligned text; SKIPPED Conv names are marked (they stay float in the int8 build)."""
    def dims(values) -> str:
        return "x".join(str(v) for v in values) if values else "?"
    header = ("vamc", "onnx", "skip", "branch", "kernel", "stride", "groups", "input", "output", "onnx node")
    lines = [header] + [(str(r["vamc_index"]), str(r["onnx_index"]), "float" if r["onnx_node"] in skipped else "",
                         r["branch"], dims(r["kernel"]), dims(r["stride"]), str(r["groups"]),
                         dims(r["input_shape"]), dims(r["output_shape"]), r["onnx_node"]) for r in rows]
    widths = [max(len(line[k]) for line in lines) for k in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]
                     for line in lines)
