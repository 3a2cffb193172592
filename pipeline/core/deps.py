"""The code each stage runs, derived from the imports, for the Makefile's prerequisites.

`python3 pipeline/core/deps.py STAGE...` prints one `STAGE=FILE,FILE,...` word per STAGE: the pipeline's files that
`python -m pipeline STAGE` imports. A stage's entry points are `pipeline/__main__.py`, `pipeline/cli.py` and the
modules imported by cli.py at module level and by its handler `cmd_STAGE` and the cli.py functions that handler
calls (cli.py imports each stage lazily, so the other handlers' imports never run). From there every `import` /
`from ... import` of a pipeline module anywhere in a file is followed (lazy imports inside functions included:
no closer reading is attempted there), and importing a module counts its parent packages' `__init__.py` too. `build:BACKEND` adds `pipeline/backends/BACKEND/build.py`,
which `pipeline.backends` imports by name at run time, where no static reading can see it.

Standard library only, and run as a plain script, so Make can call it before `.venv` exists.
"""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

PACKAGE = "pipeline"
ROOT = Path(__file__).resolve().parents[2]


def module_file(module: str) -> Path | None:
    """pipeline/a/b.py or pipeline/a/b/__init__.py for `pipeline.a.b`, or None if it is not a module of ours."""
    return _module_file(ROOT, module)


@functools.cache
def _module_file(root: Path, module: str) -> Path | None:
    # looked up once per name: every file's imports name their parent packages again (a third of the run)
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def statements(body: list[ast.stmt]):
    """Every statement in BODY and in the blocks nested in it. An import is a statement, so its expressions (most
    of a tree's nodes) need no visit: ast.walk over all of them took most of this script's time."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):  # every field of a block of statements
            yield from statements(getattr(node, block, ()))


def imported(tree: ast.Module | ast.FunctionDef, module: str, is_package: bool) -> set[str]:
    """Names of the pipeline modules an AST imports (relative imports resolved against MODULE)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` may be a module
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def file_imports(path: Path) -> frozenset[str]:
    """The pipeline modules the file at PATH imports, read once however many stages reach it: every `make` waits
    for this script. The names are kept, not the trees: sixty syntax trees kept alive made each garbage
    collection walk them, which doubled the script's time."""
    return frozenset(imported(parsed(path), module_name(path), path.name == "__init__.py"))


def closure(modules: set[str], read: set[Path]) -> set[Path]:
    """Every file of MODULES and of what they import, their parent packages included; files in READ count but
    their imports are not followed (the caller has already)."""
    todo, files = list(modules), set(read)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            path = module_file(".".join(parts[:i]))
            if path is None or path in files:
                continue
            files.add(path)
            todo.extend(file_imports(path))
    return files


CLI = ROOT / PACKAGE / "cli.py"


def cli_imports(stage: str) -> set[str]:
    """The pipeline modules `python -m pipeline STAGE` imports through cli.py: at module level, in `cmd_STAGE`
    and in every cli.py function it calls, however indirectly."""
    tree = parsed(CLI)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))],
                     type_ignores=[])
    found = imported(top, f"{PACKAGE}.cli", False)
    handler = "cmd_" + stage.replace("-", "_")
    if handler not in functions:
        raise SystemExit(f"pipeline/core/deps.py: no handler {handler} in pipeline/cli.py for stage {stage!r}")
    todo, seen = [handler], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found |= imported(functions[name], f"{PACKAGE}.cli", False)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    return found


def stage_files(stage: str) -> list[str]:
    name, _, backend = stage.partition(":")
    modules = {f"{PACKAGE}.__main__", *cli_imports(name)}
    if backend:
        modules.add(f"{PACKAGE}.backends.{backend}.build")
    main_files = closure({f"{PACKAGE}.__main__"}, {CLI})  # __main__ imports cli, read above
    return sorted(p.relative_to(ROOT).as_posix() for p in closure(modules, main_files))


def main(stages: list[str]) -> None:
    print(" ".join(f"{stage}={','.join(stage_files(stage))}" for stage in stages))


if __name__ == "__main__":
    main(sys.argv[1:])
