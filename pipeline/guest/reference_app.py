"""Host reference implementation of MobileQuant's ``simple_app`` REPL on numpy or torch CPU.

Engines (``$ODEVAL_ENGINE``): ``numpy`` (``pipeline/guest/npllama.py``, no torch/transformers import: ~0.2 s start-up),
``torch`` (transformers), ``auto`` (default: numpy for small default-RoPE Llamas in one model.safetensors, else torch).

Usage: ``python -m pipeline.guest.reference_app <model_dir> [8gen3|8gen2] [--template mobilequant|hf-chat|raw]
[--max-steps N]``.

WHY: the virtual device runs this in place of the phone binary, so at the REPL it behaves like
``capp/test/simple_app.cpp`` + ``capp/src/llm.cpp`` byte for byte: the banner is printed at the top of every loop
iteration (an empty line re-prints the *current* welcome, i.e. the full banner before the first prompt), ``!exit``,
``!reload [dir]``, ``!log N``, token-by-token prefill, greedy decoding, each piece printed with llama2.c's
``safe_printf`` rule and flushed, the EOS piece printed (``</s>`` from tokenizer.bin), then
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.guest import device_view
from pipeline.models.act_quant import ACT_QUANT_KEY
from pipeline.models.tokenizer_bin import SPECIAL_TEXTS, TokenizerBin, TokenizerBinError, load_for_model
from pipeline.prompt_model.prompt_buffer import DEFAULT_UNWRITTEN_ID, parse_setting, past_end
from pipeline.prompt_model.prompt_format import TEMPLATES, PromptFormat, PromptFormatError, load_format

BANNER = "Hello, how can I help you today?\n>>> "
GEMMA_BANNER = "Please enter the prompt\n>>> "
PROMPT = ">>> "
STOP_IDS = frozenset({0, 1, 2})  # llm.cpp: if (next == 1 || next == 2 || next == 0) break;
# What simple_app prints for a stop id with MobileQuant's tokenizer.bin; used when this model's own piece for it is
# something else (SmolLM2: <|endoftext|>/<|im_start|>/<|im_end|>) so the transcript keeps the protocol's stop piece.
PROTOCOL_STOP_PIECES = {0: b"<unk>", 1: b"<s>", 2: b"</s>"}
MAX_STEPS = 2048
SEQ_LEN = 1024
BOS_ID, EOS_ID = 1, 2
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b" \t\n\v\f\r")


class ReferenceAppError(Exception):
    """The model dir cannot be served by the reference app (message says what to do)."""


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


def resolve_model_dir(model_dir: Path, env: dict[str, str] | None = None) -> Path:
    """HF dir to load: ``model_dir`` itself, or ``$ODEVAL_STANDIN_MODEL`` when given a MobileQuant QNN dir."""
    env = dict(os.environ if env is None else env)
    if (model_dir / "qnn_model.bin").exists():
        standin = env.get("ODEVAL_STANDIN_MODEL")
        if not standin:
            raise ReferenceAppError(
                f"{model_dir} is a MobileQuant QNN model (qnn_model.bin) which cannot run on the host CPU; "
                "set device.virtual.standin_model (env ODEVAL_STANDIN_MODEL) to an HF model dir, e.g. a tiny-fp "
                "build or TinyLlama-1.1B-Chat")
        model_dir = Path(standin)
    if not (model_dir / "config.json").is_file():
        raise ReferenceAppError(f"{model_dir}: no config.json; give an HF model dir (python -m pipeline.models "
                                "build tiny-fp --out DIR builds one)")
    return model_dir


ENGINES = ("auto", "numpy", "torch")


@dataclass
class Engine:
    """A loaded model + the app's tokenizer table + the KV state that persists across prompts.

    ``model`` is a transformers model (``backend == "torch"``) or a :class:`pipeline.guest.npllama.NumpyLlama`
    (``"numpy"``); ``cache`` is the matching KV cache (both answer ``get_seq_length()``), None after a reset.
    """

    model: Any
    codec: TokenizerBin
    model_dir: Path
    stop_ids: frozenset[int]
    cache: Any = None
    pos: int = -1  # llm.cpp: last_token_position starts at -1
    load_s: float = 0.0
    eos_piece: bytes = field(default=b"</s>")
    _formats: dict[tuple[str, bool], PromptFormat] = field(default_factory=dict, repr=False)
    backend: str = "torch"

    def prompt_format(self, template: str, gemma: bool = False) -> PromptFormat:
        """The ids this model is fed per prompt under ``template`` (pipeline/prompt_model/prompt_format.py).

        Built once per (template, gemma): building one loads tokenizer.json and compiles the chat template, and
        ``main`` checks the template before the REPL asks for the same format."""
        key = (template, gemma)
        if key not in self._formats:
            try:
                self._formats[key] = load_format(template, self.model_dir, codec=self.codec, gemma=gemma)
            except PromptFormatError as exc:
                raise ReferenceAppError(str(exc)) from None
        return self._formats[key]

    def piece(self, token: int) -> bytes:
        """Bytes printed for ``token``: its tokenizer.bin piece, the protocol's text for a stop id."""
        if token >= len(self.codec):
            return b""
        p = self.codec.piece_bytes(token)
        if token in PROTOCOL_STOP_PIECES and p not in SPECIAL_TEXTS:
            return PROTOCOL_STOP_PIECES[token]
        return p

    def reset(self) -> None:
        self.cache, self.pos = None, -1

    def forward(self, token: int) -> Any:
        """One decode step at the next position (wrapping like the app, but with a cleared cache)."""
        self.pos = (self.pos + 1) % (SEQ_LEN - 1)
        if self.pos == 0:
            self.cache = None
        if self.backend == "numpy":
            if self.cache is None:
                self.cache = self.model.new_cache(SEQ_LEN)
            return self.model.forward(token, self.pos, self.cache)
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([[token]]), cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[0, -1]


