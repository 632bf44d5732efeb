"""Shared text normalisation and tokenisation for the lexical quality families.

WHY one module: reference match, keyword recall, fidelity and degeneration must agree on what a "word" is, or the
same answer would count as containing "4" for one family and not for another. Tokens are lower-cased, NFKC-folded
words; numbers keep their decimal point and drop thousands separators ("1,000" == "1000", "4" != "42" != "4.2")
and a decimal number is written canonically, trailing fractional zeros dropped ("100.0" == "100", "2.50" == "2.5"),
so "approximately 100.0 degrees" contains the reference "100" while "1000" still does not;
CJK ideographs are one token each (Chinese has no spaces; character-level matching is the usual choice for zh).
"""

from __future__ import annotations

import re
import unicodedata

# A CJK ideograph / kana / hangul syllable is a token by itself; a number keeps its internal "." / ","; otherwise a
# run of letters/digits (apostrophes inside words kept: "don't").
_TOKEN_RE = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]"
    r"|\d+(?:[.,]\d+)*"
    r"|[^\W\d_]+(?:'[^\W\d_]+)*"
    r"|\d+",
)
_ARTICLES = frozenset({"a", "an", "the"})


def normalize(text: str) -> str:
    """NFKC + casefold, so full-width digits and ligatures compare equal to their plain forms."""
    return unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")


def canonical_number(tok: str) -> str:
    """"100.0" -> "100", "2.50" -> "2.5"; anything that is not one plain decimal (e.g. "1.1.1", "1,5") unchanged."""
    m = re.fullmatch(r"(\d+)\.(\d+)", tok)
    if not m:
        return tok
    frac = m.group(2).rstrip("0")
    return f"{m.group(1)}.{frac}" if frac else m.group(1)


def tokens(text: str, *, drop_articles: bool = False) -> list[str]:
    """Words of ``text`` (see module doc). ``drop_articles`` is the SQuAD convention for exact match / F1."""
    out = []
    for tok in _TOKEN_RE.findall(normalize(text)):
        if tok[0].isdigit():
            # "1,000" -> "1000"; keep a decimal point so "4.2" stays distinct from "42".
            tok = canonical_number(re.sub(r",(?=\d{3}(?:\D|$))", "", tok))
        if drop_articles and tok in _ARTICLES:
            continue
        out.append(tok)
    return out


def contains_tokens(haystack: list[str], needle: list[str]) -> bool:
    """True when ``needle`` occurs as a contiguous run of whole tokens: word-boundary containment ("4" not in "42")."""
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    return any(haystack[i] == first and haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def lcs_len(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (ROUGE-L's core), O(len(a)*len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 (beta=1) over token lists; 0.0 when either side is empty."""
    lcs = lcs_len(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def token_f1(candidate: list[str], reference: list[str]) -> float:
    """SQuAD-style bag-of-tokens F1."""
    from collections import Counter

    common = sum((Counter(candidate) & Counter(reference)).values())
    if common == 0:
        return 0.0
    p, r = common / len(candidate), common / len(reference)
    return 2 * p * r / (p + r)
