"""The floor plan holds: small modules, thin stage scripts, no import circles (docs/architecture.md).

Imports are read statically, as codehash reads them (function-local and TYPE_CHECKING imports included: a type
hint that needs a higher room is an arrow up all the same)."""

from __future__ import annotations

from pathlib import Path

from pipeline.codehash import PACKAGE_ROOT, imported_modules, module_file

PACKAGE = PACKAGE_ROOT / "pipeline"
MAX_MODULE_LINES = 500
MAX_STAGE_LINES = 120


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(f.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = f
    return out


def test_no_module_over_500_lines_and_thin_stage_scripts():
    big = {n: len(f.read_text().splitlines()) for n, f in _modules().items()}
    assert {n: k for n, k in big.items() if k > MAX_MODULE_LINES} == {}
    stages = {n: k for n, k in big.items() if n.startswith("pipeline.stages.") and n != "pipeline.stages"}
    assert {n: k for n, k in stages.items() if k > MAX_STAGE_LINES} == {}


def test_no_import_circles():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for imp in imported_modules(f, name):
            target = module_file(imp)
            if target is not None:
                dep = ".".join(target.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
                if dep != name and not name.startswith(dep + "."):  # a package's own __init__ runs first anyway
                    deps.add(dep)
        graph[name] = deps
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [n, d])
            elif d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []
