"""Phones on several hosts as one Ray cluster: each host advertises its phones as Ray custom resources.

Why Ray and resources, not a lease service: Ray already places a task on a node with free resources and retries
it elsewhere when a node dies. A host that owns N phones joins the cluster with ``phone: N`` plus one resource
per label value (``phone_chip_8gen3: 2``); a job that needs a phone with ``device.require={chip: 8gen3}`` asks
for ``{phone: 1, phone_chip_8gen3: 1}``. Ray puts it on a host with such a phone free; there the existing per-host
``flock`` lease (pipeline/device/pool.py) picks which phone. Ray's accounting keeps a host from taking more jobs
than it has phones; the kernel lock keeps two jobs off one phone. Nothing in between is ours.

The host's pool file (the ``pool:`` list of a conf/device/pool*.yaml file) travels to its jobs through the Ray
node's environment (:data:`NODE_POOL_ENV`, set by the ``ray start`` line this module prints), so a job that lands
on a host leases only that host's phones — never a phone another host owns.

    python -m pipeline.cluster resources --pool conf/device/pool.yaml
    python -m pipeline.cluster ray-start --pool conf/local/pool-lab2.yaml --address head-host:6379 [--run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import DeviceConfig, PoolDevice

NODE_POOL_ENV = "ODEVAL_NODE_POOL"
PHONE = "phone"


class ClusterError(ValueError):
    """A pool file or cluster setting that cannot work; the message names the file/key and the fix."""


def _clean(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_") or "_"


def resource_name(key: str, value: Any) -> str:
    """The Ray resource a label stands for: ``chip=8gen3`` → ``phone_chip_8gen3``."""
    return f"{PHONE}_{_clean(key)}_{_clean(value)}"


def node_resources(pool: list[PoolDevice]) -> dict[str, float]:
    """What a host offers: one ``phone`` per device and, per label value, how many devices carry it."""
    out: dict[str, float] = {PHONE: float(len(pool))}
    seen: dict[str, tuple[str, str]] = {}
    for dev in pool:
        for key, value in sorted(dev.labels.items()):
            name = resource_name(key, value)
            if seen.setdefault(name, (str(key), str(value))) != (str(key), str(value)):
                raise ClusterError(f"device.pool[{dev.name}].labels: {key}={value} and {'='.join(seen[name])} both "
                                   f"become Ray resource {name!r} — rename one value (letters/digits differ)")
            out[name] = out.get(name, 0.0) + 1.0
    return out


def job_resources(require: Mapping[str, Any]) -> dict[str, float]:
    """What one job asks Ray for: one phone carrying every required label."""
    return {PHONE: 1.0, **{resource_name(k, v): 1.0 for k, v in sorted((require or {}).items())}}


def load_pool_file(path: str | os.PathLike) -> list[PoolDevice]:
    """The ``pool:`` list of a pool file (the conf/device/pool*.yaml format), validated like a job would."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.device.pool import PoolError, select

    p = Path(path)
    if not p.is_file():
        raise ClusterError(f"{p}: pool file not found — give a conf/device/pool*.yaml style file with a pool: list")
    try:
        raw = OmegaConf.load(p)
        entries = raw.get("pool") if isinstance(raw, Mapping) else None
        if not entries:
            raise ClusterError(f"{p}: no pool: list — list this host's phones under pool: (see conf/device/pool.yaml)")
        pool = [OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PoolDevice), e)) for e in entries]
    except OmegaConfBaseException as e:
        raise ClusterError(f"{p}: {str(e).splitlines()[0]} — fix the pool entry") from None
    try:
        select(pool, {})  # unique names, known kinds, a serial/port per device
    except PoolError as e:
        raise ClusterError(f"{p}: {e}") from None
    return pool  # type: ignore[return-value]


def node_pool() -> list[PoolDevice] | None:
    """This Ray node's phones when the process runs on a node started by :func:`ray_start`, else None."""
    path = os.environ.get(NODE_POOL_ENV)
    return load_pool_file(path) if path else None


def for_this_node(device: DeviceConfig) -> DeviceConfig:
    """A pool job on a cluster node leases from the node's own pool file (the phones this host owns)."""
    pool = node_pool() if device.kind == "pool" else None
    return replace(device, pool=pool) if pool is not None else device


def ray_start(pool_file: str | os.PathLike, *, head: bool, address: str | None, port: int | None,
              extra: list[str], root: Path) -> tuple[dict[str, str], list[str]]:
    """The environment and argv of ``ray start`` for a host owning the phones of ``pool_file``."""
    if head == bool(address):
        raise ClusterError("ray-start: give exactly one of --head (this host starts the cluster) or "
                           "--address HOST:PORT (join the head's cluster)")
    pool_path = Path(pool_file).resolve()
    resources = node_resources(load_pool_file(pool_path))
    from pipeline.workspace import PACKAGE_ROOT

    env = {NODE_POOL_ENV: str(pool_path), "ODEVAL_ROOT": str(root.resolve()),
           "PYTHONPATH": os.pathsep.join(x for x in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if x),
           "RAY_USAGE_STATS_ENABLED": "0"}  # no usage report to ray.io from a lab host
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    argv = [ray, "start", *(["--head", f"--port={port or 6379}"] if head else [f"--address={address}"]),
            f"--resources={json.dumps(resources, sort_keys=True)}", *extra]
    return env, argv


def shell_line(env: Mapping[str, str], argv: list[str]) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.cluster", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    res = sub.add_parser("resources", help="the Ray resources a pool file gives its host (JSON)")
    res.add_argument("--pool", required=True)
    st = sub.add_parser("ray-start", help="the `ray start` line for this host's pool file (--run: run it)")
    st.add_argument("--pool", required=True, help="this host's pool file (conf/device/pool*.yaml format)")
    st.add_argument("--head", action="store_true", help="start the cluster here")
    st.add_argument("--port", type=int, default=None, help="head: GCS port (default 6379)")
    st.add_argument("--address", default=None, help="join the head at HOST:PORT")
    st.add_argument("--run", action="store_true", help="run the line instead of printing it")
    st.add_argument("ray_args", nargs=argparse.REMAINDER, help="after --: passed to ray start as they are")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "resources":
            print(json.dumps(node_resources(load_pool_file(args.pool)), sort_keys=True))
            return 0
        from pipeline.workspace import shared_root

        extra = [a for a in args.ray_args if a != "--"]
        env, cmd = ray_start(args.pool, head=args.head, address=args.address, port=args.port, extra=extra,
                             root=shared_root())
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.run:
        print(shell_line(env, cmd))
        return 0
    return subprocess.run(cmd, env={**os.environ, **env}, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
