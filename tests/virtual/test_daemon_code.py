"""A running virtual device runs the code it imported: after an edit of pipeline/virtual, the next stage restarts
it (an edited shell or sync service must not go unseen by results)."""

from __future__ import annotations

import json

from pipeline.codehash import virtual_device_code
from pipeline.virtual import ensure_running, status


def test_a_daemon_with_other_code_is_restarted(make_virtual_device, capfd) -> None:
    vd = make_virtual_device()
    info = status(vd.root)
    assert info["code"] == virtual_device_code()
    assert ensure_running(vd.root, vd.port) == vd.serial and status(vd.root)["pid"] == info["pid"]  # same code: kept
    pid_file = vd.root / "state/adbd.json"
    pid_file.write_text(json.dumps(info | {"code": "0" * 16}))  # as if started before an edit
    capfd.readouterr()
    assert ensure_running(vd.root, vd.port) == vd.serial
    assert status(vd.root)["pid"] != info["pid"]
    assert "restarting it — its code changed" in capfd.readouterr().err
