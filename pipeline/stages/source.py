"""The pipeline's own code as a release ships it: `source/pipeline-<code digest>.tar`, so a bundle can be rebuilt
with the code that built it, whatever the checkout holds later.

The tar holds exactly the files the code digest covers, written deterministically (digest order, fixed mtime,
owner and mode, no compression, USTAR), so the same code always gives the same bytes. Read back, it is data from a
bundle that may have been tampered with: its sha256 must match the manifest, every member must be a regular file
(or a folder) with a name of the expected set, and its contents must give the manifest's code digest, all before
anything is unpacked.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from ..core.errors import PipelineError
from ..core.fileio import atomic_path, sha256_bytes, sha256_file
from ..core.names import is_sha256, name_problem
from ..core.provenance import REPO

# The code whose change can change an artifact: every module of the package, the recipe and the pinned tools.
CODE_GLOBS = ("pipeline/**/*.py", "Makefile", "requirements.txt")
# 2000-01-01 UTC: fixed, so the same code gives the same tar; and old, so that Make never finds the unpacked
# requirements.txt newer than a venv's stamp (which would reinstall the venv).
SOURCE_MTIME = 946684800
TOP_FILES = ("Makefile", "requirements.txt")
SOURCE_FILE = re.compile(r"source/pipeline-[0-9a-f]{12}\.tar")


def code_files(repo: Path = REPO) -> list[tuple[str, Path]]:
    """(path relative to REPO, path) of the pipeline's code, in the code digest's order."""
    files = sorted({p for pattern in CODE_GLOBS for p in repo.glob(pattern) if p.is_file()})
    # Hidden folders (an editor's or Jupyter's checkpoints) and caches are not code: the same rule as a member's
    # name in read_source, so every tar a release writes is one its verify accepts.
    return [(p.relative_to(repo).as_posix(), p) for p in files
            if not any(name_problem(part) for part in p.relative_to(repo).parts) and "__pycache__" not in p.parts]


def digest_of(hashes: list[tuple[str, str]]) -> str:
    """sha256 over (relative path, content sha256) lines, in the order given."""
    return sha256_bytes("\n".join(f"{rel} {sha}" for rel, sha in hashes).encode())


def code_digest(repo: Path = REPO) -> str:
    """sha256 over (relative path, content sha256) of the pipeline's code, in path order."""
    return digest_of([(rel, sha256_file(p)) for rel, p in code_files(repo)])


def source_name(code: str) -> str:
    """Where a bundle keeps the source of code digest CODE."""
    return f"source/pipeline-{code[:12]}.tar"


def tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """A tar of FILES (name, content) in the order given, with nothing from the machine that wrote it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), SOURCE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_source_tar(repo: Path, dest: Path) -> str:
    """Write REPO's code to DEST as a tar; returns the code digest of what was written (read once, so the tar and
    the digest agree even if a file changes meanwhile)."""
    files = [(rel, p.read_bytes()) for rel, p in code_files(repo)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(tar_bytes(files))
    return digest_of([(rel, sha256_bytes(data)) for rel, data in files])


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why MEMBER may not be unpacked from a bundle's source, or None if it may."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "not a regular file or folder"
        return f"{name!r} is {kind}"
    if name.startswith("/"):
        return f"{name!r} is an absolute name"
    parts = name.rstrip("/").split("/") if member.isdir() else name.split("/")
    if ".." in parts:
        return f"{name!r} holds `..`"
    if any(name_problem(part) for part in parts) or "__pycache__" in parts:
        return f"{name!r} is not a plain relative name"
    expected = (name in TOP_FILES and member.isfile()) or (parts[0] == "pipeline" and (
        member.isdir() or (len(parts) > 1 and name.endswith(".py"))))
    return None if expected else f"{name!r} is not one of the pipeline's code files (pipeline/**.py, " \
                                 f"Makefile, requirements.txt)"


def source_entry(manifest: dict, where: str) -> tuple[str, str] | None:
    """(file, sha256) of the source a bundle's manifest records, each checked; None for a bundle made before
    bundles carried their source."""
    if "source" not in manifest:
        return None
    entry = manifest["source"]
    file, sha256 = (entry.get("file"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
    if not isinstance(file, str) or not SOURCE_FILE.fullmatch(file):
        raise PipelineError(f"{where}: source.file: {file!r} is not source/pipeline-<12 hex digits>.tar")
    if not is_sha256(sha256):
        raise PipelineError(f"{where}: source.sha256: {sha256!r} is not a sha256 (64 hex digits)")
    return file, sha256


def read_source(tar_path: Path, sha256: str, code: str, where: str) -> list[tuple[str, bytes]]:
    """The files (name, content) of a bundle's source tar, once it is shown to be the very code the manifest
    (WHERE) names: its sha256 SHA256, nothing but regular files of the expected names, code digest CODE."""
    if not tar_path.is_file():
        raise PipelineError(f"{tar_path}: missing, but {where} names it as the release's source; the bundle is damaged")
    actual = sha256_file(tar_path)
    if actual != sha256:
        raise PipelineError(f"{tar_path}: sha256 {actual[:12]}... is not {str(sha256)[:12]}... recorded in {where}: "
                            f"the source changed since release; nothing unpacked")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                problem = member_problem(member) or (f"{member.name!r} appears twice"
                                                     if member.name.rstrip("/") in files else None)
                if problem:
                    raise PipelineError(f"{tar_path}: refused: {problem}; nothing unpacked")
                if member.isfile():
                    files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PipelineError(f"{tar_path}: not a readable tar ({type(exc).__name__}); nothing unpacked") from None
    folders = {str(PurePosixPath(name).parent) for name in files}
    clash = sorted(name for name in files if any(f == name or f.startswith(name + "/") for f in folders))
    if clash:  # a file that another member needs as its folder: unpacking would fail half-way
        raise PipelineError(f"{tar_path}: refused: {clash[0]!r} is a file and a folder of another member; nothing "
                            f"unpacked")
    missing = [name for name in TOP_FILES if name not in files]
    if missing:
        raise PipelineError(f"{tar_path}: refused: no {' or '.join(missing)}; nothing unpacked")
    ordered = sorted(files.items(), key=lambda item: PurePosixPath(item[0]))  # the digest's order: code_files'
    found = digest_of([(name, sha256_bytes(data)) for name, data in ordered])
    if found != code:
        raise PipelineError(f"{tar_path}: its files give code digest {found[:12]}..., not inputs.code "
                            f"{str(code)[:12]}... of {where}: not the code that built this release; nothing unpacked")
    return ordered


def unpack(files: list[tuple[str, bytes]], dest: Path) -> None:
    """Write FILES (checked by read_source) under DEST, with the tar's fixed mtime."""
    for name, data in files:
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (SOURCE_MTIME, SOURCE_MTIME))
