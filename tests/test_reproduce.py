"""benchmarks/reproduce.py: plans resolve, finished runs are skipped, partial runs resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adaptrnn.config import load_config_file, make_config
from conftest import load_benchmark

reproduce = load_benchmark("reproduce")
Row = reproduce.Row


@pytest.mark.parametrize("plan", sorted(reproduce.PLANS))
def test_every_row_of_every_plan_resolves(plan):
    folders = [row.folder for row in reproduce.PLANS[plan]]
    assert len(folders) == len(set(folders)), "two rows would share a run folder"
    for row in reproduce.PLANS[plan]:
        config = make_config(
            load_config_file(reproduce.config_path(row)),
            {"steps": row.steps},
            [f"{k}={v}" for k, v in row.overrides.items()],
        )
        assert config.steps == (row.steps or config.steps)


def test_paper_cpu_plan_has_the_issue_rows():
    rows = {row.folder: row for row in reproduce.PLANS["paper-cpu"]}
    for name in ("adding_skip_lstm_l1e-5", "adding_skip_gru_l1e-5"):
        row = rows[f"skip_rnn/{name}"]
        assert len(row.seeds) >= 3 and "graph" not in row.overrides  # the default graph: official
    for tau in ("1e-2", "1e-3"):
        row = rows[f"act/parity_act_rnn_t{tau}"]
        assert len(row.seeds) >= 4 and row.overrides.get("layout", "random") == "random"
        assert rows[f"act/prefix_parity_act_rnn_t{tau}"].overrides["layout"] == "prefix"
    stability = [row.overrides for row in reproduce.PLANS["stability"]]
    assert {(o["lr"], o.get("lr_final")) for o in stability} == {("1e-4", None), ("1e-3", None), ("1e-3", "1e-4")}
    assert {o.get("graph") for o in stability} >= {"official", "paper-carried"}
    assert all(len(row.seeds) >= 2 for row in reproduce.PLANS["stability"])
    names = [row.folder for row in reproduce.PLANS["stability"]]
    assert len(set(names)) == len(names)
    assert {o.get("detach_gate_state") for o in stability} >= {"true", "false"}


def tiny_plan(tmp_path: Path) -> list:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "adding",
                "model": "skip-gru",
                "task_options": {"length": 8, "val_size": 32, "test_size": 32},
                "hidden_size": 8,
                "batch_size": 8,
                "eval_batch_size": 32,
                "device": "cpu",
            }
        )
    )
    sets = {"eval_every": "2", "log_every": "2", "lr": "1e-2"}
    return [
        Row(str(config), seeds=(0,), steps=4, overrides=sets, name="tiny_a"),
        Row(str(config), seeds=(1,), steps=4, overrides={**sets, "graph": "paper"}, name="tiny_b"),
    ]


def test_resumable_campaign_skips_resumes_and_restarts(tmp_path, monkeypatch):
    plan, runs, results = tiny_plan(tmp_path), tmp_path / "runs", tmp_path / "results"
    a, b = runs / "p" / "tiny_a" / "s0", runs / "p" / "tiny_b" / "s1"
    assert reproduce.run_state(a) == "fresh"
    reproduce.run_plan(plan, runs, "p/", results=results)
    for out in (a, b):
        assert reproduce.run_state(out) == "done"
        copied = results / "runs" / "p" / out.parent.name / out.name
        assert json.loads((copied / "result.json").read_text())["train_steps"] == 4
    assert json.loads((b / "result.json").read_text())["config"]["method_options"]["graph"] == "paper"
    # the final weights are tested too; with validation at the last step, the best may be the last
    last = json.loads((results / "runs/p/tiny_a/s0/result_last.json").read_text())
    assert Path(last["checkpoint"]).name == "last" and last["checkpoint_step"] == 4
    best_step = json.loads((a / "result.json").read_text())["checkpoint_step"]
    if best_step == 4:
        assert last["value"] == pytest.approx(json.loads((a / "result.json").read_text())["value"], rel=1e-6)

    # a finished plan launches nothing
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    reproduce.run_plan(plan, runs, "p/", results=results)
    assert calls == []

    # killed after a checkpoint (result.json not yet written): continues with --resume, its own config
    (a / "result.json").unlink()
    before = (a / "metrics.jsonl").read_text()
    assert reproduce.run_state(a) == "resume"
    reproduce.run_plan(plan, runs, "p/", results=results)
    assert len(calls) == 1 and "--resume" in calls[0] and "--config" not in calls[0]
    assert (a / "metrics.jsonl").read_text() == before  # nothing after step 4 to redo
    assert json.loads((a / "result.json").read_text())["train_steps"] == 4

    # killed before its first checkpoint was complete: starts afresh with the row's command
    (b / "result.json").unlink()
    shutil.rmtree(b / "checkpoints" / "last")
    assert reproduce.run_state(b) == "fresh"
    reproduce.run_plan(plan, runs, "p/", results=results)
    assert len(calls) == 2 and "--resume" not in calls[1] and "graph=paper" in calls[1]
    assert reproduce.run_state(b) == "done"

    # a clone holds the committed results but not the run folders: nothing is trained again
    reproduce.run_plan(plan, tmp_path / "fresh_clone_runs", "p/", results=results)
    assert len(calls) == 2 and not (tmp_path / "fresh_clone_runs").exists()


def test_tables_gain_penalty_lr_checkpoint_and_collapse_columns(tmp_path):
    plan, results = tiny_plan(tmp_path), tmp_path / "results"
    reproduce.run_plan(plan[:1], tmp_path / "runs", "paper_cpu/skip_rnn/adding_", results=results)
    reproduce.write_tables(results)
    lines = (results / "all_runs.csv").read_text().splitlines()
    header, row = lines[0].split(","), dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    for column in ("penalty", "lr", "checkpoint", "collapsed", "graph", "last_value", "last_updates_fraction"):
        assert column in header
    assert 0 <= float(row["last_updates_fraction"]) <= 1 and float(row["last_value"]) >= 0
    assert row["lr"] == "0.01" and row["penalty"] == "0.0" and row["graph"] == "official"
    assert row["checkpoint"].startswith("best@") and row["collapsed"] in ("True", "False")


def test_a_row_continues_another_rows_runs_to_more_steps(tmp_path, monkeypatch):
    """``start_from``: the longer row copies the shorter row's run (not its results) and resumes it
    with its own steps; the shorter row's results stay as they were."""
    short = tiny_plan(tmp_path)[0]
    longer = reproduce.Row(short.config, seeds=(0,), steps=8, overrides=short.overrides, name="tiny_long")
    longer.start_from = "tiny_a"
    runs, results = tmp_path / "runs", tmp_path / "results"
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    reproduce.run_plan([short, longer], runs, "p/", results=results)
    a, long_run = runs / "p" / "tiny_a" / "s0", runs / "p" / "tiny_long" / "s0"
    assert json.loads((a / "result.json").read_text())["train_steps"] == 4
    assert json.loads((long_run / "result.json").read_text())["train_steps"] == 8
    assert "--resume" in calls[1] and calls[1][calls[1].index("--steps") + 1] == "8"
    steps = [json.loads(line)["step"] for line in (long_run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 2 and steps[-1] == 8 and steps == sorted(steps)  # the source's steps, then its own
    assert json.loads((results / "runs/p/tiny_a/s0/result.json").read_text())["train_steps"] == 4


def test_a_continuation_takes_its_own_lr_schedule(tmp_path):
    """A continued row's overrides that differ from its source's (here an lr anneal from the
    source's last step) apply on resume; the source's steps keep the source's constant lr."""
    short = tiny_plan(tmp_path)[0]
    anneal = {**short.overrides, "lr_final": "1e-5", "lr_decay_start": "4"}
    longer = reproduce.Row(short.config, seeds=(0,), steps=8, overrides=anneal, name="tiny_anneal")
    longer.start_from = "tiny_a"
    runs, results = tmp_path / "runs", tmp_path / "results"
    reproduce.run_plan([short, longer], runs, "p/", results=results)
    run = runs / "p" / "tiny_anneal" / "s0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert float(config["lr_final"]) == 1e-5 and int(config["lr_decay_start"]) == 4
    lr = {d["step"]: d["lr"] for d in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    base = float(short.overrides["lr"])
    assert lr[4] == pytest.approx(base) and 1e-5 <= lr[8] < lr[6] < base  # annealed after step 4
    source = yaml.safe_load((runs / "p" / "tiny_a" / "s0" / "config.yaml").read_text())
    assert source.get("lr_final") is None


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def test_a_parked_run_resumes_on_another_machine_as_if_never_stopped(tmp_path, monkeypatch):
    """``--park`` copies an unfinished run's checkpoints into the results; a clone with an empty
    runs folder continues from them to the weights of an uninterrupted run, and the parked copy
    goes once the run is finished."""
    row = tiny_plan(tmp_path)[0]
    whole = tmp_path / "whole"
    reproduce.run_plan([row], whole, "p/", results=tmp_path / "whole_results")

    # the run stopped at step 2 of 4 on the first machine
    first, results = tmp_path / "first", tmp_path / "results"
    half = reproduce.Row(row.config, row.seeds, 2, row.overrides, row.folder)
    reproduce.run_plan([half], first, "p/", results=tmp_path / "scratch")
    run = first / "p" / "tiny_a" / "s0"
    for name in ("result.json", "result_last.json"):
        (run / name).unlink()
    reproduce.park_plan([row], first, "p/", results=results)
    parked = results / "inflight" / "p" / "tiny_a" / "s0"
    assert sorted(p.name for p in parked.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert reproduce.checkpoint_step(parked / "checkpoints" / "last") == 2

    # the second machine: the repository (results) without the first machine's runs folder
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    second = tmp_path / "second"
    reproduce.run_plan([row], second, "p/", results=results)
    assert len(calls) == 1 and "--resume" in calls[0]
    resumed, uninterrupted = final_weights(second / "p/tiny_a/s0"), final_weights(whole / "p/tiny_a/s0")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    steps = [json.loads(line)["step"] for line in (second / "p/tiny_a/s0/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert not parked.exists() and (results / "runs/p/tiny_a/s0/result.json").is_file()


def test_parking_refuses_a_checkpoint_whose_files_are_of_two_steps(tmp_path):
    """What a copy taken while the trainer replaces its checkpoint could hold: never parked."""
    row = tiny_plan(tmp_path)[0]
    runs = tmp_path / "runs"
    reproduce.run_plan([row], runs, "p/", results=tmp_path / "results")
    run = runs / "p" / "tiny_a" / "s0"
    (run / "result.json").unlink()
    # the last checkpoint's weights (step 4) beside a trainer state of step 2
    state_file = run / "checkpoints" / "last" / "trainer_state.pt"
    state = reproduce.load_trainer_state(state_file)
    torch.save({**state, "step": 2}, state_file)
    with pytest.raises(reproduce.CheckpointError, match="not of one step"):
        reproduce.checkpoint_step(run / "checkpoints" / "last")
    with pytest.raises(RuntimeError, match="no consistent copy"):
        reproduce.park_run(run, tmp_path / "parked")
    assert not (tmp_path / "parked").exists()


def test_seed_and_only_pick_the_runs(tmp_path, monkeypatch, capsys):
    argv = ["reproduce.py", "--plan", "paper-cpu", "--only", "sa_rnn/", "--seed", "1", "--dry-run"]
    monkeypatch.setattr(sys, "argv", [*argv, "--runs-dir", str(tmp_path)])
    assert reproduce.main() == 0
    outs = [line.split("--out ")[1].split()[0] for line in capsys.readouterr().out.splitlines()]
    rows = [row for row in reproduce.PLANS["paper-cpu"] if row.folder.startswith("sa_rnn/") and 1 in row.seeds]
    assert outs == [str(tmp_path / "paper_cpu" / row.folder / "s1") for row in rows] and len(outs) == 4
    assert not tmp_path.joinpath("paper_cpu").exists()  # a dry run creates nothing


def test_a_resumed_run_takes_the_plans_stopping_rule_and_threads_only(tmp_path):
    row = reproduce.Row("adding", seeds=(0,), steps=8, overrides={"lr": "1e-3", "patience": "4", "threads": "1"})
    cmd = reproduce.train_command(row, 0, tmp_path / "run", "resume")
    assert "--allow-changed-settings" in cmd and "--config" not in cmd
    sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    assert sets == ["patience=4", "threads=1"]  # the lr of a run under way stays its own
    plain = reproduce.Row("adding", seeds=(0,), steps=8, overrides={"lr": "1e-3"})
    assert "--allow-changed-settings" not in reproduce.train_command(plain, 0, tmp_path / "run", "resume")
