"""Thin DVC stage scripts: read params.yaml, call the domain modules, write outputs (DESIGN §3)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config, ConfigError, load_params


class StageError(RuntimeError):
    """A failure the user can act on: printed as one message, exit status 2, no traceback."""


def stage_main(name: str, run: Callable[[Config, Path], Path], argv: list[str] | None = None) -> None:
    """The `main()` of every stage: `python -m pipeline.stages.<name> [--params FILE] [--quiet]`."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=f"DVC stage `{name}`.")
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.quiet:
        import os

        os.environ["ODEVAL_QUIET"] = "1"
    try:
        cfg = load_params(args.params)
        out = run(cfg, Path.cwd())
    except (ConfigError, StageError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted — finished work is kept; re-run to continue", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"{name}: wrote {out}")


def quiet() -> bool:
    """Progress bars off under --quiet, CI=true, or when stderr is not a terminal."""
    import os

    return bool(os.environ.get("ODEVAL_QUIET")) or os.environ.get("CI", "").lower() == "true"
