"""`python -m pipeline.report`: a Markdown + PNG comparison report from MLflow runs.

    python -m pipeline.report --sweep 2025-01-01_12-00-00 --out reports/sweep
    python -m pipeline.report --experiment odeval --tag diagnose-offtopic --out reports/offtopic --embeddings

Prints the table to stdout; writes DIR/report.md, DIR/*.png and DIR/fidelity.csv. mlflow is imported only after
the arguments are parsed, so --help is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.report import ReportError


def _baselines(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key or not val:
            raise ReportError(f"--baseline {item!r}: expected KEY=LEVEL, e.g. --baseline app.template=mobilequant")
        out[key] = val
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", help="MLflow experiment name (default: odeval when no other selector is given)")
    p.add_argument("--sweep", help="sweep_id tag of a Hydra multirun (its child runs)")
    p.add_argument("--tag", help="the runs' `tag` param, i.e. the experiment preset (e.g. diagnose-offtopic)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                   help="MLflow store; a relative sqlite path resolves against the repo root (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output directory for report.md and the PNGs")
    p.add_argument("--fp-model", default=None,
                   help="model.name of the FP reference (default: tiny-fp, else tinyllama-chat-fp if present; the "
                        "'Runtimes compared' section's float reference: smollm2-ref)")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=LEVEL",
                   help="baseline level of a factor for the deltas (repeatable; default: the FP model for model.name, "
                        "else the first level)")
    p.add_argument("--ends", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two runs that differ in several factors, each named by KEY=LEVEL[,KEY=LEVEL...] "
                        "(paired per-prompt delta B−A with a bootstrap CI)")
    p.add_argument("--embeddings", action="store_true",
                   help="also compute embedding similarity to the FP answers (loads all-MiniLM-L6-v2 on CPU)")
    p.add_argument("--embedding-model", default=None, help="embedding model dir/repo (default: the verified bundle)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from pipeline.report.build import report_from_mlflow
        from pipeline.report.contrasts import parse_spec
        from pipeline.tracking import TrackingError, resolve_tracking_uri
        from pipeline.workspace import shared_root

        try:
            uri = resolve_tracking_uri(args.tracking_uri, shared_root())
        except TrackingError as e:
            raise ReportError(f"--tracking-uri: {e}") from None
        if args.embeddings and args.embedding_model:  # a user model runs on torch; the bundled one on numpy
            import torch

            torch.set_num_threads(1)  # the CPU is shared with whatever else runs; the encode is small
        rep = report_from_mlflow(uri, args.out, experiment=args.experiment, sweep=args.sweep, tag=args.tag,
                                 fp_model=args.fp_model, baselines=_baselines(args.baseline),
                                 embeddings=args.embeddings, embedding_model=args.embedding_model,
                                 ends=tuple(parse_spec(x) for x in args.ends) if args.ends else None)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(rep.table_md)
    print(f"\nreport: {rep.report_md} ({len(rep.records)} runs; plots: {', '.join(p.name for p in rep.pngs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
