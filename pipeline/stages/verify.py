"""Stage `verify`: rebuild a release bundle with the code it carries, in a Python environment like its own, in a
scratch folder, and compare the two bundles file by file.

The scratch folder holds everything the rebuild writes: `source/` (the bundle's code, unpacked once checked; Make
runs there) and `art/` (the rebuild's ART). The environment is the one verify runs in when the release's
requirements.txt and installed packages are the same as here, otherwise a venv made for the release's
requirements.txt and kept, by its sha256, under the venv cache for later verifies. What still differs (Python,
packages, machine) is printed as notes beside the comparison. A bundle made before bundles carried their source is
rebuilt with this checkout's code, as before.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core import layout
from ..core.errors import PipelineError
from ..core.fileio import remove_tree, sha256_bytes
from ..core.names import check_path, is_sha256
from ..core.provenance import REPO, installed_packages
from .release import (MANIFEST, compare, copy_list, format_table, load_manifest, make_environment, rebuild_variables,
                      tampered)
from .source import code_digest, read_source, source_entry, unpack

VENV_STAMP = ".installed"  # the Makefile's STAMP: a venv whose requirements are installed
# Where venvs made for releases whose environment differs from this one are kept, unless --venv-cache says
VENV_CACHE = REPO / layout.venv_cache(layout.ART)
ENVIRONMENT_KEYS = (("python", "Python"), ("implementation", "implementation"), ("system", "system"),
                    ("machine", "machine"), ("processor", "processor"), ("cpu", "CPU"))


@dataclass(frozen=True)
class VenvChoice:
    path: Path
    reuse: bool  # the environment verify itself runs in
    create: bool  # still to be made (False: it is there, complete)
    why: str  # one line for the user


def requirements_key(requirements: bytes) -> str:
    return sha256_bytes(requirements)


def _packages(listed) -> dict[str, str] | None:
    if not isinstance(listed, list) or not all(isinstance(p, str) and "==" in p for p in listed):
        return None
    return dict(p.split("==", 1) for p in listed)


def package_changes(recorded, used) -> list[str]:
    """`name RECORDED -> USED` of every package whose version differs (`absent` where one side lacks it)."""
    before, after = _packages(recorded) or {}, _packages(used) or {}
    return [f"{name} {before.get(name, 'absent')} -> {after.get(name, 'absent')}"
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def choose_venv(release_requirements: bytes, current_requirements: bytes | None, recorded, installed: list[str],
                current_venv: Path | None, cache: Path, cached: frozenset[str]) -> VenvChoice:
    """Which environment rebuilds a release whose requirements.txt is RELEASE_REQUIREMENTS and whose manifest
    lists the packages RECORDED: CURRENT_VENV (the one verify runs in, with INSTALLED; None if it is not a venv
    `make venv` completed) when both match this checkout's, otherwise CACHE/<sha256 of the requirements>, already
    made if its key is in CACHED."""
    changes = package_changes(recorded, installed) if _packages(recorded) is not None else None
    if current_venv is None:
        reason = "verify does not run in a venv made by `make venv`"
    elif release_requirements != current_requirements:
        reason = "the release's requirements.txt differs from this checkout's"
    elif changes is None:
        reason = "the release's manifest does not list its installed packages"
    elif changes:
        reason = f"{len(changes)} installed package(s) differ from the release's ({', '.join(changes[:3])}" \
                 f"{', ...' if len(changes) > 3 else ''})"
    else:
        return VenvChoice(current_venv, True, False, f"environment: {current_venv}, as the release's (same "
                                                     f"requirements.txt, same installed packages)")
    key = requirements_key(release_requirements)
    path = cache / key
    if key in cached:
        return VenvChoice(path, False, False, f"environment: the release's venv {path}, made by an earlier verify "
                                              f"({reason})")
    return VenvChoice(path, False, True, f"environment: {reason}; creating a venv for the release in {path} (pip "
                                         f"installs its requirements.txt: minutes)")


def environment_notes(recorded, used) -> list[str]:
    """One line per way the environment that rebuilt differs from the one that released (RECORDED, USED: the
    manifests' `environment`); nothing where the release did not record one."""
    if not isinstance(recorded, dict) or not isinstance(used, dict):
        return []
    notes = [f"note: {label} {recorded.get(key)!r} built the release, {used.get(key)!r} rebuilt it"
             for key, label in ENVIRONMENT_KEYS if recorded.get(key) != used.get(key)]
    changes = package_changes(recorded.get("packages"), used.get("packages"))
    if changes:
        notes.append(f"note: {len(changes)} package(s) differ between the release and the rebuild: {', '.join(changes)}")
    return notes


def missing_requirement(pip_output: str) -> str | None:
    """The requirement pip could not find in PIP_OUTPUT, if that is why it failed."""
    found = re.search(r"No matching distribution found for (\S+)", pip_output) or \
        re.search(r"Could not find a version that satisfies the requirement (\S+)", pip_output)
    return found.group(1) if found else None


def cached_venvs(cache: Path) -> frozenset[str]:
    """Keys of the complete venvs in CACHE (one without its stamp is an interrupted build, never listed)."""
    if not cache.is_dir():
        return frozenset()
    return frozenset(p.name for p in cache.iterdir() if is_sha256(p.name)
                     and (p / VENV_STAMP).is_file())


def current_venv() -> Path | None:
    prefix = Path(sys.prefix)
    return prefix if sys.prefix != sys.base_prefix and (prefix / VENV_STAMP).is_file() else None


def create_venv(dest: Path, requirements: Path, python: str, pip_args: list[str], say: Callable[[str], None]) -> None:
    """A venv at DEST with REQUIREMENTS installed, as `make venv` makes one (PYTHON, PIP_ARGS). Built in place (a
    venv's scripts name its path, so it cannot be moved once made): the stamp, written last, marks it complete,
    and a failed build is removed."""
    if dest.exists():  # a build interrupted before its stamp (cached_venvs never lists it): start again
        remove_tree(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            made = subprocess.run([python, "-m", "venv", str(dest)], capture_output=True, text=True)
        except OSError as exc:
            raise PipelineError(f"{python}: cannot create a venv with it ({exc.strerror}); set PYTHON") from None
        if made.returncode != 0:
            raise PipelineError(f"{python} -m venv failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
        pip = subprocess.Popen([str(dest / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                                *pip_args, "-r", str(requirements)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in pip.stdout:  # shown as it comes (a torch install takes minutes) and kept to name what failed
            say(line.rstrip("\n"))
            lines.append(line)
        if pip.wait() != 0:
            missing = missing_requirement("".join(lines))
            if missing:
                raise PipelineError(f"{missing}: pip finds no such version (PIP_ARGS can point it at another "
                                    f"index); the release's requirements.txt cannot be installed, nothing kept")
            raise PipelineError(f"pip install of the release's requirements.txt failed (exit {pip.returncode}); its "
                                f"output is above, nothing kept")
        (dest / VENV_STAMP).touch()
    except OSError as exc:
        raise PipelineError(f"{dest}: cannot make the release's venv there ({exc.strerror}); nothing kept") from None
    finally:
        if dest.exists() and not (dest / VENV_STAMP).is_file():
            remove_tree(dest)


def _source_setup(manifest: dict, files: list[tuple[str, bytes]], scratch: Path, venv_cache: Path,
                  say) -> tuple[Path, list[str]]:
    """Unpack the bundle's source FILES (checked by read_source) into SCRATCH/source and choose (or make) its Python
    environment; returns the folder Make runs in and the variables it adds."""
    venv_cache = venv_cache.resolve()  # VENV reaches a Make that runs in the unpacked source, not in this folder
    workdir = scratch / "source"
    unpack(files, workdir)
    requirements = dict(files)["requirements.txt"]
    current = REPO / "requirements.txt"
    recorded = manifest.get("environment")
    choice = choose_venv(requirements, current.read_bytes() if current.is_file() else None,
                         recorded.get("packages") if isinstance(recorded, dict) else None, installed_packages(),
                         current_venv(), venv_cache, cached_venvs(venv_cache))
    say(choice.why)
    if choice.create:
        try:
            pip_args = shlex.split(os.environ.get("PIP_ARGS", ""))
        except ValueError as exc:
            raise PipelineError(f"PIP_ARGS: {exc}; quote it as for the shell") from None
        create_venv(choice.path, workdir / "requirements.txt", os.environ.get("PYTHON") or "python3", pip_args, say)
    # The report flags DATA as the demo set by its path (DEMO_DATA, under artifacts/demo of the folder Make runs in):
    # the rebuild runs in the scratch folder but must judge DATA as a rebuild in this checkout would. DEMO_DATA, not
    # DEMO: with DEMO here, the demo checkpoint CKPT names would become a target of the rebuild, retrained (minutes)
    # in this checkout's artifacts/ whenever the bundle's config is newer than it.
    demo_data = REPO / layout.demo_data(layout.DEMO)
    return workdir, [f"VENV={check_path(str(choice.path), 'the venv folder')}",
                     f"DEMO_DATA={check_path(str(demo_data), 'the demo data folder')}"]


def _old_style(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """A bundle made before bundles carried their source: the rebuild's source/ is new, not a difference."""
    return [(rel, "expected", "the rebuild carries its source; this bundle was made before bundles did")
            if status == "EXTRA" and rel.startswith("source/") else (rel, status, note) for rel, status, note in rows]


def verify(bundle: Path, scratch: Path | None, scratch_root: Path | None, ckpt: Path | None, data: Path | None,
           venv_cache: Path | None, say: Callable[[str], None]) -> str:
    """Rebuild BUNDLE and compare; returns the closing line, or raises PipelineError naming what differs. None
    for SCRATCH: a new folder under SCRATCH_ROOT (None: the system's); CKPT, DATA: where the manifest says; VENV_CACHE:
    VENV_CACHE."""
    venv_cache = VENV_CACHE if venv_cache is None else venv_cache
    manifest = load_manifest(bundle)
    changed = tampered(bundle, manifest)
    where = str(bundle / MANIFEST)
    entry = source_entry(manifest, where)
    has_source = entry is not None
    if has_source:  # checked whole before anything is made or unpacked
        files = read_source(bundle / entry[0], entry[1], manifest["inputs"]["code"], where)
        say(f"rebuilding with the release's own code ({entry[0]})" +
            (", not this checkout's, which differs" if code_digest() != manifest["inputs"]["code"] else ""))
    else:
        say(f"note: {bundle.name} carries no source (made before bundles did): only the code that built it "
            f"can rebuild it, so this checkout's is used (to verify it, check out its repository.commit and run make "
            f"verify there)")
        if manifest["inputs"]["code"] != code_digest():
            say("note: the pipeline code differs from the release's (inputs.code); differences may come from that")
    if scratch is None and scratch_root is not None and not scratch_root.is_dir():
        raise PipelineError(f"{scratch_root}: no such folder for verify's scratch rebuild (create it, or pass --scratch)")
    if scratch is not None and not scratch.parent.is_dir():
        raise PipelineError(f"{scratch.parent}: no such folder for verify's scratch rebuild")
    # A folder we make is ours to remove once the rebuild matches; one the caller names is the caller's.
    ours = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="verify-", dir=scratch_root)) if ours else scratch
    art = scratch / "art"
    try:
        # Make runs in the unpacked source, so a relative --ckpt/--data must not stay relative to this folder
        variables = rebuild_variables(manifest, bundle.resolve(), art.resolve(), ckpt and ckpt.resolve(),
                                      data and data.resolve())
        workdir, extra = (_source_setup(manifest, files, scratch, venv_cache, say) if has_source else (REPO, []))
        copy_list(manifest, bundle, art)
    except BaseException:
        if ours:  # refused before anything ran: leave nothing behind
            remove_tree(scratch)
        raise
    say(f"rebuilding {bundle.name} in {scratch} ...")
    env = make_environment(dict(os.environ), workdir / "Makefile")
    if has_source:  # the unpacked code is no commit of the repository around the scratch folder: git must not say so
        env["GIT_CEILING_DIRECTORIES"] = str(scratch.resolve())
    done = subprocess.run(["make", "--no-print-directory", *variables, *extra, "release"], cwd=workdir, env=env)
    kept = f"; the rebuild is kept in {scratch}"
    if done.returncode != 0:
        raise PipelineError(f"the rebuild failed (make exit {done.returncode}); its output is above{kept}")
    # Looked for by name, not through the root's .latest: the code of an older bundle writes none.
    rebuilt = layout.release_root(art) / bundle.name
    if not rebuilt.is_dir():
        found = sorted(p.name for p in layout.release_root(art).iterdir() if p.is_dir())
        raise PipelineError(f"the rebuild produced {found}, not {bundle.name}: its inputs digest differs{kept}")
    rows = compare(bundle, rebuilt)
    if not has_source:
        rows = _old_style(rows)
    rows = [(rel, status, f"{note}; changed since release (MANIFEST.json)".lstrip("; ") if rel in changed else note)
            for rel, status, note in rows]
    try:
        used = load_manifest(rebuilt).get("environment")
    except PipelineError:
        used = None
    for note in environment_notes(manifest.get("environment"), used):
        say(note)
    equal = sum(status == "equal" for _, status, _ in rows)
    shown = [row for row in rows if row[1] != "equal"]
    if shown:
        say(format_table(shown))
    bad = [rel for rel, status, _ in rows if status not in ("equal", "expected")]
    if bad:
        raise PipelineError(f"{len(bad)} file(s) of {bundle.name} differ from the rebuild: {', '.join(bad)}{kept}")
    if ours:
        remove_tree(scratch)
    return (f"verified: {equal} files identical, {len(rows) - equal} expected differences (listed above)"
            + ("; scratch rebuild removed" if ours else ""))
