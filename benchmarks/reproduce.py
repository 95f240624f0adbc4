"""Rerun the papers' table rows and collect the results beside the papers' numbers.

    python benchmarks/reproduce.py --plan cpu-short [--jobs 2] [--only skip_rnn/adding]
    python benchmarks/reproduce.py --plan paper-cpu --jobs 2     # the long campaign (CPU-days)
    python benchmarks/reproduce.py --plan stability --jobs 2     # docs/stability.md
    python benchmarks/reproduce.py --plan paper-cpu --status     # what is done, partial, not started

Every plan is resumable with the same command: a run with a result.json is skipped, a run with
a checkpoint continues from it (``adaptrnn train --resume``, bit-exact on the CPU), any other
run starts afresh; the script can be killed at any moment. The plans and their recipes are in
``benchmarks/campaign_plans.py``; the long plans' runs go to ``runs/reproduce/<plan>/`` and
``benchmarks/results/runs/<plan>/``.

A run folder lives on one machine. To carry unfinished runs to another (a CPU-days plan outlives
a session), ``--park`` copies their checkpoints to ``benchmarks/results/inflight/``; commit
them, and the same command on a clone resumes each run from its parked checkpoint:

    python benchmarks/reproduce.py --plan paper-cpu --park      # then: git add benchmarks/results/inflight

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
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # campaign_plans beside this script

from campaign_plans import CPU_SHORT, PAPER_CPU, STABILITY, Row  # noqa: E402

from adaptrnn.checkpoint import STATE, CheckpointError, checkpoint_step, load_trainer_state  # noqa: E402
from adaptrnn.report import aggregate, collect_runs, tested_checkpoint, to_csv, to_markdown  # noqa: E402
from adaptrnn.runinfo import collapse_record  # noqa: E402
from adaptrnn.runs import CHECKPOINTS, evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIGHT_FILES = ("config.yaml", "metrics.jsonl", "result.json", "result_last.json", "samples.npz")
FOLLOW_THE_PLAN = ("patience", "threads")  # on resume, from the plan: when to stop, and the threads
# Unfinished runs parked in the repository (``--park``): a commit carries their checkpoints to the
# next machine, where the same command resumes them; a run's parked copy goes once it finishes.
PARKED = "inflight"


PLANS: dict[str, list[Row]] = {
    "cpu-short": CPU_SHORT,
    "paper-cpu": PAPER_CPU,
    "stability": STABILITY,
}
# Where each plan's runs go, below runs/reproduce/ and benchmarks/results/runs/.
PLAN_FOLDERS = {"cpu-short": "", "paper-cpu": "paper_cpu/", "stability": "stability/"}


# The tables of docs/results.md: (run folders under benchmarks/results/runs/, report's group-by keys).
TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "skip_rnn_adding": (("skip_rnn/adding_",), "task,model,budget"),
    "skip_rnn_frequency": (("skip_rnn/frequency_",), "task,sampling_period_ms,model,budget"),
    "skip_rnn_pixel_fashion_mnist": (("skip_rnn/pixel_fashion_mnist_",), "task,model,budget"),
    "sa_rnn_adding_t500": (("sa_rnn/",), "task,model,budget"),
    "vc_rnn_char_lm": (("vc_rnn/",), "task,model"),
    "act_parity": (("act/parity_", "act_long/", "act_small/"), "task,size,model,time_penalty,train_steps"),
    "act_logic": (("act/logic_",), "task,model,time_penalty"),
    "paper_cpu_skip_rnn_adding": (("paper_cpu/skip_rnn/adding_",), "task,model,budget,lr,lr_final,graph"),
    "paper_cpu_skip_rnn_frequency": (
        ("paper_cpu/skip_rnn/frequency_",),
        "task,sampling_period_ms,model,budget,lr,lr_final,graph",
    ),
    "paper_cpu_act_parity": (("paper_cpu/act/",), "task,size,layout,model,time_penalty,lr,train_steps"),
    "paper_cpu_sa_rnn_adding_t500": (("paper_cpu/sa_rnn/",), "task,model,budget,lr,detach_gate_state"),
    "paper_cpu_vc_rnn_char_lm": (
        ("paper_cpu/vc_rnn/",),
        "task,model,hidden_size,target,penalty,detach_scheduler_state",
    ),
    "stability": (
        ("stability/",),
        "task,length,sampling_period_ms,model,lr,lr_final,graph,gate_grad_clip,detach_gate_state",
    ),
}
RUN_COLUMNS = (
    "run_dir task model seed train_steps metric value solved updates_fraction updates_per_sequence "
    "flops_per_sequence dense_flops_per_sequence inference_ms_per_sequence wall_s diverged "
    "penalty lr lr_final batch_size checkpoint collapsed final_val_value last_value last_updates_fraction "
    "graph gate_grad_clip gate_init detach_gate_state detach_scheduler_state layout"
).split()
PENALTIES = ("budget", "time_penalty", "penalty")  # Skip/SA λ, ACT τ, VC penalty weight
# Options added after some committed runs were made: a config.yaml without the key ran with the
# code's only behaviour at the time, written here (Skip's graph and unbounded gate gradient, SA's
# init and VC's scheduler graph, parity's layout).
LEGACY_OPTIONS = {
    "graph": "paper-carried",
    "gate_grad_clip": None,
    "gate_init": "open",
    "detach_gate_state": False,
    "detach_scheduler_state": False,
    "layout": "random",
}


def run_columns(run: dict) -> dict:
    """The per-run columns of all_runs.csv beyond result.json's own (see RUN_COLUMNS)."""
    from adaptrnn.model import model_options
    from adaptrnn.tasks import TASKS, task_options

    config = run["config"]
    method, task_opts = config.get("method_options", {}), config.get("task_options", {})
    extra = {
        "penalty": next((method[k] for k in PENALTIES if k in method), None),
        "lr": config.get("lr"),
        "lr_final": config.get("lr_final"),
        "batch_size": config.get("batch_size"),
        "checkpoint": tested_checkpoint(run),
    }
    last = Path(run["run_dir"]) / "result_last.json"
    if last.is_file():
        last_result = json.loads(last.read_text())
        extra.update(last_value=last_result["value"], last_updates_fraction=last_result["updates_fraction"])
    if run.get("collapsed") is None:  # a result from before the flag: the same rule on its metrics.jsonl
        task = TASKS.get(run["task"])
        if task is not None:
            extra.update(collapse_record(Path(run["run_dir"]) / "metrics.jsonl", task.higher_is_better))
    for key, legacy in LEGACY_OPTIONS.items():
        applies = key in model_options(run["model"]) or key in task_options(run["task"])
        extra[key] = method.get(key, task_opts.get(key, legacy)) if applies else None
    return extra


