"""The code that produces a result: a module's import closure inside this package, hashed file by file.

WHY one walker for every cache key: a key that names its code files by hand goes stale the day someone adds an
import (the converted-model key once missed the engine module it writes a config key for). Every key that must
change when code changes — the run identity, the reference app's manifest, the tiny-model and converted-model
caches — and the test that keeps ``dvc.yaml`` ``deps`` equal to the imports use this closure.

Imports are found statically: every ``import``/``from … import`` anywhere in a module (function-local ones
included: they run when that path runs), transitively, plus the parent packages' ``__init__.py`` (they run too).
Only files of this package count; third-party code enters a key through :func:`library_versions`.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the directory holding the package (the repo)


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The package file of a dotted module name (package → its __init__.py), or None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root / Path(*name.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def imported_modules(path: Path, name: str) -> set[str]:
    """Dotted names imported anywhere in the module (relative imports resolved; `from x import y` adds x.y too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


def closure(*entries: str, root: Path = PACKAGE_ROOT) -> set[Path]:
    """Every package file reachable by imports from the ``entries`` modules (parent ``__init__``s included)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imported_modules(path, name))
    return files


def code_files(*entries: str, root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """``{relative posix path: sha256}`` of the closure of ``entries`` — what a key records so that a change can
    later be named file by file."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(closure(*entries, root=root))}


def digest(files: dict[str, str], *extra: str) -> str:
    """One sha256 over ``files`` (sorted ``path\\0sha``) and ``extra`` strings (e.g. library versions)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    for item in extra:
        h.update(f"{item}\n".encode())
    return h.hexdigest()


def virtual_device_code() -> str:
    """The virtual device daemon's code (the closure of ``pipeline.virtual.__main__``): a daemon records it when it
    starts and is restarted when it differs; a run on the virtual device has it in its identity."""
    return digest(code_files("pipeline.virtual.__main__"))[:16]


def library_versions(*dists: str) -> dict[str, str]:
    """Installed versions of third-party distributions (from metadata: no import of torch just to read one);
    ``absent`` for one not installed (a key must still differ once it is)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "absent"
    return out


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Paths added, removed or edited between two :func:`code_files` maps, sorted."""
    return sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
