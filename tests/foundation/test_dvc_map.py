"""dvc.yaml is the map of the project: each stage's deps cover every project module its command imports.

WHY: a module missing from a stage's deps means editing it leaves `dvc repro` "up to date" with stale results.
Imports are found statically (every `import`/`from … import` anywhere in a module, function-local ones included),
transitively from the stage's `python -m <module>` command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (package → its __init__.py), or None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = REPO / Path(*name.split("."))
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


def closure(entry: str) -> set[Path]:
    """Every project file reachable by imports from `entry` (parent packages' __init__ included: they run too)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imported_modules(path, name))
    return files


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_every_module_its_command_imports(stage):
    spec = STAGES[stage]
    cmd = spec["cmd"].split()
    assert cmd[:2] == ["python", "-m"], f"{stage}: expected `python -m <module>`, got {spec['cmd']!r}"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    missing = sorted(p.relative_to(REPO).as_posix() for p in closure(cmd[2])
                     if p.name != "__init__.py" or p.parent.name != PACKAGE)  # pipeline/__init__.py: empty
    missing = [m for m in missing if not covered(REPO / m, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} imports modules its deps do not list: {missing}"


def test_the_import_walker_sees_function_local_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline.stats import summarize\n    import pipeline.summary\n")
    assert {"pipeline.stats", "pipeline.stats.summarize", "pipeline.summary"} <= imported_modules(src, "m")
