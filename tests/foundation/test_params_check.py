"""params.yaml can never be left poisoned (issue 31), checked with the real DVC in a user's clone:

- `dvc exp run -S sequence.max_new_tokens=abc` is refused when DVC composes params.yaml (hydra_plugins/
  odeval_dvc_errors), with one line naming the key; nothing runs and params.yaml is unchanged;
- a params.yaml made invalid some other way names the one command that restores it;
- a group typo under `dvc exp run` arrives as Hydra's message on one line (not DVC's "unexpected error"), and
  params.yaml is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_plugins.odeval_dvc_errors import one_line
from tests.helpers.pipeline import repo_copy

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("clone")
    repo_copy(repo)
    env = {**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    return repo, env


def _dvc(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=240)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_a_bad_value_is_refused_when_dvc_composes_it(clone):
    repo, env = clone
    before = (repo / "params.yaml").read_text()
    proc = _dvc(repo, env, "exp", "run", "-S", "sequence.max_new_tokens=abc")
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 1 and "sequence.max_new_tokens" in errors[0] and "'abc'" in errors[0], proc.stderr
    assert "Running stage" not in proc.stdout + proc.stderr  # nothing ran
    assert (repo / "params.yaml").read_text() == before  # nothing poisoned: the next `dvc repro` works as before

    proc = _dvc(repo, env, "exp", "run", "-S", "sequence.max_new_tokens=100000")  # valid type, over the budget
    assert proc.returncode != 0 and "exceeds" in proc.stderr and "sequence.max_new_tokens" in proc.stderr
    assert (repo / "params.yaml").read_text() == before


def test_a_params_yaml_poisoned_otherwise_names_the_restore_command(clone):
    """A bad value that got into params.yaml some other way (a hand edit, an older checkout): the stage that reads it
    names the key and the one command that restores the file, and after it the stages load again."""
    repo, env = clone
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_new_tokens: ", "max_new_tokens: abc #", 1))
    proc = _dvc(repo, env, "repro", "push")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "sequence.max_new_tokens" in out and "git checkout -- params.yaml" in out, out
    _git(repo, "checkout", "--", "params.yaml")
    load = [sys.executable, "-c", "from pipeline.params import load_params; load_params('params.yaml')"]
    assert subprocess.run(load, cwd=repo, env=env, capture_output=True).returncode == 0


def test_a_group_typo_is_hydras_one_line_and_leaves_params_alone(clone):
    repo, env = clone
    before = (repo / "params.yaml").read_text()
    proc = _dvc(repo, env, "exp", "run", "-S", "model=tiny-fpx")
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 1, proc.stderr
    assert "Could not find 'model/tiny-fpx'" in errors[0] and "tiny-fp," in errors[0], errors
    assert "unexpected error" not in proc.stderr and "dvc.org/support" not in proc.stderr, proc.stderr
    assert (repo / "params.yaml").read_text() == before


def test_one_line_keeps_the_options_and_drops_the_search_path():
    msg = ("In 'config': Could not find 'model/x'\n\nAvailable options in 'model':\n\ttiny-fp\n\tsmollm2-q4\n"
           "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n")
    assert one_line(msg) == "In 'config': Could not find 'model/x'; Available options in 'model': tiny-fp, smollm2-q4"


def test_another_dvc_project_in_the_same_venv_is_left_alone(tmp_path, monkeypatch):
    """The plugin ships with the package, so DVC loads it in every Hydra-enabled DVC repo of this venv: it acts
    only in an odeval checkout."""
    from hydra_plugins.odeval_dvc_errors import _odeval_checkout

    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not _odeval_checkout()
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "config.py").write_text("")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # dvc run from a subdirectory of the repo
    assert _odeval_checkout()
