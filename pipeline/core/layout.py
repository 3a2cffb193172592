"""Where every output lands under ART, and the names of the files in an engine folder: written once, here.

The stages import it (`pipeline.core.layout`); the Makefile runs it as a plain script, before `.venv` exists
(`python3 -I pipeline/core/layout.py`: standard library only, nothing of the pipeline imported), and turns every
function in MAKE into a Make function of the same name: `$(call layout.sim_onnx,$(ART),NAME)` is
`sim_onnx(ART, NAME)`. What the script prints for Make is each function called with `$(1)`, `$(2)`... as its
arguments, so the two cannot drift apart; a function here only joins its arguments with fixed names.

ART/
  inputs/FILE                       what Make records of an input (ckpt.path, data.contents, vamc.txt...)
  onnx/NAME.onnx                    exported from the checkpoint with config NAME
  onnx/NAME.sim.onnx(.json)         simplified (and its parity record)
  onnx/NAME.corrected.onnx(.json)   bias-corrected for int8 config NAME (and its record)
  calib/NAME/                       calibration subset of int8 config NAME (manifest.json, tensors.npy, images/)
  calib_list/FILE                   the calibration list of a demo or verify run (real ones are committed in calib/)
  engines/NAME/BACKEND/             an engine (manifest.json; model.onnx, or vamc's mod.* and vdsp_params.json)
  eval/fp32, eval/LABEL-BACKEND     evaluations (metrics.json): LABEL fp16, int8 or int8-vendor
  report.md, report.png             `make eval`'s report
  analyze/NAME/, tune/NAME/         `make analyze` / `make tune` of int8 config NAME
  hwcheck/                          `make hwcheck`'s report (evidence from a card: kept by `make clean`)
  release/                          bundles NAME-HASH/ (RELEASE_ROOT's default), and .latest: the last one released
  verify/                           verify's scratch rebuilds and the venvs it made
`make demo` runs with ART=artifacts/demo, whose inputs/ also holds the generated checkpoint and PPM-100 folder.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

# --- files inside a stage's folder ------------------------------------------------------------------------------
MANIFEST = "manifest.json"  # an engine's and a calibration folder's record of what it holds
ORT_MODEL = "model.onnx"  # an ort engine: the fp16 or int8 (Q/DQ) ONNX
VAMC_ENGINE = ("mod.so", "mod.json", "mod.params")  # what vamc writes into the engine folder
VDSP_PARAMS = "vdsp_params.json"  # a vamc engine's preprocessing on the card, written beside them
METRICS = "metrics.json"  # an evaluation's figures
LATEST = ".latest"  # in a release root: the name of the bundle `make release` last wrote or found there
LAYERS_CSV = "layers.csv"  # analyze's per-Conv table, the file Make checks
TUNED_YAML = "tuned.yaml"  # tune's tuned config, the file Make checks and `promote` copies

ART = Path("artifacts")  # the Makefile's default ART, relative to the repository
DEMO = ART / "demo"  # `make demo`'s ART
# What the stages write directly under ART: `make clean` removes these, keeping release/ and hwcheck/.
OUTPUTS = ("inputs", "onnx", "calib", "calib_list", "engines", "eval", "analyze", "tune", "verify", "report.md",
           "report.png")


def input_record(art, file: str) -> Path:
    return Path(art) / "inputs" / file


def onnx(art, name: str) -> Path:
    return Path(art) / "onnx" / f"{name}.onnx"


def sim_onnx(art, name: str) -> Path:
    return Path(art) / "onnx" / f"{name}.sim.onnx"


def corrected_onnx(art, name: str) -> Path:
    return Path(art) / "onnx" / f"{name}.corrected.onnx"


def onnx_record(model) -> Path:
    """The JSON record simplify and correct write beside the ONNX they write."""
    return Path(f"{model}.json")


def calib(art, name: str) -> Path:
    return Path(art) / "calib" / name


def calib_list(art, file: str) -> Path:
    return Path(art) / "calib_list" / file


def engine(art, name: str, backend: str) -> Path:
    return Path(art) / "engines" / name / backend


def manifest(folder) -> Path:
    return Path(folder) / MANIFEST


def eval_dir(art) -> Path:
    return Path(art) / "eval"


EVAL_FP32 = "fp32"  # one for every backend: the simplified ONNX on ONNX Runtime


def eval_folder(label: str, backend: str) -> str:
    """An engine's evaluation folder under the eval dir: LABEL fp16, int8 or int8-vendor."""
    return f"{label}-{backend}"


