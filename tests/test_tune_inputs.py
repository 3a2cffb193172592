"""tune and analyze treat their inputs as build does (issue 17, sections 2, 3 and the tune part of 6): where the tuned
config may be written, the calibration folder, candidates.json, the tuned config's header, the demo's outputs."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml

from conftest import INT8_CONFIG, REPO, StubProgress, small_config_dict, write_config
from pipeline import cli
from pipeline.backends.engine import tuned_config_warnings
from pipeline.core.config import load_config
from pipeline.tuning import plot, promote, tuned_yaml
from pipeline.tuning.candidates import Cache, Candidate, content_digest

CALIB, IMAGES = 4, 10


def tune_config(path: Path, **changes) -> Path:
    raw = small_config_dict(INT8_CONFIG)
    raw["dataset"]["sampler"]["get_data_num"] = CALIB
    raw["pipeline"]["tune"] = {"max_builds": 2}
    for key, value in changes.items():
        raw["backend"]["quantize"][key] = value
    return write_config(path, raw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from pipeline.demo.data import write_demo_data
    from pipeline.stages.calibrate import make_calibration_set
    tmp = tmp_path_factory.mktemp("tune_inputs")
    write_demo_data(tmp / "data", count=IMAGES, seed=5, scale=0.15)
    make_calibration_set(load_config(tune_config(tmp / "small_int8.yaml")), tmp / "data", tmp / "calib",
                         tmp / "list.txt")
    return tmp


def stage_args(stage: str, inputs: Path, sim: Path, out: Path, config: Path | None = None,
               calib: Path | None = None) -> list[str]:
    return [stage, "--config", str(config or inputs / "small_int8.yaml"), "--onnx", str(sim), "--calib",
            str(calib or inputs / "calib"), "--data", str(inputs / "data"), "--out", str(out)]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- section 2: `make tune` writes only its own file --------------------------------------------------------------

@pytest.fixture
def folders(tmp_path, monkeypatch):
    """build_configs/ and artifacts/demo/ of a scratch checkout, as promote sees them; the working folder is it."""
    configs, demo = tmp_path / "build_configs", tmp_path / "artifacts" / "demo"
    configs.mkdir()
    demo.mkdir(parents=True)
    shutil.copy(INT8_CONFIG, configs / "official_modnet_int8.yaml")
    (tmp_path / "Makefile").write_text("all:\n")
    monkeypatch.setattr(promote, "CONFIGS", configs)
    monkeypatch.setattr(promote, "DEMO", demo)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tuned_text(note: str = "", verdict: str = "confirmed", verdicts: tuple[str, ...] | None = None,
               text: str | None = None) -> str:
    """A tuned config as tune writes it, its header signed over VERDICTS (default: the one VERDICT)."""
    text = INT8_CONFIG.read_text() if text is None else text
    block = tuned_yaml.quantize_block(yaml.safe_load(text)["backend"]["quantize"], "max", None, [1])
    lines = [f"Verdict: {v}" for v in ((verdict,) if verdicts is None else verdicts)]
    return tuned_yaml.tuned_text(text, block, [f"{tuned_yaml.MARK} (docs/tuning.md): a test{note}", *lines,
                                               "Model: m.sim.onnx sha256 " + "0" * 64])


def promote_args(to: str, *extra: str, tuned: Path | None = None) -> list[str]:
    args = ["promote", "--config", "build_configs/official_modnet_int8.yaml", "--to", to, *extra]
    return args + (["--tuned", str(tuned)] if tuned else ["--check"])


@pytest.mark.parametrize("to, words", [
    ("Makefile", "TUNED_CONFIG=Makefile: not a *.yaml file; name a config file in build_configs/"),
    ("pipeline/cli.py", "not a *.yaml file"),
    ("../../escape.yaml", "TUNED_CONFIG=../../escape.yaml: outside build_configs/"),
    ("artifacts/x.yaml", "outside build_configs/"),
    ("build_configs/official_modnet_int8.yaml", "is the input config, which tuning must not overwrite"),
    ("build_configs/../build_configs/./official_modnet_int8.yaml", "is the input config"),
    ("build_configs/mine.yaml", "exists and is not a tuned config (no `Tuned by `python -m pipeline tune`` header)"),
    ("build_configs/sub/new.yaml", "outside build_configs/"),  # a subfolder is made by nobody but the user
])
def test_promote_refuses_a_target_that_is_not_tunes_to_write(folders, capsys, to, words):
    (folders / "build_configs" / "mine.yaml").write_text("name: mine\n")
    before = {p: p.read_bytes() for p in folders.rglob("*") if p.is_file()}
    tuned = folders / "tuned.yaml"
    tuned.write_text(tuned_text())
    for args in (promote_args(to), promote_args(to, tuned=tuned)):
        assert cli.main(args) == 2
        assert words in one_error_line(capsys)
    assert {p: p.read_bytes() for p in before} == before
    assert not (folders.parent / "escape.yaml").exists()


def test_a_demo_promote_never_writes_into_a_release_bundle(folders, capsys):
    bundle = folders / "artifacts" / "demo" / "release" / "official_modnet-0123abcd4567"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "MANIFEST.json").write_text("{}\n")
    target = bundle / "configs" / "official_modnet_int8_tuned.yaml"
    target.write_text(tuned_text())  # an earlier tuned config, as a bundle of a demo tune carries one
    before = target.read_bytes()
    tuned = folders / "tuned.yaml"
    tuned.write_text(tuned_text(" again"))
    for args in (promote_args(str(target), "--demo"), promote_args(str(target), "--demo", tuned=tuned)):
        assert cli.main(args) == 2
        assert one_error_line(capsys) == (f"error: TUNED_CONFIG={target}: inside the release bundle {bundle}, which "
                                          f"is never rewritten; name a config file in artifacts/demo/ (the demo's "
                                          f"outputs: `make demo-tune`)")
    assert target.read_bytes() == before


def test_promote_writes_a_new_or_earlier_tuned_config_and_a_hand_edited_one_only_with_overwrite(folders, capsys):
    target = folders / "build_configs" / "official_modnet_int8_tuned.yaml"
    tuned = folders / "tuned.yaml"
    tuned.write_text(tuned_text())
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", tuned=tuned)) == 0
    assert target.read_bytes() == tuned.read_bytes()
    assert capsys.readouterr().out == (f"wrote build_configs/official_modnet_int8_tuned.yaml (a copy of {tuned}): "
                                       f"build it with `make int8 CONFIG_INT8=build_configs/"
                                       f"official_modnet_int8_tuned.yaml`\n")
    tuned.write_text(tuned_text(", again"))
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", tuned=tuned)) == 0
    assert target.read_bytes() == tuned.read_bytes()  # an earlier tuned config, as written: replaced
    capsys.readouterr()

    edited = target.read_text().replace("get_data_num: 50", "get_data_num: 40")
    target.write_text(edited)
    for args in (promote_args("build_configs/official_modnet_int8_tuned.yaml"),
                 promote_args("build_configs/official_modnet_int8_tuned.yaml", tuned=tuned)):
        assert cli.main(args) == 2
        assert one_error_line(capsys) == (
            "error: TUNED_CONFIG=build_configs/official_modnet_int8_tuned.yaml: a tuned config edited by hand since "
            "(its body no longer matches the sha256 in its header); OVERWRITE=1 (--overwrite) replaces it, or name "
            "another file")
    assert target.read_text() == edited
    # forcing a verdict is another switch: it does not discard a hand edit
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", "--force", tuned=tuned)) == 2
    assert "OVERWRITE=1 (--overwrite) replaces it" in one_error_line(capsys) and target.read_text() == edited
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", "--overwrite", tuned=tuned)) == 0
    assert target.read_bytes() == tuned.read_bytes()
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("verdict", ["not confirmed", "target not met"])
def test_promote_refuses_a_verdict_other_than_confirmed_or_input_kept_and_force_says_so(folders, capsys, verdict):
    configs = folders / "build_configs"
    target = configs / "official_modnet_int8_tuned.yaml"
    earlier = tuned_text(", earlier")
    target.write_text(earlier)
    before = {p: p.read_bytes() for p in configs.iterdir()}
    tune_dir = folders / "artifacts" / "tune" / "official_modnet_int8"
    tune_dir.mkdir(parents=True)
    tuned = tune_dir / "tuned.yaml"
    tuned.write_text(tuned_text(verdict=verdict))
    to = "build_configs/official_modnet_int8_tuned.yaml"
    assert cli.main(promote_args(to, tuned=tuned)) == 2
    assert one_error_line(capsys) == (f"error: {tuned}: verdict {verdict}, so TUNED_CONFIG={to} was not written; "
                                      f"the report is {tune_dir / 'tune.md'} (FORCE=1 promotes anyway)")
    assert {p: p.read_bytes() for p in configs.iterdir()} == before  # build_configs/ untouched
    assert cli.main(promote_args(to, "--force", tuned=tuned)) == 0
    assert capsys.readouterr().out.startswith(f"wrote {to} (a copy of {tuned}, promoted with FORCE=1 although the "
                                              f"verdict is {verdict}): ")
    lines = target.read_text().splitlines()
    assert lines[1:3] == [f"# Verdict: {verdict}",
                          f"# Promoted with FORCE=1 although the verdict is {verdict} (see the tune folder's tune.md)"]
    assert target.read_text().replace(lines[2] + "\n", "") == tuned.read_text()  # only that line added
    header, body = tuned_yaml.split(target.read_text())
    assert not tuned_yaml.edited(header, body)  # still tune's output: a later tune may replace it


@pytest.mark.parametrize("edit", [lambda t: t.replace("# Verdict: not confirmed", "# Verdict: confirmed"),
                                  lambda t: t.replace("# Verdict: not confirmed\n", "")])
def test_a_verdict_edited_by_hand_is_an_edit_of_the_config(folders, capsys, edit):
    tuned = folders / "tuned.yaml"
    tuned.write_text(edit(tuned_text(verdict="not confirmed")))
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", tuned=tuned)) == 2
    assert one_error_line(capsys) == (f"error: {tuned}: not tune's output as written (no header, or a body edited "
                                      f"since); rerun `make tune`")
    assert not (folders / "build_configs" / "official_modnet_int8_tuned.yaml").exists()


def test_a_verdict_comment_of_the_input_config_is_not_the_headers(folders):
    text = tuned_text(text="# Verdict: confirmed by the 2025 review\n" + INT8_CONFIG.read_text())
    header, body = tuned_yaml.split(text)
    assert header.verdicts == ("confirmed",) and body.startswith("# Verdict: confirmed by the 2025 review\n")
    assert not tuned_yaml.edited(header, body)


def test_promote_copies_input_kept_as_confirmed(folders, capsys):
    tuned = folders / "tuned.yaml"
    tuned.write_text(tuned_text(verdict="input kept"))
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", tuned=tuned)) == 0
    assert (folders / "build_configs" / "official_modnet_int8_tuned.yaml").read_bytes() == tuned.read_bytes()


@pytest.mark.parametrize("make", [
    lambda: tuned_text(verdicts=()), lambda: tuned_text(verdict="probably fine"),
    lambda: tuned_text(verdicts=("confirmed", "confirmed")),
    # a verdict-like comment at the top of the input config is the body's, not the header's
    lambda: tuned_text(verdicts=(), text="# Verdict: confirmed by the 2025 review\n" + INT8_CONFIG.read_text())])
def test_promote_refuses_a_header_without_exactly_one_known_verdict(folders, capsys, make):
    tuned = folders / "tuned.yaml"
    tuned.write_text(make())
    for extra in ((), ("--force",)):
        assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", *extra, tuned=tuned)) == 2
        assert one_error_line(capsys) == (
            f"error: {tuned}: its header records no verdict (one `# Verdict: ` line, one of confirmed, not confirmed, "
            f"target not met, input kept); rerun `make tune`")
    assert not (folders / "build_configs" / "official_modnet_int8_tuned.yaml").exists()


def test_promote_of_a_demo_tuned_config_goes_under_artifacts_demo_only(folders, capsys):
    tuned = folders / "tuned.yaml"
    tuned.write_text(tuned_text())
    assert cli.main(promote_args("build_configs/official_modnet_int8_tuned.yaml", "--demo")) == 2
    assert "outside artifacts/demo/ (the demo's outputs: `make demo-tune`) (a config tuned on the generated demo " \
           "data stays out of build_configs/)" in one_error_line(capsys)
    to = "artifacts/demo/tune/official_modnet_int8_tuned.yaml"
    assert cli.main(promote_args(to, "--demo", tuned=tuned)) == 0
    assert (folders / to).read_bytes() == tuned.read_bytes()


@pytest.mark.slow
def test_make_tune_checks_tuned_config_before_anything_runs(tmp_path):
    import subprocess
    makefile = (REPO / "Makefile").read_bytes()
    done = subprocess.run(["make", "--no-print-directory", "tune", "TUNED_CONFIG=Makefile", f"ART={tmp_path}/art",
                           "BACKEND=ort"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0
    assert "error: TUNED_CONFIG=Makefile: not a *.yaml file; name a config file in build_configs/" in done.stderr
    assert (REPO / "Makefile").read_bytes() == makefile and not (tmp_path / "art").exists()


@pytest.mark.slow
def test_make_demo_tune_keeps_the_tuned_config_under_artifacts_demo():
    import subprocess
    done = subprocess.run(["make", "-n", "--no-print-directory", "demo-tune"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    check = next(line for line in lines if "pipeline promote --check" in line)
    assert "--to 'artifacts/demo/tune/official_modnet_int8_tuned.yaml' --demo" in check
    assert "--data 'artifacts/demo/inputs/PPM-100' --ckpt 'artifacts/demo/inputs/demo_checkpoint.ckpt' --demo " \
           "--out 'artifacts/demo/tune/official_modnet_int8'" in next(line for line in lines
                                                                      if "pipeline tune " in line)
    assert lines.index(check) < next(i for i, line in enumerate(lines) if "pipeline tune " in line)
    assert not any("build_configs/official_modnet_int8_tuned.yaml" in line for line in lines)


@pytest.mark.slow
def test_make_tune_passes_tune_extra_as_a_checked_path(tmp_path):
    import subprocess

    def dry(*variables):
        return subprocess.run(["make", "-n", "--no-print-directory", "tune", f"ART={tmp_path}/art", "BACKEND=ort",
                               *variables], cwd=REPO, capture_output=True, text=True)
    lines = dry("TUNE_EXTRA=photos/mine").stdout.splitlines()
    assert " --extra-images 'photos/mine' --out " in next(line for line in lines if "pipeline tune " in line)
    assert not any("--extra-images" in line for line in dry().stdout.splitlines())
    refused = dry("TUNE_EXTRA=a;rm")
    assert refused.returncode != 0 and "TUNE_EXTRA holds ;, which the shell or Make would interpret: use a plain " \
                                       "path" in refused.stderr


def test_make_clean_removes_analyze_and_tune_clean_all_also_hwcheck(tmp_path):
    from test_make_usage import make, scratch_copy
    root = scratch_copy(tmp_path)
    art = root / "artifacts"
    for rel in ("analyze/x/layers.csv", "tune/x/tuned.yaml", "tune/x_tuned.yaml", "hwcheck/report.md",
                "demo/tune/x/tuned.yaml", "demo/analyze/x/layers.csv", "demo/hwcheck/report.md"):
        (art / rel).parent.mkdir(parents=True, exist_ok=True)
        (art / rel).write_text("output\n")
    assert make("clean", cwd=root).returncode == 0
    assert sorted(str(p.relative_to(art)) for p in art.rglob("*") if p.is_file()) == \
        ["README.md", "demo/hwcheck/report.md", "hwcheck/report.md"]
    done = make("clean-all", cwd=root)
    assert done.returncode == 0, done.stderr
    assert {"removing artifacts/hwcheck", "removing artifacts/demo/hwcheck"} <= set(done.stdout.splitlines())
    assert [p.name for p in art.iterdir()] == ["README.md"]


# --- section 3: the calibration folder, checked as build checks it ------------------------------------------------

@pytest.fixture
def calib_copy(inputs, tmp_path) -> Path:
    shutil.copytree(inputs / "calib", tmp_path / "calib")
    return tmp_path / "calib"


@pytest.mark.parametrize("stage", ["tune", "analyze"])
def test_tensors_replaced_by_other_data_of_the_same_shape_are_refused(inputs, small_sim_onnx, calib_copy, tmp_path,
                                                                      capsys, stage):
    tensors = np.load(calib_copy / "tensors.npy")
    np.save(calib_copy / "tensors.npy", tensors[::-1].copy())  # same shape, the images in another order
    out = tmp_path / "out"
    assert cli.main(stage_args(stage, inputs, small_sim_onnx, out, calib=calib_copy)) == 2
    assert one_error_line(capsys) == (f"error: {calib_copy / 'tensors.npy'}: content differs from the sha256 in "
                                      f"{calib_copy / 'manifest.json'}; rerun `make calib`")
    assert not out.exists()


@pytest.mark.parametrize("stage", ["tune", "analyze"])
def test_a_truncated_tensors_file_is_one_line(inputs, small_sim_onnx, calib_copy, tmp_path, capsys, stage):
    data = (calib_copy / "tensors.npy").read_bytes()
    (calib_copy / "tensors.npy").write_bytes(data[:len(data) // 2])
    assert cli.main(stage_args(stage, inputs, small_sim_onnx, tmp_path / "out", calib=calib_copy)) == 2
    line = one_error_line(capsys)
    assert f"{calib_copy / 'tensors.npy'}: {len(data) // 2} bytes, but float32 [4, 3, 128, 96] needs {len(data)} " \
           f"(truncated or padded); rerun `make calib`" in line


@pytest.mark.parametrize("stage", ["tune", "analyze"])
def test_a_matte_of_another_size_is_refused_with_evaluates_error(inputs, small_sim_onnx, tmp_path, capsys, stage,
                                                                 monkeypatch):
    from pipeline.backends.ort import stats

    def no_statistics(*args, **kwargs):  # the mattes are checked first, not after minutes of statistics
        raise AssertionError("statistics collected before the mattes were checked")
    monkeypatch.setattr(stats, "collect", no_statistics)
    data = tmp_path / "data"
    shutil.copytree(inputs / "data", data)
    calibration = {e["name"] for e in json.loads((inputs / "calib" / "manifest.json").read_text())["images"]}
    sizes = {}
    for matte in sorted((data / "matte").iterdir()):
        if matte.name not in calibration:  # tune and analyze score the other images only
            grey = cv2.imread(str(matte), cv2.IMREAD_GRAYSCALE)
            sizes[matte.name] = grey.shape
            cv2.imwrite(str(matte), cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2)))
    args = stage_args(stage, inputs, small_sim_onnx, tmp_path / "out")
    args[args.index("--data") + 1] = str(data)
    assert cli.main(args) == 2
    line = one_error_line(capsys)
    name = line.split(" does not match its image ")[-1].split(" (")[0]
    h, w = sizes[name]
    assert line == (f"error: {data / 'matte' / name}: {w // 2}x{h // 2} does not match its image {name} ({w}x{h}); "
                    f"a matte must be the same size as its photo")
    # nothing scored: at most tune's image lists, written before it scores (the cache, report and config are not)
    out = tmp_path / "out"
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert left <= {".pipeline-stage", "selection.txt", "confirmation.txt", "extra.txt"}


@pytest.mark.parametrize("stage", ["tune", "analyze"])
def test_a_skip_index_past_the_last_conv_is_refused(inputs, small_sim_onnx, tmp_path, capsys, stage):
    config = tune_config(tmp_path / "skip.yaml", skip_conv_layers=[9999])
    assert cli.main(stage_args(stage, inputs, small_sim_onnx, tmp_path / "out", config=config)) == 2
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(small_sim_onnx)).graph.node)
    assert one_error_line(capsys) == (f"error: {config}: backend.quantize.skip_conv_layers index 9999 is out of "
                                      f"range: the simplified ONNX has {convs} Conv nodes (0..{convs - 1})")


def test_the_cache_context_holds_the_tensors_sha256(inputs, small_sim_onnx):
    from pipeline.tuning.workbench import Workbench
    wb = Workbench(load_config(inputs / "small_int8.yaml"), small_sim_onnx, inputs / "calib", inputs / "data",
                   StubProgress())
    digest = hashlib.sha256((inputs / "calib" / "tensors.npy").read_bytes()).hexdigest()
    assert wb.cache.context["calibration_tensors_sha256"] == digest


# --- section 3: candidates.json is input ---------------------------------------------------------------------------

IMAGE = [{"name": "a.jpg", "sha256": "c" * 64}, {"name": "b.jpg", "sha256": "d" * 64}]
CONTEXT = {"onnx_sha256": "a" * 64, "code": "b" * 64, "selection": IMAGE, "confirmation": IMAGE[:1], "extra": [],
           "input_shape": [1, 3, 2, 2]}  # images of 4 pixels
FP32 = {"mse": [0.04, 0.05], "mad": [0.12, 0.1], "tp": [1, 2], "fp": [0, 0], "fn": [1, 0], "tn": [2, 2]}


def figures(mad=0.125, deviation=0.03) -> dict:
    return {"deviation": [deviation, 0.02], "flips": [0.0, 0.25], **FP32, "mad": [mad, 0.1]}


def saved_cache(path: Path) -> dict:
    cache = Cache(path, CONTEXT)
    cache.fp32 = {"selection": dict(FP32)}
    cache.put(Candidate("kl_divergence", None), "selection", figures())
    cache.put(Candidate("kl_divergence", None), "extra", {"deviation": [], "flips": []})
    cache.put(Candidate("percentile", 0.9999, (1, 4)), "selection", figures(mad=0.13, deviation=0.02))
    cache.put(Candidate("percentile", 0.9999, (1, 4)), "extra", {"deviation": [], "flips": []})
    cache.put(Candidate("percentile", 0.9999, (1, 4)), "confirmation", {k: v[:1] for k, v in figures().items()})
    cache.extra = {"worst_first": {"kl_divergence||": [4, 1, 0]}}
    cache.save(chosen=Candidate("kl_divergence", None).to_json(), verdict="input kept", search=[])
    return json.loads(path.read_text())


def planted(saved: dict, change) -> dict:
    changed = json.loads(json.dumps(saved))
    change(changed)
    return changed


def entry(candidate=None) -> dict:
    perfect = {"deviation": [0.0, 0.0], "flips": [0.0, 0.0], "mse": [0.0, 0.0], "mad": [0.0, 0.0],
               "tp": [1, 2], "fp": [0, 0], "fn": [0, 0], "tn": [3, 2]}
    return {"candidate": candidate or {"calibrate_mode": "mse", "calibrate_range": None, "skip_conv_layers": []},
            "figures": {"selection": perfect, "extra": {"deviation": [], "flips": []}}}


def redigest(change):
    """CHANGE, then the digest recomputed as a careful forger would: what validation alone must catch."""
    def apply(saved):
        change(saved)
        saved["digest"] = content_digest(saved)
    return apply


def sel(saved, k=0):
    return saved["cache"][k]["figures"]["selection"]


@pytest.mark.parametrize("change, words", [
    (redigest(lambda s: sel(s)["mad"].__setitem__(0, float("nan"))), "cache[0].figures.selection.mad[0] is nan"),
    (redigest(lambda s: sel(s)["mse"].__setitem__(1, 1e308)), "cache[0].figures.selection.mse[1] is 1e+308"),
    (redigest(lambda s: sel(s)["flips"].__setitem__(0, "0.99")), "cache[0].figures.selection.flips[0] is '0.99'"),
    (redigest(lambda s: sel(s)["mad"].__setitem__(0, True)), "cache[0].figures.selection.mad[0] is True"),
    (redigest(lambda s: sel(s)["deviation"].__setitem__(0, 1.5)), "selection.deviation[0] is 1.5, not a number "
                                                                  "within [0, 1]"),
    (redigest(lambda s: sel(s)["tp"].__setitem__(0, 1.0)), "cache[0].figures.selection.tp[0] is 1.0, not a pixel "
                                                           "count within [0, 4]"),
    (redigest(lambda s: sel(s)["tn"].__setitem__(0, 3)), "cache[0].figures.selection: the confusion counts of "
                                                         "image 0 do not sum to its 4 pixels"),
    (redigest(lambda s: sel(s)["mad"].pop()), "cache[0].figures.selection.mad is not a list of 2 per-image figures"),
    (redigest(lambda s: sel(s).pop("deviation")), "cache[0].figures.selection is not an object of exactly"),
    (redigest(lambda s: s["cache"][0]["figures"].pop("extra")), "cache[0].figures is not an object of selection, "
                                                                "extra (and confirmation)"),
    (redigest(lambda s: s["cache"][1]["figures"]["confirmation"]["mad"].append(0.1)),
     "cache[1].figures.confirmation.mad is not a list of 1 per-image figures"),
    (redigest(lambda s: s["cache"][0]["candidate"].pop("skip_conv_layers")), "cache[0].candidate is not an object"),
    (redigest(lambda s: s["cache"].append(entry(candidate={"calibrate_mode": "best", "calibrate_range": None,
                                                          "skip_conv_layers": []}))),
     "cache[2].candidate.calibrate_mode is 'best'"),
    (redigest(lambda s: s["cache"].append(entry(candidate={"calibrate_mode": "max", "calibrate_range": None,
                                                          "skip_conv_layers": ["1"]}))),
     "cache[2].candidate.skip_conv_layers is not a list of Conv indices"),
    (redigest(lambda s: s["cache"].append(s["cache"][0])), "cache[2] repeats the candidate kl_divergence||"),
    (redigest(lambda s: s["cache"].append(7)), "cache[2] is not an object of candidate and figures"),
    (redigest(lambda s: s.update(cache={})), "cache is not a list"),
    (redigest(lambda s: s["fp32"]["selection"]["mse"].__setitem__(0, -1)), "fp32.selection.mse[0] is -1"),
    (redigest(lambda s: s["context"].update(selection="a.jpg")), "context.selection is not a list of images"),
    (redigest(lambda s: s["context"].update(input_shape=[1, 3, 2])), "context.input_shape is not a list of 4"),
    (redigest(lambda s: s.update(planted=1)), "unknown key 'planted'"),
    (redigest(lambda s: s.pop("extra")), "no 'extra'"),
    (redigest(lambda s: s["extra"]["worst_first"].update(x=[-1])), "extra.worst_first['x'] is not a list"),
    # an invented perfect candidate of valid types: caught by the digest it was not saved with
    (lambda s: s["cache"].append(entry()), "its content does not match its digest"),
    (lambda s: sel(s, 1)["mad"].__setitem__(0, 0.001), "its content does not match its digest"),
])
def test_an_invalid_cache_is_set_aside_in_one_line_and_rebuilt(tmp_path, change, words):
    path = tmp_path / "candidates.json"
    saved = saved_cache(path)
    assert Cache(path, CONTEXT).get(Candidate("percentile", 0.9999, (1, 4)))["figures"]["selection"]["mad"] == \
        [0.13, 0.1]
    path.write_text(json.dumps(planted(saved, change)))
    bad = path.read_bytes()
    cache = Cache(path, CONTEXT)
    assert cache.entries == {} and cache.fp32 is None and cache.extra == {}
    assert words in cache.notice and "\n" not in cache.notice
    assert cache.notice.endswith("; set aside as candidates.json.invalid-1, rebuilt from scratch")
    assert not path.exists() and (tmp_path / "candidates.json.invalid-1").read_bytes() == bad


@pytest.mark.parametrize("content", [b"[1, 2]", b"\"text\"", b"{\"context\": ", b"\xff\xfe{}", b"[" * 100000])
def test_a_cache_that_is_not_a_json_object_is_set_aside_too(tmp_path, content):
    path = tmp_path / "candidates.json"
    (tmp_path / "candidates.json.invalid-1").write_text("an earlier one\n")
    path.write_bytes(content)
    cache = Cache(path, CONTEXT)
    assert cache.entries == {} and "set aside as candidates.json.invalid-2" in cache.notice
    assert (tmp_path / "candidates.json.invalid-2").read_bytes() == content
    assert (tmp_path / "candidates.json.invalid-1").read_text() == "an earlier one\n"


# --- section 3: the tuned config's header; section 6: the demo's outputs --------------------------------------------

def test_header_values_cannot_start_a_yaml_key_and_a_tuned_config_keeps_one_header():
    text = INT8_CONFIG.read_text()
    block = tuned_yaml.quantize_block(yaml.safe_load(text)["backend"]["quantize"], "max", None, [])
    crafted = ["Tuned by `python -m pipeline tune`: x", "Command: --out 'a\ninjected: 1'",
               "carriage\rreturn", "line\u2028separator", "next\x85line", "tab\there"]
    out = tuned_yaml.tuned_text(text, block, crafted)
    raw = yaml.safe_load(out)
    assert "injected" not in raw and raw["backend"]["quantize"]["calibrate_mode"] == "max"
    lines = out.split("\n")
    assert lines[1] == "# Command: --out 'a\\ninjected: 1'"
    assert lines[2:6] == ["# carriage\\rreturn", "# line\\u2028separator", "# next\\x85line", "# tab\\there"]
    again = tuned_yaml.tuned_text(out, block, crafted)
    assert again.count("Tuned by `python -m pipeline tune`") == 1 and again == out
    header, body = tuned_yaml.split(out)
    assert header.body_sha256 == hashlib.sha256(body.encode()).hexdigest() and yaml.safe_load(body) == raw


def test_an_earlier_tuned_config_without_a_body_digest_loses_its_header_too():
    body = INT8_CONFIG.read_text()
    old = "# Tuned by `python -m pipeline tune` (docs/tuning.md): x\n# Model: m sha256 " + "1" * 64 + "\n#\n" + body
    header, rest = tuned_yaml.split(old)
    assert (header.onnx_sha256, header.body_sha256, rest) == ("1" * 64, None, body)


def test_integer_ticks_for_a_count_of_convs():
    assert plot._ticks(-0.05, 1.05) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert plot._ticks(-0.05, 1.05, integer=True) == [0, 1]
    assert plot._ticks(-1, 1, integer=True) == [0, 1]  # a count is never negative
    assert plot._ticks(-1.6, 33.6, integer=True) == [0, 10, 20, 30]


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_demo_tune_carries_the_banner_its_header_checks_on_build_and_a_bad_cache_is_set_aside(
        inputs, small_sim_onnx, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out\ninjected: 1"
    out.mkdir()
    (out / "candidates.json").write_text("{\"context\": {}, \"cache\": [{\"candidate\": 5}]}")
    args = stage_args("tune", inputs, small_sim_onnx, out) + ["--demo"]
    monkeypatch.setattr("sys.argv", ["pipeline", *args])
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: {out / 'candidates.json'}: not a valid candidate cache (no 'digest'); set aside as " \
           f"candidates.json.invalid-1, rebuilt from scratch\n" in err
    tuned = out / "tuned.yaml"
    text = tuned.read_text()
    raw = yaml.safe_load(text)
    assert "injected" not in raw
    banner = "Generated demo data, not photos with hand-made mattes: these figures exercise the pipeline and say " \
             "nothing about MODNet's accuracy."
    lines = text.splitlines()
    assert lines[1] == f"# DEMO: {banner}"
    assert "# skip_conv_layers counts Convs in vamc order (pipeline.conv_numbering), measured on the reference " \
           "backend: unconfirmed for vamc until `make hwcheck` has run on a card (docs/first-run-on-a-card.md)." \
           in lines
    assert f"# Model: {small_sim_onnx.name} sha256 {hashlib.sha256(small_sim_onnx.read_bytes()).hexdigest()}" in lines
    assert (out / "tune.md").read_text().splitlines()[2] == f"**{banner}**"
    png = cv2.imdecode(np.frombuffer((out / "tune.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[0] == plot.HEIGHT + plot.STAMP_H
    band = png[:plot.STAMP_H].reshape(-1, 3).astype(int)
    assert ((band[:, 2] > 180) & (band[:, 1] < 80)).sum() > 100  # red text: the stamp

    # tuning the tuned config: one header
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(out / "candidates.json", again / "candidates.json")  # the same context: nothing to build
    assert cli.main(stage_args("tune", inputs, small_sim_onnx, again, config=tuned)) == 0
    assert (again / "tuned.yaml").read_text().count(tuned_yaml.MARK) == 1

    # built as tuned: no warning but the verdict's (a random-weights model on 6 images: target not met); an edited
    # body or another model: one line each
    tuned = tmp_path / "tuned.yaml"  # a name the warnings can print on one line
    tuned.write_text(text)
    cfg = load_config(tuned)
    assert tuned_yaml.verdict(tuned_yaml.split(text)[0]) == "target not met"
    unvouched = f"warning: {tuned}: tune's verdict on it is 'target not met' (no candidate, this one included, met " \
                f"pipeline.tune's target), not one `make tune` promotes (confirmed or input kept); its header has the " \
                f"figures (docs/tuning.md)"
    assert tuned_config_warnings(cfg, small_sim_onnx) == [unvouched[len("warning: "):]]
    other = tmp_path / "other.sim.onnx"
    model = onnx.load(str(small_sim_onnx))
    model.doc_string = "another model"
    onnx.save(model, str(other))
    tuned.write_text(text.replace("get_data_num: 4", "get_data_num: 4  # edited"))
    capsys.readouterr()
    assert cli.main(["build", "--config", str(tuned), "--onnx", str(other), "--calib", str(inputs / "calib"),
                     "--backend", "ort", "--out", str(tmp_path / "engine")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {tuned}: edited since `make tune` wrote it (its body no longer matches the sha256 in its header), "
        f"so the figures in its header do not describe it",
        unvouched,
        f"warning: {tuned}: tuned for the ONNX with sha256 {hashlib.sha256(small_sim_onnx.read_bytes()).hexdigest()[:12]}"
        f"..., built against {other} ({hashlib.sha256(other.read_bytes()).hexdigest()[:12]}...): its skip_conv_layers "
        f"and figures were chosen for another model; tune again on this one (make tune)"]


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_demo_analyze_carries_the_banner(inputs, small_sim_onnx, tmp_path, capsys, monkeypatch, demo_ckpt):
    from pipeline.tuning import analyze
    monkeypatch.setattr(analyze, "FLOAT_LAYERS", 1)
    out = tmp_path / "analysis"
    assert cli.main(stage_args("analyze", inputs, small_sim_onnx, out) + ["--demo", "--ckpt", str(demo_ckpt)]) == 0
    banner = "Generated demo data and the demo checkpoint (trained briefly on generated portraits, not MODNet's " \
             "weights): these figures exercise the pipeline and say nothing about MODNet's accuracy."
    assert (out / "layers.md").read_text().splitlines()[2] == f"**{banner}**"
    png = cv2.imdecode(np.frombuffer((out / "layers.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[0] == plot.HEIGHT + plot.STAMP_H


# --- issue 19 section 4: `make tune` promotes only a confirmed (or input kept) tune -------------------------------

def up_to_date_tune(tmp_path: Path, verdict: str) -> tuple[Path, list[str]]:
    """A scratch checkout whose tune folder is up to date, with a tuned.yaml of VERDICT: `make tune` then only runs
    promote. Returns the checkout and the make variables."""
    import os

    from test_make_usage import scratch_copy
    root = scratch_copy(tmp_path)
    (root / ".venv").symlink_to(REPO / ".venv")
    stamp = (REPO / ".venv" / ".installed").stat().st_mtime
    for path in root.rglob("*"):
        if not path.is_symlink() and path.is_file():
            os.utime(path, (stamp - 1000, stamp - 1000))  # older than the venv stamp, as in a checkout
    art, name = root / "artifacts", "official_modnet_int8"
    (root / "calib" / f"{name}.txt").write_text("the calibration list\n")
    files = [("inputs/ckpt.path", f"{root}/checkpoints/modnet_photographic_portrait_matting.ckpt\n"),
             ("inputs/data.path", f"{root}/datasets/PPM-100\n"), ("inputs/tune_extra.path", "\n"),
             ("inputs/tune_extra.contents", ""), (f"onnx/{name}.onnx", "onnx"), (f"onnx/{name}.sim.onnx", "sim"),
             (f"calib/{name}/manifest.json", "{}"), (f"tune/{name}/tuned.yaml", tuned_text(verdict=verdict)),
             (f"tune/{name}/tune.md", "the report\n")]
    os.utime(root / "calib" / f"{name}.txt", (stamp - 500, stamp - 500))
    for k, (rel, text) in enumerate(files):
        (art / rel).parent.mkdir(parents=True, exist_ok=True)
        (art / rel).write_text(text)
        os.utime(art / rel, (stamp + 1 + k / 10, stamp + 1 + k / 10))  # in the order the stages write them
    return root, ["tune", "BACKEND=ort"]


@pytest.mark.slow  # a stage on the whole small model, many seconds
def test_make_tune_leaves_build_configs_untouched_unless_confirmed_and_force_promotes_anyway(tmp_path):
    from test_make_usage import make
    root, args = up_to_date_tune(tmp_path, "not confirmed")
    configs = root / "build_configs"
    before = {p.name: p.read_bytes() for p in configs.iterdir()}
    done = make(*args, cwd=root)
    assert done.returncode != 0
    tuned = "artifacts/tune/official_modnet_int8/tuned.yaml"
    assert "pipeline tune " not in done.stdout  # up to date: only promote ran
    assert f"error: {tuned}: verdict not confirmed, so TUNED_CONFIG=build_configs/official_modnet_int8_tuned.yaml " \
           f"was not written; the report is artifacts/tune/official_modnet_int8/tune.md (FORCE=1 promotes " \
           f"anyway)" in done.stderr.splitlines()
    assert {p.name: p.read_bytes() for p in configs.iterdir()} == before

    forced = make(*args, "FORCE=1", cwd=root)
    assert forced.returncode == 0, forced.stderr
    assert "promoted with FORCE=1 although the verdict is not confirmed" in forced.stdout
    promoted = (configs / "official_modnet_int8_tuned.yaml").read_text().splitlines()
    assert promoted[1:3] == ["# Verdict: not confirmed", "# Promoted with FORCE=1 although the verdict is not "
                             "confirmed (see the tune folder's tune.md)"]
    assert {p.name: p.read_bytes() for p in configs.iterdir() if p.name in before} == before


def test_make_tune_promotes_a_confirmed_tune(tmp_path):
    from test_make_usage import make
    root, args = up_to_date_tune(tmp_path, "confirmed")
    done = make(*args, cwd=root)
    assert done.returncode == 0, done.stderr
    assert (root / "build_configs" / "official_modnet_int8_tuned.yaml").read_bytes() == \
        (root / "artifacts" / "tune" / "official_modnet_int8" / "tuned.yaml").read_bytes()


@pytest.mark.parametrize("verdict, warned", [("confirmed", False), ("input kept", False), ("not confirmed", True),
                                             ("target not met", True)])
def test_building_a_tuned_config_whose_verdict_make_tune_would_not_promote_warns(tmp_path, verdict, warned):
    # the tune folder's own tuned.yaml, or a copy promoted with FORCE=1: buildable, but not vouched for
    text = tuned_text(verdict=verdict)
    onnx_file = tmp_path / "m.sim.onnx"
    onnx_file.write_bytes(b"model")
    text = text.replace("0" * 64, hashlib.sha256(b"model").hexdigest())  # the header's model: no other warning
    header, body = tuned_yaml.split(text)
    text = text.replace(header.body_sha256, tuned_yaml.body_digest(body, header.verdicts))
    path = tmp_path / "tuned.yaml"
    path.write_text(text)
    why = {"not confirmed": "chosen on the selection images, it did not hold on the confirmation images: not "
                            "significantly closer to fp32 than the input config there, or outside the target",
           "target not met": "no candidate, this one included, met pipeline.tune's target"}.get(verdict)
    expected = [f"{path}: tune's verdict on it is '{verdict}' ({why}), not one `make tune` promotes (confirmed or "
                f"input kept); its header has the figures (docs/tuning.md)"] if warned else []
    assert tuned_config_warnings(load_config(path), onnx_file) == expected