def load_engine(model_dir: Path, threads: int | None = None, engine: str | None = None) -> Engine:
    """Load model + tokenizer on the numpy or torch backend (WHY: the app starts once per prompt, and
    ``import transformers`` alone costs ~4 s, so tiny Llamas run on numpy and torch is imported only when used).

    ``engine``: ``auto`` | ``numpy`` | ``torch``; default ``$ODEVAL_ENGINE`` else ``auto`` (numpy for a single
    model.safetensors Llama with default RoPE and <= 50 M parameters, else torch; also torch if numpy refuses it,
    except for a config with activation quantisation, which only numpy emulates: refused rather than run float).
    """
    t0 = time.perf_counter()
    hf_dir = resolve_model_dir(Path(model_dir))
    choice = (engine or os.environ.get("ODEVAL_ENGINE") or "auto").strip().lower()
    if choice not in ENGINES:
        raise ReferenceAppError(f"ODEVAL_ENGINE={choice!r} is unknown; use one of {', '.join(ENGINES)}")
    n_threads = threads or int(os.environ.get("ODEVAL_THREADS", "1") or 1)
    try:
        codec = load_for_model(hf_dir)
    except (OSError, ValueError, TokenizerBinError) as exc:
        raise ReferenceAppError(f"{hf_dir}: cannot load model/tokenizer ({exc})") from exc
    model, eos, backend = None, None, "torch"
    if choice != "torch":
        model, eos = _load_numpy(hf_dir, n_threads, required=choice == "numpy")
        backend = "numpy" if model is not None else "torch"
    if model is None:
        if choice == "torch":  # auto never gets here with such a model: _load_numpy refused it already
            _refuse_numpy_only(hf_dir, n_threads)
        model, eos = _load_torch(hf_dir, n_threads)
    extra = set(eos if isinstance(eos, list) else [eos]) - {None}
    eng = Engine(model, codec, hf_dir, STOP_IDS | extra, backend=backend)
    # one throw-away step before the banner: a fresh process's first forward is 2-3x slower (BLAS and allocator
    # warm-up). It belongs to load, not to the first prompt: the app's own timer skips the first step, and the
    # host's blended rate (which counts it as an ordinary step) disagreed by 3-4 % on SmolLM2 because of it.
    eng.forward(BOS_ID)
    eng.reset()
    eng.load_s = time.perf_counter() - t0
    return eng


