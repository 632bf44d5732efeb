"""Optional LLM judge against a stub OpenAI-compatible server on 127.0.0.1 (real HTTP, real urllib client)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.quality.composite import score_items
from pipeline.quality.judge import RUBRIC, judge_items, parse_verdict
from tests.quality.cases import INK_ANSWER, JOKE_ANSWER, JOKE_PROMPT


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append((self.path, self.headers.get("Authorization"), body))
        user = body["messages"][1]["content"]
        if "BROKEN" in user:
            self.send_response(500)
            self.end_headers()
            return
        if "GARBLE" in user:
            content = "I think it is fine."
        else:
            score = 5 if "Because" in user else 1
            content = f'```json\n{{"score": {score}, "reason": "stub"}}\n```'
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_grades_and_sends_rubric_and_key(judge_url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    good, bad = judge_items([{"prompt": JOKE_PROMPT, "response": JOKE_ANSWER},
                             {"prompt": JOKE_PROMPT, "response": INK_ANSWER}], url=judge_url, model="m")
    assert good == {"judge_score": 1.0, "judge_raw": 5, "judge_reason": "stub"}
    assert bad["judge_score"] == 0.0
    path, auth, body = _Stub.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "m" and body["temperature"] == 0 and body["messages"][0]["content"] == RUBRIC


def test_judge_failures_are_null_with_reason(judge_url):
    broken, garbled = judge_items([{"prompt": "p", "response": "BROKEN"}, {"prompt": "p", "response": "GARBLE"}],
                                  url=judge_url)
    assert broken["judge_score"] is None and "HTTP 500" in broken["judge_reason"]
    assert garbled["judge_score"] is None and "unparsable" in garbled["judge_reason"]
    (down,) = judge_items([{"prompt": "p", "response": "r"}], url="http://127.0.0.1:9/v1", timeout_s=2)
    assert down["judge_score"] is None and "unreachable" in down["judge_reason"]


def test_judge_enters_quality_score_only_when_on(judge_url):
    (on,) = score_items([{"prompt": JOKE_PROMPT, "response": JOKE_ANSWER}], relevance=False, judge_url=judge_url)
    (off,) = score_items([{"prompt": JOKE_PROMPT, "response": JOKE_ANSWER}], relevance=False)
    assert on["quality_families"] == "judge,degeneration" and "judge_score" not in off
    assert on["quality_score"] == pytest.approx(on["judge_score"] * on["quality_form"])  # judge = content
    assert "form only" in off["quality_score_basis"] and "quality_score_basis" not in on


def test_parse_verdict():
    assert parse_verdict('{"score": 4, "reason": "ok"}') == (4, "ok")
    assert parse_verdict('{"score": 9}')[0] is None
