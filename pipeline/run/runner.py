"""Feed a prompt set through simple_app sessions and produce `responses.jsonl` rows (the run stage's row contract).

The stage (`pipeline/stages/run.py`) owns config, device connection, files and resume; this module owns the loop:
warm-up passes then measured passes, fresh or shared sessions, timeouts with a remote kill, truncation, crashes,
and the exact row schema. It never touches the device directly: `start_app()` returns an `AppProcess`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.apps.launch import AppProcess
from pipeline.apps.simple_app import AppExited, AppSession, AppStartTimeout, check_prompt_line
from pipeline.apps.simple_app_output import SimpleAppError
from pipeline.config import APP_KV_POSITIONS, RuntimeConfig

ROW_FIELDS: tuple[str, ...] = (
    "prompt_id", "repeat", "warmup", "prompt", "sent_text", "response", "raw_output_b64", "eos", "truncated",
    "timed_out", "crashed", "exit_code", "app_tok_s", "t_send", "t_first_byte", "t_last_byte", "chunks",
    "n_output_tokens", "n_prompt_tokens", "ttft_s", "decode_tok_s", "e2e_s", "error",
    "session", "load_s", "host_blended_tok_s", "replaced_chars", "positions_before", "context_reset",
    "past_end",  # {case, id_fed, index}: simple_app's read past the prompt, filled by the run stage (prompt_buffer)
    "ask_key",  # what was asked (pipeline/run/identity.py ask_keys), filled by the run stage: resume reuses by it
    "app_counters",  # the app's own counters (llama.cpp: load, prompt-eval, eval at exit); null for simple_app
)
EXIT_WAIT_S = 10.0
SIGKILL_EXIT = 128 + 9  # how adbd (and the virtual device) report a process killed by SIGKILL


class RunnerError(ValueError):
    """Bad runner input (options or prompt items), raised before any app is started."""


class DeviceLost(RuntimeError):
    """The device/transport vanished (start failed with a connection error, or a stream ended with no exit status).

    Raised after every finished row was passed to `on_row`; the unfinished (prompt, repeat) is not emitted, so a
    resumed run (skip = finished keys) redoes it. Also raised when the app is SIGKILLed by someone else than the
    runner (exit 137: Android's low-memory killer, a user, another adb shell): that is the phone's state, not an
    answer of the model, so it must not be scored as a failed answer.
    """


TRANSPORT_ERRORS = (OSError, EOFError)  # OSError covers ConnectionError, socket errors and ShellV2Error


@dataclass(frozen=True)
class RunItem:
    """One prompt of the set: its id, the original text, and the single line actually sent (after prompting)."""

    prompt_id: str
    prompt: str
    sent_text: str


@dataclass(frozen=True)
class RunOptions:
    """Loop settings (from config `session`, `runtime`, `sequence`).

    `session`: "fresh" = one app process per (prompt, repeat); "shared" = one process per pass over the set
    (context carries over, like the seed; each warm-up/measured pass starts a new process so passes stay
    comparable and the app's KV position does not wrap after ~1023 tokens across passes). `prompt_timeout_s` is
    a whole-answer deadline from sending the line; `load_timeout_s` runs from the launch to the first `>>> `;
    `max_new_tokens` counts re-tokenised response tokens; `max_output_bytes` caps raw bytes per answer (guards
    against runaway output, e.g. the app's `>>> ` loop on stdin EOF). Both caps mark the row `truncated`.
    `context_positions`: simple_app's KV ring holds 1023 positions and overwrites the oldest ones when it wraps
    (the reference app clears its cache instead); a shared session starts a fresh app process before a prompt
    whose worst case (positions used + prompt + max_new_tokens + 1) would pass this (rows say so:
    `context_reset`, `positions_before`).
    """

    session: str = "fresh"
    repeats: int = RuntimeConfig.repeats  # defaults are the config schema's: one source of truth
    warmup: int = RuntimeConfig.warmup
    cooldown_s: float = RuntimeConfig.cooldown_s
    prompt_timeout_s: float = RuntimeConfig.prompt_timeout_s
    load_timeout_s: float = RuntimeConfig.load_timeout_s
    max_new_tokens: int = 256
    max_output_bytes: int = RuntimeConfig.max_output_bytes
    context_positions: int = APP_KV_POSITIONS  # KV positions a shared session may use before the app must restart

    @classmethod
    def from_config(cls, runtime: RuntimeConfig, session: str, max_new_tokens: int,
                    max_seq_len: int = APP_KV_POSITIONS, prompt_timeout_s: float | None = None) -> RunOptions:
        """From the config's ``runtime`` section, ``session.mode``, the budget's ``max_new_tokens`` and
        ``model.max_seq_len`` (the context limit is the smaller of it and the app's 1023 KV positions);
        ``prompt_timeout_s`` replaces runtime's when the prompt set sets its own (``pipeline.config.budget``)."""
        return cls(session=session, repeats=runtime.repeats, warmup=runtime.warmup, cooldown_s=runtime.cooldown_s,
                   prompt_timeout_s=runtime.prompt_timeout_s if prompt_timeout_s is None else prompt_timeout_s,
                   load_timeout_s=runtime.load_timeout_s,
                   max_new_tokens=max_new_tokens, max_output_bytes=runtime.max_output_bytes,
                   context_positions=min(max_seq_len, APP_KV_POSITIONS))

    def __post_init__(self) -> None:
        if self.session not in ("fresh", "shared"):
            raise RunnerError(f"session={self.session!r}: use 'fresh' or 'shared'")
        for name in ("repeats", "warmup"):
            if getattr(self, name) < 0:
                raise RunnerError(f"runtime.{name}={getattr(self, name)} must be >= 0")
        for name in ("prompt_timeout_s", "load_timeout_s", "max_new_tokens", "max_output_bytes", "context_positions"):
            if getattr(self, name) <= 0:
                raise RunnerError(f"{name}={getattr(self, name)} must be > 0")
        if self.cooldown_s < 0:
            raise RunnerError(f"runtime.cooldown_s={self.cooldown_s} must be >= 0")


def empty_row(item: RunItem, repeat: int, warmup: bool, session: str) -> dict:
    """A row with every row field present (null/false), so failed starts keep the exact schema."""
    row = dict.fromkeys(ROW_FIELDS)
    row.update(prompt_id=item.prompt_id, repeat=repeat, warmup=warmup, prompt=item.prompt, sent_text=item.sent_text,
               response="", raw_output_b64="", eos=False, truncated=False, timed_out=False, crashed=False,
               chunks=[], session=session, replaced_chars=0, positions_before=0, context_reset=False)
    return row


def finish_row(row: dict, n_prompt_tokens: int) -> dict:
    """Add n_prompt_tokens and the app's blended rate recomputed from host timestamps.

    `host_blended_tok_s = (n_prompt_tokens + n_output_tokens - 1) / (t_last_byte - t_send)`: simple_app's
    `(steps-1)/time` counts prefill and decode steps together, so this is its host-side twin (a cross-check of
    `app_tok_s`; the app's timer has millisecond resolution and starts after the first step).
    """
    row["n_prompt_tokens"] = n_prompt_tokens
    e2e, n_out = row.get("e2e_s"), row.get("n_output_tokens")
    ok = e2e is not None and e2e > 0 and n_out is not None and not (row["truncated"] or row["timed_out"])
    row["host_blended_tok_s"] = (n_prompt_tokens + n_out - 1) / e2e if ok else None
    return row


def plan_passes(repeats: int, warmup: int) -> list[tuple[int, bool]]:
    """Warm-up passes first (repeat -warmup..-1, marked warmup), then measured passes 0..repeats-1.

    Negative indices keep (prompt_id, repeat) unique for resume and keep measured repeat numbers independent of
    the warm-up count.
    """
    return [(r, True) for r in range(-warmup, 0)] + [(r, False) for r in range(repeats)]


class _Progress:
    """Progress bar (rich, on stderr): prompt i/n and the last tok/s; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("run"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
            self._task = self._bar.add_task("run", total=total, rate="")

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, row: dict | None) -> None:
        if self._bar is None:
            return
        rate = ""
        if row is not None:
            tok = row.get("decode_tok_s") or row.get("app_tok_s")
            rate = f"{tok:.1f} tok/s" if tok is not None else ("error" if row.get("error") else "")
        self._bar.update(self._task, advance=1, rate=rate)


def _validate(items: Iterable[RunItem]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.prompt_id in seen:
            raise RunnerError(f"prompt id {item.prompt_id!r} (item {i}) is duplicated; ids must be unique")
        seen.add(item.prompt_id)
        try:
            check_prompt_line(item.sent_text)
        except SimpleAppError as exc:
            raise RunnerError(f"prompt {item.prompt_id!r}: {exc}") from None


def _lost(what: str, exc: BaseException | str) -> DeviceLost:
    """One line: what was happening, what the transport said, and what to do."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DeviceLost(f"lost the device {what}: {detail}; reconnect it and re-run to resume")


def _killed(what: str, pid: int | None) -> DeviceLost:
    return DeviceLost(f"the app (pid {pid}) was killed by SIGKILL (exit {SIGKILL_EXIT}) {what}, not by the run — "
                      "the low-memory killer, a user or another adb shell; re-run to resume (if it recurs at the "
                      "same prompt, free memory on the phone)")


class _Runner:
    """State of one run_prompts call: the live process (shared sessions), its KV positions, and the row builder."""

    def __init__(self, start_app: Callable[[int], AppProcess], opts: RunOptions, count_tokens: Callable[[str], int],
                 count_prompt: Callable[[str], int]):
        self.start_app, self.opts, self.count_tokens, self.count_prompt = start_app, opts, count_tokens, count_prompt
        self.proc: AppProcess | None = None
        self.session: AppSession | None = None
        self.positions = 0  # KV positions the live process has used (estimate from re-tokenised text)

    def start(self, row: dict) -> bool:
        """Start an app and wait for its prompt; on failure fill the row (crashed/timed_out) and return False."""
        t0 = time.monotonic()
        self.positions = 0
        try:
            self.proc = self.start_app(self.count_prompt(row["sent_text"]))
        except TRANSPORT_ERRORS as exc:
            raise DeviceLost(f"cannot start the app: {exc}; the device is gone — reconnect it and re-run to resume")\
                from exc
        self.session = (self.proc.client or AppSession)(self.proc.channel, load_timeout_s=self.opts.load_timeout_s)
        try:
            try:
                row["load_s"] = self.session.wait_ready(t0)
            except OSError as exc:
                self.abandon()
                raise _lost("while the app was loading", exc) from exc
            self.proc.set_pid(self.session.pid)
            return True
        except AppStartTimeout as exc:
            self.proc.set_pid(self.session.pid)
            row.update(timed_out=True, error=str(exc))
        except AppExited as exc:
            if exc.exit_code is None:
                self.abandon()
                raise _lost("while the app was loading", f"the app stream ended with no exit status ({exc})") from None
            if exc.exit_code == SIGKILL_EXIT:
                pid = self.session.pid
                self.abandon()
                raise _killed("while it was loading", pid) from None
            row.update(crashed=True, exit_code=exc.exit_code, error=str(exc))
        self.stop(kill=True)
        return False

    def stop(self, kill: bool) -> None:
        """End the current process: `!exit` when it sits at its prompt, else (or if that hangs) kill by pid.

        Why kill by pid: the app reads `!exit` only at its prompt, and closing an adb stream does not reliably
        kill the remote process.
        """
        proc, session, self.proc, self.session = self.proc, self.session, None, None
        if proc is None or session is None:
            return
        try:
            if session.exited or (not kill and session.ready and session.exit(EXIT_WAIT_S) is not None):
                proc.channel.close()  # already gone: a remote kill now could hit a reused pid
                return
            proc.kill()
        except TRANSPORT_ERRORS as exc:
            raise _lost(f"while stopping the app (pid {proc.pid})", exc) from exc

    def abandon(self) -> None:
        """Best-effort cleanup once the device is known to be gone (a failing remote kill changes nothing)."""
        try:
            self.stop(kill=True)
        except DeviceLost:
            pass

    def would_wrap(self, item: RunItem) -> bool:
        """True when the live process has used positions and this prompt's worst case would pass the ring.

        Worst case = prompt tokens + max_new_tokens + 1 (the stop token, or the token simple_app reads past the
        prompt). A process that has used nothing is never restarted (the config validation bounds one turn)."""
        need = self.count_prompt(item.sent_text) + self.opts.max_new_tokens + 1
        return self.positions > 0 and self.positions + need > self.opts.context_positions

    def ask(self, item: RunItem, row: dict) -> None:
        assert self.session is not None
        row["positions_before"] = self.positions
        try:
            res = self.session.ask(item.sent_text, timeout_s=self.opts.prompt_timeout_s,
                                   max_new_tokens=self.opts.max_new_tokens, count_tokens=self.count_tokens,
                                   max_output_bytes=self.opts.max_output_bytes)
        except TRANSPORT_ERRORS as exc:
            self.abandon()
            raise _lost(f"during prompt {item.prompt_id!r}", exc) from exc
        if res["crashed"] and res["exit_code"] is None:
            self.abandon()
            raise _lost(f"during prompt {item.prompt_id!r}", "the app stream ended with no exit status")
        if res["crashed"] and res["exit_code"] == SIGKILL_EXIT:
            pid = self.session.pid
            self.abandon()
            raise _killed(f"during prompt {item.prompt_id!r}", pid)
        row.update(res)
        finish_row(row, self.count_prompt(item.sent_text))
        self.positions += row["n_prompt_tokens"] + (row["n_output_tokens"] or 0) + 1


def run_prompts(items: list[RunItem], start_app: Callable[[int], AppProcess], opts: RunOptions, *,
                count_tokens: Callable[[str], int], count_prompt: Callable[[str], int],
                skip: set[tuple[str, int]] | frozenset = frozenset(), on_row: Callable[[dict], None],
                progress: bool = True) -> None:
    """Run every (pass, prompt) not in `skip`, calling `on_row(row)` once per finished row, in order.

    Rows have exactly `ROW_FIELDS`. `n_prompt_tokens` = `count_prompt(sent_text)`: the ids the app feeds for the
    line under its template (pipeline/prompt_model/prompt_format.py `PromptFormat.count`); `n_output_tokens` =
    `count_tokens(response)` (stop token excluded; the app's encoder: no BOS, no special tokens added).

    A row whose process was started for it has `load_s` set: in shared sessions that marks the first prompt of a
    pass and every restart (after a crash, timeout or truncation of the previous row, which that row's flags
    record, or before a prompt that could wrap the KV ring: `context_reset` true). `positions_before` = the KV
    positions the process had used when the prompt was sent (0 in fresh sessions). Crashes and timeouts are rows;
    the run goes on. `DeviceLost` is raised (after the finished rows) when the device vanishes or the app is
    killed from outside.
    """
    _validate(items)
    passes = plan_passes(opts.repeats, opts.warmup)
    runner = _Runner(start_app, opts, count_tokens, count_prompt)
    first = True
    with _Progress(len(passes) * len(items), progress) as prog:
        try:
            for repeat, warm in passes:
                for item in items:
                    if (item.prompt_id, repeat) in skip:
                        prog.advance(None)
                        continue
                    if not first and opts.cooldown_s:
                        time.sleep(opts.cooldown_s)
                    first = False
                    row = empty_row(item, repeat, warm, opts.session)
                    if runner.proc is not None and runner.would_wrap(item):
                        runner.stop(kill=False)
                        row["context_reset"] = True
                    if runner.proc is None and not runner.start(row):
                        finish_row(row, count_prompt(item.sent_text))
                        end: bool | None = None
                    else:
                        runner.ask(item, row)
                        healthy = runner.session is not None and runner.session.ready
                        end = None if (opts.session == "shared" and healthy) else not healthy
                    on_row({k: row[k] for k in ROW_FIELDS})
                    prog.advance(row)
                    if end is not None:
                        runner.stop(kill=end)
                runner.stop(kill=False)
        finally:
            runner.abandon()  # Ctrl-C / DeviceLost / bugs: leave nothing running, never mask the original error
