"""``adaptrnn report``: aggregate run directories into a Markdown / CSV table.

Runs that share the task, the model and the options that distinguish configurations
(``--set budget=...`` etc.) form one row; the row shows mean ± std over the runs (seeds)
and their count n. Counted savings (updates, FLOPs) and measured time are separate
columns: a count is never turned into a "speedup".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .console import output_path

REQUIRED_KEYS = ("task", "model", "metric", "value", "updates_fraction", "flops_per_sequence", "train_steps", "wall_s")
# Config entries that never distinguish one configuration from another (repeats, plumbing).
IGNORED_CONFIG_KEYS = frozenset(
    {
        "seed",
        "out",
        "out_dir",
        "run_dir",
        "device",
        "resume",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "eval_batch_size",
    }
    | {"num_workers", "workers", "data_dir", "data_path", "task", "model"}
)
# Nested config sections (config.TrainConfig) whose entries are shown without the section prefix.
OPTION_SECTIONS = ("task_options", "method_options")
FAMILY_ORDER = ("dense", "random-skip", "skip", "act", "vc", "sa")
# (mean/std name in the row, key in result.json)
STATS = (
    ("value", "value"),
    ("updates_fraction", "updates_fraction"),
    ("flops_per_sequence", "flops_per_sequence"),
    ("dense_flops_per_sequence", "dense_flops_per_sequence"),
    ("inference_ms_per_sequence", "inference_ms_per_sequence"),
    ("train_steps", "train_steps"),
    ("wall_s", "wall_s"),
)
STAT_COLUMNS = frozenset(
    {"metric", "n", "solved", "device", "collapsed", "checkpoint"}
    | {f"{name}_{s}" for name, _ in STATS for s in ("mean", "std")}
)


def method_family(model: str) -> str:
    """The method family of a model name: dense, random-skip, skip, act, vc or sa."""
    name = model.lower()
    if name.startswith("random-skip"):
        return "random-skip"
    prefix = name.split("-", 1)[0]
    return prefix if prefix in FAMILY_ORDER and "-" in name else "dense"


def find_run_dirs(path: str | Path) -> list[Path]:
    """Run directories at or below ``path`` (each holds a ``result.json``), sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name == "result.json":
            return [path.parent]
        raise ValueError(f"{path}: expected a run directory (or a directory of runs), got a file")
    if (path / "result.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("result.json"))
    if not found:
        raise FileNotFoundError(f"{path}: no result.json found in it or below it (not a run directory)")
    return found


def _normalise(value: Any) -> Any:
    """A hashable, comparable form of a config value (YAML reads ``1e-5`` as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """Distinguishing config entries: option sections unprefixed, other sections dotted."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in IGNORED_CONFIG_KEYS:
            continue
        if isinstance(value, dict):
            prefix = "" if key in OPTION_SECTIONS else f"{key}."
            flat.update({f"{prefix}{k}": _normalise(v) for k, v in value.items() if k not in IGNORED_CONFIG_KEYS})
        else:
            flat[key] = _normalise(value)
    return flat


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One run: the entries of result.json, plus ``run_dir``, ``config`` and ``options``.

    ``options`` holds the config entries that may distinguish configurations (method options
    and settings such as steps or hidden_size; seeds and paths excluded). Raises ValueError
    naming the file if result.json is unreadable or lacks a contract key.
    """
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no result.json (not a run directory)")
    try:
        result = json.loads(result_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{result_path}: invalid JSON ({err})") from err
    if not isinstance(result, dict):
        raise ValueError(f"{result_path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"{result_path}: missing required keys {missing}")
    config_path = run_dir / "config.yaml"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{config_path}: invalid YAML ({err})") from err
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: expected a mapping")
    return {**result, "run_dir": str(run_dir), "config": config, "options": _flatten_config(config)}


def collect_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Load every run at or below the given paths (each run once, in path order)."""
    runs, seen = [], set()
    for path in paths:
        for run_dir in find_run_dirs(path):
            key = run_dir.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(run_dir))
    if not runs:
        raise ValueError("no run directories given")
    return runs


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl``; unparsable lines (a run still writing) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    return metric_lines(path)


def metric_lines(path: Path) -> list[dict[str, Any]]:
    """The parsable lines of a ``metrics.jsonl`` file, each a dict with a ``step``."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def find_metric_dirs(path: str | Path) -> list[Path]:
    """Directories at or below ``path`` holding a metrics.jsonl (a run need not have finished)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if (path / "metrics.jsonl").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("metrics.jsonl"))
    if not found:
        raise FileNotFoundError(f"{path}: no metrics.jsonl found in it or below it")
    return found


def _lookup(run: dict[str, Any], key: str) -> Any:
    """A grouping key's value: result.json first, then the config options, then the raw config."""
    if key in run and key not in ("config", "options", "run_dir"):
        return _normalise(run[key])
    if key in run["options"]:
        return run["options"][key]
    return _normalise(run["config"].get(key))


def _known(run: dict[str, Any], key: str) -> bool:
    """Whether ``key`` names something of ``run`` (see :func:`_lookup`)."""
    return key in run or key in run["options"] or key in run["config"]


def default_group_by(runs: Sequence[dict[str, Any]]) -> list[str]:
    """task, model, then every option set to two or more values among the runs of one task.

    Options that differ only between tasks (per-task defaults) are implied by the task column,
    and a method's resolved defaults (present for its runs only) by the model column.
    """
    keys: list[str] = []
    by_task: dict[Any, list[dict[str, Any]]] = {}
    for run in runs:
        keys.extend(k for k in run["options"] if k not in keys)
        by_task.setdefault(run["task"], []).append(run)

    def varies(key: str) -> bool:
        return any(len({_lookup(r, key) for r in group} - {None}) > 1 for group in by_task.values())

    return ["task", "model", *filter(varies, keys)]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None for a single run); None when no run has the value."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _sort_key(row: dict[str, Any], group_by: Sequence[str]) -> tuple:
    family = method_family(str(row.get("model", "")))
    parts: list[tuple] = []
    for key in group_by:
        value = row.get(key)
        parts.append((0, value, "") if isinstance(value, (int, float)) else (1, 0.0, str(value)))
    return (str(row.get("task", "")), FAMILY_ORDER.index(family), *parts)


