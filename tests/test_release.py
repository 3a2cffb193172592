"""Release bundles: contents and hashes, naming by inputs, refusal to overwrite, and verify's comparison."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import FP16_CONFIG, INT8_CONFIG
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import sha256_file
from pipeline.core.layout import LATEST
from pipeline.stages import release
from pipeline.stages.release import (MANIFEST, ReleaseInputs, assemble, compare, file_hashes, inputs_digest,
                                     inputs_record, tampered)
from pipeline.stages.source import code_digest, code_files


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


SCORED = ["p1.jpg", "p2.jpg"]


def write_eval(inputs: ReleaseInputs, backend: str = "ort", limit=None, scored=SCORED) -> None:
    """metrics.json of fp32, fp16 and int8 as `make eval` writes them: naming the engines by sha256, and a report
    listing their model files."""
    art = inputs.eval_dir.parent
    rows = []
    entries = {"fp32": (inputs.onnx_fp16, None, inputs.config_fp16),
               "fp16": (inputs.engine_fp16, "model.onnx", inputs.config_fp16),
               "int8": (inputs.engine_int8, "model.onnx", inputs.config_int8)}
    for label, (engine, model, config) in entries.items():
        folder = label if label == "fp32" else f"{label}-{backend}"
        files = {engine.name: sha256_file(engine)} if model is None else {model: sha256_file(engine / model)}
        metrics = {"mad": 0.1, "limit": limit, "per_image": [{"name": n, "mad": 0.1} for n in scored],
                   "config": {"file": config.name, "sha256": sha256_file(config)},
                   "engine": {"sha256": sha256_file(engine) if model is None else sha256_file(engine / "manifest.json"),
                              "model_files": files},
                   "manifest_sha256": None if model is None else sha256_file(engine / "manifest.json")}
        _write(inputs.eval_dir / folder / "metrics.json", json.dumps(metrics).encode())
        rows += [f"| {label} | {name} | `{digest[:16]}` |" for name, digest in files.items()]
    _write(art / "report.md", ("# report\n" + "\n".join(rows) + "\n").encode())


@pytest.fixture()
def fake_build(tmp_path) -> ReleaseInputs:
    """The outputs of `make fp16 int8 eval` as files with known contents (the stages are tested elsewhere)."""
    art = tmp_path / "art"
    configs = tmp_path / "configs"
    configs.mkdir()
    fp16_cfg, int8_cfg = (Path(shutil.copy(c, configs)) for c in (FP16_CONFIG, INT8_CONFIG))
    calib = art / "calib" / "official_modnet_int8"
    images = [{"name": "a.jpg", "sha256": "1" * 64}, {"name": "b.jpg", "sha256": "2" * 64}]
    _write(calib / "manifest.json", json.dumps({"images": images}).encode())
    for name in ("official_modnet_fp16", "official_modnet_int8"):
        onnx = _write(art / "onnx" / f"{name}.sim.onnx", f"{name} onnx-bytes".encode())
        _write(art / "onnx" / f"{name}.sim.onnx.json", b"{}")
        _write(art / "engines" / name / "ort" / "model.onnx", f"{name} engine".encode())
        _write(art / "engines" / name / "ort" / "manifest.json",
               json.dumps({"backend": "ort", "onnx": {"sha256": sha256_file(onnx)}}).encode())
    for name in SCORED:
        _write(tmp_path / "data" / "image" / name, f"photo {name}".encode())
        _write(tmp_path / "data" / "matte" / name, f"matte {name}".encode())
    inputs = ReleaseInputs(
        name="official_modnet", ckpt=_write(tmp_path / "ckpt" / "modnet.ckpt", b"weights"), data=tmp_path / "data",
        backend="ort", config_fp16=fp16_cfg, config_int8=int8_cfg,
        calib_list=_write(tmp_path / "lists" / "official_modnet_int8.txt", b"1111  a.jpg\n"), calib_dir=calib,
        onnx_fp16=art / "onnx" / "official_modnet_fp16.sim.onnx", onnx_int8=art / "onnx" / "official_modnet_int8.sim.onnx",
        engine_fp16=art / "engines" / "official_modnet_fp16" / "ort",
        engine_int8=art / "engines" / "official_modnet_int8" / "ort",
        report=(art / "report.md", _write(art / "report.png", b"png")), eval_dir=art / "eval")
    write_eval(inputs)
    return inputs


EXPECTED_FILES = [
    ".pipeline-stage",  # names the stage that wrote the folder (fileio.STAGE_MARKER), hashed like every file
    "calib/official_modnet_int8.txt",
    "configs/official_modnet_fp16.yaml",
    "configs/official_modnet_int8.yaml",
    "engines/official_modnet_fp16/ort/manifest.json",
    "engines/official_modnet_fp16/ort/model.onnx",
    "engines/official_modnet_int8/ort/manifest.json",
    "engines/official_modnet_int8/ort/model.onnx",
    "onnx/official_modnet_fp16.sim.onnx",
    "onnx/official_modnet_fp16.sim.onnx.json",
    "onnx/official_modnet_int8.sim.onnx",
    "onnx/official_modnet_int8.sim.onnx.json",
    "report/eval/fp16-ort/metrics.json",
    "report/eval/fp32/metrics.json",
    "report/eval/int8-ort/metrics.json",
    "report/report.md",
    "report/report.png",
]


def test_bundle_contents_and_manifest(fake_build, tmp_path):
    bundle, written = assemble(fake_build, tmp_path / "release")
    assert written
    manifest = json.loads((bundle / MANIFEST).read_text())
    digest = manifest["inputs_digest"]
    assert bundle.name == f"official_modnet-{digest[:12]}" == manifest["name"]
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    source = f"source/pipeline-{code_digest()[:12]}.tar"
    assert files == sorted(EXPECTED_FILES + [source, MANIFEST])
    assert list(manifest["files"]) == EXPECTED_FILES + [source]
    assert manifest["source"] == {"file": source, "sha256": sha256_file(bundle / source),
                                  "bytes": (bundle / source).stat().st_size}
    environment = manifest["environment"]
    assert environment["python"] == platform.python_version() and environment["machine"] == platform.machine()
    assert environment["packages"] == sorted(environment["packages"])
    assert f"numpy=={importlib.metadata.version('numpy')}" in environment["packages"]
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == sha
    assert (bundle / "engines/official_modnet_int8/ort/model.onnx").read_bytes() == b"official_modnet_int8 engine"
    assert manifest["inputs"]["checkpoint"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert manifest["inputs"]["configs"]["int8"] == {"file": "official_modnet_int8.yaml",
                                                     "sha256": hashlib.sha256(INT8_CONFIG.read_bytes()).hexdigest()}
    assert manifest["calibration_images"] == [{"name": "a.jpg", "sha256": "1" * 64},
                                              {"name": "b.jpg", "sha256": "2" * 64}]
    assert {"torch", "onnxruntime", "numpy"} <= set(manifest["versions"])
    assert set(manifest["repository"]) == {"commit", "clean", "calibration_list_committed"}
    # the list lives outside the repository: not committed, so the release's repository state is not clean
    assert manifest["repository"]["calibration_list_committed"] is False and manifest["repository"]["clean"] is False
    assert manifest["inputs"]["data"] == [{"name": n, "image_sha256": hashlib.sha256(f"photo {n}".encode()).hexdigest(),
                                           "matte_sha256": hashlib.sha256(f"matte {n}".encode()).hexdigest()}
                                          for n in SCORED]
    assert manifest["inputs"]["limit"] is None and manifest["inputs"]["compiler"] is None
    # files and folders read-only, the bundle itself included
    assert not any(p.stat().st_mode & 0o222 for p in [bundle, *bundle.rglob("*")])
    # no temp folder left; beside the bundle, the root names it as the latest release (what `make demo` reads)
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == [LATEST, bundle.name]
    assert (tmp_path / "release" / LATEST).read_text() == bundle.name + "\n"


def test_same_inputs_same_name_and_never_overwritten(fake_build, tmp_path):
    bundle, _ = assemble(fake_build, tmp_path / "release")
    before = file_hashes(bundle)
    os.chmod(fake_build.engine_int8 / "model.onnx", 0o644)
    (fake_build.engine_int8 / "model.onnx").write_bytes(b"a rebuilt engine")  # outputs are not inputs
    (tmp_path / "release" / LATEST).write_text("official_modnet-another\n")  # another release since
    again, written = assemble(fake_build, tmp_path / "release")
    assert (again, written) == (bundle, False)
    assert file_hashes(bundle) == before
    assert (tmp_path / "release" / LATEST).read_text() == bundle.name + "\n"  # found, not written: the latest again


def test_two_releases_of_the_same_inputs_ship_the_same_source_tar(fake_build, tmp_path):
    first, _ = assemble(fake_build, tmp_path / "one")
    second, _ = assemble(fake_build, tmp_path / "two")
    one, two = (json.loads((b / MANIFEST).read_text()) for b in (first, second))
    assert one["source"] == two["source"]
    tar_path = first / one["source"]["file"]
    assert tar_path.read_bytes() == (second / two["source"]["file"]).read_bytes()
    with tarfile.open(tar_path) as tar:  # exactly the files of the code digest, nothing of the machine
        members = tar.getmembers()
        assert [m.name for m in members] == [rel for rel, _ in code_files()]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == \
            {(946684800, 0, 0, "", "", 0o644, tarfile.REGTYPE)}
        assert tar.extractfile("pipeline/stages/release.py").read() == (Path(release.__file__)).read_bytes()


COMPILER = {"executable": "/opt/vastai/bin/vamc", "version": "vamc 3.4.1", "sha256": "a" * 64, "command": "compile"}
VAMC_CHANGES = {"compiler version": ("version", "vamc 3.4.2"), "compiler file": ("sha256", "b" * 64),
                "VAMC_COMMAND": ("command", "build")}


@pytest.mark.parametrize("change", ["checkpoint", "config", "calibration list", "backend", "an image", "a matte",
                                    "the scored images", "LIMIT", *VAMC_CHANGES])
def test_different_inputs_get_a_different_name(fake_build, tmp_path, monkeypatch, change):
    compiler = dict(COMPILER)
    monkeypatch.setattr(release, "compiler_record", lambda backend: dict(compiler) if backend == "vamc" else None)
    inputs = fake_build
    if change in VAMC_CHANGES:
        inputs = ReleaseInputs(**{**inputs.__dict__, "backend": "vamc"})
        write_eval(inputs, "vamc")
    first, _ = assemble(inputs, tmp_path / "release")
    if change == "checkpoint":
        inputs.ckpt.write_bytes(b"other weights")
    elif change == "config":
        inputs.config_int8.write_text(inputs.config_int8.read_text().replace("seed: 0", "seed: 1"))
        write_eval(inputs)  # as `make eval` would redo it
    elif change == "calibration list":
        inputs.calib_list.write_bytes(b"2222  b.jpg\n")
    elif change == "backend":
        inputs = ReleaseInputs(**{**inputs.__dict__, "backend": "vamc"})
        write_eval(inputs, "vamc")
    elif change in ("an image", "a matte"):
        folder = "image" if change == "an image" else "matte"
        _write(inputs.data / folder / SCORED[1], b"edited")
    elif change == "the scored images":
        _write(inputs.data / "image" / "p3.jpg", b"photo 3")
        _write(inputs.data / "matte" / "p3.jpg", b"matte 3")
        write_eval(inputs, scored=[*SCORED, "p3.jpg"])
    elif change == "LIMIT":
        inputs = ReleaseInputs(**{**inputs.__dict__, "limit": 1})
        write_eval(inputs, limit=1, scored=SCORED[:1])
    else:
        key, value = VAMC_CHANGES[change]
        compiler[key] = value
    second, written = assemble(inputs, tmp_path / "release")
    assert written and second != first and second.name.startswith("official_modnet-")


def test_only_this_runs_eval_folders_are_shipped(fake_build, tmp_path):
    eval_dir = fake_build.eval_dir
    shutil.copytree(eval_dir / "fp16-ort", eval_dir / "fp16-vamc")  # another backend's evaluation
    shutil.copytree(eval_dir / "int8-ort", eval_dir / ".int8-ort.x1y2.part")  # an interrupted run's leftover
    _write(eval_dir / "notes.txt", b"stray")
    bundle, _ = assemble(fake_build, tmp_path / "release")
    assert sorted(p.name for p in (bundle / "report" / "eval").iterdir()) == ["fp16-ort", "fp32", "int8-ort"]


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage, message", [
    ("engine rebuilt after eval", r"report/eval/int8-ort/metrics\.json \(in the bundle being assembled\) records its "
                                  r"engine manifest as [0-9a-f]{12}\.\.\., but the bundled engines/official_modnet_int8/"
                                  r"ort/manifest\.json has sha256 [0-9a-f]{12}\.\.\.: these outputs come from different "
                                  r"runs; rerun `make fp16 int8 eval`, then `make release`"),
    ("onnx re-simplified after build", r"engines/official_modnet_fp16/ort/manifest\.json .* records its ONNX as "
                                       r".*onnx/official_modnet_fp16\.sim\.onnx has sha256"),
    ("fp32 onnx changed", r"report/eval/fp32/metrics\.json .* records its model as"),
    ("report from another run", r"report/report\.md does not list fp32's official_modnet_fp16\.sim\.onnx \([0-9a-f]{12}\.\.\.\) that the "
                                r"bundle ships: the report is from another run; rerun `make eval`"),
    ("other LIMIT", r"int8-ort/metrics\.json: evaluated with LIMIT= but this release has LIMIT=2; rerun `make eval` "
                    r"with the same LIMIT"),
    ("malformed engine manifest", r"engines/official_modnet_fp16/ort/manifest\.json: not a readable engine manifest "
                                  r"\(JSONDecodeError\); rebuild it"),
    ("malformed metrics", r"report/eval/fp16-ort/metrics\.json: not a metrics file \(missing 'engine'\); rerun "
                          r"`make eval`"),
    ("scored image gone", r"data/image/p2\.jpg: scored by `make eval` but no longer in the data folder"),
])
def test_outputs_must_refer_to_each_other(fake_build, tmp_path, capsys, damage, message):
    import re
    inputs = fake_build
    if damage == "engine rebuilt after eval":
        _edit_json(inputs.engine_int8 / "manifest.json", build_time_s=2.0)
    elif damage == "onnx re-simplified after build":
        inputs.onnx_fp16.write_bytes(b"another simplification")
        write_eval(inputs)  # eval redone, engine not rebuilt
    elif damage == "fp32 onnx changed":
        inputs.onnx_fp16.write_bytes(b"another simplification")
        _edit_json(inputs.engine_fp16 / "manifest.json", onnx={"sha256": sha256_file(inputs.onnx_fp16)})
    elif damage == "report from another run":
        inputs.report[0].write_text("# an older report\n")
    elif damage == "other LIMIT":
        inputs = ReleaseInputs(**{**inputs.__dict__, "limit": 2})
        os.remove(inputs.eval_dir / "fp32" / "metrics.json")
        write_eval(inputs, limit=2)
        _edit_json(inputs.eval_dir / "int8-ort" / "metrics.json", limit=None)
    elif damage == "malformed engine manifest":
        (inputs.engine_fp16 / "manifest.json").write_text("{")
        write_eval(inputs)
    elif damage == "malformed metrics":
        doc = json.loads((inputs.eval_dir / "fp16-ort" / "metrics.json").read_text())
        del doc["engine"]
        (inputs.eval_dir / "fp16-ort" / "metrics.json").write_text(json.dumps(doc))
    elif damage == "scored image gone":
        os.remove(inputs.data / "image" / "p2.jpg")
    with pytest.raises(PipelineError) as err:
        assemble(inputs, tmp_path / "release")
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "release").exists() or list((tmp_path / "release").iterdir()) == []


def test_digest_ignores_where_inputs_live(fake_build, tmp_path):
    moved = tmp_path / "elsewhere.ckpt"
    shutil.copy(fake_build.ckpt, moved)
    a = inputs_digest(inputs_record(fake_build))
    b = inputs_digest(inputs_record(ReleaseInputs(**{**fake_build.__dict__, "ckpt": moved})))
    assert a == b


def test_missing_outputs_are_named(fake_build, tmp_path):
    (fake_build.report[0]).unlink()
    with pytest.raises(PipelineError, match=r"report\.md: missing; `make release` needs the outputs of "
                                            r"`make fp16 int8 eval`"):
        assemble(fake_build, tmp_path / "release")
    assert not (tmp_path / "release").exists() or list((tmp_path / "release").iterdir()) == []


def test_compare_classifies_every_file(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    metrics = {"mad": 0.1, "manifest_sha256": "a", "engine": {"sha256": "a", "model_files": {"model.onnx": "m"}}}
    files = {
        "engines/a/ort/model.onnx": (b"1", b"1"),
        "engines/a/ort/manifest.json": (b"{\"time\": 1}", b"{\"time\": 2}"),
        "onnx/x.onnx": (b"3", b"Y"),
        "report/eval/fp32/metrics.json": (json.dumps(metrics).encode(),
                                          json.dumps({**metrics, "manifest_sha256": "b",
                                                      "engine": {**metrics["engine"], "sha256": "b"}}).encode()),
        "report/eval/int8/metrics.json": (json.dumps(metrics).encode(), json.dumps({**metrics, "mad": 0.2}).encode()),
        "gone.txt": (b"5", None),
        "new.txt": (None, b"6"),
    }
    for rel, (a, b) in files.items():
        if a is not None:
            _write(ours / rel, a)
        if b is not None:
            _write(theirs / rel, b)
    rows = {rel: status for rel, status, _ in compare(ours, theirs)}
    assert rows == {"engines/a/ort/model.onnx": "equal", "engines/a/ort/manifest.json": "expected",
                    "onnx/x.onnx": "DIFFERENT", "report/eval/fp32/metrics.json": "expected",
                    "report/eval/int8/metrics.json": "DIFFERENT", "gone.txt": "MISSING", "new.txt": "EXTRA"}


def test_tampering_is_detected_against_the_bundle_manifest(fake_build, tmp_path):
    bundle, _ = assemble(fake_build, tmp_path / "release")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert tampered(bundle, manifest) == []
    engine = bundle / "engines/official_modnet_int8/ort/model.onnx"
    os.chmod(engine, 0o644)
    data = bytearray(engine.read_bytes())
    data[0] ^= 1
    engine.write_bytes(bytes(data))
    assert tampered(bundle, manifest) == ["engines/official_modnet_int8/ort/model.onnx"]


def test_a_committed_calibration_list_is_recorded_as_such(fake_build, tmp_path):
    from conftest import REPO
    committed_file = REPO / "calib" / "README.md"  # tracked and unchanged: stands in for a committed list
    inputs = ReleaseInputs(**{**fake_build.__dict__, "calib_list": committed_file})
    bundle, _ = assemble(inputs, tmp_path / "release")
    repository = json.loads((bundle / MANIFEST).read_text())["repository"]
    assert repository["calibration_list_committed"] is True
    from pipeline.core.provenance import git_state
    assert repository["clean"] == git_state()["clean"]


@pytest.mark.parametrize("where, warned", [
    ("calib/official_modnet_int8_new.txt", True),     # a real draw's record, not yet committed: commit it
    ("artifacts/demo/calib_list/official_modnet_int8.txt", False),  # the demo's list: gitignored, never committed
    ("artifacts/verify/verify-x/calib_list/official_modnet_int8.txt", False),  # verify's scratch copy
    (None, False),                                    # outside the checkout (tmp_path)
])
def test_only_a_list_meant_to_be_committed_gets_the_commit_warning(monkeypatch, tmp_path, capsys, where, warned):
    from conftest import REPO
    from pipeline.cli import main
    listed = REPO / where if where else tmp_path / "official_modnet_int8.txt"
    monkeypatch.setattr(release, "assemble", lambda inputs, root: (tmp_path / "bundle", True))
    monkeypatch.setattr(release, "load_manifest", lambda bundle: {"repository": {"calibration_list_committed": False}})
    args = ["release", "--config-fp16", str(FP16_CONFIG), "--config-int8", str(INT8_CONFIG), "--calib-list",
            str(listed), "--report", "r.md"]
    args += [a for flag in ("--ckpt", "--data", "--backend", "--calib", "--onnx-fp16", "--onnx-int8", "--engine-fp16",
                            "--engine-int8", "--eval-dir", "--out-root") for a in (flag, "x")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out == f"wrote release {tmp_path / 'bundle'}\n"
    assert err == (f"warning: {listed} is not committed in this repository, so MANIFEST.json says repository.clean: "
                   f"false; commit it to make the release reproducible from the repository alone\n" if warned else "")


@pytest.mark.parametrize("fp16, int8, name", [
    ("official_modnet_fp16", "official_modnet_int8", "official_modnet"),  # the shipped configs: as before
    ("official_modnet_fp16", "official_modnet_int8_tuned", "official_modnet"),  # with tune's config
    ("modnet_fp16", "modnet_fine_int8", "modnet"),  # whole words: not the characters' modnet_f
    ("studio_v2_fp16", "studio_v1_int8", "studio"),
    ("same_name", "same_name", "same_name"),
    ("fp16", "int8", "modnet"),  # no word shared
    ("portrait_fp16", "people_int8", "modnet"),  # nor a whole first word (the characters share p)
])
def test_a_release_is_named_by_the_leading_words_its_config_names_share(fp16, int8, name):
    assert release.release_name(fp16, int8) == name


def test_the_release_command_names_the_bundle_by_whole_words(monkeypatch, tmp_path, capsys):
    from conftest import config_dict, write_config
    from pipeline.cli import main
    configs = {}
    for key, path, name in (("--config-fp16", FP16_CONFIG, "modnet_fp16"), ("--config-int8", INT8_CONFIG,
                                                                            "modnet_fine_int8")):
        raw = config_dict(path)
        raw["name"] = name
        configs[key] = str(write_config(tmp_path / f"{name}.yaml", raw))
    named = []
    monkeypatch.setattr(release, "assemble", lambda inputs, root: named.append(inputs.name) or (root / "b", False))
    args = ["release", *[a for item in configs.items() for a in item], "--report", "r.md"]
    args += [a for flag in ("--ckpt", "--data", "--backend", "--calib-list", "--calib", "--onnx-fp16", "--onnx-int8",
                            "--engine-fp16", "--engine-int8", "--eval-dir", "--out-root") for a in (flag, "x")]
    assert main(args) == 0
    assert named == ["modnet"]
    assert capsys.readouterr().out == "release x/b is already there (same inputs); nothing written\n"


def test_a_tuned_configs_selection_list_is_bundled_named_and_put_back_for_the_rebuild(fake_build, tmp_path):
    """The report leaves a tuned config's selection images out of its held-out rows: the list is an input of the
    bundle (its name, a file of its own), and verify puts it where the rebuild's `make eval` reads NAME_tuned's."""
    without, _ = assemble(fake_build, tmp_path / "release")
    config = fake_build.config_int8
    tuned = Path(shutil.copy(config, config.with_name("official_modnet_int8_tuned.yaml")))
    listed = _write(tmp_path / "art" / "tune" / "official_modnet_int8" / "selection.txt", f"{'3' * 64}  p2.jpg\n".encode())
    inputs = ReleaseInputs(**{**fake_build.__dict__, "config_int8": tuned, "selection": listed})
    write_eval(inputs)
    bundle, written = assemble(inputs, tmp_path / "release")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert written and bundle != without
    assert manifest["inputs"]["selection_list"] == {"file": "selection.txt", "sha256": sha256_file(listed)}
    assert (bundle / "tune" / "selection.txt").read_bytes() == listed.read_bytes()
    assert manifest["files"]["tune/selection.txt"] == sha256_file(listed)
    listed.write_bytes(f"{'4' * 64}  p1.jpg\n".encode())  # another selection: another release
    other, _ = assemble(inputs, tmp_path / "release")
    assert other not in (bundle, without)
    # an untuned release records nothing of the kind
    assert "selection_list" not in json.loads((without / MANIFEST).read_text())["inputs"]
    scratch = tmp_path / "scratch"
    release.copy_list(manifest, bundle, scratch)
    assert (scratch / "tune" / "official_modnet_int8" / "selection.txt").read_bytes() == f"{'3' * 64}  p2.jpg\n".encode()
    assert (scratch / "calib_list" / "official_modnet_int8.txt").read_bytes() == b"1111  a.jpg\n"


def test_a_bias_corrected_release_ships_the_corrected_onnx_and_its_record(fake_build, tmp_path):
    """With `bias_correction: empirical` the Makefile passes the corrected ONNX as --onnx-int8: the bundle ships it
    and its record (OUT.json, as `correct` writes it), and the int8 engine's manifest must name it."""
    art = fake_build.onnx_int8.parent
    corrected = _write(art / "official_modnet_int8.corrected.onnx", b"corrected onnx-bytes")
    _write(art / "official_modnet_int8.corrected.onnx.json", b'{"bias_correction": "empirical"}')
    inputs = ReleaseInputs(**{**fake_build.__dict__, "onnx_int8": corrected})
    with pytest.raises(PipelineError, match=r"engines/official_modnet_int8/ort/manifest.json .* records its ONNX as"):
        assemble(inputs, tmp_path / "release")  # the engine was built from the simplified ONNX
    _write(inputs.engine_int8 / "manifest.json", json.dumps({"backend": "ort",
                                                             "onnx": {"sha256": sha256_file(corrected)}}).encode())
    write_eval(inputs)
    bundle, written = assemble(inputs, tmp_path / "release")
    assert written
    shipped = sorted(p.name for p in (bundle / "onnx").iterdir())
    assert shipped == ["official_modnet_fp16.sim.onnx", "official_modnet_fp16.sim.onnx.json",
                       "official_modnet_int8.corrected.onnx", "official_modnet_int8.corrected.onnx.json"]
    assert (bundle / "onnx" / "official_modnet_int8.corrected.onnx").read_bytes() == b"corrected onnx-bytes"


def test_a_rebuilt_correction_record_may_differ_only_in_the_calibration_manifests_hash(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    record = {"calibration": {"images": 50, "manifest_sha256": "a", "tensors_sha256": "t"}, "rounds_run": 2}
    files = {
        "onnx/m.corrected.onnx": (b"1", b"1"),
        "onnx/m.corrected.onnx.json": (record, {**record, "calibration": {**record["calibration"],
                                                                          "manifest_sha256": "b"}}),
        "onnx/n.corrected.onnx.json": (record, {**record, "rounds_run": 3}),
        "onnx/n.corrected.onnx": (b"1", b"2"),
    }
    for rel, (a, b) in files.items():
        _write(ours / rel, a if isinstance(a, bytes) else json.dumps(a).encode())
        _write(theirs / rel, b if isinstance(b, bytes) else json.dumps(b).encode())
    rows = {rel: status for rel, status, _ in compare(ours, theirs)}
    assert rows == {"onnx/m.corrected.onnx": "equal", "onnx/m.corrected.onnx.json": "expected",
                    "onnx/n.corrected.onnx.json": "DIFFERENT", "onnx/n.corrected.onnx": "DIFFERENT"}
