"""One prompt format per template: the exact token ids an app feeds for one prompt line.

WHY one object: the reference app needs the ids to feed, the runner needs their count (``n_prompt_tokens``, the
prefill work behind every throughput number, and the positions a prompt uses), and the run stage needs the same
count to refuse a prompt that does not fit the model's positions. Three copies of "what the template adds" had
drifted (the runner counted simple_app's template even for ``hf-chat`` and ``raw``); now all use :meth:`ids`.

Templates:
- ``mobilequant`` — simple_app's hard-coded chat template (MobileQuant ``capp/src/llm.cpp``): prefix
  ``<|user|>\\n`` and suffix ``</s>\\n<|assistant|>\\n`` around the encoded line, **no BOS**, no system prompt. With
  the Llama-2/TinyLlama 32k vocabulary these are the app's literal ids; with another vocabulary (our tiny models,
  SmolLM2) the same strings encoded by that tokenizer (``</s>`` as the EOS id when that is the EOS piece). For a
  model dir with "gemma" in its path, simple_app's gemma ids (``<bos><start_of_turn>`` … ``<end_of_turn>
  <start_of_turn>``, 2 106 / 107 106). The context carries over between prompts.
- ``hf-chat`` — the model's own chat template (tokenizer_config.json ``chat_template``, rendered in a sandbox and
  tokenised with ``tokenizers``), BOS added when the tokenizer adds one; fresh context per prompt.
- ``raw`` — the line alone (BOS first when the tokenizer adds one); fresh context per prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.models.tokenizer_bin import TokenizerBin, load_for_model

TEMPLATES = ("mobilequant", "hf-chat", "raw")
LLAMA2_PREFIX = (29966, 29989, 1792, 29989, 29958, 13)  # "<|user|>\n"
LLAMA2_SUFFIX = (2, 13, 29966, 29989, 465, 22137, 29989, 29958, 13)  # "</s>\n<|assistant|>\n"
GEMMA_PREFIX, GEMMA_SUFFIX = (2, 106), (107, 106)  # <bos><start_of_turn> … <end_of_turn><start_of_turn>
BOS_ID, EOS_ID = 1, 2


class PromptFormatError(ValueError):
    """A template that cannot be used with this model dir (the message says what to do)."""


def is_llama2_vocab(codec: TokenizerBin) -> bool:
    """The 32 000-entry Llama-2/TinyLlama vocabulary the app's hard-coded template ids belong to."""
    return len(codec) == 32000 and codec.pieces[1792] == b"user" and codec.pieces[22137] == b"istant"


def mobilequant_markers(codec: TokenizerBin) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids of simple_app's template for this vocabulary (see the module doc)."""
    if is_llama2_vocab(codec):
        return list(LLAMA2_PREFIX), list(LLAMA2_SUFFIX)
    if len(codec) > EOS_ID and codec.pieces[EOS_ID] == b"</s>":
        return codec.encode("<|user|>\n"), [EOS_ID, *codec.encode("\n<|assistant|>\n")]
    return codec.encode("<|user|>\n"), codec.encode("</s>\n<|assistant|>\n")


@dataclass(frozen=True)
class PromptFormat:
    """The ids one template feeds for a line, for one model's tokenizer."""

    name: str
    codec: TokenizerBin
    chat: Callable[[str], list[int]] | None = None
    bos: bool = True  # the tokenizer adds BOS (``add_bos_token``; Llama default); SmolLM2's does not
    gemma: bool = False  # simple_app's gemma code path ("gemma" in the model dir)

    def __post_init__(self) -> None:
        if self.name not in TEMPLATES:
            raise PromptFormatError(f"template {self.name!r} is unknown; use one of {', '.join(TEMPLATES)}")
        if self.name == "hf-chat" and self.chat is None:
            raise PromptFormatError("template hf-chat needs the model's chat_template (tokenizer_config.json) and "
                                    "tokenizer.json; use app.template=mobilequant or raw for this model")

    @property
    def carries_context(self) -> bool:
        """simple_app keeps the KV position across prompts; the other templates start each prompt fresh."""
        return self.name == "mobilequant"

    def ids(self, line: str | bytes) -> list[int]:
        """The ids fed for ``line`` (its prefill is token by token: each id is one position and one step)."""
        if self.name == "mobilequant":
            if self.gemma:
                return [*GEMMA_PREFIX, *self.codec.encode(line), *GEMMA_SUFFIX]
            prefix, suffix = mobilequant_markers(self.codec)
            return prefix + self.codec.encode(line) + suffix
        text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
        if self.name == "raw":
            return [BOS_ID, *self.codec.encode(text)] if self.bos else self.codec.encode(text)
        assert self.chat is not None
        ids = self.chat(text)
        return ids if ids[:1] == [BOS_ID] or not self.bos else [BOS_ID, *ids]

    def count(self, line: str | bytes) -> int:
        return len(self.ids(line))


def load_format(name: str, model_dir: Path, codec: TokenizerBin | None = None, gemma: bool | None = None
                ) -> PromptFormat:
    """The format ``name`` for the model in ``model_dir`` (its tokenizer.bin/tokenizer.json and chat template).

    ``gemma`` defaults to simple_app's rule on the dir path; pass the device-side dir's rule when they differ."""
    model_dir = Path(model_dir)
    return PromptFormat(name, codec or load_for_model(model_dir), chat_renderer(model_dir), adds_bos(model_dir),
                        ("gemma" in str(model_dir)) if gemma is None else gemma)


def adds_bos(model_dir: Path) -> bool:
    """``add_bos_token`` of tokenizer_config.json (absent: True, the Llama default our tiny models follow)."""
    try:
        cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return bool(cfg.get("add_bos_token", True)) if isinstance(cfg, dict) else True


def chat_renderer(model_dir: Path) -> Callable[[str], list[int]] | None:
    """Render the chat_template with jinja2's sandbox and tokenise with ``tokenizers`` (no transformers import)."""
    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tmpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if not isinstance(tmpl, str) or not (model_dir / "tokenizer.json").is_file():
        return None

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    def tok_text(v: Any) -> str:
        return v.get("content", "") if isinstance(v, dict) else (v or "")

    # compiled and loaded once: re-loading tokenizer.json per prompt cost 0.5 s inside every TTFT (SmolLM2)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(tmpl)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def render(prompt: str) -> list[int]:
        text = template.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                               bos_token=tok_text(cfg.get("bos_token")), eos_token=tok_text(cfg.get("eos_token")))
        return tokenizer.encode(text, add_special_tokens=False).ids

    return render