def _pin_blas_threads(threads: int) -> None:
    if "numpy" not in sys.modules:  # BLAS reads its thread count once, at numpy import (npllama imports it)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))


def _refuse_numpy_only(hf_dir: Path, threads: int) -> None:
    """Raise when torch would run ``hf_dir`` without part of its config (activation quantisation): never a
    silent fallback, whether torch was asked for or ``auto`` fell back to it."""
    _pin_blas_threads(threads)
    from pipeline.guest import npllama

    reason = npllama.numpy_only_reason(hf_dir)
    if reason is not None:
        raise ReferenceAppError(f"{hf_dir}: the torch engine cannot run this model ({reason})")


def _load_numpy(hf_dir: Path, threads: int, required: bool) -> tuple[Any, Any]:
    """(NumpyLlama, eos_token_id), or (None, None) when ``auto`` should fall back to torch."""
    _pin_blas_threads(threads)
    from pipeline.guest import npllama

    reason = npllama.numpy_ineligible_reason(hf_dir)
    if reason is None:
        try:
            model = npllama.NumpyLlama.from_pretrained(hf_dir)
            return model, npllama.read_config(hf_dir).get("eos_token_id")
        except npllama.NpLlamaError as exc:
            reason = str(exc)
    if required:
        raise ReferenceAppError(f"{hf_dir}: ODEVAL_ENGINE=numpy cannot run this model ({reason}); "
                                "use ODEVAL_ENGINE=torch or auto")
    if npllama.numpy_only_reason(hf_dir) is not None:  # auto must not fall back to torch for it
        raise ReferenceAppError(f"{hf_dir}: the numpy engine cannot run this model ({reason}) and torch cannot "
                                f"emulate its {ACT_QUANT_KEY}; fix config.json or re-fetch the model")
    return None, None


def _load_torch(hf_dir: Path, threads: int) -> tuple[Any, Any]:
    """(transformers model, eos_token_id) on torch CPU float32."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ReferenceAppError(f"{hf_dir}: cannot load model/tokenizer ({exc})") from exc
    return model, model.config.eos_token_id


@dataclass
class GenResult:
    """What one prompt produced (for tests/benchmarks; the REPL only prints)."""

    fed_ids: list[int]
    output_ids: list[int]
    steps: int
    tok_s: float | None
    token_times: list[float]


def generate(engine: Engine, ids: list[int], out: BinaryIO, max_steps: int = MAX_STEPS, faults: Faults = Faults(),
             past_end_token: int | None = None) -> GenResult:
    """llm.cpp's ``LLM::generate`` loop: prefill token by token, greedy, stream pieces, then the tok/s line."""
    current_step, token, n_prompt = 0, ids[0], len(ids)
    output: list[int] = []
    times: list[float] = []
    tick = time.perf_counter()
    while current_step < max_steps:
        logits = engine.forward(token)
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
        current_step += 1
    tok_s = None
    if current_step > 1:
        elapsed = time.perf_counter() - tick
        ms = int(elapsed * 1000)  # std::chrono::duration_cast<milliseconds> truncates
        tok_s = (current_step - 1) / (ms / 1000 if ms > 0 else max(elapsed, 1e-9))
        out.write(f"({tok_s:f} tok/s)\n".encode())
        out.flush()
    return GenResult(list(ids), output, current_step, tok_s, times)


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
        sys.stderr.write(f"reference_app: loaded in {engine.load_s:.3f} s\n")
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
