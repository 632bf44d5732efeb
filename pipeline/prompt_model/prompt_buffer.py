"""simple_app's prompt buffer, slot by slot: what ``LLM::generate`` reads one past the prompt.

WHY: MobileQuant's ``capp/src/llm.cpp`` allocates ``malloc((strlen(prompt)+20)*sizeof(int))``, lets llama2.c's
``encode`` write the template prefix and one token per character, runs the merge loop over the whole buffer
(prefix included) — each merge shifts the tail left by one and never clears the last slot — and only then writes
the suffix. ``LLM::generate`` forces ``prompt_tokens[current_step + 1]`` while ``current_step < num_prompt_tokens``,
so its last forced input is ``prompt_tokens[num_prompt_tokens]``: one read past the prompt. That slot was written in
this call only when the merges removed more tokens than the suffix re-fills (k merges > len(suffix), i.e. ≥ 10
with simple_app's 9-id suffix), and then it holds whatever the shifting left there (a copy of a former last live
token — usually the prompt's last character, ``.`` or ``?``). Otherwise it is heap memory this call never wrote: its
value is unknowable from the source, so the emulation feeds a documented, configurable id (``unwritten_id``).

This module is pure (ids in, ids out) so the reference app (which feeds the id) and the run stage (which records
case + id in each response row) share one implementation, like :mod:`pipeline.prompt_model.prompt_format`.

Per-character tokens (llama2.c ``str_lookup`` of each UTF-8 codepoint, else byte fallback) come from
:meth:`TokenizerBin._initial_ids`. For SmolLM2's byte-level BPE vocabulary the tokenizer.bin stores each token as
its raw bytes (GPT-2's ``Ġ`` etc. mapped back), so a character's single-character token is the token whose bytes
are exactly that character's UTF-8 (``" "`` → ``Ġ``, ``"."`` → ``.``), which is what ``str_lookup`` would find
in such a file; a codepoint with no such token falls back to each byte's own single-byte token. No HF
pre-tokenisation: the app has none, so merges may cross GPT-2 pre-token boundaries here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.models.tokenizer_bin import TokenizerBin
from pipeline.prompt_model.prompt_format import (
    GEMMA_PREFIX,
    GEMMA_SUFFIX,
    PromptFormat,
    PromptFormatError,
    mobilequant_markers,
)

CASES = ("stale", "unwritten", "forced", "none")
# Fed for a never-written slot unless configured: 0 is what freshly mapped (zeroed) heap pages hold, and what the
# earlier emulation fed for every prompt. A reused heap chunk could hold anything; there is no better-founded value.
DEFAULT_UNWRITTEN_ID = 0


@dataclass(frozen=True)
class PromptBuffer:
    """The int buffer after ``encode``: ``slots[i]`` is None where this call never wrote."""

    slots: tuple[int | None, ...]
    num_prompt_tokens: int
    merges: int

    @property
    def prompt_ids(self) -> list[int]:
        """What the app feeds as the prompt (positions 0 .. num_prompt_tokens-1)."""
        return [int(t) for t in self.slots[: self.num_prompt_tokens]]  # type: ignore[arg-type]

    @property
    def past_end(self) -> int | None:
        """``prompt_tokens[num_prompt_tokens]``: the id in that slot, None when never written in this call."""
        i = self.num_prompt_tokens
        return self.slots[i] if i < len(self.slots) else None


@dataclass(frozen=True)
class PastEnd:
    """Which past-end case applied to one prompt and the id fed (None: nothing fed, the fixed app)."""

    case: str
    id_fed: int | None
    index: int | None = None

    def to_row(self) -> dict:
        return {"case": self.case, "id_fed": self.id_fed, "index": self.index}


def merge_in_place(buf: list[int | None], n: int, codec: TokenizerBin) -> int:
    """llama2.c's merge loop on ``buf[0:n]`` exactly as written in llm.cpp: pick the best-scoring adjacent pair
    (first index on ties, strict ``>``), write the merged id at ``best_idx``, shift ``best_idx+2 .. n-1`` left by one
    and decrement ``n`` — the old last slot keeps its value. Returns the new ``n`` (O(n²): prompts are short)."""
    pieces, scores, lookup = codec.pieces, codec.scores, codec._lookup
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(n - 1):
            tid = lookup.get(pieces[buf[i]] + pieces[buf[i + 1]])  # type: ignore[index]
            if tid is not None and scores[tid] > best_score:
                best_score, best_id, best_idx = scores[tid], tid, i
        if best_idx == -1:
            return n
        buf[best_idx] = best_id
        for i in range(best_idx + 1, n - 1):
            buf[i] = buf[i + 1]
        n -= 1


def build_buffer(prefix: Sequence[int], text: str | bytes, suffix: Sequence[int], codec: TokenizerBin,
                 capacity: int | None = None) -> PromptBuffer:
    """simple_app's ``encode(&tokenizer, prompt, _chat_prefix, _chat_suffix, prompt_tokens, &n)``.

    ``capacity`` defaults to the app's allocation, ``len(text bytes) + 20`` ints (slots past it are never written
    by this call either: reading one is the ``unwritten`` case too)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    chars = codec._initial_ids(data)
    cap = len(data) + 20 if capacity is None else capacity
    # a template longer than simple_app's 15 ids would overflow the app's allocation; model the writes anyway
    buf: list[int | None] = [None] * max(cap, len(prefix) + len(chars) + len(suffix) + 1)
    n = 0
    for t in [*prefix, *chars]:
        buf[n] = t
        n += 1
    n0 = n
    n = merge_in_place(buf, n, codec)
    for t in suffix:
        buf[n] = t
        n += 1
    return PromptBuffer(tuple(buf), n, n0 - (n - len(suffix)))