def aggregate(runs: Sequence[dict[str, Any]], group_by: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Group runs and summarise each group as one row.

    group_by: keys looked up in result.json, then config options, then config; None means
    ``default_group_by(runs)``. Each row holds the group keys, ``metric``, ``n``,
    ``<stat>_mean`` / ``<stat>_std`` for each stat in STATS (None when absent), ``solved``
    (count of solved runs, None if no run reports it) and ``device`` (distinct values joined).
    """
    group_by = list(group_by) if group_by else default_group_by(runs)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(_lookup(run, k) for k in group_by), []).append(run)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        row["metric"] = "/".join(sorted({str(r["metric"]) for r in members}))
        row["n"] = len(members)
        for name, source in STATS:
            values = [float(r[source]) for r in members if r.get(source) is not None]
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)
        solved = [bool(r["solved"]) for r in members if r.get("solved") is not None]
        row["solved"] = sum(solved) if solved else None
        row["device"] = ", ".join(sorted({str(r["device"]) for r in members if r.get("device")})) or None
        collapsed = [bool(r["collapsed"]) for r in members if r.get("collapsed") is not None]
        row["collapsed"] = sum(collapsed) if collapsed else None
        row["checkpoint"] = ", ".join(sorted({c for c in map(tested_checkpoint, members) if c})) or None
        rows.append(row)
    return sorted(rows, key=lambda r: _sort_key(r, group_by))


def tested_checkpoint(run: dict[str, Any]) -> str | None:
    """Which weights a run's value comes from: "best@STEP" or "last@STEP" (result.json's
    ``checkpoint`` and ``checkpoint_step``). Results written before those keys existed came from
    a trainer that always tested the best checkpoint: "best@best_step" for them."""
    kind, step = run.get("checkpoint"), run.get("checkpoint_step")
    if kind is None and run.get("best_step") is not None:
        kind, step = "best", run["best_step"]
    if kind is None:
        return None
    return kind if step is None else f"{kind}@{step}"


def group_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The grouping keys of aggregated rows, in order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in STAT_COLUMNS and k not in keys)
    return keys


def _num(x: float) -> str:
    """Three significant digits, exponents written 2.46e6 rather than 2.46e+06."""
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def _pm(mean: float | None, std: float | None, scale: float = 1.0, suffix: str = "") -> str:
    if mean is None:
        return "—"
    if math.isnan(mean):
        return "nan"
    text = f"{_num(mean * scale)}{suffix}"
    return text if std is None else f"{text} ± {_num(std * scale)}"


def format_value(value: Any) -> str:
    """A table cell for a grouping value: floats to three significant digits, None as a dash."""
    if value is None:
        return "—"
    return _num(value) if isinstance(value, float) else str(value)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of aggregated rows (counted and measured quantities in separate columns)."""
    keys = group_columns(rows)
    header = [*keys, "metric", "n", "value", "updates", "FLOPs/seq", "inference ms/seq", "solved", "steps", "device"]
    header += ["collapsed", "checkpoint"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        steps = row["train_steps_mean"]
        cells = [format_value(row.get(k)) for k in keys] + [
            str(row["metric"]),
            str(row["n"]),
            _pm(row["value_mean"], row["value_std"]),
            _pm(row["updates_fraction_mean"], row["updates_fraction_std"], 100.0, "%"),
            _pm(row["flops_per_sequence_mean"], row["flops_per_sequence_std"]),
            _pm(row["inference_ms_per_sequence_mean"], row["inference_ms_per_sequence_std"]),
            "—" if row["solved"] is None else f"{row['solved']}/{row['n']}",
            "—" if steps is None else str(round(steps)),
            row["device"] or "—",
            "—" if row.get("collapsed") is None else f"{row['collapsed']}/{row['n']}",
            row.get("checkpoint") or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write aggregated rows as CSV (full precision; empty cells for missing values)."""
    path = Path(path)
    keys = group_columns(rows)
    columns = [*keys, "metric", "n"] + [f"{name}_{s}" for name, _ in STATS for s in ("mean", "std")]
    columns += ["solved", "device", "collapsed", "checkpoint"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adaptrnn report``."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or directories holding runs")
    parser.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.csv")
    parser.add_argument(
        "--group-by",
        metavar="KEYS",
        help="comma-separated keys forming one row (default: task, model and every option that varies)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the table; write PREFIX.md / PREFIX.csv with --out. Returns the exit status."""
    try:
        runs = collect_runs(args.runs)
    except (FileNotFoundError, ValueError) as err:
        print(f"adaptrnn report: error: {err}", file=sys.stderr)
        return 2
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    unknown = [k for k in group_by or () if not any(_known(run, k) for run in runs)]
    if unknown:
        options = sorted({k for run in runs for k in run["options"]})
        valid = ", ".join(["task", "model", "seed", *options])
        print(f"adaptrnn report: error: --group-by: no run has {', '.join(unknown)}; e.g. {valid}", file=sys.stderr)
        return 2
    rows = aggregate(runs, group_by)
    table = to_markdown(rows)
    print(table, end="")
    if args.out:
        prefix = output_path(args.out)
        prefix.with_name(prefix.name + ".md").write_text(table)
        to_csv(rows, prefix.with_name(prefix.name + ".csv"))
    return 0
