"""make release + verify end to end on generated data (small shape, reference backend): a rebuild reproduces the
bundle with the code the bundle carries, though the checkout's code has changed since (in a clean Make environment,
the release's own LIMIT replayed); a bundle made before bundles carried their source is rebuilt with the current
code, and one changed byte of an engine is caught and named (verify in-process, its Make rebuild standing in: the
rebuild is the bundle as released, which the end-to-end test shows a rebuild reproduces); a manifest is data, never
code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from conftest import INT8_CONFIG, REPO, small_config_dict, write_config
from pipeline.core.layout import LATEST
from pipeline.stages.source import SOURCE_MTIME, code_files

pytestmark = pytest.mark.slow  # every test here stands on a real `make release`


@pytest.fixture(scope="module")
def released(tmp_path_factory, demo_ckpt):
    from pipeline.demo.data import write_demo_data
    root = tmp_path_factory.mktemp("release")
    data = root / "PPM-100"
    write_demo_data(data, count=6, seed=3, scale=0.1)
    fp16 = write_config(root / "small_fp16.yaml", small_config_dict())
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = 4
    int8 = write_config(root / "small_int8.yaml", raw)
    variables = [f"ART={root / 'art'}", f"CKPT={demo_ckpt}", f"DATA={data}", "BACKEND=ort", "LIMIT=5",
                 f"CONFIG_FP16={fp16}", f"CONFIG_INT8={int8}", f"CALIB_LIST={root / 'small_int8.txt'}"]
    done = subprocess.run(["make", "--no-print-directory", *variables, "release"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the list is outside the repository: no file to commit here, so no warning (MANIFEST.json still says not clean)
    assert "is not committed in this repository" not in done.stderr
    releases = root / "art" / "release"
    bundles = [releases / (releases / LATEST).read_text().removesuffix("\n")]  # the one bundle, named by .latest
    assert sorted(p.name for p in releases.iterdir()) == [LATEST, bundles[0].name]
    again = subprocess.run(["make", "--no-print-directory", *variables, "release"], cwd=REPO, capture_output=True,
                           text=True)
    assert again.returncode == 0 and f"release {bundles[0]} is already there (same inputs)" in again.stdout
    # the real stages write the very targets the Makefile names (as recording_py.py's stand-in does): nothing reruns
    assert Counter(line.split()[3] for line in again.stdout.splitlines() if " -m pipeline " in line) == \
        Counter(gate=1, release=1)
    return bundles[0], root


def rows(stdout: str) -> dict[str, str]:
    """file -> status of verify's table (the rebuild's own output comes before it)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines[:-1]) if line.startswith("file ") and lines[i + 1].startswith("---"))
    found = {}
    for line in lines[start + 2:]:
        if not line or line.startswith(("verified", "error")):
            break
        found[line.split()[0]] = line.split()[1]
    return found


# What a caller's environment could hold that must not steer the rebuild (Make reads `?=` variables from it).
HOSTILE = {"MAKEFLAGS": "LIMIT=1 REDRAW=1", "LIMIT": "2", "REDRAW": "1", "BACKEND": "vamc", "VAMC": "/nonexistent",
           "CONFIG": "build_configs/official_modnet_int8.yaml"}


def test_release_manifest_covers_the_bundle(released):
    bundle, _ = released
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "MANIFEST.json"]
    assert {"engines/small_fp16/ort/model.onnx", "engines/small_int8/ort/model.onnx", "onnx/small_fp16.sim.onnx",
            "configs/small_int8.yaml", "calib/small_int8.txt", "report/report.md",
            "report/eval/int8-ort/metrics.json"} <= set(files)
    assert len(manifest["calibration_images"]) == 4
    assert manifest["source"]["file"] in files and manifest["source"]["bytes"] < 1_000_000
    assert bundle.name == f"official_modnet-{manifest['inputs_digest'][:12]}"


def later_checkout(folder):
    """A copy of this checkout (git-free) with two commits' worth of change since the release: a docstring, and a
    stage whose output changes (the prediction is rounded instead of truncated)."""
    for rel, path in code_files(REPO):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / rel)
    shutil.copytree(REPO / "build_configs", folder / "build_configs")
    os.symlink((REPO / ".venv").resolve(), folder / ".venv")
    os.utime(folder / "requirements.txt", (SOURCE_MTIME, SOURCE_MTIME))  # never newer than the shared venv's stamp
    metrics = folder / "pipeline" / "accuracy" / "metrics.py"
    code = metrics.read_text()
    truncated = "return np.clip(a * 255, 0, 255).astype(np.uint8)"
    assert code.count(truncated) == 1 and code.count('"""') >= 2
    code = code.replace('"""', '"""A docstring changed since the release. ', 1)
    metrics.write_text(code.replace(truncated, "return np.rint(np.clip(a * 255, 0, 255)).astype(np.uint8)"))
    return folder


