"""The `push` stage end to end on the virtual device: push.json contract, determinism, push_stats, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import compose, to_config
from pipeline.fetch.hub import local_snapshot
from pipeline.stages import push as push_stage
from tests.push.conftest import make_tree

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def staged(virtual_device, workdir: Path, tmp_path: Path):
    """fetch.json for a small app + a model whose name contains 'gemma', and the composed config."""
    app = make_tree(tmp_path / "src" / "app", {"simple_app": 5000, "libllmod.so": 100_000}, seed=1)
    model = make_tree(tmp_path / "src" / "model", {"meta.bin": 50_000, "tokenizer.bin": 20_000,
                                                   "qnn_model.bin": 800_000}, seed=2)
    fetch = {"app": local_snapshot(app, name="reference"), "model": local_snapshot(model, name="gemma-tiny")}
    (workdir / "artifacts").mkdir()
    (workdir / "artifacts" / "fetch.json").write_text(json.dumps(fetch))
    vd = virtual_device
    overrides = [f"device.virtual.root={vd.root}", f"device.virtual.port={vd.port}", f"device.adb_port={vd.adb_port}",
                 "device.remote_root=/data/local/tmp/odeval-stage", "model.name=gemma-tiny"]
    raw = compose(overrides)
    (workdir / "params.yaml").write_text(OmegaConf.to_yaml(raw))
    return to_config(raw), fetch


def test_stage_writes_contract_and_is_deterministic(virtual_device, workdir, staged):
    cfg, fetch = staged
    out = push_stage.run(cfg, workdir)
    first = out.read_bytes()
    doc = json.loads(first)
    assert doc["device"]["kind"] == "virtual"
    assert doc["device"]["serial"] == virtual_device.serial
    assert doc["device"]["props"]["ro.product.model"] == "odeval-virtual"
    assert doc["device"]["adb_version"]
    assert doc["remote_root"] == "/data/local/tmp/odeval-stage"
    for key, kind, name in (("app", "apps", "reference"), ("model", "models", "gemma-tiny")):
        rec = doc[key]
        assert rec["name"] == name and rec["commit"] == fetch[key]["commit"]
        assert rec["manifest_sha256"] == fetch[key]["manifest_sha256"]
        assert rec["remote_dir"] == f"/data/local/tmp/odeval-stage/{kind}/{name}@{fetch[key]['commit'][6:13]}"
        assert (virtual_device.storage / rec["remote_dir"].lstrip("/") / ".odeval-manifest.json").is_file()
    assert "gemma" in doc["model"]["remote_dir"].rsplit("/", 1)[-1]
    assert doc["app"]["binary"] == "simple_app"
    stats = json.loads((workdir / "artifacts" / "push_stats.json").read_text())
    total = sum(f["size"] for e in fetch.values() for f in e["files"])
    assert (stats["files_sent"], stats["bytes_sent"], stats["bytes_skipped"]) == (5, total, 0)
    assert stats["mb_per_s"] is not None and stats["mb_per_s"] > 0

    push_stage.run(cfg, workdir)
    assert out.read_bytes() == first  # nothing changed → byte-identical, so `run` stays cached
    stats = json.loads((workdir / "artifacts" / "push_stats.json").read_text())
    assert (stats["files_sent"], stats["bytes_sent"], stats["bytes_skipped"]) == (0, 0, total)
    assert stats["mb_per_s"] is None


def test_stage_cli_errors_are_one_line(workdir, staged, capsys):
    (workdir / "artifacts" / "fetch.json").unlink()
    with pytest.raises(SystemExit) as e:
        push_stage.main(["--params", str(workdir / "params.yaml")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("push: ") and "fetch.json" in err and "run the fetch stage" in err and "\n" not in err


def test_stage_full_disk_via_config_fault(workdir, staged, capsys):
    cfg, _ = staged
    cfg.device.virtual.faults = {"disk_full": True}
    cfg.device.remote_root = "/data/local/tmp/odeval-stage-full"  # nothing there yet: everything must be sent
    with pytest.raises(push_stage.StageError, match=r"need \d+ bytes, 0 bytes available"):
        push_stage.run(cfg, workdir)
    assert not (workdir / "artifacts" / "push.json").exists()


def test_stage_cli_verify_full_rehashes_on_device(workdir, staged, capsys):
    params = str(workdir / "params.yaml")
    push_stage.main(["--params", params])
    push_stage.main(["--params", params, "--verify", "full"])
    assert "push: wrote" in capsys.readouterr().out
    stats = json.loads((workdir / "artifacts" / "push_stats.json").read_text())
    assert stats["verify"] == "full"
    assert stats["bytes_sent"] == 0 and stats["files_adopted"] == stats["files_skipped"] == 5
