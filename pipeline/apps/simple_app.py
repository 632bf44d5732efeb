"""The simple_app REPL protocol (MobileQuant `capp/test/simple_app.cpp`): command line, output parser, session client.

Protocol facts this module relies on (checked against MobileQuant's capp/ source):
- stdout: a banner (`Hello, how can I help you today?\\n>>> `, gemma: `Please enter the prompt\\n>>> `), then per
  prompt the streamed answer pieces, the stop token's piece (`</s>`; llama2.c-style exports print `\\n</s>\\n`;
  token ids 0/1 `<unk>`/`<s>` also stop), then `(%f tok/s)\\n` (printed only when >1 step ran; `%f` of a division
  by an integer-millisecond time, so `inf` is possible), then the next `>>> `. The answer is not echoed (no tty).
- stdin: one `getline` per prompt. Empty line → re-prompt; a line starting with `!` is a command (`!exit`); a line
  starting with `-` is the broken argument parser (can crash): never send either as a prompt. On stdin EOF the
  app prints `>>> ` forever, so callers always send `!exit` and always enforce a deadline.

Three layers: `app_command` (the remote shell line), pure parsers (`parse_answer`, `OutputParser`,
`parse_transcript`), and `AppSession` (drives one process over a `Channel`, timestamps every stdout chunk).
CLI: `python -m pipeline.apps.simple_app parse FILE` prints one JSON object per response of a saved transcript.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pipeline.apps.channel import STDERR, STDOUT, Channel
from pipeline.apps.simple_app_output import (
    PID_PREFIX,
    Answer,
    Done,
    OutputParser,
    Ready,
    SimpleAppError,
    answer_timing,
    parse_transcript,
)

STDERR_TAIL_BYTES = 2048
_ENV_KEY_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


class AppStartTimeout(SimpleAppError):
    """The app did not print its banner and `>>> ` within load_timeout_s."""


class AppExited(SimpleAppError):
    """The app's output ended (crash, missing library, bad model dir) before it became ready."""

    def __init__(self, message: str, exit_code: int | None, stderr_tail: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


def app_command(app_dir: str, model_dir: str, device_arg: str | None, env: Mapping[str, str],
                binary: str = "simple_app") -> str:
    """The remote shell line that starts simple_app; every value goes through `shlex.quote`.

    Form: `cd <app_dir> && export K=<v> ... && echo odeval-pid:$$ && exec ./<binary> <model_dir> [<device_arg>]`.
    Why: `$$` is the pid of the `sh -c` that adbd starts (mksh on Android, sh on the virtual device) and `exec`
    replaces that shell with the app keeping the pid, so the first stdout line names the pid to `kill -9` on a
    timeout. Everything is chained with `&&` (not `;`) so a failed `cd` cannot run a binary from the wrong dir.
    mksh semantics: `export A=x B=y` and single-quoted words are POSIX; `$$` is unquoted on purpose.
    """
    if not binary or "/" in binary:
        raise SimpleAppError(f"app binary name {binary!r} must be a plain file name (app.binary), e.g. simple_app")
    parts = [f"cd {shlex.quote(app_dir)}", *env_exports(env)]
    parts.append("echo " + PID_PREFIX.decode() + "$$")
    argv = [f"./{binary}", model_dir] + ([device_arg] if device_arg else [])
    parts.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return " && ".join(parts)


def env_exports(env: Mapping[str, str]) -> list[str]:
    """``export K=<v> ...`` (one element, none for an empty env), every value quoted; a key that is not a shell
    variable name is refused (it would be parsed as something else)."""
    for key in env:
        if not _ENV_KEY_RE.match(key):
            raise SimpleAppError(f"app env key {key!r} is not a shell variable name (app.env); use [A-Za-z_]\\w*")
    return ["export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())] if env else []


def check_prompt_line(line: str) -> None:
    """Reject text the app would not treat as one prompt: a newline splits it, `!`/`-` starts a command, empty
    re-prompts (the answer would never come)."""
    if "\n" in line or "\r" in line:
        raise SimpleAppError(f"prompt {line[:40]!r}... contains a newline: the app reads one line per prompt")
    if "\x00" in line:
        raise SimpleAppError(f"prompt {line[:40]!r}... contains a NUL byte: the app would cut it there")
    if not line:
        raise SimpleAppError("empty prompt: simple_app re-prompts on an empty line and never answers")
    if line[0] in "!-":
        raise SimpleAppError(f"prompt {line[:40]!r} starts with {line[0]!r}: simple_app would run it as a command")


def model_type_of(model_dir: str) -> str:
    """simple_app picks the gemma code path (banner, template) when 'gemma' appears anywhere in the model dir."""
    return "gemma" if "gemma" in model_dir else "llama"


def tail_text(data: bytes | bytearray, n: int = STDERR_TAIL_BYTES) -> str:
    """The last ``n`` bytes as text (an app's stderr for an error line; cut UTF-8 replaced, never raised)."""
    return bytes(data[-n:]).decode("utf-8", "replace")


@dataclass
class ChannelSession:
    """What every app session does with its channel (simple_app's :class:`AppSession`, llama.cpp's
    ``LlamaCliSession``): read the next chunk, keep a rolling tail of stderr for crash reports, note the stream's
    end, and wait for the process to exit once its stdin is closed."""

    channel: Channel
    load_timeout_s: float
    stderr: bytearray = field(default_factory=bytearray)
    exited: bool = False
    stderr_keep: ClassVar[int] = STDERR_TAIL_BYTES

    def _read(self, timeout: float) -> tuple[int, bytes] | None:
        """One channel read; stderr is kept as a rolling tail, stdout returned; EOF marks the process exited."""
        try:
            item = self.channel.read(timeout)
        except EOFError:
            self.exited = True
            raise
        if item is not None and item[0] == STDERR:
            self.stderr += item[1]
            del self.stderr[:-self.stderr_keep]
        return item

    def _wait_exit(self, timeout_s: float) -> int | None:
        """Read until the process ends; its exit code, or None if it did not end in time (the caller kills it)."""
        deadline = time.monotonic() + timeout_s
        while not self.exited and time.monotonic() < deadline:
            try:
                self._read(min(0.5, max(deadline - time.monotonic(), 0.0)))
            except EOFError:
                break
        return self.channel.exit_code if self.exited else None


@dataclass
class AppSession(ChannelSession):
    """One simple_app process driven over a Channel: wait for the banner, ask prompts, exit.

    Why a class: the KV position (and so the context) lives in the process; in shared sessions the same
    AppSession answers many prompts. `ready` is true only when the app shows `>>> ` and can take a line.
    """

    parser: OutputParser = field(default_factory=OutputParser)
    banner: str | None = None
    model_type: str | None = None

    @property
    def pid(self) -> int | None:
        return self.parser.pid

    @property
    def ready(self) -> bool:
        return not self.exited and self.parser.state == "idle"

    def wait_ready(self, t_start: float | None = None) -> float:
        """Read until the banner's `>>> `; return load seconds since `t_start` (default: now)."""
        t0 = time.monotonic() if t_start is None else t_start
        deadline = t0 + self.load_timeout_s
        while self.parser.state == "loading":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AppStartTimeout(f"simple_app showed no '>>> ' within load_timeout_s={self.load_timeout_s}s; "
                                      f"stdout so far {tail_text(self.parser.pending, 200)!r}; raise load_timeout_s")
            try:
                item = self._read(min(remaining, 0.5))
            except EOFError:
                code = self.channel.exit_code
                raise AppExited(f"simple_app exited before its prompt (exit code {code}): "
                                f"{tail_text(self.stderr, 300).strip() or tail_text(self.parser.pending, 300).strip()}",
                                code, tail_text(self.stderr)) from None
            if item is not None and item[0] == STDOUT:
                for ev in self.parser.feed(item[1], time.monotonic()):
                    if isinstance(ev, Ready):
                        self.banner, self.model_type = ev.banner, ev.model_type
        return time.monotonic() - t0

    def ask(self, line: str, *, timeout_s: float, max_new_tokens: int, count_tokens: Callable[[str], int],
            max_output_bytes: int | None = None) -> dict:
        """Send one prompt line and read its answer; returns the measurement fields of a responses.jsonl row.

        Stops at the tok/s line + next `>>> ` (complete), after `max_new_tokens` response tokens (unless the stop
        token already arrived: then the answer is finished, not cut) or
        `max_output_bytes` bytes (truncated; the app keeps generating, so the caller must kill it), at the
        deadline `t_send + timeout_s` (timed_out; caller kills), or at EOF (crashed unless the answer had
        completed). Keys: response, raw_output_b64, eos, truncated, timed_out, crashed, exit_code, app_tok_s,
        t_send, t_first_byte, t_last_byte, chunks, n_output_tokens, ttft_s, decode_tok_s, e2e_s, error,
        replaced_chars. `n_output_tokens = count_tokens(response)` (re-tokenised text; the stop token excluded).
        """
        check_prompt_line(line)
        self.parser.begin_answer()
        t_send = time.monotonic()
        deadline = t_send + timeout_s
        truncated = timed_out = crashed = False
        error: str | None = None
        try:
            self.channel.write(line.encode("utf-8") + b"\n")
        except EOFError:
            error = "app stdin closed before the prompt could be sent"  # reading on finds the EOF and exit code
        done: Answer | None = None
        while done is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out, error = True, f"no complete answer within prompt_timeout_s={timeout_s}s"
                break
            try:
                item = self._read(min(remaining, 0.5))
            except EOFError:
                crashed = True
                break
            if item is None or item[0] != STDOUT:
                continue
            for ev in self.parser.feed(item[1], time.monotonic()):
                if isinstance(ev, Done):
                    done = ev.answer
            if done is None:
                partial = self.parser.answer_so_far()
                if max_output_bytes is not None and len(partial.raw) > max_output_bytes:
                    truncated, error = True, f"output exceeded max_output_bytes={max_output_bytes}"
                    break
                if not partial.eos and count_tokens(partial.response) >= max_new_tokens:
                    truncated = True
                    break
        answer = done if done is not None else self.parser.answer_so_far()
        exit_code = self.channel.exit_code if crashed else None
        if crashed and answer.complete:
            crashed = False  # the answer finished; the app died afterwards (only matters for the next prompt)
            error = f"app exited after the answer without a prompt (exit code {exit_code})"
        elif crashed:
            stderr = tail_text(self.stderr).strip()
            error = (error + "; " if error else "") + f"app output ended before the tok/s line (exit code {exit_code})"
            error += f"; stderr: {stderr}" if stderr else ""
        n_out = count_tokens(answer.response)
        row = {
            "response": answer.response,
            "raw_output_b64": base64.b64encode(answer.raw).decode("ascii"),
            "eos": answer.eos,
            "truncated": truncated,
            "timed_out": timed_out,
            "crashed": crashed,
            "exit_code": exit_code,
            "app_tok_s": answer.app_tok_s,
            "chunks": [[c.t, c.nbytes] for c in self.parser.chunks],
            "n_output_tokens": n_out,
            "error": error,
            "replaced_chars": answer.replaced_chars,
        }
        row.update(answer_timing(self.parser.chunks, answer, t_send, n_out))
        return row

    def exit(self, timeout_s: float = 10.0) -> int | None:
        """Send `!exit` (only read at the prompt) and wait for the process to end; returns its exit code, or None
        if it did not end in time (the caller then kills it)."""
        try:
            self.channel.write(b"!exit\n")
            self.channel.close_stdin()
        except EOFError:
            pass
        return self._wait_exit(timeout_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.apps.simple_app parse FILE`: one JSON object per response (prompt, response, eos,
    app_tok_s) of a saved terminal transcript."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.apps.simple_app", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse", help="parse a saved simple_app terminal transcript into JSON lines")
    p.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"simple_app parse: cannot read {args.file}: {exc.strerror}; pass a saved transcript file",
              file=sys.stderr)
        return 2
    for r in parse_transcript(data):
        obj = {"prompt": r.prompt, "response": r.response, "eos": r.eos, "app_tok_s": r.app_tok_s}
        print(json.dumps(obj, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
