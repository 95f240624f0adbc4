"""Pareto plots: task metric against computation over many runs (``adaptrnn plot --kind pareto``).

Each point is labelled by a number, and a key beside the panels gives each number's model and
options: full labels written next to the points overlapped wherever runs lie close together
(two random-skip baselines at the same fraction, several budgets of one model). Numbers of
points that fall on one spot are written once, joined ("3,4").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .figure import Size, new_figure, save_figure
from .report import aggregate, collect_runs, format_value, group_columns, method_family

FAMILY_STYLE = {
    "dense": ("o", "tab:gray"),
    "random-skip": ("X", "tab:brown"),
    "skip": ("s", "tab:blue"),
    "act": ("^", "tab:red"),
    "vc": ("D", "tab:green"),
    "sa": ("v", "tab:purple"),
}
HIGHER_IS_BETTER = ("accuracy", "acc", "map", "auc", "f1")
SAME_SPOT = 0.025  # points closer than this fraction of both axes share one number label


def lower_is_better(metric: str) -> bool:
    """Direction of a metric from its name: accuracy-like metrics are higher-better, the rest
    (mse, sequence_error, bpc, losses) lower-better."""
    return metric.lower() not in HIGHER_IS_BETTER


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool) -> list[int]:
    """Indices of the non-dominated (cost, metric) points, by increasing cost.

    Cost is always lower-better; a point is dominated when another is no worse in both and
    strictly better in one. Points with a NaN coordinate are never on the front.
    """
    sign = 1.0 if lower_is_better else -1.0
    pts = [(float(c), sign * float(m)) for c, m in points]
    front = []
    for i, (c, m) in enumerate(pts):
        if math.isnan(c) or math.isnan(m):
            continue
        if not any(c2 <= c and m2 <= m and (c2 < c or m2 < m) for c2, m2 in pts):
            front.append(i)
    return sorted(front, key=lambda i: pts[i])


def row_label(row: dict[str, Any], keys: list[str]) -> str:
    """A row's model and the options that distinguish it, e.g. ``skip-lstm budget=2e-5``."""
    options = [f"{k}={format_value(row[k])}" for k in keys if k not in ("task", "model") and row.get(k) is not None]
    return " ".join([str(row["model"]), *options])


def spot_groups(ax: Axes, points: list[tuple[float, float]]) -> list[list[int]]:
    """Indices of ``points`` grouped where they lie within ``SAME_SPOT`` of the axes of each other.

    Distances are measured in axes fractions (after the axes' scales and limits), so that a
    log-scaled metric is judged as it is drawn.
    """
    to_axes = ax.transScale + ax.transLimits  # data -> [0, 1] axes fractions
    spots = [tuple(to_axes.transform(p)) for p in points]
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(spots):
        for group in groups:
            gx, gy = spots[group[0]]
            if abs(x - gx) < SAME_SPOT and abs(y - gy) < SAME_SPOT:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def plot_pareto(run_dirs: Sequence[str | Path], out: str | Path, *, figsize: Size = None) -> Path:
    """Task metric against computation, one row of panels per task, mean ± std over seeds.

    Left: counted updates fraction; right (when any run measured it): inference ms per
    sequence. One marker and colour per method family; the dashed line joins the Pareto front;
    points are numbered, and the key right of each row names them.
    """
    rows = aggregate(collect_runs(run_dirs))
    keys = group_columns(rows)
    tasks = sorted({str(row["task"]) for row in rows})
    measured = any(row["inference_ms_per_sequence_mean"] is not None for row in rows)
    xs = [("updates_fraction", "updates fraction (counted)")]
    if measured:
        devices = ", ".join(sorted({row["device"] for row in rows if row["device"]})) or "device unknown"
        xs.append(("inference_ms_per_sequence", f"inference ms / sequence (measured; {devices})"))
    fig = new_figure(figsize or (6.5 * len(xs), 4.8 * len(tasks)))
    axes = fig.subplots(len(tasks), len(xs), squeeze=False)
    for t, task in enumerate(tasks):
        task_rows = [row for row in rows if row["task"] == task]
        number = {id(row): n for n, row in enumerate(task_rows, start=1)}
        metric = task_rows[0]["metric"]
        lower = lower_is_better(metric)
        front_drawn = False
        for c, (stat, xlabel) in enumerate(xs):
            ax = axes[t, c]
            shown = [row for row in task_rows if row[f"{stat}_mean"] is not None]
            points = [(row[f"{stat}_mean"], row["value_mean"]) for row in shown]
            for row, (x, y) in zip(shown, points, strict=True):
                marker, colour = FAMILY_STYLE[method_family(str(row["model"]))]
                ax.errorbar(
                    x, y, xerr=row[f"{stat}_std"] or 0.0, yerr=row["value_std"] or 0.0,
                    fmt=marker, color=colour, capsize=3,
                )  # fmt: skip
            front = pareto_front(points, lower)
            if len(front) > 1:
                ax.plot(*zip(*(points[i] for i in front), strict=True), "--", color="0.5", lw=1, zorder=0)
                front_drawn = True
            values = [y for _, y in points]
            if metric == "mse" and min(values) > 0 and max(values) > 20 * min(values):
                ax.set_yscale("log")  # errors spanning decades: "solved" and "not solved" both legible
            for group in spot_groups(ax, points):
                text = ",".join(str(number[id(shown[i])]) for i in group)
                ax.annotate(text, points[group[0]], fontsize=8, xytext=(4, 3), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{metric} ({'lower' if lower else 'higher'} is better)")
            ax.set_title(task, fontsize=10)
            ax.grid(alpha=0.3)
        key = [
            Line2D([], [], ls="", marker=FAMILY_STYLE[method_family(str(row["model"]))][0],
                   color=FAMILY_STYLE[method_family(str(row["model"]))][1], label=f"{n}  {row_label(row, keys)}")
            for n, row in enumerate(task_rows, start=1)
        ]  # fmt: skip
        if front_drawn:
            key.append(Line2D([], [], ls="--", color="0.5", lw=1, label="Pareto front"))
        axes[t, -1].legend(handles=key, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return save_figure(fig, out)
