"""Optional LLM judge over an OpenAI-compatible chat-completions endpoint (off by default).

WHY optional: the lexical and embedding families are cheap, deterministic and offline; a judge is none of these,
but it can grade open-ended answers (jokes, poems) that have no reference. Off unless a URL is given.

Rubric (sent as the system message; the judge must reply with JSON {"score": 1-5, "reason": "..."}):
  5 = fully answers the user's request, correct and on topic; 4 = on topic with minor flaws;
  3 = partly answers or has a clear error; 2 = mostly off topic or wrong; 1 = off topic, empty, or gibberish.
``judge_score`` = (score - 1) / 4 in [0, 1]. Any failure (endpoint down, HTTP error, unparsable reply) gives a null
score with ``judge_reason`` saying why; scoring never fails because of the judge. The API key is read only from the
environment variable named by ``api_key_env`` (never from config files, never logged). Requests use temperature 0.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

RUBRIC = (
    "You grade a chatbot's answer to a user's request. Reply with only a JSON object "
    '{"score": <integer 1-5>, "reason": "<one sentence>"}. Scale: 5 = fully answers the request, correct and on '
    "topic; 4 = on topic with minor flaws; 3 = partly answers or has a clear error; 2 = mostly off topic or wrong; "
    "1 = off topic, empty, or gibberish."
)


def _message(item: Mapping[str, Any]) -> str:
    ref = item.get("reference")
    extra = f"\nReference answer (may be abbreviated): {json.dumps(ref, ensure_ascii=False)}" if ref else ""
    return f"User request: {item['prompt']}\nChatbot answer: {item['response']}{extra}"


def parse_verdict(text: str) -> tuple[int | None, str]:
    """(score 1-5 or None, reason) from the judge's reply; tolerates code fences and prose around the JSON."""
    m = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if m:
        try:
            obj = json.loads(m.group(0))
            score = obj.get("score")
            if isinstance(score, int | float) and 1 <= score <= 5:
                return int(round(score)), str(obj.get("reason", ""))
        except (ValueError, AttributeError):
            pass
    return None, f"unparsable judge reply: {text[:80]!r}"


def judge_one(item: Mapping[str, Any], *, url: str, model: str, api_key: str | None, timeout_s: float) -> dict:
    """POST one grading request; returns judge_score / judge_raw / judge_reason."""
    body = json.dumps({
        "model": model, "temperature": 0, "max_tokens": 200,
        "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": _message(item)}],
    }).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
        text = payload["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as exc:
        return {"judge_score": None, "judge_raw": None, "judge_reason": f"judge HTTP {exc.code} from {url}"}
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"judge_score": None, "judge_raw": None, "judge_reason": f"judge unreachable at {url}: {reason}"}
    except (ValueError, KeyError, IndexError, TypeError):
        return {"judge_score": None, "judge_raw": None, "judge_reason": "judge reply is not a chat completion"}
    score, reason = parse_verdict(text)
    return {"judge_score": None if score is None else (score - 1) / 4, "judge_raw": score, "judge_reason": reason}


def judge_items(
    items: Sequence[Mapping[str, Any]],
    *,
    url: str,
    model: str = "judge",
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 60.0,
) -> list[dict]:
    """Grade every item (sequentially: one endpoint, polite). See the module doc for the rubric."""
    api_key = os.environ.get(api_key_env) or None
    return [judge_one(it, url=url, model=model, api_key=api_key, timeout_s=timeout_s) for it in items]
