"""A Ray cluster of phone hosts on one machine: a head and more nodes on 127.0.0.1, each owning virtual devices,
plus a real ``mlflow server`` on a loopback port. Used by tests/cluster and benchmarks/ray_speedup.py.

Every node is started the production way (``python -m pipeline.cluster ray-start --pool FILE ... --run -- --block``)
in its own session, so killing the node's process group is a host dying: its raylet and its workers go.
Each node has its own ODEVAL_ROOT (own lock dir and lease log), as separate hosts would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import PoolDevice
from pipeline.locks import LEASE_LOG, lock_dir_for, read_leases
from tests.helpers.device import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    name: str
    root: Path
    pool_file: Path
    devices: list[PoolDevice]
    proc: subprocess.Popen | None = None


@dataclass
class LocalCluster:
    base: Path
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    ray_port: int = 0
    mlflow_port: int = 0
    mlflow_proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def add_node(self, name: str, n_devices: int, worker_ports: tuple[int, int]) -> Node:
        """A host owning ``n_devices`` virtual devices (labels chip=virtual, host=<name>), joined to the cluster."""
        root = self.base / f"host-{name}"
        root.mkdir(parents=True, exist_ok=True)
        devices = [PoolDevice(name=f"{name}{i}", kind="virtual", virtual_root=str(root / f"dev{i}"),
                              virtual_port=free_port(), labels={"chip": "virtual", "host": name})
                   for i in range(1, n_devices + 1)]
        pool_file = root / "pool.yaml"
        pool_file.write_text(json.dumps({"pool": [{k: v for k, v in d.__dict__.items()} for d in devices]}))
        head = not self.nodes
        if head:
            self.ray_port = free_port()
        where = ["--head", "--port", str(self.ray_port)] if head else ["--address", self.address]
        ray_args = ["--block", "--num-cpus=2", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
                    f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
                    *(["--include-dashboard=false"] if head else [])]
        node = Node(name, root, pool_file, devices)
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cluster", "ray-start", "--pool", str(pool_file), *where, "--run", "--",
             *ray_args], cwd=REPO, env={**self.env, "ODEVAL_ROOT": str(root)}, start_new_session=True,
            stdout=open(root / "ray-start.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self.nodes.append(node)
        self.wait_nodes(sum(n.proc is not None and n.proc.poll() is None for n in self.nodes))  # killed ones: gone
        return node

    def ray_nodes(self) -> list[dict]:
        """Alive nodes as Ray sees them: NodeID and Resources (asked from a separate driver process)."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))")
        proc = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            return []
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout_s: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = self.ray_nodes()
            if len(alive) >= n:
                return alive
            time.sleep(1)
        logs = "\n".join((nd.root / "ray-start.log").read_text()[-1500:] for nd in self.nodes)
        raise RuntimeError(f"ray cluster did not reach {n} nodes:\n{logs}")

    def node_of(self, ray_node_id: str, nodes: list[dict]) -> str | None:
        """Our node name for a Ray node id, from the host label resource its pool file gave it."""
        for n in nodes:
            if n["NodeID"] == ray_node_id:
                hosts = [k.removeprefix("phone_host_") for k in n["Resources"] if k.startswith("phone_host_")]
                return hosts[0] if len(hosts) == 1 else None
        return None

    def kill_node(self, node: Node) -> None:
        """The host dies: SIGKILL to the node's whole session (ray start, raylet, its workers)."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def start_mlflow(self) -> None:
        self.mlflow_port = free_port()
        store = self.base / "mlflow"
        store.mkdir(exist_ok=True)
        self.mlflow_proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination",
             str(store / "artifacts"), "--workers", "1"],
            cwd=store, env=self.env, start_new_session=True, stdout=open(store / "server.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start: {(store / 'server.log').read_text()[-1500:]}")

    def leases(self) -> list[dict]:
        """Every node's lease log (each host has its own lock dir), with the node name added."""
        out = []
        for n in self.nodes:
            out += [{**r, "node": n.name} for r in read_leases(lock_dir_for(n.root))]
        return out

    def clear_leases(self) -> None:
        for n in self.nodes:
            (lock_dir_for(n.root) / LEASE_LOG).unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop only what we started: each node's session, the mlflow server, our virtual devices."""
        from pipeline.virtual import stop as stop_virtual

        for n in reversed(self.nodes):
            if n.proc is not None and n.proc.poll() is None:
                os.killpg(n.proc.pid, signal.SIGTERM)
                try:
                    n.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(n.proc.pid, signal.SIGKILL)
            for d in n.devices:
                stop_virtual(Path(d.virtual_root or ""))
        if self.mlflow_proc is not None and self.mlflow_proc.poll() is None:
            os.killpg(self.mlflow_proc.pid, signal.SIGTERM)
            self.mlflow_proc.wait(timeout=30)
