"""Rerun the papers' table rows and collect the results beside the papers' numbers.

    python benchmarks/reproduce.py --plan cpu-short [--jobs 2] [--only skip_rnn/adding]

Each row is one config under ``configs/`` run for several seeds with the plan's step count
(and learning rate, where the plan trades the papers' lr 1e-4 for a shorter run: every such
override is written into the run's ``config.yaml`` and listed in ``benchmarks/results/PLAN.md``).
Run directories go to ``runs/reproduce/`` (checkpoints included, not committed); the light
files of each run (config, metrics, result, samples) are copied to
``benchmarks/results/runs/`` so that ``adaptrnn report`` / ``adaptrnn plot`` rebuild every
table and figure from the repository alone.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from adaptrnn.report import aggregate, collect_runs, to_csv, to_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIGHT_FILES = ("config.yaml", "metrics.jsonl", "result.json", "samples.npz")


@dataclass
class Row:
    """One table row: a config, the seeds, and the plan's overrides (``--set`` pairs)."""

    config: str  # relative to configs/, without .yaml
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def rows(group: str, names: list[str], **kw) -> list[Row]:
    return [Row(f"{group}/{name}", **kw) for name in names]


# What a 2-core CPU can afford in about four hours: the papers' tasks and rows, far fewer steps,
# lr 1e-3 and batch 128 (the papers use lr 1e-4, batch 256 and 10-100x more steps).
# Differences from the papers are stated in docs/results.md.
FAST = {"lr": "1e-3", "batch_size": "128", "eval_every": "250", "threads": "1"}
LOGIC = {"lr": "1e-3", "eval_every": "1000", "threads": "1"}  # the papers' batch 16
PLANS: dict[str, list[Row]] = {
    "cpu-short": [
        *rows(
            "skip_rnn",
            [
                "adding_lstm",
                "adding_gru",
                "adding_skip_lstm_l0",
                "adding_skip_lstm_l1e-5",
                "adding_skip_gru_l0",
                "adding_skip_gru_l1e-5",
                "adding_random_skip_lstm",
                "adding_random_skip_gru",
            ],
            steps=1500,
            overrides=FAST,
        ),
        *rows(
            "skip_rnn",
            [
                "frequency_t100_lstm",
                "frequency_t100_skip_lstm_l0",
                "frequency_t100_skip_lstm_l1e-5",
                "frequency_t100_skip_lstm_l1e-4",
                "frequency_t100_skip_gru_l1e-4",
            ],
            seeds=(0, 1),
            steps=1500,
            overrides=FAST,
        ),
        *rows(
            "vc_rnn",
            ["char_lm_rnn", "char_lm_vc_rnn", "char_lm_gru", "char_lm_vc_gru"],
            seeds=(0,),
            steps=1000,
            overrides={**FAST, "hidden_size": "128", "batch_size": "64", "eval_batches": "20"},
        ),
        # Rows of the long-sequence tables, one seed each: T=500 and T=784 cost 0.5-1.6 s per step.
        # SA-RNN's slope schedule is compressed so that alpha reaches 5 at the last step, as in the paper.
        *rows("sa_rnn", ["adding_t500_gru"], seeds=(0,), steps=1500, overrides=FAST),
        *rows(
            "sa_rnn",
            ["adding_t500_sa_gru_l1e-4", "adding_t500_sa_gru_l1e-5", "adding_t500_sa_gru_l0"],
            seeds=(0,),
            steps=1500,
            overrides={**FAST, "slope_epoch_steps": "15"},
        ),
        *rows("sa_rnn", ["adding_t500_skip_gru_l1e-5"], seeds=(0,), steps=1500, overrides=FAST),
        *rows(
            "skip_rnn",
            [
                "pixel_fashion_mnist_lstm",
                "pixel_fashion_mnist_skip_lstm",
                "pixel_fashion_mnist_gru",
                "pixel_fashion_mnist_skip_gru",
            ],
            seeds=(0,),
            steps=500,  # 1.16 epochs of the 55,000 training images at batch 128
            overrides={**FAST, "eval_batches": "2"},
        ),
        *rows(
            "skip_rnn",
            [
                "frequency_t200_lstm",
                "frequency_t200_skip_lstm_l0",
                "frequency_t200_skip_lstm_l1e-5",
                "frequency_t200_skip_lstm_l1e-4",
                "frequency_t200_skip_gru_l1e-4",
            ],
            seeds=(0,),
            steps=1500,
            overrides=FAST,
        ),
        *rows(
            "act",
            ["parity_rnn", "parity_act_rnn_t1e-3", "parity_act_rnn_t1e-2", "parity_act_rnn_t1e-1"],
            seeds=(0,),
            steps=30000,
            overrides={**FAST, "eval_every": "2000"},
        ),
        *rows("act", ["logic_lstm"], seeds=(0,), steps=10000, overrides=LOGIC),
        # ACT ponders ~13 steps per input here, 0.5-0.8 s per training step: 7,000 steps is what was affordable.
        *rows(
            "act",
            ["logic_act_lstm_t1e-3"],
            seeds=(0,),
            steps=7000,
            overrides=LOGIC,
        ),
    ],
}


