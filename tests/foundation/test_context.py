"""The run context replaces hidden environment flags; the environment variables that remain are all listed."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.context import ENV_VARS, RunContext

REPO = Path(__file__).resolve().parents[2]


def test_every_odeval_env_var_in_the_code_is_listed():
    used = {m for f in (REPO / "pipeline").rglob("*.py") for m in re.findall(r"ODEVAL_[A-Z0-9_]+",
                                                                             f.read_text(encoding="utf-8"))}
    missing = sorted(used - set(ENV_VARS))
    assert not missing, f"environment variables read but not listed in pipeline/context.py ENV_VARS: {missing}"


def test_every_listed_env_var_is_in_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [v for v in ENV_VARS if f"`{v}" not in readme] == []


def test_context_from_env(monkeypatch):
    monkeypatch.delenv("ODEVAL_QUIET", raising=False)
    monkeypatch.setenv("CI", "true")
    assert RunContext.from_env().quiet is True
    monkeypatch.setenv("CI", "false")
    assert RunContext.from_env(sweep_id="s").sweep_id == "s" and RunContext.from_env().quiet is False
