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


class TokenizerUnreadable(ValueError):
    """The tokenizer file exists but cannot be parsed; the message is one line naming the file."""


def token_counter(model_dir: Path) -> Callable[[str], int]:
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        path = model_dir / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for every parse error
            raise TokenizerUnreadable(_unreadable(path, e)) from None
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids) if text else 0
    if (model_dir / "tokenizer.bin").exists():
        from pipeline.models.tokenizer_bin import TokenizerBin, TokenizerBinError

        try:
            tb = TokenizerBin.load(model_dir / "tokenizer.bin")
        except TokenizerBinError as e:
            raise TokenizerUnreadable(_unreadable(model_dir / "tokenizer.bin", e)) from None
        return lambda text: len(tb.encode(text)) if text else 0
    raise TokenizerNotFound(
        f"{model_dir}: no tokenizer.json or tokenizer.bin — output tokens cannot be counted; add the tokenizer "
        "files to model.allow_patterns"
    )


def _unreadable(path: Path, e: Exception) -> str:
    detail = (str(e).splitlines() or [type(e).__name__])[0]
    return f"{path}: unreadable tokenizer ({detail}) — output tokens cannot be counted; re-fetch the model"
