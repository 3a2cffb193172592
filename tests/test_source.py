"""The source tar a bundle carries: deterministic bytes, exactly the code digest's files; read back as data, any
member that is not one of those files, or a changed byte, is refused in one line with nothing unpacked."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.stages.source import SOURCE_MTIME, code_digest, read_source, source_entry, unpack, write_source_tar

CODE = {"Makefile": b"all:\n", "requirements.txt": b"numpy==1.26.4\n", "pipeline/__init__.py": b"",
        "pipeline/backends/ort.py": b"X = 1\n", "pipeline/backends.py": b"Y = 2\n"}


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    for rel, data in CODE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # not code: never in the tar
    (root / "pipeline" / "__pycache__").mkdir()
    (root / "pipeline" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "pipeline" / "notes.md").write_text("notes\n")
    (root / "calib").mkdir()
    (root / "calib" / "README.md").write_text("lists\n")
    # an editor's or Jupyter's hidden copies: not code, and a name read_source refuses
    (root / "pipeline" / ".ipynb_checkpoints").mkdir()
    (root / "pipeline" / ".ipynb_checkpoints" / "cli-checkpoint.py").write_bytes(b"x = 2\n")
    (root / "pipeline" / ".scratch.py").write_bytes(b"x = 3\n")
    return root


def test_the_tar_is_the_same_bytes_whatever_the_files_mtime_and_mode(repo, tmp_path):
    digest = write_source_tar(repo, tmp_path / "one.tar")
    assert digest == code_digest(repo)
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    for path in other.rglob("*"):
        os.utime(path, (1234567890, 1234567890))
        if path.is_file():
            os.chmod(path, 0o600)
    assert write_source_tar(other, tmp_path / "two.tar") == digest
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as tar:
        # the code digest's order (path parts: backends/ before backends.py), no __pycache__, no notes, no calib/,
        # no hidden files
        assert tar.getnames() == ["Makefile", "pipeline/__init__.py", "pipeline/backends/ort.py",
                                  "pipeline/backends.py", "requirements.txt"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar} == {(SOURCE_MTIME, 0, 0, "", "", 0o644)}
        assert tar.extractfile("pipeline/backends/ort.py").read() == b"X = 1\n"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes = b"x = 1\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _legit() -> list:
    return [_file(rel, data) for rel, data in sorted(CODE.items(), key=lambda item: Path(item[0]))]


@pytest.mark.parametrize("extra, words", [
    (_special("pipeline/link.py", tarfile.SYMTYPE, "/etc/passwd"), "'pipeline/link.py' is a link"),
    (_special("pipeline/hard.py", tarfile.LNKTYPE, "Makefile"), "'pipeline/hard.py' is a link"),
    (_special("pipeline/dev.py", tarfile.CHRTYPE), "'pipeline/dev.py' is not a regular file or folder"),
    (_special("pipeline/fifo.py", tarfile.FIFOTYPE), "'pipeline/fifo.py' is not a regular file or folder"),
    (_file("/etc/cron.d/x.py"), "'/etc/cron.d/x.py' is an absolute name"),
    (_file("pipeline/../../x.py"), "'pipeline/../../x.py' holds `..`"),
    (_file("../Makefile"), "'../Makefile' holds `..`"),
    (_file("setup.sh"), "'setup.sh' is not one of the pipeline's code files"),
    (_file("pipeline/data.json"), "'pipeline/data.json' is not one of the pipeline's code files"),
    (_file("pipeline/.hidden.py"), "'pipeline/.hidden.py' is not a plain relative name"),
    (_file("Makefile", b"evil:\n"), "'Makefile' appears twice"),
])
def test_a_member_outside_the_code_is_refused_and_nothing_unpacked(tmp_path, extra, words):
    data = _tar(_legit() + [extra])
    path = tmp_path / "pipeline-0123456789ab.tar"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()  # the manifest agrees with the tar: the members themselves are refused
    with pytest.raises(PipelineError) as err:
        read_source(path, sha, "0" * 64, "B/MANIFEST.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: refused: {words}"), message
    assert message.endswith("; nothing unpacked")


def _digest(files: list) -> str:
    return hashlib.sha256("\n".join(f"{info.name} {hashlib.sha256(data).hexdigest()}"
                                    for info, data in files).encode()).hexdigest()


def test_the_checked_source_unpacks_with_the_fixed_mtime(tmp_path):
    files = _legit()
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(files))
    got = read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), _digest(files), "M")
    assert got == [(info.name, data) for info, data in files]
    unpack(got, tmp_path / "out")
    assert (tmp_path / "out" / "pipeline/backends/ort.py").read_bytes() == b"X = 1\n"
    # older than any venv stamp: Make never reinstalls a venv for the unpacked requirements.txt
    assert (tmp_path / "out" / "requirements.txt").stat().st_mtime == SOURCE_MTIME


def test_what_a_release_writes_its_verify_reads(repo, tmp_path):
    code = write_source_tar(repo, tmp_path / "s.tar")
    files = read_source(tmp_path / "s.tar", hashlib.sha256((tmp_path / "s.tar").read_bytes()).hexdigest(), code, "M")
    assert [name for name, _ in files] == ["Makefile", "pipeline/__init__.py", "pipeline/backends/ort.py",
                                           "pipeline/backends.py", "requirements.txt"]


def test_a_file_that_another_member_needs_as_its_folder_is_refused(tmp_path):
    files = _legit() + [_file("pipeline/backends/ort.py/inner.py")]
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(files))
    with pytest.raises(PipelineError) as err:
        read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), _digest(files), "M")
    assert str(err.value) == (f"{path}: refused: 'pipeline/backends/ort.py' is a file and a folder of another "
                              f"member; nothing unpacked")
    assert not (tmp_path / "pipeline").exists()


def test_a_folder_member_is_allowed(tmp_path):
    info = tarfile.TarInfo("pipeline/backends")
    info.type = tarfile.DIRTYPE
    files = _legit()
    path = tmp_path / "s.tar"
    path.write_bytes(_tar([(info, None), *files]))
    assert read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), _digest(files), "M") == \
        [(i.name, d) for i, d in files]


def test_a_changed_byte_is_refused(tmp_path):
    files = _legit()
    good = _tar(files)
    bad = bytearray(good)
    bad[bad.index(b"X = 1")] ^= 0x01
    path = tmp_path / "pipeline-0123456789ab.tar"
    path.write_bytes(bytes(bad))
    with pytest.raises(PipelineError) as err:
        read_source(path, hashlib.sha256(good).hexdigest(), _digest(files), "B/MANIFEST.json")
    actual = hashlib.sha256(bytes(bad)).hexdigest()
    assert str(err.value) == (f"{path}: sha256 {actual[:12]}... is not {hashlib.sha256(good).hexdigest()[:12]}... "
                              f"recorded in B/MANIFEST.json: the source changed since release; nothing unpacked")


def test_an_extra_module_is_refused_by_the_code_digest(tmp_path):
    """A .py name is of the expected set; that it is not the code that built the release shows in the digest."""
    files = _legit()
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(files + [_file("pipeline/zz_extra.py")]))
    with pytest.raises(PipelineError) as err:
        read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), _digest(files), "B/MANIFEST.json")
    assert str(err.value).startswith(f"{path}: its files give code digest ")
    assert str(err.value).endswith(f"not inputs.code {_digest(files)[:12]}... of B/MANIFEST.json: not the code that "
                                   f"built this release; nothing unpacked")


def test_a_source_without_its_makefile_is_refused(tmp_path):
    files = [f for f in _legit() if f[0].name != "Makefile"]
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(files))
    with pytest.raises(PipelineError) as err:
        read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), _digest(files), "M")
    assert str(err.value) == f"{path}: refused: no Makefile; nothing unpacked"


def test_not_a_tar(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(b"\x1f\x8b compressed or garbage" * 40)
    with pytest.raises(PipelineError, match=r"s.tar: not a readable tar \(\w+\); nothing unpacked$"):
        read_source(path, hashlib.sha256(path.read_bytes()).hexdigest(), "0" * 64, "M")


@pytest.mark.parametrize("entry, words", [
    ({"file": "../../etc/passwd", "sha256": "a" * 64}, "source.file: '../../etc/passwd' is not source/pipeline-"),
    ({"file": "source/pipeline-0123456789ab.tar", "sha256": "xyz"}, "source.sha256: 'xyz' is not a sha256"),
    ("source.tar", "source.file: None is not"),
])
def test_the_manifest_source_entry_is_data(entry, words):
    with pytest.raises(PipelineError, match="^M: " + words.replace(".", r"\.").replace("(", r"\(")):
        source_entry({"source": entry}, "M")
    assert source_entry({}, "M") is None


@pytest.mark.parametrize("digest, ok", [("0123456789abcdef" * 4, True), ("0123456789ABCDEF" * 4, False),
                                        ("a" * 63, False), ("a" * 65, False), ("a" * 64 + "\n", False),
                                        ("g" * 64, False), (" " + "a" * 63, False)])
def test_a_sha256_has_one_shape_in_manifests_image_lists_caches_and_tuned_headers(tmp_path, digest, ok):
    from pipeline.core.names import is_sha256
    from pipeline.data.dataset import read_image_list
    from pipeline.stages.verify import VENV_STAMP, cached_venvs
    from pipeline.tuning import tuned_yaml
    assert is_sha256(digest) is ok
    entry = {"file": "source/pipeline-0123456789ab.tar", "sha256": digest}
    if ok:
        assert source_entry({"source": entry}, "M") == (entry["file"], digest)
    else:
        with pytest.raises(PipelineError, match=r"^M: source\.sha256: .* is not a sha256"):
            source_entry({"source": entry}, "M")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{digest}  a.png\n")
    if ok:
        assert read_image_list(listed, "the list")[1] == [("a.png", digest)]
    else:
        with pytest.raises(PipelineError, match="expected `<sha256>  <file name>`"):
            read_image_list(listed, "the list")
    if "\n" not in digest and " " not in digest:
        (tmp_path / "venvs" / digest).mkdir(parents=True)
        (tmp_path / "venvs" / digest / VENV_STAMP).write_text("")
        assert cached_venvs(tmp_path / "venvs") == (frozenset({digest}) if ok else frozenset())
        header, _ = tuned_yaml.split(f"# {tuned_yaml.MARK}\n# Body sha256: {digest}\nname: x\n")
        assert header.body_sha256 == (digest if ok else None)