# The tables of docs/results.md: (run folders under benchmarks/results/runs/, report's group-by keys).
TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "skip_rnn_adding": (("skip_rnn/adding_",), "task,model,budget"),
    "skip_rnn_frequency": (("skip_rnn/frequency_",), "task,sampling_period_ms,model,budget"),
    "skip_rnn_pixel_fashion_mnist": (("skip_rnn/pixel_fashion_mnist_",), "task,model,budget"),
    "sa_rnn_adding_t500": (("sa_rnn/",), "task,model,budget"),
    "vc_rnn_char_lm": (("vc_rnn/",), "task,model"),
    "act_parity": (("act/parity_", "act_long/", "act_small/"), "task,size,model,time_penalty,train_steps"),
    "act_logic": (("act/logic_",), "task,model,time_penalty"),
}
RUN_COLUMNS = (
    "run_dir task model seed train_steps metric value solved updates_fraction updates_per_sequence "
    "flops_per_sequence dense_flops_per_sequence inference_ms_per_sequence wall_s diverged"
).split()


def write_tables() -> None:
    """``tables/NAME.md|csv`` (mean ± std over seeds) and ``all_runs.csv`` (one line per run)."""
    runs_root = RESULTS / "runs"
    everything = []
    for name, (prefixes, group_by) in TABLES.items():
        dirs = sorted(d for prefix in prefixes for d in runs_root.glob(f"{prefix}*") if d.is_dir())
        if not dirs:
            continue
        runs = collect_runs(dirs)
        everything += runs
        rows = aggregate(runs, group_by.split(","))
        (RESULTS / "tables").mkdir(exist_ok=True)
        (RESULTS / "tables" / f"{name}.md").write_text(to_markdown(rows))
        to_csv(rows, RESULTS / "tables" / f"{name}.csv")
    with (RESULTS / "all_runs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_COLUMNS)
        for run in everything:
            run = {**run, "run_dir": str(Path(run["run_dir"]).relative_to(ROOT))}
            writer.writerow(["" if run.get(c) is None else run.get(c) for c in RUN_COLUMNS])


def run_row(row: Row, seed: int, runs_dir: Path, dry: bool) -> Path:
    """Train one (row, seed) unless its result exists; copy its light files to the results."""
    out = runs_dir / row.config / f"s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "adaptrnn.cli",
        "train",
        "--config",
        str(ROOT / "configs" / f"{row.config}.yaml"),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--no-progress",
    ]
    if row.steps is not None:
        cmd += ["--steps", str(row.steps)]
    for key, value in row.overrides.items():
        cmd += ["--set", f"{key}={value}"]
    print(" ".join(cmd[1:]), flush=True)
    if dry:
        return out
    if not (out / "result.json").is_file():
        resume = ["--resume"] if (out / "config.yaml").is_file() else []
        if resume:  # an interrupted run continues from its last checkpoint, with its own config
            cmd = cmd[:4] + ["--seed", str(seed), "--out", str(out), "--no-progress", "--resume"]
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if not (out / "result.json").is_file():
            print(f"FAILED (exit {code}): {out}", flush=True)
            return out  # a diverged run (exit 1) still has a result: its best checkpoint's
    dest = RESULTS / "runs" / row.config / f"s{seed}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in LIGHT_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="cpu-short", choices=sorted(PLANS))
    parser.add_argument(
        "--only", action="append", default=[], help="run only rows whose config starts with this (repeatable)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "reproduce"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--tables-only", action="store_true", help="only rebuild benchmarks/results/tables")
    args = parser.parse_args()
    prefixes = tuple(args.only) or ("",)
    jobs = [(row, seed) for row in PLANS[args.plan] if row.config.startswith(prefixes) for seed in row.seeds]
    if not args.tables_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run_row, row, seed, Path(args.runs_dir), args.dry_run) for row, seed in jobs]:
                future.result()
    if not args.dry_run:
        write_tables()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
