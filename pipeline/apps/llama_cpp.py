"""llama.cpp as an app: ``llama-completion``'s conversation REPL, one process per prompt (``session=fresh``).

WHY ``llama-completion`` (of ``llama-cli``, ``llama-completion``, ``llama-simple``): in this llama.cpp
(llama-cpp-python 0.3.36's vendored tree) ``llama-cli`` is the new chat UI (a spinner, a server underneath, no
per-prompt counters on a pipe) and ``llama-simple`` has no chat template, no sampler options and takes the prompt
on the command line — a shell string. ``llama-completion -cnv --simple-io`` is the classic REPL: after the model
loads it prints ``\\n> `` and reads one line from stdin (so the prompt never enters a shell string), renders it
with the GGUF's own chat template (``--jinja``) or with a template that emits the line alone (``raw``), streams
the answer to stdout with a flush per token, prints ``\\n> `` again, and on stdin EOF prints ``EOF by user`` and
its ``llama_perf_context_print`` counters (load ms, prompt-eval tokens + ms, eval runs + ms) on stderr. One process
per prompt makes those counters the prompt's own; the ready ``> `` separates model load from the answer, so host
TTFT means what it means for simple_app (prompt sent → first token).

Stdout of one process: ``odeval-pid:N\\n`` (the launch line), ``\\n> `` (ready), the answer, then ``\\n\\n> `` when
the model stopped (its end-of-generation token prints nothing, then a newline) or ``\\n> `` when ``-n`` tokens were
generated, then ``EOF by user\\n\\n\\n``. Which of the two endings it was is read from the counters, not the
bytes (an answer may itself end in a newline). In the REPL, ``-n`` counts the prompt's tokens too (the line's
tokens are taken from the budget), so the launcher passes ``-n = max_new_tokens + the prompt's tokens``
(:func:`pipeline.run.runner.run_prompts` gives each start the count the run plan checked; llama.cpp's own
prompt-eval count is recorded beside it). At the limit llama-completion has sampled ``max_new_tokens`` tokens and
decoded all but the last (``eval runs = max_new_tokens - 1``); after its end-of-generation token it has decoded every
text token (fewer). An answer whose stop token is exactly the budget's last token counts as cut, as for simple_app.
"""

from __future__ import annotations

import base64
import posixpath
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.apps.channel import STDOUT
from pipeline.apps.simple_app import (
    AppExited,
    AppStartTimeout,
    ChannelSession,
    check_prompt_line,
    env_exports,
    tail_text,
)
from pipeline.apps.simple_app_output import (
    PID_PREFIX,
    PID_RE,
    Answer,
    Chunk,
    SimpleAppError,
    answer_timing,
    decode_counting,
)

READY = b"\n> "
TRAILER = b"\n> EOF by user\n"
STDERR_KEEP = 16384  # the counters are the last lines of stderr
RAW_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # the line alone, no BOS
TEMPLATES = ("hf-chat", "raw")  # hf-chat: the GGUF's own chat template (the same template the HF tokenizer holds)
_WHO = rb"(?:llama_perf_context_print|common_perf_print):\s+"  # the printer's name varies between versions
_PERF = {
    "load_ms": re.compile(_WHO + rb"load time =\s*([0-9.]+) ms"),
    "prompt_eval": re.compile(_WHO + rb"prompt eval time =\s*([0-9.]+) ms /\s*(\d+) tokens"),
    "eval": re.compile(_WHO + rb"eval time =\s*([0-9.]+) ms /\s*(\d+) runs"),
}


def check_llama_line(line: str) -> None:
    """What llama-completion would not read as this one line: simple_app's rules, plus its line editor's two
    controls — a trailing ``\\`` continues onto the next line (the answer would never come), a trailing ``/``
    is replaced by a newline."""
    check_prompt_line(line)
    if line.endswith(("\\", "/")):
        raise SimpleAppError(f"prompt {line[-40:]!r} ends with {line[-1]!r}: llama-completion's line reader treats "
                             "it as a control character (end the prompt with another character)")


