"""Start simple_app (or the reference app) on a device over one shell-v2 stream: the runner's ``start_app``.

WHY here and not in the run stage: how an app is launched and killed on a device is app/device knowledge (the
remote command line, the pid line, `kill -9` over a second shell), not configuration.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.apps.channel import Channel
from pipeline.apps.simple_app import app_command
from pipeline.config import APP_KV_POSITIONS
from pipeline.prompt_model.prompt_buffer import format_setting


@dataclass
class AppProcess:
    """A started app: its channel, a way to kill it on the device, and its pid (from the `odeval-pid:` line).

    `remote_kill(pid)` is the launcher's kill (on a phone: a second `adb shell kill -9 <pid>`, because closing
    the stream does not reliably kill the remote process); the runner fills `pid` after the session parsed it.
    `kill()` runs remote_kill when the pid is known and always closes the channel.
    """

    channel: Channel
    remote_kill: Callable[[int], None] | None = None
    pid: int | None = None
    on_pid: Callable[[int | None], None] | None = None  # e.g. points the telemetry sampler at the new app
    client: Callable[..., Any] | None = None  # the session class driving it; None: simple_app's AppSession

    def set_pid(self, pid: int | None) -> None:
        self.pid = pid
        if self.on_pid is not None:
            self.on_pid(pid)

    def kill(self) -> None:
        try:
            if self.remote_kill is not None and self.pid is not None:
                self.remote_kill(self.pid)
        finally:
            self.channel.close()


def app_env(env: Mapping[str, str], app_dir: str, *, virtual_only: bool, template: str,
            past_end_token: int | str | None, past_end_unwritten_id: int = 0,
            threads: int | None = None) -> dict[str, str]:
    """The environment on the device's command line: ``app.env`` with ``{app_dir}`` filled in, plus — for the
    reference app only — its template, past-end quirk and engine threads (simple_app has them compiled in)."""
    out = {k: str(v).replace("{app_dir}", app_dir) for k, v in env.items()}
    if virtual_only:
        if threads is not None:
            out["ODEVAL_THREADS"] = str(int(threads))
        out["ODEVAL_TEMPLATE"] = template
        if past_end_token is not None:
            out["ODEVAL_QUIRK_PAST_END_TOKEN"] = format_setting(past_end_token, past_end_unwritten_id)
    return out


def launch_command(cfg: Any, app_dir: str, model_dir: str, model_files: list[Mapping[str, Any]],
                   max_new_tokens: int) -> tuple[Callable[[int], str], Callable[..., Any] | None]:
    """(the shell line per start, given the first prompt's token count; the session class) for ``cfg.app``."""
    a = cfg.app
    env = app_env(a.env, app_dir, virtual_only=a.virtual_only, template=a.template, past_end_token=a.past_end_token,
                  past_end_unwritten_id=a.past_end_unwritten_id, threads=a.threads)
    if a.protocol == "llama-cpp":
        from pipeline.apps.llama_cpp import LlamaCliSession, gguf_file, llama_command

        model = gguf_file(model_dir, model_files, f"model={cfg.model.name}")
        n_ctx = min(cfg.model.max_seq_len, APP_KV_POSITIONS + 1)
        return (lambda n: llama_command(app_dir, model, a.binary, env, template=a.template,
                                        n_predict=max_new_tokens + n, n_ctx=n_ctx, threads=a.threads)), \
            LlamaCliSession
    cmd = app_command(app_dir, model_dir, a.device_arg, env, binary=a.binary)
    return (lambda _n: cmd), None


def app_launcher(dev: Any, command: Callable[[int], str], on_pid: Callable[[int | None], None] | None = None,
                 client: Callable[..., Any] | None = None) -> Callable[[int], AppProcess]:
    """A ``start_app(n_prompt_tokens)`` for :func:`pipeline.run.runner.run_prompts`: each call opens a new app
    process with the shell line ``command(n_prompt_tokens)`` (:func:`~pipeline.apps.simple_app.app_command`, or
    :func:`pipeline.apps.llama_cpp.llama_command`, whose budget counts the first prompt's tokens).

    ``on_pid`` is called with each new app's pid (fresh sessions start one per prompt)."""
    from pipeline.device.shellv2 import ShellV2

    def remote_kill(pid: int) -> None:
        from adbutils import AdbError

        try:
            dev.shell(f"kill -9 {shlex.quote(str(int(pid)))}", timeout=10)
            wait_gone(dev, int(pid))
        except (AdbError, OSError) as e:  # the device is gone: nothing we can kill; the run stops resumably
            print(f"run: could not kill app pid {pid} on {dev.serial}: {e}", file=sys.stderr)

    def start_app(n_prompt_tokens: int = 0) -> AppProcess:
        from adbutils import AdbError

        from pipeline.device.shellv2 import ShellV2Error

        try:
            channel = ShellV2.open(dev, command(n_prompt_tokens))
        except (AdbError, ShellV2Error, OSError) as e:  # offline / gone: the runner stops with a resumable state
            raise ConnectionError(f"{dev.serial}: {e}") from e
        return AppProcess(channel=channel, remote_kill=remote_kill, on_pid=on_pid, client=client)

    return start_app


KILL_WAIT_S = 5.0


def wait_gone(dev: Any, pid: int, timeout_s: float = KILL_WAIT_S) -> bool:
    """True once ``pid`` no longer exists on the device (``kill -0`` fails), False after ``timeout_s`` (warned).

    WHY: ``kill -9`` returns before the process is reaped. A run that ended while its killed app still existed
    left the next prompt, stage or job sharing the device's CPU with it — and a test checking ``pidof`` right
    after the run saw it (once the shell round trip stopped costing 20 ms, the race showed).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if dev.shell2(f"kill -0 {int(pid)}", timeout=10, v2=True).returncode != 0:
            return True
        if time.monotonic() >= deadline:
            print(f"run: app pid {pid} on {dev.serial} still exists {timeout_s:g} s after kill -9", file=sys.stderr)
            return False
        time.sleep(0.05)
