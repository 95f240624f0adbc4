"""``adaptrnn plot``: Pareto plots (``adaptrnn.pareto``), update patterns, computation per
character, training curves. Figures: see ``adaptrnn.figure``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .figure import DPI, Size  # noqa: F401 (DPI: plot's API)
from .figure import new_figure as _figure
from .figure import save_figure as _save
from .pareto import FAMILY_STYLE, lower_is_better, pareto_front, plot_pareto  # noqa: F401 (plot's API)
from .report import find_metric_dirs, find_run_dirs, read_metrics

KINDS = ("auto", "pareto", "pattern", "text", "curves")
# Skip RNN paper, MNIST figure: used pixels red, skipped ones blue, brightness from the pixel.
USED_RGB, SKIPPED_RGB = np.array([1.0, 0.15, 0.1]), np.array([0.2, 0.35, 1.0])


def _result_info(run_dir: Path) -> dict[str, Any]:
    """result.json if readable, else {}: titles only, so a run still in progress can be plotted."""
    try:
        info = json.loads((run_dir / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def load_samples(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``RUN_DIR/samples.npz``; FileNotFoundError naming the path if absent."""
    path = Path(run_dir) / "samples.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the run saved no sample sequences)")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _single_run(run_dirs: Sequence[str | Path], kind: str) -> Path:
    dirs = [d for p in run_dirs for d in find_run_dirs(p)]
    if len(dirs) != 1:
        raise ValueError(f"--kind {kind} plots one run; {len(dirs)} found in {[str(p) for p in run_dirs]}")
    return dirs[0]


def _image_side(x: np.ndarray | None, task: str) -> int | None:
    """Side of the square image a (N, T[, 1]) float input unrolls, for pixel-by-pixel tasks."""
    if x is None or not np.issubdtype(x.dtype, np.floating) or (x.ndim == 3 and x.shape[2] != 1):
        return None
    steps = x.shape[1]
    side = math.isqrt(steps)
    return side if side * side == steps and (steps == 784 or "mnist" in task) else None


def _draw_images(fig: Figure, x: np.ndarray, updates: np.ndarray, side: int, count: int) -> None:
    axes = fig.subplots(1, count, squeeze=False)[0]
    for i, ax in enumerate(axes):
        img = x[i].reshape(side, side).astype(float)
        img = (img - img.min()) / (np.ptp(img) or 1.0)
        used = updates[i, : side * side].reshape(side, side) > 0
        rgb = np.where(used[..., None], USED_RGB, SKIPPED_RGB) * (0.25 + 0.75 * img[..., None])
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{int(used.sum())}/{side * side} used", fontsize=9)
        ax.set_axis_off()


def _draw_rasters(fig: Figure, samples: dict[str, np.ndarray], count: int) -> None:
    """Per sample: the input over time (used steps marked), then the computation at each step."""
    x, updates = samples.get("x"), samples["updates"]
    panels = 2 if x is not None else 1
    steps = updates.shape[1] if x is None else min(updates.shape[1], x.shape[1])
    axes = fig.subplots(panels * count, 1, squeeze=False, sharex=True)[:, 0]
    lengths = samples.get("lengths", np.full(count, steps))
    for i in range(count):
        n = min(steps, int(lengths[i]))  # padded positions carry no computation
        t, used = np.arange(n), updates[i, :n] > 0
        axes[panels * i].set_title(f"sample {i}: {int(used.sum())}/{n} steps with an update", fontsize=9)
        if x is not None:
            ax, xi = axes[panels * i], x[i, :n]
            if xi.ndim == 1 or xi.shape[1] <= 4:  # token ids or a few features: lines, used steps dotted
                ax.plot(t, xi, lw=0.8, color="0.3", drawstyle="steps-mid" if xi.ndim == 1 else "default")
                ax.plot(t[used], xi[used], ".", color="tab:red", ms=3)
                ax.set_ylabel("token" if xi.ndim == 1 else "input")
            else:
                ax.imshow(xi.T, aspect="auto", interpolation="nearest", cmap="Greys")
                ax.set_ylabel("feature")
        ax = axes[panels * i + panels - 1]
        ax.stairs(updates[i, :n], np.arange(n + 1) - 0.5, fill=True, color="tab:blue", label="updates")
        for key, colour in (("ponder", "tab:red"), ("scheduler", "tab:green"), ("update_prob", "tab:orange")):
            if key in samples:
                ax.plot(t, samples[key][i, :n], color=colour, lw=0.8, label=key)
        ax.set_ylabel("computation")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("step")