def past_end_for(setting: str | int | None, prefix: Sequence[int], text: str | bytes, suffix: Sequence[int],
                 codec: TokenizerBin, unwritten_id: int | None = DEFAULT_UNWRITTEN_ID) -> PastEnd:
    """What to feed after the prompt for ``app.past_end_token`` = ``setting``.

    ``None`` → the fixed app (case ``none``); an int → that id (``forced``); ``"faithful"`` → the buffer's slot
    (``stale``) or ``unwritten_id`` when the slot was never written (``unwritten``)."""
    if setting is None:
        return PastEnd("none", None)
    if isinstance(setting, int) and not isinstance(setting, bool):
        return PastEnd("forced", setting)
    if setting != "faithful":
        raise ValueError(f"past-end setting {setting!r}: use null, an integer id or 'faithful'")
    buf = build_buffer(prefix, text, suffix, codec)
    value = buf.past_end
    if value is None:
        return PastEnd("unwritten", unwritten_id, buf.num_prompt_tokens)
    return PastEnd("stale", value, buf.num_prompt_tokens)


def template_markers(fmt: PromptFormat) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the template puts around the encoded line, as simple_app's ``encode`` receives them.

    ``mobilequant``: simple_app's own ids (:func:`mobilequant_markers`, gemma's for a gemma dir). ``hf-chat`` /
    ``raw`` (a simple_app rebuilt with another template, for the one-factor flips): the common head and tail of the
    format's ids for two one-letter lines — what the template adds whatever the line is."""
    if fmt.name == "mobilequant":
        return (list(GEMMA_PREFIX), list(GEMMA_SUFFIX)) if fmt.gemma else mobilequant_markers(fmt.codec)
    a, b = fmt.ids("A"), fmt.ids("B")
    head = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    tail = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b), strict=False)) if x != y),
                min(len(a), len(b)))
    if len(a) != len(b) or head + tail + 1 != len(a):
        raise PromptFormatError(f"template {fmt.name}: cannot separate its prefix/suffix from the line "
                                f"(ids for 'A': {a}, for 'B': {b}); use app.past_end_token=null or an id")
    return a[:head], a[len(a) - tail:]


def past_end(fmt: PromptFormat, setting: str | int | None, line: str | bytes,
             unwritten_id: int | None = DEFAULT_UNWRITTEN_ID) -> PastEnd:
    """:func:`past_end_for` with the format's template ids and vocabulary (what the app feeds for ``line``)."""
    if setting is None or (isinstance(setting, int) and not isinstance(setting, bool)):
        return past_end_for(setting, [], b"", [], fmt.codec, unwritten_id)
    prefix, suffix = template_markers(fmt)
    return past_end_for(setting, prefix, line, suffix, fmt.codec, unwritten_id)


def format_setting(setting: str | int | None, unwritten_id: int = DEFAULT_UNWRITTEN_ID) -> str:
    """The one env value that carries the setting to the app: ``""``, ``"<id>"`` or ``"faithful:<unwritten id>"``."""
    if setting is None:
        return ""
    return f"faithful:{int(unwritten_id)}" if setting == "faithful" else str(int(setting))


def parse_setting(text: str) -> tuple[str | int | None, int]:
    """``$ODEVAL_QUIRK_PAST_END_TOKEN`` → (setting, unwritten id): empty → None, ``faithful[:<id>]``, or an integer
    id (else ValueError)."""
    text = text.strip()
    if not text:
        return None, DEFAULT_UNWRITTEN_ID
    name, sep, fallback = text.partition(":")
    if name == "faithful" and (not sep or fallback.lstrip("-").isdigit()):
        return "faithful", int(fallback) if sep else DEFAULT_UNWRITTEN_ID
    if not sep and text.lstrip("-").isdigit():
        return int(text), DEFAULT_UNWRITTEN_ID
    raise ValueError(f"{text!r} is neither an integer token id nor 'faithful[:<id>]'")
