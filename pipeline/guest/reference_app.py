"""Host reference implementation of MobileQuant's ``simple_app`` REPL on the host CPU.

Engines and threads (``$ODEVAL_ENGINE``, ``$ODEVAL_THREADS``): :mod:`pipeline.guest.engine` — ``native``
(:mod:`pipeline.guest.qkernel`: weights kept compressed, float32 activations, batched prefill), ``numpy``
(:mod:`pipeline.guest.npllama`), ``torch``, ``auto`` (default: native when its kernel is built, else numpy).

Usage: ``python -m pipeline.guest.reference_app <model_dir> [8gen3|8gen2] [--template mobilequant|hf-chat|raw]
[--max-steps N]``.

WHY: the virtual device runs this in place of the phone binary, so at the REPL it behaves like
``capp/test/simple_app.cpp`` + ``capp/src/llm.cpp`` byte for byte: the banner is printed at the top of every loop
iteration (an empty line re-prints the *current* welcome, i.e. the full banner before the first prompt), ``!exit``,
``!reload [dir]``, ``!log N``, prefill (one batched pass where it gives what token-by-token gives, see
:func:`generate`), greedy decoding, each piece printed with llama2.c's ``safe_printf`` rule and flushed, the EOS
piece printed (``</s>`` from tokenizer.bin), then
``(%f tok/s)\\n`` = (current_step-1)/elapsed where steps include prompt tokens, the timer starts after the first
forward and the elapsed time is whole milliseconds like the app. The KV position persists across prompts.

Documented differences from simple_app:
- stdin EOF exits with status 0 (simple_app loops printing ``>>> `` forever);
- at the sequence limit (position wraps modulo seq_len-1 = 1023) the KV cache is cleared instead of being
  silently overwritten (simple_app then produces corrupted context);
- the app's read past the end of the prompt (``prompt_tokens[num_prompt_tokens]``, fed as the first "answer"
  input) is replaced by sampling from the last prompt token's logits unless ``ODEVAL_QUIRK_PAST_END_TOKEN`` is set:
  ``faithful:<id>`` feeds what simple_app's prompt buffer holds in that slot
  (pipeline/prompt_model/prompt_buffer.py: the
  stale tail of the merge loop, or ``<id>`` — default 0 with a bare ``faithful`` — when the slot was never
  written), an integer feeds that id for every prompt;
- ``-t/-p/...`` argument lines are ignored (the app's parser is broken and can crash);
- a load failure exits 1 with one line on stderr (the app prints the banner and then refuses every prompt);
- an elapsed time of 0 ms uses the fractional time instead of printing ``inf``.
Templates: ``mobilequant`` (default; no BOS, hard-coded Llama-2 ids or our tokenizer's encoding of the same
strings, KV carried across prompts), ``hf-chat`` (the tokenizer's chat_template, BOS ensured, fresh context per
prompt), ``raw`` (BOS + prompt, fresh context per prompt). Default: ``$ODEVAL_TEMPLATE`` else ``mobilequant``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.guest import device_view
from pipeline.guest.engine import Engine, ReferenceAppError, load_engine
from pipeline.prompt_model.prompt_buffer import DEFAULT_UNWRITTEN_ID, parse_setting, past_end
from pipeline.prompt_model.prompt_format import TEMPLATES

BANNER = "Hello, how can I help you today?\n>>> "
GEMMA_BANNER = "Please enter the prompt\n>>> "
PROMPT = ">>> "
MAX_STEPS = 2048
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b" \t\n\v\f\r")


@dataclass(frozen=True)
class Faults:
    """Fault injection requested by the virtual device through env vars."""

    crash_after_tokens: int | None = None
    hang: bool = False
    invalid_utf8: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Faults:
        env = dict(os.environ if env is None else env)
        n = env.get("ODEVAL_FAULT_CRASH_AFTER_TOKENS", "").strip()
        hang, bad = env.get("ODEVAL_FAULT_HANG") == "1", env.get("ODEVAL_FAULT_INVALID_UTF8") == "1"
        return cls(int(n) if n else None, hang, bad)


def safe_piece(piece: bytes) -> bytes:
    """llama2.c ``safe_printf``: a single non-printable, non-space byte is dropped."""
    return b"" if len(piece) == 1 and piece[0] not in _PRINTABLE else piece


def confined_dir(path: str) -> Path:
    """Host dir to load for a model dir named on the device (argv, ``!reload``): on the virtual device a view of the
    dir opened inside the device storage by the kernel (pipeline/guest/device_view.py); elsewhere ``path``."""
    try:
        return device_view.model_dir(path)
    except device_view.DeviceViewError as exc:
        _audit(f"model dir {path!r} cannot be opened on the device")
        raise ReferenceAppError(str(exc)) from None


def _audit(message: str) -> None:
    """Tell the virtual device's daemon log about a refusal (private fd it passed; no-op on the host)."""
    try:
        os.write(int(os.environ["ODEVAL_AUDIT_FD"]), (message.replace("\n", " ") + "\n").encode())
    except (KeyError, ValueError, OSError):
        pass