def write_tables(results: Path = RESULTS) -> None:
    """``tables/NAME.md|csv`` (mean ± std over seeds) and ``all_runs.csv`` (one line per run)."""
    runs_root = results / "runs"
    everything = []
    for name, (prefixes, group_by) in TABLES.items():
        dirs = sorted(d for prefix in prefixes for d in runs_root.glob(f"{prefix}*") if d.is_dir())
        if not dirs:
            continue
        runs = collect_runs(dirs)
        everything += runs
        rows = aggregate(runs, group_by.split(","))
        (results / "tables").mkdir(exist_ok=True)
        (results / "tables" / f"{name}.md").write_text(to_markdown(rows))
        to_csv(rows, results / "tables" / f"{name}.csv")
    with (results / "all_runs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_COLUMNS)
        for run in everything:
            run = {**run, **run_columns(run)}
            run["run_dir"] = str(Path(run["run_dir"]).resolve().relative_to(results.resolve().parents[1]))
            writer.writerow(["" if run.get(c) is None else run.get(c) for c in RUN_COLUMNS])


def run_state(out: Path) -> str:
    """The state of a run folder: done (result.json), resume (a checkpoint to continue) or fresh."""
    if (out / "result.json").is_file():
        return "done"
    if (out / CHECKPOINTS / "last").is_dir():
        return "resume"
    return "fresh"


def write_last_result(out: Path) -> None:
    """``result_last.json``: a finished run's final weights tested like its best ones (result.json).

    The best checkpoint is the lowest validation error, which for a skipping model is not the
    operating point it trained towards (more updates, lower error); the final weights are.
    """
    if (out / "result_last.json").is_file() or not (out / CHECKPOINTS / "last").is_dir():
        return
    result = evaluate(out, split="test", device="cpu", checkpoint="last")
    result["checkpoint_step"] = json.loads((out / "result.json").read_text())["train_steps"]
    tmp = out / "result_last.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "result_last.json")


def park_run(out: Path, parked: Path, tries: int = 5) -> int:
    """Copy the unfinished run ``out`` (config, metrics, last and best checkpoints; not its
    TensorBoard logs) to ``parked``, replacing an older copy; returns the step parked.

    The trainer may replace a checkpoint while it is copied: a copy whose files are not of one
    step, or whose best checkpoint is not the one the last checkpoint names, is made again.
    """
    staging = parked.with_name(f".{parked.name}.new")
    for _ in range(tries):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            last, best = staging / CHECKPOINTS / "last", staging / CHECKPOINTS / "best"
            shutil.copytree(out / CHECKPOINTS / "last", last)
            step, best_step = checkpoint_step(last), load_trainer_state(last / STATE)["best_step"]
            if best_step is not None:
                shutil.copytree(out / CHECKPOINTS / "best", best)
                if checkpoint_step(best) != best_step:
                    continue
            for name in ("config.yaml", "metrics.jsonl"):  # after the checkpoints: no logged step missing
                shutil.copy2(out / name, staging / name)
        except (OSError, CheckpointError):  # a checkpoint renamed or half-written under the copy
            continue
        shutil.rmtree(parked, ignore_errors=True)
        os.replace(staging, parked)
        return step
    shutil.rmtree(staging, ignore_errors=True)
    raise RuntimeError(f"{out}: no consistent copy in {tries} tries (is its trainer saving continually?)")


def park_plan(plan: list[Row], runs_dir: Path, folder: str = "", results: Path = RESULTS) -> None:
    """Park every unfinished run of ``plan`` under ``results/inflight`` (see ``park_run``)."""
    for row in plan:
        for seed in row.seeds:
            out = runs_dir / folder / row.folder / f"s{seed}"
            if run_state(out) == "resume":
                parked = results / PARKED / folder / row.folder / f"s{seed}"
                parked.parent.mkdir(parents=True, exist_ok=True)
                step = park_run(out, parked)
                size = sum(f.stat().st_size for f in parked.rglob("*") if f.is_file())
                print(f"[parked] step {step}, {size / 1e6:.1f} MB: {parked}", flush=True)


def config_path(row: Row) -> Path:
    return Path(row.config) if row.config.endswith(".yaml") else ROOT / "configs" / f"{row.config}.yaml"


def train_command(row: Row, seed: int, out: Path, state: str) -> list[str]:
    """The ``adaptrnn train`` command for a run; a resumed run uses its own config.yaml, but the
    row's steps (a continued run's are more than its source's), the row's settings that do not
    change what a step computes (``FOLLOW_THE_PLAN``: a plan may gain them while its runs are
    under way) and, for a continued run, all the row's overrides (its config.yaml is the source's)."""
    cmd = [sys.executable, "-m", "adaptrnn.cli", "train", "--out", str(out), "--no-progress"]
    if state == "resume":
        cmd += ["--resume", *(["--steps", str(row.steps)] if row.steps is not None else [])]
        # a continuation takes its own settings where they differ (e.g. an lr schedule)
        follow = row.overrides if row.start_from else {k: v for k, v in row.overrides.items() if k in FOLLOW_THE_PLAN}
        if follow:
            cmd += ["--allow-changed-settings", *(a for k, v in follow.items() for a in ("--set", f"{k}={v}"))]
        return cmd
    cmd += ["--config", str(config_path(row)), "--seed", str(seed)]
    if row.steps is not None:
        cmd += ["--steps", str(row.steps)]
    for key, value in row.overrides.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def run_row(
    row: Row, seed: int, runs_dir: Path, dry: bool, folder: str = "", results: Path = RESULTS, collect: bool = False
) -> Path:
    """Train one (row, seed) unless its result exists, resuming a partial run; test its last
    checkpoint too; copy its light files. ``collect``: train nothing, only finish done runs."""
    out = runs_dir / folder / row.folder / f"s{seed}"
    dest = results / "runs" / folder / row.folder / f"s{seed}"
    source = runs_dir / folder / row.start_from / f"s{seed}" if row.start_from else None
    parked = results / PARKED / folder / row.folder / f"s{seed}"
    if run_state(out) == "fresh" and run_state(parked) == "resume" and not dry and not collect:
        # parked on another machine: continue from its checkpoint
        shutil.copytree(parked, out, dirs_exist_ok=True)
        print(f"[unparked] {parked}", flush=True)
    continues = run_state(out) == "fresh" and source is not None and run_state(source) != "fresh"
    if continues and not dry and not collect:
        # continue the source run: its folder without its results (they stay the shorter run's)
        skip = shutil.ignore_patterns("result*.json", "samples.npz", "*.png", "tb")
        shutil.copytree(source, out, ignore=skip, dirs_exist_ok=True)
    state = "resume" if continues else run_state(out)
    if not out.exists() and (dest / "result.json").is_file():
        # finished elsewhere (its checkpoints are not committed): the committed result stands
        print(f"[committed] {dest}", flush=True)
        return out
    cmd = train_command(row, seed, out, state)
    print(f"[{state}] " + " ".join(cmd[1:]), flush=True)
    if dry or (collect and state != "done"):
        return out
    if state != "done":
        if state == "fresh" and (out / CHECKPOINTS).exists():
            shutil.rmtree(out / CHECKPOINTS)  # killed while writing its first checkpoint: nothing to keep
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if not (out / "result.json").is_file():
            print(f"FAILED (exit {code}): {out}", flush=True)
            return out  # a diverged run (exit 1) still has a result: its best checkpoint's
    write_last_result(out)
    dest.mkdir(parents=True, exist_ok=True)
    for name in LIGHT_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    shutil.rmtree(parked, ignore_errors=True)  # finished: its committed results replace the parked run
    return out


def run_plan(
    plan: list[Row],
    runs_dir: Path,
    folder: str = "",
    jobs: int = 1,
    dry: bool = False,
    results: Path = RESULTS,
    collect: bool = False,
) -> None:
    """Every (row, seed) of ``plan``, ``jobs`` at a time; finished runs are skipped."""
    work = [(row, seed) for row in plan for seed in row.seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run_row, row, seed, runs_dir, dry, folder, results, collect) for row, seed in work]:
            future.result()


