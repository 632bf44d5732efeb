"""dvc.yaml is the map of the project: each stage's deps cover every project module its command imports.

WHY: a module missing from a stage's deps means editing it leaves `dvc repro` "up to date" with stale results.
Imports are found statically (every `import`/`from … import` anywhere in a module, function-local ones included),
transitively from the stage's `python -m <module>` command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.codehash import closure, imported_modules

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pipeline"


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
    src.write_text("def f():\n    from pipeline.score.stats import summarize\n    import pipeline.score.summary\n")
    found = imported_modules(src, "m")
    assert {"pipeline.score.stats", "pipeline.score.stats.summarize", "pipeline.score.summary"} <= found
