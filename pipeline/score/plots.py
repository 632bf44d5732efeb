"""PNG plots (matplotlib, Agg): `dvc plots show` needs a CDN for its Vega pages, PNGs work offline everywhere.

Every title carries the device kind so a virtual-device plot cannot pass for a phone result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.score.summary import mean_of


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def device_label(kind: str) -> str:
    return "VIRTUAL device (host CPU, not a phone)" if kind == "virtual" else f"{kind} device"


def run_plots(prompt_rows: Sequence[Mapping[str, Any]], families: Sequence[str], out_dir: Path,
              device_kind: str) -> list[Path]:
    """Per-prompt decode tok/s, quality per family, tok/s vs prompt length."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    label = device_label(device_kind)
    ids = [str(r["prompt_id"]) for r in prompt_rows]
    paths = []

    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(ids) + 1)))
    ax.barh(ids, [r.get("decode_tok_s") or 0 for r in prompt_rows], color="tab:blue")
    ax.set_xlabel("decode tok/s (host-timed)")
    ax.set_title(f"Decode throughput per prompt — {label}", fontsize=9)
    ax.invert_yaxis()
    paths.append(_save(fig, plt, out_dir / "decode_tok_s_per_prompt.png"))

    fams = [f for f in ("quality_score", *families) if any(r.get(f) is not None for r in prompt_rows)]
    means = [mean_of(r.get(f) for r in prompt_rows) for f in fams]
    means = [1 - m if f == "degeneration" and m is not None else m for f, m in zip(fams, means, strict=True)]
    names = ["1 − degeneration" if f == "degeneration" else f for f in fams]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(fams) + 1.2))
    ax.barh(names, [m or 0 for m in means], color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean over prompts (higher is better; degeneration is reported as 1 − rate)")
    ax.set_title(f"Answer quality per family — {label}", fontsize=9)
    ax.invert_yaxis()
    paths.append(_save(fig, plt, out_dir / "quality_per_family.png"))

    pts = [(r["n_prompt_tokens"], r["decode_tok_s"]) for r in prompt_rows
           if r.get("n_prompt_tokens") is not None and r.get("decode_tok_s") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.scatter(*zip(*pts, strict=True), color="tab:orange")
    else:
        ax.text(0.5, 0.5, "no timed answers", ha="center", transform=ax.transAxes)
    ax.set_xlabel("prompt tokens (templated)")
    ax.set_ylabel("decode tok/s")
    ax.set_title(f"Decode throughput vs prompt length — {label}", fontsize=9)
    paths.append(_save(fig, plt, out_dir / "decode_tok_s_vs_prompt_tokens.png"))
    return paths


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
