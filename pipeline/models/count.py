"""Count tokens the way the model on the device does, on the host, to turn output bytes into tokens/s.

The app prints text, not token ids, so decode tok/s needs the answer re-tokenised with the model's own
tokenizer: `tokenizer.json` (HF dirs, via `tokenizers` — no transformers import) or `tokenizer.bin`
(MobileQuant/llama2.c dirs, via the project's reader). No BOS/special tokens are added: the app feeds none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class TokenizerNotFound(FileNotFoundError):
    """The model dir has neither tokenizer.json nor tokenizer.bin."""


def token_counter(model_dir: Path) -> Callable[[str], int]:
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids) if text else 0
    if (model_dir / "tokenizer.bin").exists():
        from pipeline.models.tokenizer_bin import TokenizerBin

        tb = TokenizerBin.load(model_dir / "tokenizer.bin")
        return lambda text: len(tb.encode(text)) if text else 0
    raise TokenizerNotFound(
        f"{model_dir}: no tokenizer.json or tokenizer.bin — output tokens cannot be counted; add the tokenizer "
        "files to model.allow_patterns"
    )


def reference_prompt_counter(model_dir: Path, template: str) -> Callable[[str], int]:
    """Tokens the reference app feeds for one prompt line under ``app.template``: its own ids, counted exactly.

    WHY: the blended rate ``(prompt + answer tokens - 1) / time`` needs the prompt tokens the app really prefilled.
    simple_app's count (`pipeline.apps.simple_app.prompt_token_count`) is right for simple_app's hard-coded
    template only; under ``hf-chat`` SmolLM2's ChatML adds a ~30-token system turn, and under ``mobilequant`` its
    tokenizer spells ``</s>`` as text, so that count was 15 tokens short (host/app blended ratio 0.6).
    """
    from pipeline.apps import reference_app as ra
    from pipeline.models.tokenizer_bin import load_for_model

    model_dir = Path(model_dir)
    codec = load_for_model(model_dir)
    chat = ra._chat_renderer(model_dir) if template == "hf-chat" else None
    bos = ra._adds_bos(model_dir)
    return lambda text: len(ra.template_ids(template, text, codec, chat, bos))
