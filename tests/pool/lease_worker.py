"""A job process for pool tests: `python -m tests.pool.lease_worker '<json spec>'` (see conftest.start_worker)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.config import PoolDevice
from pipeline.device.pool import lease


def main() -> None:
    spec = json.loads(sys.argv[1])
    devices = [PoolDevice(**d) for d in spec["pool"]]
    with lease(devices, spec["require"], Path(spec["lock_dir"]), spec["timeout_s"], spec["job"],
               root=Path(spec["root"]), poll_s=0.1) as dev:
        print(f"LEASED {dev.name}", flush=True)
        time.sleep(spec["hold_s"])


if __name__ == "__main__":
    main()