def _adding_markers(samples: dict[str, np.ndarray], task: str) -> np.ndarray | None:
    """(N, T) marker channel of adding-task inputs (the steps whose values are summed), else None."""
    x = samples.get("x")
    return x[..., 1] if task == "adding" and x is not None and x.ndim == 3 and x.shape[2] == 2 else None


def _draw_neurons(fig: Figure, neuron_updates: np.ndarray, count: int, markers: np.ndarray | None) -> None:
    axes = fig.subplots(count, 1, squeeze=False, sharex=True)[:, 0]
    for i, ax in enumerate(axes):
        ax.imshow(neuron_updates[i].T, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
        ax.set_ylabel("neuron")
        title = f"sample {i}: {neuron_updates[i].mean():.1%} of neuron updates applied (black)"
        if markers is not None:
            for step in np.flatnonzero(markers[i]):
                ax.axvline(step, color="tab:red", alpha=0.35, linewidth=3, zorder=0)
            title += "; marked steps in red"
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("step")


def plot_update_pattern(run_dir: str | Path, out: str | Path, *, max_samples: int = 4, figsize: Size = None) -> Path:
    """Where a run computed on its sample sequences.

    SA-RNN (``neuron_updates`` present): neuron × time heat maps. Pixel-by-pixel images
    (T = 784, or a square T on an MNIST task): the image with used pixels red, skipped ones
    blue, as in the Skip RNN paper. Otherwise: the input with used steps marked above a bar
    plot of the computation per step (``ponder``, ``scheduler``, ``update_prob`` overlaid if present).
    """
    run_dir = Path(run_dir)
    samples = load_samples(run_dir)
    if "updates" not in samples:
        raise ValueError(f"{run_dir / 'samples.npz'}: no 'updates' array")
    info = _result_info(run_dir)
    task = str(info.get("task", ""))
    count = min(max_samples, samples["updates"].shape[0])
    side = _image_side(samples.get("x"), task)
    if "neuron_updates" in samples:
        fig = _figure(figsize or (10.0, 2.2 * count + 0.6))
        _draw_neurons(fig, samples["neuron_updates"], count, _adding_markers(samples, task))
    elif side is not None:
        fig = _figure(figsize or (2.6 * count, 3.2))
        _draw_images(fig, samples["x"], samples["updates"], side, count)
    else:
        fig = _figure(figsize or (10.0, (3.4 if "x" in samples else 1.8) * count + 0.6))
        _draw_rasters(fig, samples, count)
    fig.suptitle(f"{info.get('model', run_dir.name)} on {task or '?'}: update pattern", fontsize=10)
    return _save(fig, out)


CHAR_CLASSES = ("word start", "letter", "space", "punctuation", "newline", "other")


def char_class(ch: str, previous: str = "") -> str:
    """The class of character ``ch`` (one of CHAR_CLASSES); ``previous`` is the character before it
    ("" at the start of a text), which tells the first letter of a word from the others."""
    if ch == " ":
        return "space"
    if ch == "\n":
        return "newline"
    if ch in ".,;:!?'\"-":
        return "punctuation"
    if ch.isalpha():
        return "word start" if previous in ("", " ", "\n") else "letter"
    return "other"


def plot_text_computation(
    run_dir: str | Path, out: str | Path, *, max_chars: int = 800, width: int = 80, figsize: Size = None
) -> Path:
    """Computation per character of sample 0, as coloured text, and its mean per character class.

    Uses ``text`` and the first of ``ponder`` (ACT N+R), ``scheduler`` (VC m_t), ``updates``
    from samples.npz; value t is the computation at the step that reads character t.
    """
    run_dir = Path(run_dir)
    samples = load_samples(run_dir)
    if "text" not in samples:
        raise ValueError(f"{run_dir / 'samples.npz'}: no 'text' array (saved by char-lm runs only)")
    key = next((k for k in ("ponder", "scheduler", "updates") if k in samples), None)
    if key is None:
        raise ValueError(f"{run_dir / 'samples.npz'}: no 'ponder', 'scheduler' or 'updates' array")
    text = str(samples["text"][()])
    values = np.asarray(samples[key], dtype=float)
    values = values[0] if values.ndim == 2 else values
    n = min(len(text), len(values), max_chars)
    text, values = text[:n], values[:n]
    cells, row, col = [], 0, 0
    for ch in text:
        if col >= width:
            row, col = row + 1, 0
        cells.append((row, col))
        row, col = (row + 1, 0) if ch == "\n" else (row, col + 1)
    rows = row + 1
    fig = _figure(figsize or (0.12 * width + 1.6, 0.22 * rows + 2.6))
    text_ax, class_ax = fig.subplots(2, 1, height_ratios=[max(rows, 4), 6])
    norm = Normalize(float(values.min()), float(values.max()) if values.max() > values.min() else values.min() + 1)
    mappable = ScalarMappable(norm=norm, cmap="viridis")
    patches = [Rectangle((c, r), 1, 1) for r, c in cells]
    text_ax.add_collection(PatchCollection(patches, facecolors=mappable.to_rgba(values), edgecolors="none"))
    for (r, c), ch, v in zip(cells, text, values, strict=True):
        if ch.strip():
            colour = "black" if norm(v) > 0.6 else "white"
            text_ax.text(c + 0.5, r + 0.5, ch, ha="center", va="center", family="monospace", fontsize=7, color=colour)
    text_ax.set_xlim(0, width)
    text_ax.set_ylim(rows, 0)
    text_ax.set_axis_off()
    fig.colorbar(mappable, ax=text_ax, label=key, fraction=0.03)
    classes = [char_class(ch, text[k - 1] if k else "") for k, ch in enumerate(text)]
    names = [c for c in CHAR_CLASSES if c in classes]
    means = [float(values[[k for k, c in enumerate(classes) if c == name]].mean()) for name in names]
    class_ax.bar(names, means, color="tab:blue")
    class_ax.set_ylabel(f"mean {key}")
    info = _result_info(run_dir)
    fig.suptitle(f"{info.get('model', run_dir.name)}: computation per character ({key})", fontsize=10)
    return _save(fig, out)


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    steps, values = zip(*pairs, strict=True) if pairs else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, *, figsize: Size = None) -> Path:
    """Training loss (task loss dashed), validation metric and updates fraction against step, per run."""
    dirs = list(dict.fromkeys(d.resolve() for p in run_dirs for d in find_metric_dirs(p)))
    common = Path(os.path.commonpath(dirs))
    fig = _figure(figsize or (15.0, 4.2))
    axes = fig.subplots(1, 3)
    metric_names = set()
    for index, run_dir in enumerate(dirs):
        colour = f"C{index % 10}"
        records = read_metrics(run_dir)
        metric_names.add(str(_result_info(run_dir).get("metric", "val metric")))
        label = str(run_dir.relative_to(common)) if len(dirs) > 1 else run_dir.name
        axes[0].plot(*_series(records, "loss"), color=colour, lw=1, label=label)
        axes[0].plot(*_series(records, "task_loss"), color=colour, lw=1, ls="--")
        axes[1].plot(*_series(records, "val_metric"), color=colour, lw=1, marker=".")
        axes[2].plot(*_series(records, "updates_fraction"), color=colour, lw=1)
    losses = np.concatenate([line.get_ydata() for line in axes[0].lines] or [np.zeros(0)])
    if losses.size and (losses > 0).all():
        axes[0].set_yscale("log")
    titles = ("training loss (task loss dashed)", " / ".join(sorted(metric_names)) or "val metric", "updates fraction")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return _save(fig, out)