@dataclass
class GenResult:
    """What one prompt produced (for tests/benchmarks; the REPL only prints)."""

    fed_ids: list[int]
    output_ids: list[int]
    steps: int
    tok_s: float | None
    token_times: list[float]
    prefill: str = "token-by-token"  # "batched" or "token-by-token: <why>" (see generate)


def generate(engine: Engine, ids: list[int], out: BinaryIO, max_steps: int = MAX_STEPS, faults: Faults = Faults(),
             past_end_token: int | None = None, batch: bool = True) -> GenResult:
    """llm.cpp's ``LLM::generate`` loop: prefill, greedy, stream pieces, then the tok/s line.

    Prefill: step 0 feeds the first prompt token alone (the app's timer starts after it); the rest of the prompt —
    and the token read past its end, when the quirk feeds one — is then fed in ONE batched pass when
    :meth:`Engine.batch_refusal` allows it (native engine, no ring wrap inside, not cut by ``max_steps``), else
    token by token as simple_app does. Both give the same positions, K/V contents and logits bit for bit (tested),
    so only the time differs; ``GenResult.prefill`` records which one ran and why. ``batch=False`` forces
    token by token."""
    current_step, token, n_prompt = 0, ids[0], len(ids)
    output: list[int] = []
    times: list[float] = []
    rest = ids[1:] + ([past_end_token] if past_end_token is not None else [])
    prefill = "token-by-token: forced" if not batch else "token-by-token: nothing to batch"
    pending: Any = None  # logits already computed for the current step by the batched pass
    tick = time.perf_counter()
    while current_step < max_steps:
        logits = engine.forward(token) if pending is None else pending
        pending = None
        if current_step < n_prompt - 1:
            nxt = ids[current_step + 1]
        elif current_step == n_prompt - 1 and past_end_token is not None:
            nxt = past_end_token
        else:
            nxt = int(logits.argmax())
            out.write(safe_piece(engine.piece(nxt)))
            out.flush()
            times.append(time.perf_counter())
            output.append(nxt)
            _apply_faults(faults, len(output), out)
            if nxt in engine.stop_ids:
                break
        token = nxt
        if current_step == 0:
            tick = time.perf_counter()
            if batch and rest:
                refusal = engine.batch_refusal(len(rest), max_steps - 1)
                prefill = "batched" if refusal is None else f"token-by-token: {refusal}"
                if refusal is None:  # steps 1..len(rest) in one pass; the loop resumes at the last of them
                    pending = engine.forward_batch(rest)
                    current_step = len(rest)
                    continue
        current_step += 1
    tok_s = None
    if current_step > 1:
        elapsed = time.perf_counter() - tick
        ms = int(elapsed * 1000)  # std::chrono::duration_cast<milliseconds> truncates
        tok_s = (current_step - 1) / (ms / 1000 if ms > 0 else max(elapsed, 1e-9))
        out.write(f"({tok_s:f} tok/s)\n".encode())
        out.flush()
    if os.environ.get("ODEVAL_APP_DEBUG") == "1":
        sys.stderr.write(f"reference_app: prefill {prefill} ({len(rest) + 1} tokens)\n")
    return GenResult(list(ids), output, current_step, tok_s, times, prefill)


def _apply_faults(faults: Faults, n_out: int, out: BinaryIO) -> None:
    if faults.invalid_utf8 and n_out == 1:
        out.write(b"\xff\xfe\xc3(")
        out.flush()
    if faults.crash_after_tokens is not None and n_out >= faults.crash_after_tokens:
        out.flush()
        sys.stderr.write(f"odeval fault injection: crashing after {n_out} output tokens\n")
        sys.stderr.flush()
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the app dir
        except (ImportError, ValueError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGABRT)
        os._exit(134)
    if faults.hang and n_out >= 1:
        out.flush()
        while True:
            time.sleep(3600)


def _reload_lines(models_dir: str, max_steps: int, model_type: str) -> str:
    return (f"Loading models from {models_dir}\nOptions are:\n  temperature = 0\n  top-p = 0.9\n"
            f"  random seed = 1234\n  number of steps = {max_steps}\n  system prompt = \n"
            f"  model type = {model_type}\n  log level (info:2, debug:3) = 1\n")


