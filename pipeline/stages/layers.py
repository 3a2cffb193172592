"""Stage `layers`: every Conv of the simplified ONNX with its vamc and ONNX index, and what skip_conv_layers keeps
float, so a skip list can be written (and checked) by hand."""
from __future__ import annotations

from pathlib import Path

from ..backends.ort.build import skipped_convs
from ..backends.ort.numbering import conv_table, format_conv_table
from ..core.config import BuildConfig
from ..core.errors import PipelineError
from ..core.runtime import read_onnx


def layers(cfg: BuildConfig, onnx: str | Path) -> str:
    """The Conv table and the line saying which Convs CFG's skip_conv_layers keeps float."""
    if not Path(onnx).is_file():
        raise PipelineError(f"{onnx}: no such ONNX file (run `make simplify` first)")
    model = read_onnx(onnx, "--onnx must be the simplified ONNX (`make simplify` writes it)")
    numbering = cfg.pipeline.conv_numbering
    skip = cfg.backend.quantize.skip_conv_layers if cfg.backend.quantize else ()
    skipped = skipped_convs(model, skip, numbering, cfg.source)
    rows = conv_table(model)
    return (format_conv_table(rows, set(skipped)) + "\n" +
            f"{len(rows)} Convs. skip_conv_layers {list(skip)} counts in {numbering} order "
            f"(pipeline.conv_numbering in {cfg.source}): " + (", ".join(skipped) or "nothing") + " stays float.")
