"""`verify` reads a bundle's MANIFEST.json as data: every value that reaches a path or a Make command line is
checked first, a malformed manifest or a missing scratch folder is one line, and nothing is left behind. Fast: every
case is refused before any rebuild starts."""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from pipeline.cli import main
from pipeline.stages.release import make_environment, rebuild_variables


@pytest.fixture()
def bundle(tmp_path) -> tuple[Path, dict]:
    """A bundle folder whose manifest is well formed and whose checkpoint exists (the rebuild is never reached)."""
    ckpt = tmp_path / "modnet.ckpt"
    ckpt.write_bytes(b"weights")
    folder = tmp_path / "official_modnet-0123456789ab"
    (folder / "calib").mkdir(parents=True)
    (folder / "calib" / "list.txt").write_text("list\n")
    manifest = {
        "name": folder.name, "inputs_digest": "0" * 64, "data": str(tmp_path / "PPM-100"), "files": {},
        "inputs": {"backend": "ort", "code": "c", "limit": None, "compiler": None,
                   "checkpoint": {"file": ckpt.name, "path": str(ckpt), "sha256": hashlib.sha256(b"weights").hexdigest()},
                   "configs": {"fp16": {"file": "a_fp16.yaml"}, "int8": {"file": "a_int8.yaml"}},
                   "calibration_list": {"file": "list.txt"}}}
    return folder, manifest


def write(folder: Path, manifest: dict) -> None:
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def run_verify(folder: Path, root: Path, capsys) -> tuple[int, str]:
    code = main(["verify", "--release", str(folder), "--scratch-root", str(root)])
    return code, capsys.readouterr().err.strip()


def _set(doc: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


@pytest.mark.parametrize("field, value, words", [
    ("data", "$(shell touch {marker})", "data: '$(shell touch {marker})' holds ' ', '$', '(', ')'"),
    ("data", "/tmp/x; touch {marker}", "data: '/tmp/x; touch {marker}' holds ' ', ';'"),
    ("data", "/tmp/`touch {marker}`", "data: '/tmp/`touch {marker}`' holds ' ', '`'"),
    ("data", "/tmp/a\nb", "data: '/tmp/a\\nb' holds '\\n'"),
    ("inputs.checkpoint.path", "x' && touch '{marker}", "inputs.checkpoint.path: \"x' && touch '{marker}\" holds"),
    ("inputs.configs.fp16.file", "../../etc/x.yaml", "inputs.configs.fp16.file: '../../etc/x.yaml' holds a path "
                                                     "separator"),
    ("inputs.calibration_list.file", "..", "inputs.calibration_list.file: '..' starts with a dot"),
    ("name", "x/../y", "name: 'x/../y' holds a path separator"),
    ("inputs.backend", "ort; touch {marker}", "inputs.backend: 'ort; touch {marker}' is not ort or vamc"),
    ("inputs.limit", "5; touch {marker}", "inputs.limit: '5; touch {marker}' is not empty or a positive integer"),
])
def test_manifest_values_are_data(bundle, tmp_path, capsys, field, value, words):
    folder, manifest = bundle
    marker = tmp_path / "pwned"
    _set(manifest, field, value.format(marker=marker))
    write(folder, manifest)
    root = tmp_path / "scratch"
    root.mkdir()
    code, err = run_verify(folder, root, capsys)
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"error: {folder.resolve() / 'MANIFEST.json'}: ") and words.format(marker=marker) in err, err
    assert not marker.exists() and list(root.iterdir()) == []


@pytest.mark.parametrize("missing", ["inputs.limit", "inputs.checkpoint.sha256", "data", "inputs"])
def test_malformed_manifest_names_the_missing_key(bundle, tmp_path, capsys, missing):
    folder, manifest = bundle
    *parents, last = missing.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    del node[last]
    write(folder, manifest)
    code, err = run_verify(folder, tmp_path, capsys)
    first = missing if missing != "inputs" else "inputs.backend"
    assert code == 2 and err == (f"error: {folder / 'MANIFEST.json'}: malformed: no {first} (not a bundle of this "
                                 f"pipeline's `make release`)")