def repl(engine: Engine, models_dir: str, template: str, max_steps: int, stdin: BinaryIO, stdout: BinaryIO,
         faults: Faults = Faults(), past_end_token: int | str | None = None,
         unwritten_id: int = DEFAULT_UNWRITTEN_ID) -> int:
    """simple_app's ``main`` loop over ``stdin``/``stdout`` (bytes). Returns the exit status.

    ``past_end_token``: None (fixed app), an id, or ``faithful`` (per prompt, from simple_app's buffer model)."""
    model_type = "gemma" if "gemma" in models_dir else "llama"
    welcome = GEMMA_BANNER if model_type == "gemma" else BANNER
    fmt = engine.prompt_format(template, gemma=model_type == "gemma")
    while True:
        stdout.write(welcome.encode())
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0  # documented difference: simple_app spins printing ">>> " on EOF
        cmd = line[:-1] if line.endswith(b"\n") else line
        if not cmd:
            continue
        if cmd.startswith(b"!"):
            words = cmd.decode("utf-8", errors="replace").split()
            name = words[0] if words else "!"
            if name == "!exit":
                return 0
            if name == "!reload":
                models_dir = words[1] if len(words) > 1 else models_dir
                stdout.write(b"Old context released\n" + _reload_lines(models_dir, max_steps, model_type).encode())
                stdout.flush()
                try:  # a dir outside the device storage fails like a bad dir: Initialization errror, exit 1
                    engine = load_engine(confined_dir(models_dir))
                except ReferenceAppError as exc:
                    _audit(f"!reload {models_dir!r} refused: {exc}")
                    sys.stderr.write(f"Initialization errror: {device_view.device_text(str(exc))}\n")
                    return 1
                fmt = engine.prompt_format(template, gemma=model_type == "gemma")
                stdout.write(b"Models loaded and ready\n")
            elif name != "!log":
                sys.stderr.write(f"Unknown command: {name}\n")
        elif not cmd.startswith(b"-"):
            if not fmt.carries_context:
                engine.reset()
            ids = fmt.ids(cmd)
            fed = past_end(fmt, past_end_token, cmd, unwritten_id).id_fed
            generate(engine, ids, stdout, max_steps, faults, fed)
        welcome = PROMPT


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.guest.reference_app", description="simple_app on the host")
    ap.add_argument("model_dir")
    ap.add_argument("device", nargs="?", default="8gen3", help="accepted for compatibility (8gen3|8gen2)")
    ap.add_argument("--template", choices=TEMPLATES, default=os.environ.get("ODEVAL_TEMPLATE") or "mobilequant")
    ap.add_argument("--max-steps", type=int, default=MAX_STEPS)
    args = ap.parse_args(argv)
    quirk = os.environ.get("ODEVAL_QUIRK_PAST_END_TOKEN", "")
    try:
        if args.template not in TEMPLATES:
            raise ReferenceAppError(f"ODEVAL_TEMPLATE={args.template!r} is unknown; use one of {', '.join(TEMPLATES)}")
        try:
            setting, unwritten = parse_setting(quirk)
        except ValueError as exc:
            raise ReferenceAppError(f"ODEVAL_QUIRK_PAST_END_TOKEN: {exc}; use an integer or faithful:<id>") from None
        engine = load_engine(confined_dir(args.model_dir))
        engine.prompt_format(args.template, gemma="gemma" in args.model_dir)  # a template the model cannot use
    except ReferenceAppError as exc:
        sys.stderr.write(f"reference_app: {device_view.device_text(str(exc))}\n")
        return 1
    if os.environ.get("ODEVAL_APP_DEBUG") == "1":
        why = engine.native_reason and f"; native engine not used: {device_view.device_text(engine.native_reason)}"
        sys.stderr.write(f"reference_app: loaded in {engine.load_s:.3f} s ({engine.backend} engine, "
                         f"{engine.threads} thread(s){why})\n")
    try:
        return repl(engine, args.model_dir, args.template, args.max_steps, sys.stdin.buffer, sys.stdout.buffer,
                    Faults.from_env(), setting, unwritten)
    except BrokenPipeError:
        return 0


def _main_killed_on_oom() -> int:
    """``main``, except that running out of memory ends as it does on a phone: killed (SIGKILL, the shell's 137), not
    a Python traceback — the low-memory killer gives an app no last words.  On the virtual device the cap is the
    app's RLIMIT_DATA (pipeline/virtual/app_launch.py)."""
    try:
        return main()
    except MemoryError:
        os.kill(os.getpid(), signal.SIGKILL)
        return 137


if __name__ == "__main__":
    sys.exit(_main_killed_on_oom())
