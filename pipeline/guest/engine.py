"""The reference app's engine: which one runs a model dir, its threads, and the KV position that persists across
prompts (:class:`Engine`).

Engines (``$ODEVAL_ENGINE``): ``native`` (:mod:`pipeline.guest.qkernel`: weights kept compressed, float32
activations, batched prefill; needs the kernel built once per machine), ``numpy`` (:mod:`pipeline.guest.npllama`,
weights dequantised to float32; no torch/transformers import: ~0.2 s start-up), ``torch`` (transformers), ``auto``
(default: native, else numpy — with the reason recorded —, for default-RoPE Llamas up to 200 M parameters, else
torch; A8 models stay on numpy, see :data:`A8_ON_NUMPY`). Threads: ``$ODEVAL_THREADS`` (the run stage sets it from
``app.threads``), else :func:`pipeline.guest.qkernel.default_threads`.

The REPL that drives it (banner, prefill and decode loop, faults) is :mod:`pipeline.guest.reference_app`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.models.act_quant import ACT_QUANT_KEY
from pipeline.models.tokenizer_bin import SPECIAL_TEXTS, TokenizerBin, TokenizerBinError, load_for_model
from pipeline.prompt_model.prompt_format import PromptFormat, PromptFormatError, load_format

STOP_IDS = frozenset({0, 1, 2})  # llm.cpp: if (next == 1 || next == 2 || next == 0) break;
# What simple_app prints for a stop id with MobileQuant's tokenizer.bin; used when this model's own piece for it is
# something else (SmolLM2: <|endoftext|>/<|im_start|>/<|im_end|>) so the transcript keeps the protocol's stop piece.
PROTOCOL_STOP_PIECES = {0: b"<unk>", 1: b"<s>", 2: b"</s>"}
SEQ_LEN = 1024
BOS_ID = 1


class ReferenceAppError(Exception):
    """The model dir cannot be served by the reference app (message says what to do)."""


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


ENGINES = ("auto", "native", "numpy", "torch")


@dataclass
class Engine:
    """A loaded model + the app's tokenizer table + the KV state that persists across prompts.

    ``model`` is a transformers model (``backend == "torch"``), a :class:`pipeline.guest.npllama.NumpyLlama`
    (``"numpy"``) or a :class:`pipeline.guest.qkernel.NativeLlama` (``"native"``); ``cache`` is the matching KV cache
    (all answer ``get_seq_length()``), None after a reset. ``native_reason``: why the native engine does not run
    (empty when it does, or when it was not tried).
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
    native_reason: str = ""
    threads: int = 1

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
        if self.backend != "torch":
            if self.cache is None:
                self.cache = self.model.new_cache(SEQ_LEN)
            return self.model.forward(token, self.pos, self.cache)
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([[token]]), cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[0, -1]

    def batch_refusal(self, n: int, steps_left: int) -> str | None:
        """Why ``n`` tokens cannot be fed by :meth:`forward_batch` as if one by one (None: they can).

        WHY each: only the native engine has a pass whose logits and K/V equal token-by-token feeding bit for bit;
        the ring wrap clears the cache in the middle; the app stops at ``max_steps`` even inside the prompt."""
        if self.backend != "native":
            return f"the {self.backend} engine feeds one token per forward"
        start = (self.pos + 1) % (SEQ_LEN - 1)
        if start + n > SEQ_LEN - 1:
            return f"the KV ring wraps inside the prompt (positions {start}..{start + n - 1}, window {SEQ_LEN - 1})"
        if n > steps_left:
            return f"max_steps ends inside the prompt ({n} tokens, {steps_left} steps left)"
        return None

    def forward_batch(self, tokens: list[int]) -> Any:
        """:meth:`forward` for each of ``tokens`` in one pass; the logits of the last (check :meth:`batch_refusal`
        first). Positions, KV contents and logits are those of ``len(tokens)`` :meth:`forward` calls."""
        start = (self.pos + 1) % (SEQ_LEN - 1)
        if start == 0:
            self.cache = None
        if self.cache is None:
            self.cache = self.model.new_cache(SEQ_LEN)
        logits = self.model.forward_batch(tokens, start, self.cache)
        self.pos = start + len(tokens) - 1
        return logits