def print_status(plan: list[Row], runs_dir: Path, folder: str) -> None:
    """One line per run: its state and, for a partial run, the last logged step."""
    counts: dict[str, int] = {}
    for row in plan:
        for seed in row.seeds:
            out = runs_dir / folder / row.folder / f"s{seed}"
            state = run_state(out)
            counts[state] = counts.get(state, 0) + 1
            lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
            step = json.loads(lines[-1])["step"] if lines else 0
            print(f"{state:7s} step {step:>8} / {row.steps or 'config'}  {out}")
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="cpu-short", choices=sorted(PLANS))
    parser.add_argument(
        "--only", action="append", default=[], help="run only rows whose folder starts with this (repeatable)"
    )
    parser.add_argument(
        "--seed", type=int, action="append", default=[], help="run only these seeds of each row (repeatable)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "reproduce"))
    parser.add_argument("--dry-run", action="store_true", help="print each run's state and command only")
    parser.add_argument("--status", action="store_true", help="print each run's state (done/resume/fresh) and stop")
    parser.add_argument("--tables-only", action="store_true", help="only rebuild benchmarks/results/tables")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: test the finished runs' last checkpoints, copy their light files, rebuild the tables",
    )
    parser.add_argument(
        "--park",
        action="store_true",
        help="train nothing: copy the unfinished runs' checkpoints to benchmarks/results/inflight "
        "(commit them to resume on another machine)",
    )
    parser.add_argument(
        "--smoke",
        type=int,
        metavar="STEPS",
        help="check the plan: every row, first seed, STEPS steps, under runs/smoke/ (results not touched)",
    )
    args = parser.parse_args()
    prefixes = tuple(args.only) or ("",)
    plan = [row for row in PLANS[args.plan] if row.folder.startswith(prefixes)]
    if args.seed:
        plan = [replace(row, seeds=tuple(s for s in row.seeds if s in args.seed)) for row in plan]
    folder = PLAN_FOLDERS[args.plan]
    if args.smoke:
        smoke = {"eval_every": str(args.smoke), "log_every": str(args.smoke), "eval_batches": "1"}
        plan = [Row(r.config, r.seeds[:1], args.smoke, {**r.overrides, **smoke}, r.folder) for r in plan]
        runs = ROOT / "runs" / "smoke"
        run_plan(plan, runs, folder, args.jobs, args.dry_run, results=runs / "results")
        return 0
    if args.status:
        print_status(plan, Path(args.runs_dir), folder)
        return 0
    if args.park:
        park_plan(plan, Path(args.runs_dir), folder)
        return 0
    if not args.tables_only:
        run_plan(plan, Path(args.runs_dir), folder, args.jobs, args.dry_run, collect=args.collect)
    if not args.dry_run:
        write_tables()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
