"""pipeline.tracking against a real `mlflow server` on loopback (the shared-server setup of docs/sweeps.md
"Many phones").

Slow (the server needs ~10 s to start on this machine): run with `-m slow`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline import tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", str(tmp / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}")
        else:
            pytest.fail("mlflow server did not become healthy in 120 s")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group we started (server + its uvicorn worker), by id
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_http_store_idempotent_nested_with_artifacts(server: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "responses.jsonl").write_text("{}\n")
    parent = tracking.get_or_create_parent(tracking_uri=server, experiment="srv", sweep_id="sw")
    kw = dict(tracking_uri=server, experiment="srv", run_key="k", params={"model": {"name": "m"}},
              tags={"sweep_id": "sw"}, artifacts=[tmp_path / "responses.jsonl"], parent_run_id=parent,
              tables={"prompts": [{"id": "a"}, {"id": "b"}]})
    first = tracking.log_run(metrics={"m": 1.0}, **kw)
    second = tracking.log_run(metrics={"m": 2.0}, **kw)
    assert first == second
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    run = client.get_run(first)
    assert run.data.metrics["m"] == 2.0 and run.data.tags["mlflow.parentRunId"] == parent
    assert {f.path for f in client.list_artifacts(first)} == {"responses.jsonl", "tables"}
    table = pd.read_json(client.download_artifacts(first, "tables/prompts.json", str(tmp_path / "dl")),
                         orient="split")
    assert len(table) == 2
    exp = client.get_experiment_by_name("srv")
    assert len(client.search_runs([exp.experiment_id])) == 2  # parent + one child
