"""Shared test infrastructure: hermetic environment, temp working dirs, a temp MLflow store.

Device and Hub fixtures live in tests/helpers/ (pytest plugins below): a private adb server port per test
session (killed at the end — only the server we started), virtual devices, a local Hub-compatible server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.helpers.device", "tests.helpers.hub_server", "tests.helpers.tiny_models",
                  "tests.helpers.pipeline", "tests.helpers.smollm2", "tests.helpers.native", "tests.helpers.llama"]


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env(tmp_path_factory: pytest.TempPathFactory):
    """No test may touch the user's caches, tokens, tracking server or the network."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ.update(
        HF_HOME=str(home / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        DVC_NO_ANALYTICS="1",
        ODEVAL_QUIET="1",
        ODEVAL_CACHE=str(tmp_path_factory.mktemp("odeval-cache")),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        TOKENIZERS_PARALLELISM="false",
    )
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_URI", "ODEVAL_ROOT", "HF_ENDPOINT"):
        os.environ.pop(k, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp working dir (the stage `workdir`), made the cwd for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store per test (a real store, not a mock)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
