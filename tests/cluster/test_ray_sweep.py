"""`hydra/launcher=ray` over two phone hosts on one machine (slow: `pytest -m slow tests/cluster`).

A Ray head and a second node on 127.0.0.1, each started with `python -m pipeline.cluster ray-start --pool FILE`
and owning two virtual devices; a real `mlflow server` on a loopback port. Checks, on real components:
an 8-job sweep logs 8 children under one parent, every job ran on the node that owns the device it leased, no
device had two leases at once; a node killed mid-sweep loses nothing finished and the summary names the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.locks import overlaps
from tests.cluster.local_cluster import REPO, LocalCluster

ray = pytest.importorskip("ray", reason="the [cluster] extra: pip install -e '.[cluster]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
QA = REPO / "prompts" / "qa.jsonl"
SWEEP_8 = ["prompts.limit=1,2", "sequence=s128,s256", "prompting=plain,system"]


@pytest.fixture(scope="module")
def cluster(adb_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ODEVAL_QUIET": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "ANDROID_ADB_SERVER_PORT": str(adb_server.port)}
    c = LocalCluster(base=base, env=env)
    try:
        c.start_mlflow()
        c.add_node("a", 2, (21000, 21199))
        c.add_node("b", 2, (21200, 21399))
        yield c
    finally:
        c.stop()


def _sweep(c: LocalCluster, sweep: Path, tmp: Path, extra: list[str], **popen) -> subprocess.Popen:
    """The controller: `python -m pipeline -m hydra/launcher=ray ...` (its own root, like a laptop)."""
    controller = tmp / "controller"
    controller.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={c.address}",
           "device=pool-virtual", "+device.require.chip=virtual", f"prompts.path={QA}",
           f"paths.cache={tmp / 'cache'}", "runtime.load_timeout_s=120", "runtime.prompt_timeout_s=120",
           f"tracking.tracking_uri={c.tracking_uri}", f"hydra.sweep.dir={sweep}", *extra, *SWEEP_8]
    return subprocess.Popen(cmd, cwd=REPO, env={**c.env, "ODEVAL_ROOT": str(controller)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("odeval")
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _of_sweep(runs: list, sweep: Path) -> tuple[list, list]:
    mine = [r for r in runs if r.data.tags.get("sweep_id") == sweep.name]
    return ([r for r in mine if "mlflow.parentRunId" not in r.data.tags],
            [r for r in mine if "mlflow.parentRunId" in r.data.tags])


def test_eight_jobs_on_two_nodes_each_on_the_node_owning_its_device(cluster: LocalCluster, tmp_path: Path):
    c = cluster
    c.clear_leases()
    sweep = tmp_path / "sweep"
    proc = _sweep(c, sweep, tmp_path, [])
    out, err = proc.communicate(timeout=800)
    assert proc.returncode == 0, err[-4000:]
    assert "8 of 8 jobs complete" in err

    parents, children = _of_sweep(_runs(c.tracking_uri), sweep)
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)

    leases = c.leases()
    assert sorted(r["job"] for r in leases) == sorted(f"{sweep.name}/{i}" for i in range(8))
    assert all(r["t_release"] is not None for r in leases) and overlaps(leases) == []
    nodes = c.ray_nodes()
    by_job = {r["job"]: r for r in leases}
    for i in range(8):
        placement = json.loads((sweep / f"job{i}" / "placement.json").read_text())
        lease = by_job[f"{sweep.name}/{i}"]
        # the Ray node the job ran on (its host resource) is the node whose pool file lists the leased device
        assert c.node_of(placement["ray_node_id"], nodes) == lease["node"], (i, placement, lease)
        owner = next(n for n in c.nodes if lease["device"] in {d.name for d in n.devices})
        assert owner.name == lease["node"]
        pushed = json.loads((sweep / f"job{i}" / "artifacts" / "push.json").read_text())["device"]["serial"]
        assert pushed == lease["serial"]
    assert {r["node"] for r in leases} == {"a", "b"}  # Ray really used both hosts


def test_a_node_killed_mid_sweep_keeps_finished_runs_and_names_the_lost_jobs(cluster: LocalCluster,
                                                                              tmp_path: Path):
    c = cluster
    c.clear_leases()
    victim = c.nodes[1]
    sweep = tmp_path / "sweep-kill"
    # max_retries=0: a job lost with its node is not re-run elsewhere, so the summary must name it
    proc = _sweep(c, sweep, tmp_path, ["hydra.launcher.ray.remote.max_retries=0", "runtime.cooldown_s=1.0"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not any(r["node"] == victim.name for r in c.leases()):
        time.sleep(0.5)
    assert any(r["node"] == victim.name for r in c.leases()), "no job reached the second node"
    c.kill_node(victim)
    out, err = proc.communicate(timeout=800)
    assert proc.returncode == 1, err[-4000:]

    statuses = {}
    for i in range(8):
        f = sweep / f"job{i}" / "job_status.json"
        statuses[i] = json.loads(f.read_text())["status"] if f.exists() else "missing"
    lost = sorted(i for i, s in statuses.items() if s != "complete")
    done = sorted(i for i, s in statuses.items() if s == "complete")
    assert lost, statuses
    assert all(statuses[i] == "did not finish" for i in lost), statuses
    for i in lost:  # the summary names each unfinished job
        assert f"job{i} (" in err and "did not finish" in err
    assert f"{len(done)} of 8 jobs complete" in err

    parents, children = _of_sweep(_runs(c.tracking_uri), sweep)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == len(done)  # every finished job kept its run
    for i in done:
        assert (sweep / f"job{i}" / "metrics" / "score.json").exists()
    failed_names = {r.data.tags.get("odeval.job") for r in children if r.info.status == "FAILED"}
    assert failed_names == {f"job{i}" for i in lost}
    assert overlaps(c.leases()) == []


def test_with_retries_a_job_lost_with_its_node_runs_again_on_another(cluster: LocalCluster, tmp_path: Path):
    """The default `max_retries: 1`: Ray re-runs the dead node's jobs where a matching phone is free."""
    c = cluster
    c.clear_leases()
    victim = c.add_node("c", 2, (21400, 21599))  # a fresh node to kill (the previous test killed b)
    sweep = tmp_path / "sweep-retry"
    proc = _sweep(c, sweep, tmp_path, ["runtime.cooldown_s=1.0"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not any(r["node"] == victim.name for r in c.leases()):
        time.sleep(0.5)
    on_victim = {r["job"] for r in c.leases() if r["node"] == victim.name and r["t_release"] is None}
    assert on_victim, "no job was running on the node to kill"
    c.kill_node(victim)
    out, err = proc.communicate(timeout=800)
    assert proc.returncode == 0, err[-4000:]
    assert "8 of 8 jobs complete" in err
    leases = c.leases()
    for job in on_victim:  # each lost job finished on a surviving node
        assert any(r["job"] == job and r["node"] != victim.name and r["t_release"] is not None for r in leases)
    parents, children = _of_sweep(_runs(c.tracking_uri), sweep)
    assert len(parents) == 1 and sum(r.info.status == "FINISHED" for r in children) == 8
    assert overlaps([r for r in leases if r["node"] != victim.name]) == []
