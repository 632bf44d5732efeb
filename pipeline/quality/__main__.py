"""CLI: score answers collected anywhere (pipeline runs, hand-typed transcripts) with the pipeline's families.

    python -m pipeline.quality FILE.jsonl [--no-relevance] [--embedding-model M] [--fp FP.jsonl] [--threads N]

Each input line: ``prompt``, ``response`` and optional ``id``/``prompt_id``, ``reference`` (string or list of
aliases), ``keywords``, ``rules``, ``lang``, ``eos``, ``truncated`` (other keys are ignored, so a run's
responses.jsonl can be scored directly). Output: one JSON object per input line, in order, on stdout.
``--fp`` gives the FP reference model's answers (lines with ``id``/``prompt_id`` and ``response``) for fidelity;
``--judge-url`` turns on the optional LLM judge (pipeline/quality/judge.py documents the rubric).
``--fluency-model smollm2-ref`` (a conf/model preset or a model dir) turns on the fluency family (surprisal under a
reference LM, pipeline/quality/fluency.py); ``--fluency-recorded FILE`` uses surprisals recorded earlier instead
(tests/quality/data/make_pipeline_answers.py ``record``). Off by default here: the CLI scores text from anywhere.
Exit status 2 with one line on stderr for unusable input.

    python -m pipeline.quality auc LABELLED.jsonl [--no-relevance] [--json] [--fluency-model M | --fluency-recorded F]

scores a labelled file (each line also has ``label``: 1 good / 0 failure, e.g. tests/quality/smollm2_labelled.jsonl)
and prints the ROC AUC of quality_score and of each family (pipeline/quality/evaluation.py) as a Markdown table.
(To score a file literally named ``auc``, pass it as ``./auc``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.quality.composite import QualityError, check_item, score_items
from pipeline.quality.fluency import FluencyError, FluencyScorer, load_recorded, load_reference, reference_dir
from pipeline.quality.relevance import RelevanceError

_ERRORS = (QualityError, RelevanceError, FluencyError)


def _add_fluency_args(ap: argparse.ArgumentParser) -> None:
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--fluency-model", default=None,
                       help="reference LM for the fluency family: a conf/model preset (smollm2-ref) or a model dir")
    group.add_argument("--fluency-recorded", default=None,
                       help="surprisals recorded by tests/quality/data/make_pipeline_answers.py record")


def _fluency(args: argparse.Namespace) -> tuple[FluencyScorer | None, str | None]:
    """The reference LM the flags ask for, or (None, why the family is off)."""
    if args.fluency_recorded:
        return load_recorded(Path(args.fluency_recorded)), None
    if args.fluency_model:
        return load_reference(reference_dir(args.fluency_model), args.fluency_model), None
    return None, "fluency off (no --fluency-model / --fluency-recorded)"


def _read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; QualityError naming FILE:LINE for bad JSON."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise QualityError(f"{name}: cannot read ({exc.strerror}) — check the path") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QualityError(f"{name}:{n}: invalid JSON ({exc.msg}) — one JSON object per line") from exc
        if not isinstance(obj, dict):
            raise QualityError(f"{name}:{n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def _fp_answers(path: str) -> dict[str, str]:
    from pipeline.quality.fidelity import read_fp_answers

    try:
        return read_fp_answers(Path(path))
    except (OSError, ValueError) as e:
        raise QualityError(str(e)) from None


def _labels(rows: list[tuple[int, dict[str, Any]]], path: str) -> list[int]:
    out = []
    for n, obj in rows:
        if obj.get("label") not in (0, 1) or isinstance(obj.get("label"), bool):
            raise QualityError(f"{path}:{n}: 'label' must be 0 (failure) or 1 (good), got {obj.get('label')!r}")
        out.append(int(obj["label"]))
    return out


def auc_main(argv: list[str]) -> int:
    """``auc`` subcommand: the AUC table of a labelled file."""
    from pipeline.quality.composite import PASS_THRESHOLD
    from pipeline.quality.evaluation import auc_table, format_auc_table

    ap = argparse.ArgumentParser(prog="python -m pipeline.quality auc",
                                 description="ROC AUC of quality_score and each family on a labelled JSONL file")
    ap.add_argument("file", help="JSONL with prompt/response/label per line")
    ap.add_argument("--no-relevance", action="store_true", help="skip the embedding model")
    ap.add_argument("--json", action="store_true", help="print the table as JSON instead of Markdown")
    _add_fluency_args(ap)
    args = ap.parse_args(argv)
    try:
        rows = _read_jsonl(args.file)
        for n, obj in rows:
            check_item(obj, f"{args.file}:{n}")
        labels = _labels(rows, args.file)
        lm, off = _fluency(args)
        scored = score_items([obj for _, obj in rows], relevance=not args.no_relevance, fluency=lm,
                             fluency_off_reason=off)
    except _ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = auc_table(scored, labels, PASS_THRESHOLD)
    print(json.dumps(table) if args.json else format_auc_table(table))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "auc":
        return auc_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m pipeline.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="JSONL with prompt/response per line ('-' = stdin)")
    ap.add_argument("--no-relevance", action="store_true", help="skip the embedding model (relevance, on_topic)")
    ap.add_argument("--embedding-model", default=None, help="HF repo id or dir instead of the bundled MiniLM")
    ap.add_argument("--fp", default=None, help="JSONL of FP reference answers (id/prompt_id + response)")
    ap.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); "
                    "key from $OPENAI_API_KEY; off by default")
    ap.add_argument("--judge-model", default="judge", help="model name sent to the judge endpoint")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for a --embedding-model (the bundled one runs on numpy)")
    _add_fluency_args(ap)
    args = ap.parse_args(argv)
    try:
        rows = _read_jsonl(args.file)
        for n, obj in rows:
            check_item(obj, f"{args.file}:{n}")
        fp = _fp_answers(args.fp) if args.fp else None
        if args.threads and args.embedding_model and not args.no_relevance:  # bundled model: numpy, no torch
            import torch

            torch.set_num_threads(args.threads)
        lm, off = _fluency(args)
        scored = score_items([obj for _, obj in rows], relevance=not args.no_relevance,
                             embedding_model=args.embedding_model, fp_answers=fp, judge_url=args.judge_url,
                             judge_model=args.judge_model, fluency=lm, fluency_off_reason=off)
    except _ERRORS as exc:  # one clear line, never a traceback, for input/model problems
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in scored:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
