"""Which Python environment rebuilds a release (pure: nothing installed), what verify says about the differences
that remain, and how a failed install is named."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.stages.verify import (VENV_STAMP, cached_venvs, choose_venv, create_venv, environment_notes,
                                    missing_requirement, package_changes)

REQS = b"torch==2.3.1\nnumpy==1.26.4\n"
INSTALLED = ["numpy==1.26.4", "pip==24.0", "torch==2.3.1"]
CURRENT = Path("/work/repo/.venv")
CACHE = Path("/work/repo/artifacts/verify/venvs")
KEY = hashlib.sha256(REQS).hexdigest()


def test_same_requirements_and_packages_reuse_the_current_venv():
    choice = choose_venv(REQS, REQS, INSTALLED, INSTALLED, CURRENT, CACHE, frozenset())
    assert (choice.path, choice.reuse, choice.create) == (CURRENT, True, False)
    assert choice.why == ("environment: /work/repo/.venv, as the release's (same requirements.txt, same installed "
                          "packages)")


def test_other_requirements_make_a_venv_keyed_by_their_sha256():
    choice = choose_venv(REQS, b"torch==2.4.0\nnumpy==1.26.4\n", INSTALLED, INSTALLED, CURRENT, CACHE, frozenset())
    assert (choice.path, choice.reuse, choice.create) == (CACHE / KEY, False, True)
    assert choice.why == (f"environment: the release's requirements.txt differs from this checkout's; creating a venv "
                          f"for the release in {CACHE / KEY} (pip installs its requirements.txt: minutes)")


def test_a_venv_made_by_an_earlier_verify_is_reused():
    choice = choose_venv(REQS, b"other\n", INSTALLED, INSTALLED, CURRENT, CACHE, frozenset({KEY, "f" * 64}))
    assert (choice.path, choice.reuse, choice.create) == (CACHE / KEY, False, False)
    assert choice.why == (f"environment: the release's venv {CACHE / KEY}, made by an earlier verify (the release's "
                          f"requirements.txt differs from this checkout's)")


def test_same_requirements_but_other_installed_versions_do_not_reuse_the_current_venv():
    here = ["numpy==1.26.4", "pip==24.0", "torch==2.3.1", "tqdm==4.66.0"]
    recorded = ["numpy==2.0.0", "pip==24.0", "torch==2.3.1"]
    choice = choose_venv(REQS, REQS, recorded, here, CURRENT, CACHE, frozenset())
    assert (choice.path, choice.create) == (CACHE / KEY, True)
    assert choice.why.startswith("environment: 2 installed package(s) differ from the release's (numpy 2.0.0 -> "
                                 "1.26.4, tqdm absent -> 4.66.0); creating a venv")


def test_not_in_a_venv_or_no_package_list():
    assert choose_venv(REQS, REQS, INSTALLED, INSTALLED, None, CACHE, frozenset()).why.startswith(
        "environment: verify does not run in a venv made by `make venv`; creating")
    for recorded in (None, "torch", [1, 2]):
        choice = choose_venv(REQS, REQS, recorded, INSTALLED, CURRENT, CACHE, frozenset())
        assert choice.create and "the release's manifest does not list its installed packages" in choice.why


def test_package_changes():
    assert package_changes(["a==1", "b==2"], ["a==1", "b==3", "c==1"]) == ["b 2 -> 3", "c absent -> 1"]
    assert package_changes(["a==1"], ["a==1"]) == []


def test_environment_notes_list_what_differs():
    recorded = {"python": "3.11.7", "implementation": "CPython", "system": "Linux", "machine": "x86_64",
                "processor": "", "cpu": "AMD EPYC", "packages": ["numpy==1.26.4", "torch==2.3.1"]}
    assert environment_notes(recorded, dict(recorded)) == []
    used = {**recorded, "python": "3.11.9", "cpu": "Intel Xeon", "packages": ["numpy==1.26.4", "torch==2.3.0"]}
    assert environment_notes(recorded, used) == [
        "note: Python '3.11.7' built the release, '3.11.9' rebuilt it",
        "note: CPU 'AMD EPYC' built the release, 'Intel Xeon' rebuilt it",
        "note: 1 package(s) differ between the release and the rebuild: torch 2.3.1 -> 2.3.0"]
    assert environment_notes(None, used) == [] and environment_notes(recorded, None) == []


def test_a_version_that_cannot_be_had_is_named():
    out = ("Looking in indexes: https://pypi.org/simple\n"
           "ERROR: Could not find a version that satisfies the requirement torch==1.0.0 (from versions: 2.2.0)\n"
           "ERROR: No matching distribution found for torch==1.0.0\n")
    assert missing_requirement(out) == "torch==1.0.0"
    assert missing_requirement("ERROR: Could not install packages due to an OSError: no space\n") is None


def _fake_python(folder: Path, pip_says: str, pip_exit: int) -> str:
    """A `python` whose `-m venv DIR` makes DIR/bin/python, a pip stand-in that prints PIP_SAYS and exits PIP_EXIT,
    and adds DIR to FOLDER/made-in."""
    script = folder / "python"
    script.write_text(f"""#!/bin/sh
