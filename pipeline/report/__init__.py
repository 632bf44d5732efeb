"""Sweep comparison report from MLflow runs: table, plots, factor analysis and fidelity to the FP reference.

Entry point: ``python -m pipeline.report [--experiment NAME | --sweep ID] --out DIR``.
Submodules import numpy/matplotlib/mlflow lazily so ``--help`` stays fast.
"""

from __future__ import annotations


class ReportError(Exception):
    """The report cannot be built (no runs selected, unknown experiment, unreadable store); one line with the fix."""


__all__ = ["ReportError"]
