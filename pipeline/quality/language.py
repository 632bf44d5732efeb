"""language_match: a cheap script detector, enough to tell a Chinese answer from an English one.

WHY a script count and not a language-ID model: the sets we score are en and zh; the failure we want to catch is a
quantised model answering a Chinese prompt in English (or in mojibake). Letters are counted per script; the
majority script decides. Latin script is reported as "en" — this detector cannot tell English from French, so a
`lang` other than the supported ones yields null with a reason instead of a guess.
"""

from __future__ import annotations

import unicodedata

SUPPORTED = ("en", "zh", "ja", "ko", "ru")


def _script(ch: str) -> str | None:
    o = ord(ch)
    if 0x3040 <= o <= 0x30FF:
        return "ja"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
        return "ko"
    if 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF:
        return "zh"
    if 0x0400 <= o <= 0x04FF:
        return "ru"
    if ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN"):
        return "en"
    return None


def detect(text: str) -> str | None:
    """Majority script of the letters in ``text`` as a language code; None when there are no letters.

    Any kana makes it "ja" when Han also dominates (Japanese mixes kanji and kana; Chinese has no kana).
    """
    counts: dict[str, int] = {}
    for ch in text:
        s = _script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None
    if counts.get("ja") and counts.get("zh", 0) + counts["ja"] >= max(counts.values()):
        return "ja"
    # Chinese answers often contain a few Latin words (names, units): weight each ideograph like a ~3-letter word.
    weighted = {k: v * (3 if k == "zh" else 1) for k, v in counts.items()}
    return max(weighted, key=lambda k: weighted[k])


def language_match(response: str, lang: str | None) -> tuple[float | None, str | None, str | None]:
    """(match 1.0/0.0 or None, detected language, reason when None)."""
    detected = detect(response)
    if not lang:
        return None, detected, "no lang given"
    base = lang.lower().split("-")[0]
    if base not in SUPPORTED:
        return None, detected, f"lang {lang!r} not supported by the script detector (supported: {', '.join(SUPPORTED)})"
    if detected is None:
        return None, None, "no letters in the answer (digits/punctuation only): language undetermined"
    return float(detected == base), detected, None
