"""CLI: ``python -m pipeline.models build NAME --out DIR`` (contract) and ``eval`` (the quantisation-ladder table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.models.tiny import MODEL_NAMES, TinyModelError, build_model, ladder_table


def main(argv: list[str] | None = None) -> int:
    """Parse args, run the sub-command; errors are one line on stderr and exit code 2."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse from cache) a tiny model into DIR")
    b.add_argument("name", choices=MODEL_NAMES)
    b.add_argument("--out", required=True, type=Path)
    e = sub.add_parser("eval", help="print accuracy and answer NLL, with and without BOS")
    e.add_argument("--split", default="qa-train", choices=("qa-train", "train", "heldout"))
    e.add_argument("--names", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        if args.cmd == "build":
            print(build_model(args.name, args.out))
            return 0
        rows = ladder_table(tuple(args.names), args.split)
    except TinyModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"split={args.split} n={rows[0]['n']} (simple_app template; 'no BOS' = exactly what simple_app feeds)")
    print(f"{'model':<12} {'acc(BOS)':>9} {'NLL(BOS)':>9} {'acc(noBOS)':>11} {'NLL(noBOS)':>11}")
    for r in rows:
        print(f"{r['model']:<12} {r['acc_bos']:>9.3f} {r['nll_bos']:>9.4f} "
              f"{r['acc_nobos']:>11.3f} {r['nll_nobos']:>11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
