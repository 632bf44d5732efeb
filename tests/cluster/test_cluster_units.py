"""Fast checks of the cluster pieces that need no Ray: resources from pool files, the `ray start` line, per-job
Ray options, a node's own pool, and the fetched-files export."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.cluster import (
    NODE_POOL_ENV,
    ClusterError,
    for_this_node,
    job_resources,
    load_pool_file,
    main,
    node_resources,
    ray_start,
)
from pipeline.config import DeviceConfig, PoolDevice
from pipeline.fetch.fetched import export, local_dir

REPO = Path(__file__).resolve().parents[2]


def _pool_file(tmp: Path, entries: list[dict]) -> Path:
    p = tmp / "pool.yaml"
    p.write_text(json.dumps({"pool": entries}))
    return p


def test_the_shipped_pool_file_gives_phone_count_and_label_counts():
    pool = load_pool_file(REPO / "conf" / "device" / "pool.yaml")
    res = node_resources(pool)
    assert res["phone"] == 4.0
    assert res["phone_chip_8gen3"] == 2.0 and res["phone_chip_8gen2"] == 2.0
    assert res["phone_model_k70pro"] == 2.0 and res["phone_host_lab_host_2"] == 1.0


def test_a_job_asks_for_one_phone_with_every_required_label():
    assert job_resources({"chip": "8gen3"}) == {"phone": 1.0, "phone_chip_8gen3": 1.0}
    assert job_resources({}) == {"phone": 1.0}


def test_labels_that_collide_as_resource_names_are_refused(tmp_path):
    pool = [PoolDevice(name="a", serial="1", labels={"chip": "8-gen3"}),
            PoolDevice(name="b", serial="2", labels={"chip": "8_gen3"})]
    with pytest.raises(ClusterError, match="both become Ray resource 'phone_chip_8_gen3'"):
        node_resources(pool)


@pytest.mark.parametrize(("content", "message"), [
    (None, "pool file not found"),
    ({"name": "x"}, "no pool: list"),
    ({"pool": [{"name": "a", "kind": "adb"}]}, "needs serial"),
    ({"pool": [{"name": "a", "serial": "1", "bogus": 1}]}, "bogus"),
])
def test_bad_pool_files_fail_with_one_line_naming_the_file(tmp_path, content, message):
    p = tmp_path / "pool.yaml"
    if content is not None:
        p.write_text(json.dumps(content))
    with pytest.raises(ClusterError, match=message) as e:
        load_pool_file(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_ray_start_line_carries_the_pool_file_and_its_resources(tmp_path, capsys):
    pf = _pool_file(tmp_path, [{"name": "v1", "kind": "virtual", "virtual_port": 15001, "labels": {"chip": "x y"}}])
    env, argv = ray_start(pf, head=False, address="10.0.0.1:6379", port=None, extra=["--num-cpus=4"], root=tmp_path)
    assert env[NODE_POOL_ENV] == str(pf.resolve()) and env["ODEVAL_ROOT"] == str(tmp_path.resolve())
    assert argv[1:3] == ["start", "--address=10.0.0.1:6379"] and argv[-1] == "--num-cpus=4"
    assert json.loads(argv[3].removeprefix("--resources=")) == {"phone": 1.0, "phone_chip_x_y": 1.0}
    with pytest.raises(ClusterError, match="exactly one of --head"):
        ray_start(pf, head=True, address="h:1", port=None, extra=[], root=tmp_path)
    assert main(["ray-start", "--pool", str(pf), "--head", "--port", "7000"]) == 0
    line = capsys.readouterr().out.strip()
    words = shlex.split(line)  # the printed line is shell-safe
    assert f"{NODE_POOL_ENV}={pf.resolve()}" in words and "--port=7000" in words
    assert main(["resources", "--pool", str(tmp_path / "missing.yaml")]) == 2


def test_a_pool_job_on_a_node_leases_only_that_nodes_phones(tmp_path, monkeypatch):
    pf = _pool_file(tmp_path, [{"name": "mine", "serial": "S1", "labels": {"chip": "8gen3"}}])
    dev = DeviceConfig(name="pool", kind="pool", pool=[PoolDevice(name="theirs", serial="S9")])
    monkeypatch.delenv(NODE_POOL_ENV, raising=False)
    assert for_this_node(dev).pool[0].name == "theirs"  # not on a cluster node: the config's pool
    monkeypatch.setenv(NODE_POOL_ENV, str(pf))
    assert [d.name for d in for_this_node(dev).pool] == ["mine"]
    assert for_this_node(DeviceConfig(name="virtual", kind="virtual")).pool == []


def test_each_job_gets_ray_resources_from_its_own_require_labels():
    from hydra_plugins.odeval_ray_launcher.ray_launcher import remote_options

    base = {"num_cpus": 0, "max_retries": 1, "resources": {"lab": 1}}
    job = OmegaConf.create({"app": {"device_arg": "8gen2"},
                            "device": {"kind": "pool", "require": {"chip": "${app.device_arg}"}}})
    assert remote_options(base, job) == {"num_cpus": 0, "max_retries": 1,
                                         "resources": {"lab": 1, "phone": 1.0, "phone_chip_8gen2": 1.0}}
    assert remote_options(base, OmegaConf.create({"device": {"kind": "virtual"}})) == base


def test_fetched_files_are_linked_into_artifacts_and_fetch_json_points_there_relatively(tmp_path):
    src = tmp_path / "hubcache" / "snap"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (tmp_path / "hubcache" / "blob").write_bytes(b"\0" * 10)
    (src / "sub" / "w.bin").symlink_to("../../blob")  # the Hub cache's layout: snapshot symlinks to blobs
    files = [{"path": "config.json", "sha256": "x"}, {"path": "sub/w.bin", "sha256": "y"}]
    art = tmp_path / "work" / "artifacts"
    (art / "fetched" / "model").mkdir(parents=True)
    (art / "fetched" / "model" / "stale.bin").write_text("old")
    entry = export({"local_dir": str(src), "files": files, "commit": "c"}, art, "model")
    assert entry["local_dir"] == "fetched/model" and entry["commit"] == "c"
    where = local_dir(entry, art / "fetch.json")
    assert sorted(p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file()) == [
        "config.json", "sub/w.bin"]
    linked = where / "sub" / "w.bin"
    assert not linked.is_symlink() and os.path.samefile(linked, src / "sub" / "w.bin")  # a hard link to the blob
    assert local_dir({"local_dir": str(src)}, art / "fetch.json") == src  # absolute (older fetch.json) as is
    assert export(entry | {"local_dir": str(where)}, art, "model")["local_dir"] == "fetched/model"  # idempotent
