"""Model dirs named on the virtual device, opened inside the device by the kernel.

The virtual device starts the reference app with the device's ``/`` as an inherited directory fd
(``ODEVAL_ROOT_FD``), the shell's cwd (``ODEVAL_DEVICE_CWD``) and a host-private scratch dir
(``ODEVAL_APP_SCRATCH``).  A model dir from argv or ``!reload`` is a *device* path: each of its files is opened with
``openat2(RESOLVE_IN_ROOT)`` (symlinks resolve inside the device, as on a phone), and the loaders get a *view*: a
scratch dir of links to ``/proc/self/fd/<n>``, which re-open exactly the file already resolved — no loader walks a
device path again, so no symlink swapped in meanwhile can lead it out of the storage.

Without ``ODEVAL_ROOT_FD`` (the app run on the host by hand or by tests) a model dir is an ordinary host path.
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

from pipeline.rootfs import DeviceRoot, normalize

_views = itertools.count()
_names: dict[str, str] = {}  # view dir -> the device path it shows (for messages)


class DeviceViewError(Exception):
    """The model dir cannot be opened on the device (the message names the device path and the errno text)."""


def on_device() -> bool:
    return "ODEVAL_ROOT_FD" in os.environ


def model_dir(path: str) -> Path:
    """The dir the loaders read for ``path``: a view of the device dir (on the virtual device), else ``path``."""
    if not on_device():
        return Path(path)
    root = DeviceRoot(fd=int(os.environ["ODEVAL_ROOT_FD"]))
    dev = normalize(path, os.environ.get("ODEVAL_DEVICE_CWD", "/"))
    try:
        dirfd = root.open(dev, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise DeviceViewError(f"{path}: {e.strerror}") from None
    view = Path(os.environ["ODEVAL_APP_SCRATCH"]) / f"view-{next(_views)}"
    view.mkdir()
    _names[str(view)] = dev
    try:
        for name in os.listdir(dirfd):
            try:
                fd = root.open(f"{dev}/{name}")  # in-root: a link to /etc/passwd is the device's /etc/passwd
            except OSError:
                continue  # dangling or unreadable on the device: the loader reports the missing file
            if stat.S_ISREG(os.fstat(fd).st_mode):
                (view / name).symlink_to(f"/proc/self/fd/{fd}")  # held open for the process's life
            else:
                os.close(fd)
    finally:
        os.close(dirfd)
    return view


def device_text(text: str) -> str:
    """``text`` with every view dir named by the device path it shows: the device reads device paths only."""
    for view, dev in sorted(_names.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(view, dev)
    return text