def _auto_kind(run_dirs: Sequence[str | Path]) -> str:
    """pareto for several runs; for one: text if it saved text, else pattern, else curves."""
    try:
        dirs = [d for p in run_dirs for d in find_run_dirs(p)]
    except FileNotFoundError:
        return "curves"  # a run still training has metrics but no result.json yet
    if len(dirs) > 1:
        return "pareto"
    try:
        samples = load_samples(dirs[0])
    except FileNotFoundError:
        return "curves"
    return "text" if "text" in samples else "pattern"


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, kind: str = "auto", *, figsize: Size = None) -> Path:
    """Write one figure of ``kind`` (see KINDS) for the runs at or below ``run_dirs``."""
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; choose from {KINDS}")
    if not run_dirs:
        raise ValueError("no run directories given")
    if kind == "auto":
        kind = _auto_kind(run_dirs)
    if kind == "pareto":
        return plot_pareto(run_dirs, out, figsize=figsize)
    if kind == "curves":
        return plot_curves(run_dirs, out, figsize=figsize)
    if kind == "text":
        return plot_text_computation(_single_run(run_dirs, kind), out, figsize=figsize)
    return plot_update_pattern(_single_run(run_dirs, kind), out, figsize=figsize)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adaptrnn plot``."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or directories holding runs")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="image to write")
    parser.add_argument(
        "--kind", default="auto", choices=KINDS, help="auto: pattern/text for one run, pareto for several"
    )


def run(args: argparse.Namespace) -> int:
    """Write the figure and print its path. Returns the exit status."""
    try:
        path = plot_runs(args.runs, args.out, args.kind)
    except (FileNotFoundError, ValueError) as err:
        print(f"adaptrnn plot: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