def gguf_file(model_dir: str, files: list[Mapping[str, Any]], where: str) -> str:
    """The device path of the one ``.gguf`` file of the model dir ``model_dir`` (``files``: fetch.json's list)."""
    ggufs = sorted(str(f["path"]) for f in files if str(f["path"]).endswith(".gguf"))
    if len(ggufs) != 1:
        raise SimpleAppError(f"{where}: app=llama-cpp needs a model dir with exactly one .gguf file, found "
                             f"{ggufs or 'none'} — use a GGUF model (e.g. model=smollm2-q4) or narrow "
                             "model.allow_patterns to one file")
    return posixpath.join(model_dir, ggufs[0])


def llama_command(app_dir: str, model_path: str, binary: str, env: Mapping[str, str], *, template: str,
                  n_predict: int, n_ctx: int, threads: int | None) -> str:
    """The remote shell line: like simple_app's (``cd && export && echo pid && exec``), every value quoted.

    Greedy (``--temp 0``), escapes off (``--no-escape``: the line is the prompt, byte for byte), ``-c`` the
    model's window as the run plan checked it, ``-n`` the budget (the prompt's tokens + max_new_tokens)."""
    if not binary or "/" in binary:
        raise SimpleAppError(f"app binary name {binary!r} must be a plain file name (app.binary)")
    if template not in TEMPLATES:
        raise SimpleAppError(f"app.template={template!r}: llama-cpp takes {' or '.join(TEMPLATES)}")
    argv = [f"./{binary}", "-m", model_path, "-cnv", "--simple-io", "--jinja", "--no-escape", "--temp", "0",
            "-n", str(int(n_predict)), "-c", str(int(n_ctx))]
    if template == "raw":
        argv += ["--chat-template", RAW_TEMPLATE]
    if threads is not None:
        argv += ["-t", str(int(threads))]
    parts = [f"cd {shlex.quote(app_dir)}", *env_exports(env), "echo " + PID_PREFIX.decode() + "$$",
             "exec " + " ".join(shlex.quote(a) for a in argv)]
    return " && ".join(parts)


def parse_counters(stderr: bytes) -> dict[str, Any] | None:
    """llama.cpp's own numbers for the process (None when it printed none: it died before the end)."""
    out: dict[str, Any] = {"load_ms": None, "prompt_eval_tokens": None, "prompt_eval_ms": None, "eval_tokens": None,
                           "eval_ms": None}
    if m := _PERF["load_ms"].search(stderr):
        out["load_ms"] = float(m.group(1))
    if m := _PERF["prompt_eval"].search(stderr):
        out["prompt_eval_ms"], out["prompt_eval_tokens"] = float(m.group(1)), int(m.group(2))
    if m := _PERF["eval"].search(stderr):
        out["eval_ms"], out["eval_tokens"] = float(m.group(1)), int(m.group(2))
    return out if any(v is not None for v in out.values()) else None