def test_make_verify_rebuilds_with_the_release_code_in_a_clean_environment_and_tidies_up(released):
    bundle, root = released
    later = later_checkout(root / "later")
    art = root / "verify-art"
    done = subprocess.run(["make", "--no-print-directory", f"ART={art}", f"RELEASE={bundle}", "verify"], cwd=later,
                          capture_output=True, text=True, env={**os.environ, **HOSTILE})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    lines = done.stdout.splitlines()
    assert f"rebuilding with the release's own code ({manifest['source']['file']}), not this checkout's, which " \
           f"differs" in lines
    assert f"environment: {later / '.venv'}, as the release's (same requirements.txt, same installed packages)" in lines
    assert not any(line.startswith("note:") for line in lines)  # same machine, same Python, same packages
    shown = rows(done.stdout)  # only the rows that are not byte-equal
    assert set(shown.values()) == {"expected"} and "engines/small_int8/ort/manifest.json" in shown
    equal = len(manifest["files"]) - len(shown)
    assert f"verified: {equal} files identical, {len(shown)} expected differences" in done.stdout
    assert "overriding recipe" not in done.stderr and "ignoring old recipe" not in done.stderr
    assert list((art / "verify").iterdir()) == []  # the scratch rebuild (source and outputs) is removed once it matches

    # ... while this checkout's code would not reproduce the release: its int8 evaluation scores differently
    config, engine = bundle / "configs" / "small_int8.yaml", bundle / "engines" / "small_int8" / "ort"
    evaluated = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--config", str(config), "--engine",
                                str(engine), "--data", manifest["data"], "--limit", "5", "--out", str(root / "now")],
                               cwd=later, capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    released_mad = json.loads((bundle / "report/eval/int8-ort/metrics.json").read_text())["mad"]
    assert json.loads((root / "now" / "metrics.json").read_text())["mad"] != released_mad


def old_style(bundle, folder):
    """BUNDLE as `make release` wrote it before bundles carried their source."""
    copy = folder / bundle.name
    shutil.copytree(bundle, copy)
    os.chmod(copy, 0o755)
    for path in copy.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    shutil.rmtree(copy / "source")
    del manifest["files"][manifest.pop("source")["file"]], manifest["environment"]
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    return copy


def test_a_bundle_without_source_is_rebuilt_with_the_current_code_and_one_changed_byte_is_caught(released, capsys,
                                                                                             monkeypatch):
    from pipeline.cli import main
    from pipeline.stages import release, verify as verify_stage
    original, root = released
    bundle = old_style(original, root / "old")
    scratch = root / "scratch"

    engine = bundle / "engines/small_int8/ort/model.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    expected = ["make", "--no-print-directory", *release.rebuild_variables(manifest, bundle, scratch / "art", None,
                                                                           None), "release"]
    run = subprocess.run
    made = []

    def rebuild(command, **kwargs):
        """This checkout's Make, in this checkout: the rebuild is the bundle as it was released (source/ included)."""
        if command[:1] != ["make"]:
            return run(command, **kwargs)
        made.append((command, kwargs["cwd"]))
        shutil.copytree(original, scratch / "art" / "release" / bundle.name)
        return subprocess.CompletedProcess(command, 0)
    monkeypatch.setattr(verify_stage.subprocess, "run", rebuild)
    assert main(["verify", "--release", str(bundle), "--scratch", str(scratch)]) == 2
    assert made == [(expected, REPO)]  # no VENV, no unpacked source: the current code, as the note says
    second = capsys.readouterr()
    assert second.out.splitlines()[0] == (f"note: {bundle.name} carries no source (made before bundles did): "
                                          f"only the code that built it can rebuild it, so this checkout's is "
                                          f"used (to verify it, check out its repository.commit and run make "
                                          f"verify there)")
    found = rows(second.out)
    assert found["engines/small_int8/ort/model.onnx"] == "DIFFERENT"
    assert [status for rel, status in found.items() if rel.startswith("source/")] == ["expected"]
    assert "changed since release" in second.out
    assert second.err.strip().splitlines()[-1] == (f"error: 1 file(s) of {bundle.name} differ from the rebuild: "
                                                   f"engines/small_int8/ort/model.onnx; the rebuild is kept in "
                                                   f"{scratch}")
    assert (scratch / "art" / "release" / bundle.name).is_dir()
