"""`python -m pipeline promote`: the copy of a tuned.yaml that `make tune` hands back as TUNED_CONFIG.

The copy writes one file, so where it may go is checked before tuning starts (`--check`) and again when copying:
a `*.yaml` directly in build_configs/ (or, for a config tuned on the demo's generated data, inside artifacts/demo/
but outside its release bundles, never the tracked build_configs/), not the input config, and either new or an earlier tuned config whose body
still matches its header (a hand-edited one only with --overwrite,
OVERWRITE=1). Any other existing file, tracked or not, is not
tune's to replace. The copy is made only when the tuned config's verdict (its header) is confirmed or input kept;
--force (FORCE=1) copies any other verdict too, and the copy's header then says so.
"""
from __future__ import annotations

from pathlib import Path

from ..core import layout
from ..core.errors import PipelineError
from ..core.fileio import release_bundle_holding, write_text
from ..core.provenance import REPO
from . import tuned_yaml

CONFIGS = REPO / "build_configs"
DEMO = REPO / layout.DEMO


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read {what} ({type(exc).__name__})") from None


def check_target(target: Path, config: Path, demo: bool, overwrite: bool) -> None:
    """Refuse TARGET as the place of a config tuned from CONFIG unless it is tune's to write (module docstring)."""
    name = f"TUNED_CONFIG={target}"
    folder = DEMO if demo else CONFIGS
    where = "artifacts/demo/ (the demo's outputs: `make demo-tune`)" if demo else "build_configs/"
    resolved = target.resolve()
    if target.suffix != ".yaml" or target.name == ".yaml":
        raise PipelineError(f"{name}: not a *.yaml file; name a config file in {where}")
    inside = resolved.is_relative_to(folder.resolve()) if demo else resolved.parent == folder.resolve()
    if not inside:
        hint = " (a config tuned on the generated demo data stays out of build_configs/)" if demo else ""
        raise PipelineError(f"{name}: outside {where}{hint}; name a config file there")
    bundle = release_bundle_holding(resolved.parent)
    if bundle is not None:
        raise PipelineError(f"{name}: inside the release bundle {bundle}, which is never rewritten; name a config "
                            f"file in {where}")
    if config.exists() and resolved == config.resolve():
        raise PipelineError(f"{name}: is the input config, which tuning must not overwrite; name another file, "
                            f"e.g. {target.with_name(target.stem + '_tuned.yaml')}")
    if not (resolved.exists() or target.is_symlink()):
        return
    if not resolved.is_file():
        raise PipelineError(f"{name}: exists and is not a file; name another file in {where}")
    header, body = tuned_yaml.split(_read(resolved, "the config"))
    if header is None:
        raise PipelineError(f"{name}: exists and is not a tuned config (no `{tuned_yaml.MARK}` header), so it is not "
                            f"tune's to replace; name another file")
    if tuned_yaml.edited(header, body) and not overwrite:
        why = "its header records no sha256 of its body" if header.body_sha256 is None else \
            "its body no longer matches the sha256 in its header"
        raise PipelineError(f"{name}: a tuned config edited by hand since ({why}); OVERWRITE=1 (--overwrite) "
                            f"replaces it, or name another file")


def promote(tuned: Path, target: Path, config: Path, demo: bool, force: bool, overwrite: bool) -> str | None:
    """Copies TUNED (tune's tuned.yaml) to TARGET, by atomic rename, once check_target allows it and its verdict is
    one of tuned_yaml.PROMOTABLE (or FORCE: then the copy's header says so). Returns the verdict overridden, if any."""
    check_target(target, config, demo, overwrite)
    text = _read(tuned, "the tuned config")
    header, body = tuned_yaml.split(text)
    if header is None or tuned_yaml.edited(header, body):
        raise PipelineError(f"{tuned}: not tune's output as written (no header, or a body edited since); rerun "
                            f"`make tune`")
    verdict = tuned_yaml.verdict(header)
    if verdict is None:
        raise PipelineError(f"{tuned}: its header records no verdict (one `# {tuned_yaml.VERDICT_PREFIX}` line, one "
                            f"of {', '.join(tuned_yaml.VERDICTS)}); rerun `make tune`")
    if verdict in tuned_yaml.PROMOTABLE:
        write_text(target, text)
        return None
    if not force:
        raise PipelineError(f"{tuned}: verdict {verdict}, so TUNED_CONFIG={target} was not written; the report is "
                            f"{tuned.parent / 'tune.md'} (FORCE=1 promotes anyway)")
    write_text(target, tuned_yaml.forced(text, verdict))
    return verdict
