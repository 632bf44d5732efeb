"""The run context replaces hidden environment flags; the environment variables that remain are all listed."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.context import ENV_VARS, FORWARDED, RunContext

REPO = Path(__file__).resolve().parents[2]
# a read of a named variable: os.environ.get("X"), os.environ["X"], os.getenv("X"), "X" in os.environ
READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|_env_true\()\s*["']([A-Z][A-Z0-9_]*)["']"""
                  r"""|["']([A-Z][A-Z0-9_]*)["']\s+in\s+os\.environ""")


def _readers() -> dict[str, set[str]]:
    """Variable -> the modules that read it by name (a forwarded variable is read by pipeline.context alone)."""
    out: dict[str, set[str]] = {}
    for f in (REPO / "pipeline").rglob("*.py"):
        module = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for m in READ.finditer(f.read_text(encoding="utf-8")):
            out.setdefault(m.group(1) or m.group(2), set()).add(module)
    return out


def test_every_variable_read_is_registered_with_its_one_reader():
    """Every environment variable the code reads by name is in ENV_VARS (or FORWARDED to the virtual device), and
    only the module the register names reads it: one place decides what it means."""
    readers = _readers()
    unregistered = sorted(set(readers) - set(ENV_VARS) - set(FORWARDED))
    assert not unregistered, f"read but not in pipeline/context.py ENV_VARS: {unregistered}"
    wrong = {v: sorted(mods) for v, mods in readers.items() if v in ENV_VARS and mods - {ENV_VARS[v][0]}}
    assert not wrong, f"read outside the one reader the register names: {wrong}"


def test_every_odeval_env_var_in_the_code_is_listed():
    used = {m for f in (REPO / "pipeline").rglob("*.py") for m in re.findall(r"ODEVAL_[A-Z0-9_]+",
                                                                             f.read_text(encoding="utf-8"))}
    missing = sorted(used - set(ENV_VARS))
    assert not missing, f"environment variables read but not listed in pipeline/context.py ENV_VARS: {missing}"


def test_every_listed_env_var_is_documented():
    readme = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert [v for v in [*ENV_VARS, *FORWARDED] if f"`{v}" not in readme] == []


def test_context_from_env(monkeypatch):
    monkeypatch.delenv("ODEVAL_QUIET", raising=False)
    monkeypatch.setenv("CI", "true")
    assert RunContext.from_env().quiet is True
    monkeypatch.setenv("CI", "false")
    assert RunContext.from_env(sweep_id="s").sweep_id == "s" and RunContext.from_env().quiet is False
