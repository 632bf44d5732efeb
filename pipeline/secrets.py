"""What counts as a secret — one definition for config validation (refuse) and MLflow logging (mask).

Secrets (the HF token, a judge API key) come from the environment only; config values land in params.yaml,
MLflow params and git history. Keys are matched on the last dotted component, split into words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_WORDS = ("password", "passwd", "secret", "authorization", "apikey", "credential", "credentials")
_PAIRS = (("api", "key"), ("private", "key"), ("access", "key"))
# `token` is a secret only alone or after a credential qualifier: hf_token, auth_token — not max_new_tokens,
# token_f1 or past_end_token (a token *id*).
_TOKEN_QUALIFIERS = ("hf", "api", "auth", "access", "bearer", "refresh", "session", "oauth", "github", "gh", "id",
                     "private", "secret", "huggingface", "hub")
VALUE_PATTERNS = (
    (re.compile(r"hf_[A-Za-z0-9]{20,}"), "hf_" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"), "sk-" + MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1" + MASK + "@"),
)


def key_words(key: str) -> list[str]:
    """Words of the last dotted key component: ``judge.apiKey`` → ['api', 'key'], ``HF_TOKEN`` → ['hf', 'token']."""
    last = re.split(r"[./]", key)[-1]
    last = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", last)
    return [w for w in re.split(r"[^A-Za-z0-9]+", last.lower()) if w]


def is_secret_key(key: str) -> bool:
    words = key_words(key)
    if not words:
        return False
    if words[-1] == "token" and (len(words) == 1 or words[-2] in _TOKEN_QUALIFIERS):
        return True
    if words[-1] == "auth" or any(w in _WORDS for w in words):
        return True
    return any(pair in _PAIRS for pair in zip(words, words[1:], strict=False))


def has_secret_value(value: Any) -> bool:
    return isinstance(value, str) and any(p.search(value) for p, _ in VALUE_PATTERNS)


def redact_value(value: str) -> str:
    for pattern, repl in VALUE_PATTERNS:
        value = pattern.sub(repl, value)
    return value


def redact(d: Any) -> Any:
    """Copy of ``d`` (dict/list, nested or flat) with secret-looking keys and token-like values masked.

    Masked, not dropped: seeing ``judge.api_key=***`` tells a reader the run used a key without leaking it.
    """
    if isinstance(d, Mapping):
        return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") and not isinstance(v, bool) else redact(v))
                for k, v in d.items()}  # a bool (device.virtual.auth) is a switch, never a credential
    if isinstance(d, list | tuple):
        return [redact(v) for v in d]
    if isinstance(d, str):
        return redact_value(d)
    return d