def test_missing_scratch_folder(bundle, tmp_path, capsys):
    folder, manifest = bundle
    write(folder, manifest)
    code, err = run_verify(folder, tmp_path / "nowhere", capsys)
    assert code == 2 and err == (f"error: {tmp_path / 'nowhere'}: no such folder for verify's scratch rebuild "
                                 f"(create it, or pass --scratch)")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("where, words", [
    ("elsewhere/modnet.ckpt", "the release's checkpoint is not there any more; pass CKPT=/path/to/modnet.ckpt"),
    # what `make clean` leaves of the demo's release: the words name what writes the checkpoint again
    ("artifacts/demo/inputs/demo_checkpoint.ckpt", "the release's checkpoint is not there any more: it is the "
                                                   "demo's, which `make clean` removes; `make demo-ckpt demo-data` "
                                                   "writes it and the demo data again byte for byte"),
])
def test_a_missing_checkpoint_says_how_to_get_it_back(bundle, tmp_path, capsys, where, words):
    folder, manifest = bundle
    manifest["inputs"]["checkpoint"]["path"] = str(tmp_path / where)
    manifest["inputs"]["checkpoint"]["file"] = Path(where).name
    write(folder, manifest)
    root = tmp_path / "scratch"
    root.mkdir()
    code, err = run_verify(folder, root, capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / where}: {words}") and "\n" not in err, err


def test_the_demo_checkpoint_path_is_the_makefiles(tmp_path):
    from pipeline.stages.release import DEMO_CKPT
    probe = tmp_path / "probe.mk"
    probe.write_text("probe:\n\t@echo '$(DEMO_CKPT)'\n")
    done = subprocess.run(["make", "--no-print-directory", "-f", "Makefile", "-f", str(probe), "probe"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{DEMO_CKPT}\n" == "artifacts/demo/inputs/demo_checkpoint.ckpt\n"


def test_the_rebuild_gets_explicit_variables_only(bundle, tmp_path):
    folder, manifest = bundle
    manifest = copy.deepcopy(manifest)
    manifest["inputs"]["limit"] = 7
    scratch = tmp_path / "s"
    variables = dict(v.split("=", 1) for v in rebuild_variables(manifest, folder, scratch, None, None))
    assert variables["LIMIT"] == "7" and variables["REDRAW"] == ""  # replayed / never inherited
    # the rebuild calibrates from a copy inside the scratch folder, never from the bundle's own list
    assert variables["CALIB_LIST"] == str(scratch / "calib_list" / "list.txt")
    assert variables["CONFIG"] == variables["CONFIG_FP16"] == str(folder / "configs" / "a_fp16.yaml")
    env = make_environment({"MAKEFLAGS": "LIMIT=1", "MAKELEVEL": "1", "LIMIT": "1", "REDRAW": "1", "VAMC": "x",
                            "CONFIG_INT8": "y", "PATH": "/bin", "HOME": "/root"}, REPO / "Makefile")
    assert env == {"PATH": "/bin", "HOME": "/root"}


def test_a_tampered_source_is_refused_before_anything_is_made(bundle, tmp_path, capsys):
    import io
    import tarfile
    folder, manifest = bundle
    link = tarfile.TarInfo("pipeline/x.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(link)
    tar_path = folder / "source" / "pipeline-0123456789ab.tar"
    tar_path.parent.mkdir()
    tar_path.write_bytes(out.getvalue())
    manifest["source"] = {"file": "source/pipeline-0123456789ab.tar", "sha256": hashlib.sha256(out.getvalue()).hexdigest()}
    write(folder, manifest)
    root = tmp_path / "scratch"
    root.mkdir()
    code, err = run_verify(folder, root, capsys)
    assert code == 2 and err == f"error: {tar_path}: refused: 'pipeline/x.py' is a link; nothing unpacked"
    assert list(root.iterdir()) == []


def test_a_bundle_without_source_says_only_the_current_code_can_rebuild_it(bundle, tmp_path, capsys):
    folder, manifest = bundle
    write(folder, manifest)
    (tmp_path / "modnet.ckpt").unlink()  # refused before the rebuild: the note is printed first
    code = main(["verify", "--release", str(folder), "--scratch-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2 and out.splitlines()[0] == (f"note: {folder.name} carries no source (made before bundles did): "
                                                 f"only the code that built it can rebuild it, so this checkout's is used (to verify "
                                                 f"it, check out its repository.commit and run make verify there)")
