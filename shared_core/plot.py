"""PNG figures of an evaluation: deferral curves and budget runs side by side (matplotlib extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import BudgetRun, Curve

__all__ = ["plot_evaluation", "pyplot"]

_MODES = {
    "batch": ("o", "batch (solver)"),
    "online": ("^", "online (paced)"),
    "fixed-lambda": ("x", "fixed λ (calibrated)"),
}


def pyplot() -> Any:
    """matplotlib.pyplot on a file-only backend, or ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'omniroute[plot]'") from e
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_evaluation(
    path: str | Path,
    curves: Mapping[str, Curve],
    *,
    baselines: Mapping[str, Curve] | None = None,
    reference: tuple[str, float] | None = None,
    runs: Sequence[BudgetRun] = (),
    title: str = "",
) -> Path:
    """Write a PNG: left, each router's a(x) with baselines and budget runs; right, runs' accuracy by budget.

    `reference` is (model name, test accuracy) of the reference model (cost fraction 1).
    """
    plt = pyplot()
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: colours[i % len(colours)] for i, name in enumerate(curves)}

    for name, curve in (baselines or {}).items():
        style = "--" if name == "oracle" else ":"
        _step(ax, curve, color="0.45", linestyle=style, label=f"{name} (AUDC {curve.area():.3f})")
    for name, curve in curves.items():
        _step(ax, curve, color=colour[name], linewidth=2, label=f"{name} (AUDC {curve.area():.3f})")
    if reference is not None:
        model, acc = reference
        ax.axhline(acc, color="0.6", linewidth=0.8, linestyle="-.")
        ax.plot([1.0], [acc], marker="*", markersize=14, color="black", linestyle="", label=f"{model} alone")
    for run in runs:
        marker, label = _MODES.get(run.mode, ("s", run.mode))
        ax.plot(_x(run), run.accuracy, marker=marker, markersize=8, linestyle="", markerfacecolor="none",
                markeredgewidth=1.6, color=colour.get(run.predictor, "black"))
    for mode, (marker, label) in _MODES.items():
        if any(r.mode == mode for r in runs):
            ax.plot([], [], marker=marker, linestyle="", color="black", markerfacecolor="none", label=label)
    for f in sorted({r.budget_fraction for r in runs}):
        ax.axvline(f, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("cost / cost of the reference model on every test prompt")
    ax.set_ylabel("test accuracy")
    ax.set_title("Deferral curves (best accuracy within a cost)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")

    _budget_bars(bars, runs, colour)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _x(run: BudgetRun) -> float:
    """The run's spend as a fraction of the reference cost."""
    return run.spent_usd / run.budget_usd * run.budget_fraction if run.budget_usd > 0 else 0.0


def _step(ax: Any, curve: Curve, **style: Any) -> None:
    """Draw a(x) as the step function the AUDC integrates, from 0 to 1."""
    xs = np.concatenate([[0.0], np.sort(curve.x[curve.x < 1.0]), [1.0]])
    ax.step(xs, [curve.a(x) for x in xs], where="post", **style)


def _budget_bars(ax: Any, runs: Sequence[BudgetRun], colour: Mapping[str, str]) -> None:
    """Grouped bars: accuracy per budget fraction for each (predictor, mode), spend % on top."""
    if not runs:
        ax.set_axis_off()
        return
    fractions = sorted({r.budget_fraction for r in runs})
    kinds = list(dict.fromkeys((r.predictor, r.mode) for r in runs))
    width = 0.8 / len(kinds)
    hatches = {"batch": "", "online": "//", "fixed-lambda": ".."}
    for k, (pred, mode) in enumerate(kinds):
        for i, f in enumerate(fractions):
            run = next((r for r in runs if (r.predictor, r.mode, r.budget_fraction) == (pred, mode, f)), None)
            if run is None:
                continue
            x = i + (k - (len(kinds) - 1) / 2) * width
            ax.bar(x, run.accuracy, width * 0.92, color=colour.get(pred, "0.5"), hatch=hatches.get(mode, ""),
                   edgecolor="white", label=f"{pred} {mode}" if i == 0 else None)
            ax.annotate(f"{run.spent_usd / run.budget_usd:.0%}" if run.budget_usd > 0 else "-", (x, run.accuracy),
                        ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    accs = [r.accuracy for r in runs if np.isfinite(r.accuracy)]
    if accs:
        ax.set_ylim(max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.04))
    ax.set_xticks(range(len(fractions)), [f"{f:.0%} budget" for f in fractions])
    ax.set_ylabel("test accuracy")
    ax.set_title("Budget runs (on each bar: spend as % of budget)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
