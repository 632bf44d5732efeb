"""A small stand-in for simple_app used by tests/run: same REPL bytes, scriptable faults via env vars.

Behaves like MobileQuant's simple_app at the byte level: banner (gemma banner when 'gemma' is in the model dir),
`>>> ` prompts, one line per prompt, streamed token pieces, `</s>`, `(N tok/s)` computed the app's way
((steps-1)/time, steps include the templated prompt tokens), `!exit`, re-prompt on an empty line, and on stdin
EOF it prints `>>> ` forever (slowly). It records argv/cwd/env/received lines in `stub_log.jsonl` in its cwd.
Env: STUB_TOKENS (filler tokens per answer), STUB_DELAY (s per token), STUB_LOAD_DELAY, STUB_CRASH_AFTER (exit 3
after N output tokens), STUB_HANG (stop after 2 tokens forever), STUB_INVALID_UTF8 (emit bad bytes and a
multi-byte char split across writes), STUB_FAULT_ON (faults only for prompts containing it), STUB_NO_EOS
(no `</s>`, like hitting the step cap), STUB_STEPS (the step cap, prompt tokens included).
"""

import json
import os
import re
import sys
import time


def out(b: bytes) -> None:
    os.write(1, b)


def pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def log(**kw) -> None:
    with open("stub_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(kw) + "\n")


def main() -> None:
    env = os.environ
    model_dir = sys.argv[1] if len(sys.argv) > 1 else ""
    log(event="start", argv=sys.argv[1:], cwd=os.getcwd(), pid=os.getpid(),
        env={k: v for k, v in env.items() if k.startswith(("STUB_", "LD_", "ADSP_"))})
    delay = float(env.get("STUB_DELAY", "0.002"))
    n_fill = int(env.get("STUB_TOKENS", "5"))
    crash_after = int(env.get("STUB_CRASH_AFTER", "-1"))
    steps_cap = int(env.get("STUB_STEPS", "2048"))
    time.sleep(float(env.get("STUB_LOAD_DELAY", "0")))
    welcome = b"Please enter the prompt\n>>> " if "gemma" in model_dir else b"Hello, how can I help you today?\n>>> "
    turn = 0
    while True:
        out(welcome)
        line = sys.stdin.buffer.readline()
        if not line:  # like simple_app: getline fails, cmd empty, loop printing the prompt forever
            while True:
                out(b">>> ")
                time.sleep(0.01)
        cmd = line.rstrip(b"\n")
        if not cmd:
            continue
        log(event="line", text=cmd.decode("utf-8", "surrogateescape"))
        if cmd.startswith(b"!"):
            if cmd.split()[0] == b"!exit":
                sys.exit(0)
            os.write(2, b"Unknown command: " + cmd.split()[0] + b"\n")
        else:
            turn += 1
            text = cmd.decode("utf-8", "replace")
            n_prompt = len(pieces("<|user|>\n")) + len(pieces(text)) + 1 + len(pieces("\n<|assistant|>\n"))
            answer = f"turn {turn}: you said: {text} ." + "".join(f" w{i}" for i in range(n_fill))
            toks = [p.encode() for p in pieces(answer)]
            fault = env.get("STUB_FAULT_ON", "") in text  # faults apply only to prompts containing this text
            if env.get("STUB_INVALID_UTF8") and fault:
                toks[1:1] = [b" \xff\xfe", " é".encode()[:2], " é".encode()[2:] + b"!"]
            tick = time.monotonic()
            time.sleep(delay * n_prompt)  # token-by-token prefill
            emitted = 0
            for i, tok in enumerate(toks):
                if i == crash_after and fault:
                    os.write(2, b"stub: simulated crash\n")
                    os._exit(3)
                if env.get("STUB_HANG") and fault and i == 2:
                    time.sleep(3600)
                if n_prompt + emitted >= steps_cap:
                    break
                out(tok)
                emitted += 1
                time.sleep(delay)
            # simple_app ends with current_step = P + G - 1 (G generated incl. EOS; the EOS step is not counted)
            current_step = n_prompt + emitted
            if not env.get("STUB_NO_EOS") and n_prompt + emitted < steps_cap:
                out(b"</s>")
            elapsed = time.monotonic() - tick
            out(b"(%f tok/s)\n" % ((current_step - 1) / elapsed if elapsed > 0 else float("inf")))
        welcome = b">>> "


if __name__ == "__main__":
    main()