@dataclass
class LlamaCliSession(ChannelSession):
    """One llama-completion process: wait for its ``> ``, ask one prompt, read to its exit.

    The runner's session interface (:class:`pipeline.apps.simple_app.AppSession`): ``wait_ready``, ``ask``,
    ``exit``, ``ready``, ``exited``, ``pid``. After ``ask`` the process has ended (stdin is closed with the line):
    a fresh session's one prompt."""

    stderr_keep: ClassVar[int] = STDERR_KEEP
    state: str = "loading"
    _pid: int | None = None
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def ready(self) -> bool:
        return not self.exited and self.state == "idle"

    def wait_ready(self, t_start: float | None = None) -> float:
        """Read to the ready ``> `` (after the ``odeval-pid`` line); seconds since ``t_start``."""
        t0 = time.monotonic() if t_start is None else t_start
        deadline = t0 + self.load_timeout_s
        while self.state == "loading":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AppStartTimeout(f"llama-completion showed no '> ' within load_timeout_s={self.load_timeout_s}s;"
                                      f" stderr {tail_text(self.stderr, 300)!r}; raise runtime.load_timeout_s")
            try:
                item = self._read(min(remaining, 0.5))
            except EOFError:
                code = self.channel.exit_code
                raise AppExited(f"llama-completion exited before its prompt (exit code {code}): "
                                f"{tail_text(self.stderr, 400).strip()}", code, tail_text(self.stderr)) from None
            if item is not None and item[0] == STDOUT:
                self._feed_loading(item[1])
        return time.monotonic() - t0

    def _feed_loading(self, data: bytes) -> None:
        self._buf += data
        if self._pid is None and (m := PID_RE.match(self._buf)):
            self._pid = int(m.group(1))
            del self._buf[: m.end()]
        if self._buf.endswith(READY):
            self.state, self._buf = "idle", bytearray()

    def ask(self, line: str, *, timeout_s: float, max_new_tokens: int, count_tokens: Callable[[str], int],
            max_output_bytes: int | None = None) -> dict:
        """Send the line, close stdin, read the answer to the process's exit; the row fields of
        :meth:`AppSession.ask` plus ``app_counters`` (``app_tok_s`` stays null: this app prints no tok/s line)."""
        check_llama_line(line)
        if self.state != "idle":
            raise SimpleAppError(f"cannot send a prompt while llama-completion is {self.state!r}")
        self.state, self._buf = "answer", bytearray()
        chunks: list[Chunk] = []
        t_send = time.monotonic()
        deadline = t_send + timeout_s
        timed_out = cut = False
        error: str | None = None
        try:
            self.channel.write(line.encode("utf-8") + b"\n")
            self.channel.close_stdin()  # one prompt: after the answer the REPL reads EOF, prints counters, exits
        except EOFError:
            error = "app stdin closed before the prompt could be sent"
        while not self.exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out, error = True, f"no complete answer within prompt_timeout_s={timeout_s}s"
                break
            try:
                item = self._read(min(remaining, 0.5))
            except EOFError:
                break
            if item is not None and item[0] == STDOUT:
                self._buf += item[1]
                chunks.append(Chunk(time.monotonic(), len(item[1])))
                if max_output_bytes is not None and len(self._buf) > max_output_bytes:
                    cut, error = True, f"output exceeded max_output_bytes={max_output_bytes}"
                    break
        return self._row(chunks, t_send, max_new_tokens, count_tokens, timed_out, cut, error)

    def _row(self, chunks: list[Chunk], t_send: float, max_new_tokens: int, count_tokens: Callable[[str], int],
             timed_out: bool, cut: bool, error: str | None) -> dict:
        raw = bytes(self._buf)
        end = raw.rfind(TRAILER)
        complete = self.exited and end >= 0
        counters = parse_counters(bytes(self.stderr)) if self.exited else None
        n_eval = (counters or {}).get("eval_tokens")
        eos = complete and n_eval is not None and n_eval + 1 < max_new_tokens  # see the module docstring
        body = raw[:end] if complete else raw
        if eos and body.endswith(b"\n"):
            body = body[:-1]  # the newline llama-completion prints after the end-of-generation token
        exit_code = self.channel.exit_code if self.exited else None
        crashed = not complete and not timed_out and not cut
        if crashed:
            error = (f"llama-completion ended without finishing the answer (exit code {exit_code})"
                     + (f"; stderr: {tail_text(self.stderr, 600).strip()}" if self.stderr else ""))
        elif complete and exit_code not in (0, None):
            error = f"llama-completion exited with code {exit_code} after the answer"
        response, replaced = decode_counting(body, final=complete)
        answer = Answer(raw=raw, response=response, response_nbytes=len(body), generated_nbytes=len(body), eos=eos,
                        app_tok_s=None, complete=complete, prompt_seen=False, replaced_chars=replaced)
        n_out = count_tokens(response)
        self.state = "done"
        row = {"response": response, "raw_output_b64": base64.b64encode(raw).decode("ascii"), "eos": eos,
               "truncated": cut or (complete and not eos), "timed_out": timed_out, "crashed": crashed,
               "exit_code": exit_code, "app_tok_s": None, "chunks": [[c.t, c.nbytes] for c in chunks],
               "n_output_tokens": n_out, "error": error, "replaced_chars": replaced, "app_counters": counters}
        row.update(answer_timing(chunks, answer, t_send, n_out))
        return row

    def exit(self, timeout_s: float = 10.0) -> int | None:
        """Close stdin (the REPL exits on EOF) and wait for the end; its exit code, or None if it did not end."""
        try:
            self.channel.close_stdin()
        except EOFError:
            pass
        return self._wait_exit(timeout_s)
