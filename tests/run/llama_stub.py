"""A stand-in for llama-completion's conversation REPL (stdout/stderr exactly as pipeline/apps/llama_cpp.py reads
them), for fast tests of the client without building llama.cpp: ``--end eos|limit|crash|hang|noload``."""

from __future__ import annotations

import argparse
import sys
import time

PERF = ("common_perf_print:        load time =     {load:.2f} ms\n"
        "common_perf_print: prompt eval time =     {pms:.2f} ms / {p:5d} tokens (    5.63 ms per token, "
        "  177.71 tokens per second)\n"
        "common_perf_print:        eval time =     {ems:.2f} ms / {e:5d} runs   (   12.49 ms per token, "
        "   80.08 tokens per second)\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--end", default="eos")
    ap.add_argument("--tokens", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=9)
    ap.add_argument("--dt", type=float, default=0.01)
    a = ap.parse_args()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    err.write(b"I llama_completion: llama backend init\n")
    if a.end == "noload":
        err.write(b"E gguf_init_from_file: failed to open GGUF file 'x.gguf' (No such file or directory)\n")
        return 1
    out.write(b"\n> ")
    out.flush()
    line = sys.stdin.buffer.readline()
    if not line:
        return 0
    for i in range(a.tokens):
        time.sleep(a.dt)
        out.write(f" tok{i}".encode())
        out.flush()
        if a.end == "crash" and i == 2:
            err.write(b"Segmentation fault\n")
            return 139
    if a.end == "hang":
        time.sleep(3600)
    out.write(b"\n\n> " if a.end == "eos" else b"\n> ")
    out.flush()
    if sys.stdin.buffer.readline():
        return 3  # a second line: the client must close stdin after one prompt
    out.write(b"EOF by user\n\n\n")
    out.flush()
    evals = a.tokens if a.end == "eos" else a.tokens - 1
    err.write(PERF.format(load=120.5, pms=50.0, p=a.prompt_tokens, ems=evals * 12.5, e=evals).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