def load_engine(model_dir: Path, threads: int | None = None, engine: str | None = None) -> Engine:
    """Load model + tokenizer on the native, numpy or torch backend (WHY: the app starts once per prompt, and
    ``import transformers`` alone costs ~4 s, so small Llamas run without torch, imported only when used).

    ``engine``: ``auto`` | ``native`` | ``numpy`` | ``torch``; default ``$ODEVAL_ENGINE`` else ``auto`` (native —
    else numpy, keeping the reason — for a default-RoPE Llama the numpy engine accepts, else torch; also torch if
    numpy refuses it, except for a config with activation quantisation, which only native/numpy emulate: refused
    rather than run float). ``threads``: else ``$ODEVAL_THREADS``, else :func:`pipeline.guest.qkernel.default_threads`.
    """
    t0 = time.perf_counter()
    hf_dir = resolve_model_dir(Path(model_dir))
    choice = (engine or os.environ.get("ODEVAL_ENGINE") or "auto").strip().lower()
    if choice not in ENGINES:
        raise ReferenceAppError(f"ODEVAL_ENGINE={choice!r} is unknown; use one of {', '.join(ENGINES)}")
    n_threads = threads or _env_threads()
    try:
        codec = load_for_model(hf_dir)
    except (OSError, ValueError, TokenizerBinError) as exc:
        raise ReferenceAppError(f"{hf_dir}: cannot load model/tokenizer ({exc})") from exc
    model, eos, backend, why_not_native = None, None, "torch", ""
    if choice in ("auto", "native"):
        model, eos, why_not_native = _load_native(hf_dir, n_threads, required=choice == "native")
        backend = "native" if model is not None else "torch"
    if model is None and choice != "torch":
        model, eos = _load_numpy(hf_dir, n_threads, required=choice == "numpy")
        backend = "numpy" if model is not None else "torch"
    if model is None:
        if choice == "torch":  # auto never gets here with such a model: _load_numpy refused it already
            _refuse_numpy_only(hf_dir, n_threads)
        model, eos = _load_torch(hf_dir, n_threads)
    extra = set(eos if isinstance(eos, list) else [eos]) - {None}
    eng = Engine(model, codec, hf_dir, STOP_IDS | extra, backend=backend, native_reason=why_not_native,
                 threads=n_threads)
    # one throw-away step before the banner: a fresh process's first forward is 2-3x slower (BLAS and allocator
    # warm-up). It belongs to load, not to the first prompt: the app's own timer skips the first step, and the
    # host's blended rate (which counts it as an ordinary step) disagreed by 3-4 % on SmolLM2 because of it.
    eng.forward(BOS_ID)
    eng.reset()
    eng.load_s = time.perf_counter() - t0
    return eng


def _env_threads() -> int:
    """``$ODEVAL_THREADS`` (a positive integer) else the default for this host."""
    raw = os.environ.get("ODEVAL_THREADS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ReferenceAppError(f"ODEVAL_THREADS={raw!r}: give a positive integer")
        return int(raw)
    from pipeline.guest.qkernel import default_threads

    return default_threads()


# WHY auto keeps A8 on the numpy engine: a fake-quantised activation moves by a whole 8-bit step when float rounding
# puts it on the other side of a rounding boundary, so A8 answers depend on the summation order (native vs numpy
# logits differ by ~1.5 after one such flip, where float activations differ by 5e-5). The numpy engine keeps the
# answers the diagnosis published; ODEVAL_ENGINE=native runs A8 natively (faster, answers of its own order).
A8_ON_NUMPY = ("activation quantisation (A8) runs on the numpy engine by default: its 8-bit rounding flips with the "
               "summation order, and the numpy engine keeps the published A8 answers (ODEVAL_ENGINE=native runs it)")


def _load_native(hf_dir: Path, threads: int, required: bool) -> tuple[Any, Any, str]:
    """(NativeLlama, eos_token_id, "") or (None, None, why not): ``auto`` then tries numpy, ``native`` fails."""
    _pin_blas_threads(1)  # the kernel has its own threads; numpy only does the argmax
    from pipeline.guest import npllama, qkernel

    reason = npllama.numpy_ineligible_reason(hf_dir)
    model = None
    if reason is None and not required and npllama.numpy_only_reason(hf_dir) is not None:
        reason = A8_ON_NUMPY
    elif reason is None:
        model, reason = qkernel.load(hf_dir, threads)
    if model is not None:
        return model, npllama.read_config(hf_dir).get("eos_token_id"), ""
    if required:
        raise ReferenceAppError(f"{hf_dir}: ODEVAL_ENGINE=native cannot run this model ({reason}); "
                                "use ODEVAL_ENGINE=numpy or auto")
    return None, None, reason


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
