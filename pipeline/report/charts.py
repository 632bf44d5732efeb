"""Report plots (matplotlib Agg PNGs): quality vs throughput with the Pareto front, tok/s vs sequence budget.

Why the device kind is in every title and legend entry: a PNG gets copied out of its report; a virtual-device
throughput (the host CPU) must not be mistaken for a phone's there either.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pipeline.report.runs import RunRecord
from pipeline.report.table import device_label
from pipeline.report.variants import Factor, natural_key, value

BUDGET_KEYS = ("sequence.max_new_tokens", "sequence.context")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when maximising both coordinates, ordered by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(xj >= x and yj >= y and (xj > x or yj > y) for j, (xj, yj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _kinds(records: Sequence[RunRecord]) -> str:
    return ", ".join(sorted({device_label(r) for r in records})) or "no runs"


def quality_vs_throughput(records: Sequence[RunRecord], labels: Sequence[str], path: Path) -> Path:
    """Scatter of quality.score over decode tok/s (mean), one point per run, the Pareto front as a staircase."""
    plt = _plt()
    pts, idx = [], []
    for i, r in enumerate(records):
        x, y = r.metric("throughput.decode_tok_s.mean"), r.metric("quality.score")
        if x is not None and y is not None:
            pts.append((x, y))
            idx.append(i)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.ticklabel_format(useOffset=False)  # tok/s as read, not "+2e1"
    if not pts:
        ax.text(0.5, 0.5, "no run has both decode tok/s and a quality score", ha="center", transform=ax.transAxes)
    for n, ((x, y), i) in enumerate(zip(pts, idx, strict=True), start=1):
        virtual = records[i].device_kind == "virtual"
        ax.scatter([x], [y], marker="o" if virtual else "^", s=50, facecolors="none" if virtual else "tab:red",
                   edgecolors="tab:blue" if virtual else "tab:red")
        ax.annotate(str(n), (x, y), fontsize=7, xytext=label_offset(n), textcoords="offset points")
    if pts:  # numbers at the points, names in a key beside the axes: long labels never pile up on each other
        mixed = len({device_label(records[i]) for i in idx}) > 1  # one kind: the title says it once
        key = "\n".join(f"{n}  {labels[i]}" + (f" [{device_label(records[i])}]" if mixed else "")
                        for n, i in enumerate(idx, start=1))
        ax.text(1.02, 1.0, key, transform=ax.transAxes, fontsize=7, va="top", ha="left", family="monospace")
    front = pareto_front(pts)
    if front:
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="tab:green", linewidth=1.2, label="Pareto front (max quality & tok/s)")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("decode tok/s (mean; virtual = host CPU, not a phone)")
    ax.set_ylabel("quality score (0–1)")
    ax.set_title(f"Quality vs throughput — {_kinds(records)}", fontsize=9)
    return _save(fig, plt, path)


def label_offset(n: int) -> tuple[int, int]:
    """Where point n's number sits (points apart): round the point, so close points' numbers do not overlap."""
    return ((5, 4), (5, -10), (-11, 4), (-11, -10))[(n - 1) % 4]


def budget_key(facs: Sequence[Factor]) -> str:
    """The x axis of the budget plot: max_new_tokens if it varies, else context if it varies, else max_new_tokens."""
    varying = {k for f in facs for k in (f.key, *f.aliases)}
    return next((k for k in BUDGET_KEYS if k in varying), BUDGET_KEYS[0])


def budget_varies(facs: Sequence[Factor]) -> bool:
    """Whether a sequence-budget key varies across the runs (else the budget plot would be one column)."""
    varying = {k for f in facs for k in (f.key, *f.aliases)}
    return any(k in varying for k in BUDGET_KEYS)


def toks_vs_budget(records: Sequence[RunRecord], facs: Sequence[Factor], path: Path) -> Path:
    """decode tok/s (mean ± sd) over the sequence budget, one line per combination of the non-sequence factors."""
    plt = _plt()
    xkey = budget_key(facs)
    others = [f for f in facs if not any(k.startswith("sequence.") for k in (f.key, *f.aliases))]
    lines: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in records:
        y = r.metric("throughput.decode_tok_s.mean")
        try:
            x = float(value(r, xkey))
        except ValueError:
            continue
        if y is None:
            continue
        name = " · ".join(value(r, f.key) for f in others) or value(r, "model.name")
        lines[f"{name} [{device_label(r)}]"].append((x, y, r.metric("throughput.decode_tok_s.std") or 0.0))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name in sorted(lines, key=natural_key):
        xs, ys, sds = zip(*sorted(lines[name]), strict=True)
        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=name)
    if lines:
        ax.legend(fontsize=7, loc="best")
        if not any(xkey in (f.key, *f.aliases) for f in facs):
            ax.text(0.5, 0.02, f"{xkey} does not vary in the selected runs", ha="center", fontsize=8,
                    transform=ax.transAxes)
    else:
        ax.text(0.5, 0.5, f"no run has decode tok/s and a numeric {xkey}", ha="center", transform=ax.transAxes)
    ax.set_xlabel(xkey)
    ax.set_ylabel("decode tok/s (mean ± sd; virtual = host CPU)")
    ax.set_title(f"Throughput vs sequence budget — {_kinds(records)}", fontsize=9)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the point key beside the axes is part of the figure
    plt.close(fig)
    return path