printf '%s\\n' "$3" >> "{folder}/made-in"
mkdir -p "$3/bin"
printf '#!/bin/sh\\necho "{pip_says}"\\nexit {pip_exit}\\n' > "$3/bin/python"
chmod +x "$3/bin/python"
""")
    script.chmod(0o755)
    return str(script)


def test_a_venv_is_listed_once_its_stamp_is_written(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_bytes(REQS)
    cache = tmp_path / "venvs"
    said = []
    create_venv(cache / KEY, reqs, _fake_python(tmp_path, "Successfully installed torch-2.3.1", 0), [], said.append)
    assert said == ["Successfully installed torch-2.3.1"]
    assert sorted(p.name for p in cache.iterdir()) == [KEY] and (cache / KEY / VENV_STAMP).is_file()
    assert cached_venvs(cache) == frozenset({KEY})


def test_a_venv_is_made_where_it_stays_and_an_interrupted_one_is_made_anew(tmp_path):
    # a venv's scripts name the folder it was made in, so it is made at its final path, never moved
    reqs = tmp_path / "requirements.txt"
    reqs.write_bytes(REQS)
    cache = tmp_path / "venvs"
    (cache / KEY / "bin").mkdir(parents=True)
    (cache / KEY / "bin" / "leftover").write_text("from an interrupted build\n")  # no stamp: never listed
    assert cached_venvs(cache) == frozenset()
    create_venv(cache / KEY, reqs, _fake_python(tmp_path, "ok", 0), [], lambda line: None)
    assert (tmp_path / "made-in").read_text().splitlines() == [str(cache / KEY)]
    assert not (cache / KEY / "bin" / "leftover").exists() and cached_venvs(cache) == frozenset({KEY})


def test_a_version_that_cannot_be_installed_leaves_nothing(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_bytes(REQS)
    cache = tmp_path / "venvs"
    python = _fake_python(tmp_path, "ERROR: No matching distribution found for torch==2.3.1", 1)
    with pytest.raises(PipelineError) as err:
        create_venv(cache / KEY, reqs, python, ["--index-url", "file:///nowhere"], lambda line: None)
    assert str(err.value) == ("torch==2.3.1: pip finds no such version (PIP_ARGS can point it at another index); "
                              "the release's requirements.txt cannot be installed, nothing kept")
    assert list(cache.iterdir()) == []  # no half-built venv, no .part folder


def test_a_relative_venv_cache_reaches_make_as_an_absolute_venv(tmp_path, monkeypatch):
    # Make runs in the scratch folder's source/: a relative VENV would name a folder there, made (and installed)
    # a second time
    from pipeline.stages import verify
    made = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(verify, "current_venv", lambda: None)
    monkeypatch.setattr(verify, "create_venv", lambda dest, *args: made.append(dest))
    scratch = tmp_path / "scratch"
    workdir, extra = verify._source_setup({}, [("Makefile", b"all:\n"), ("requirements.txt", REQS)], scratch,
                                          Path("venvs"), lambda line: None)
    assert workdir == scratch / "source" and made == [tmp_path / "venvs" / KEY]
    assert extra[0] == f"VENV={tmp_path / 'venvs' / KEY}"