def eval_folders(backend: str) -> dict[str, str]:
    """Label -> folder under the eval dir of one run's three evaluations."""
    return {"fp32": EVAL_FP32, "fp16": eval_folder("fp16", backend), "int8": eval_folder("int8", backend)}


def eval_fp32(art) -> Path:
    return eval_dir(art) / EVAL_FP32


def eval_engine(art, label: str, backend: str) -> Path:
    return eval_dir(art) / eval_folder(label, backend)


def metrics(folder) -> Path:
    return Path(folder) / METRICS


def report_md(art) -> Path:
    return Path(art) / "report.md"


def report_png(art) -> Path:
    return Path(art) / "report.png"


def analyze(art, name: str) -> Path:
    return Path(art) / "analyze" / name


def analyze_layers(art, name: str) -> Path:
    return analyze(art, name) / LAYERS_CSV


def tune(art, name: str) -> Path:
    return Path(art) / "tune" / name


def tuned_yaml(art, name: str) -> Path:
    return tune(art, name) / TUNED_YAML


def image_list(folder, image_set: str) -> Path:
    """Tune's list of the images of IMAGE_SET (selection, confirmation, extra) in its folder."""
    return Path(folder) / f"{image_set}.txt"


def selection(art, name: str) -> Path:
    """The selection list `make tune` of int8 config NAME scored on (a report of NAME_tuned leaves it out)."""
    return image_list(tune(art, name), "selection")


def hwcheck(art) -> Path:
    return Path(art) / "hwcheck"


def hwcheck_report(folder) -> Path:
    return Path(folder) / "report.md"


def release_root(art) -> Path:
    return Path(art) / "release"


def latest_release(root) -> Path:
    return Path(root) / LATEST


def verify(art) -> Path:
    return Path(art) / "verify"


def venv_cache(art) -> Path:
    return verify(art) / "venvs"


def demo_ckpt(demo) -> Path:
    return input_record(demo, "demo_checkpoint.ckpt")


def demo_data(demo) -> Path:
    return input_record(demo, "PPM-100")


def demo_tuned(demo, name: str) -> Path:
    """Where `make demo-tune` copies the demo's tuned int8 config NAME_tuned: among the demo's outputs."""
    return Path(demo) / "tune" / f"{name}_tuned.yaml"


# What the Makefile gets: layout.NAME for each of these.
MAKE = (input_record, onnx, sim_onnx, corrected_onnx, calib, calib_list, engine, manifest, eval_dir, eval_fp32,
        eval_engine, metrics, report_md, report_png, analyze, analyze_layers, tune, tuned_yaml, selection, hwcheck,
        release_root, latest_release, verify, venv_cache, demo_ckpt, demo_data, demo_tuned)


def make_words() -> list[str]:
    """`NAME=TEMPLATE` for every function in MAKE (TEMPLATE: its path with $(1), $(2)... for its arguments), then
    `demo=` and `outputs=` (comma-separated) for the constants."""
    words = []
    for function in MAKE:
        arguments = [f"$({i})" for i in range(1, len(inspect.signature(function).parameters) + 1)]
        words.append(f"{function.__name__}={function(*arguments)}")
    return words + [f"demo={DEMO}", f"outputs={','.join(OUTPUTS)}"]


if __name__ == "__main__":
    if sys.argv[1:]:
        raise SystemExit("usage: python3 pipeline/core/layout.py (prints the layout for the Makefile)")
    print(" ".join(make_words()))
