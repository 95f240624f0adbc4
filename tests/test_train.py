"""Trainer: learning, exact resume, checkpoints, schedules, DDP on two CPU processes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from adaptrnn import train as train_module
from adaptrnn.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from adaptrnn.config import ConfigError, make_config
from adaptrnn.model import MODEL_NAMES, build_model
from adaptrnn.runs import evaluate
from adaptrnn.tasks import make_task
from adaptrnn.tasks.synthetic import AddingTask
from adaptrnn.train import Trainer, train

TINY = [
    "hidden_size=12",
    "batch_size=16",
    "eval_batch_size=64",
    "log_every=2",
    "eval_every=3",
    "lr=1e-2",
]
TINY_ADDING = [*TINY, "length=12", "val_size=64", "test_size=64"]


def tiny(task: str = "adding", model: str = "skip-lstm", steps: int = 8, extra: tuple[str, ...] = ()):
    sets = TINY_ADDING if task == "adding" else TINY
    return make_config(overrides={"task": task, "model": model, "steps": steps, "device": "cpu"}, sets=[*sets, *extra])


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_run_lowers_the_loss(tmp_path):
    config = tiny(model="lstm", steps=150, extra=("hidden_size=16", "log_every=25", "eval_every=75", "batch_size=64"))
    result = train(config, tmp_path / "run", progress=False)
    lines = metrics(tmp_path / "run")
    assert [line["step"] for line in lines] == [25, 50, 75, 100, 125, 150]
    assert lines[-1]["loss"] < 0.2 * lines[0]["loss"]
    assert all(line["grad_norm"] > 0 and line["skipped_steps"] == 0 for line in lines)
    assert result["value"] < 0.1 * AddingTask(length=12).target_variance
    for key in ("task", "model", "metric", "value", "updates_fraction", "flops_per_sequence", "train_steps", "wall_s"):
        assert key in json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["train_steps"] == 150 and result["metric"] == "mse" and result["solved"] in (True, False)
    # the run can be evaluated again from its best checkpoint, with the same number
    again = evaluate(tmp_path / "run", device="cpu")
    assert again["value"] == pytest.approx(result["value"], rel=1e-6)
    # and from its final weights, which gave the last validation line
    last = evaluate(tmp_path / "run", split="val", device="cpu", checkpoint="last")
    assert Path(last["checkpoint"]).name == "last"
    assert last["value"] == pytest.approx(lines[-1]["val_metric"], rel=1e-5)
    with pytest.raises(ValueError, match="checkpoint must be best or last"):
        evaluate(tmp_path / "run", checkpoint="final")


def test_patience_stops_after_validations_without_a_better_metric(tmp_path):
    """lr 1e-30 leaves the weights as they are (float32), so no validation after the first is
    better (the rule is strict): with validation every 3 steps and patience 2 the run stops at
    step 9, tests the step-3 checkpoint, and a resume trains no further."""
    config = tiny(steps=30, extra=("lr=1e-30", "patience=2"))
    result = train(config, tmp_path / "run", progress=False)
    assert result["train_steps"] == 9 and result["stopped_early"] == 9 and result["best_step"] == 3
    assert [line["step"] for line in metrics(tmp_path / "run")][-1] == 9
    again = Trainer(config, tmp_path / "run", resume=True, progress=False).run()
    assert again["train_steps"] == 9 and again["stopped_early"] == 9
    assert [line["step"] for line in metrics(tmp_path / "run")][-1] == 9
    # without patience the same run trains all its steps
    whole = train(tiny(steps=12, extra=("lr=1e-30",)), tmp_path / "all", progress=False)
    assert whole["train_steps"] == 12 and "stopped_early" not in whole
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        tiny(extra=("patience=0",))


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals")
def test_trainer_flushes_subnormals_unless_told_not_to(tmp_path):
    subnormal = torch.tensor([1e-40])
    assert subnormal.mul(1.0).item() > 0  # torch's default keeps them
    Trainer(tiny(steps=1), tmp_path / "a", progress=False)
    assert subnormal.mul(1.0).item() == 0.0
    Trainer(tiny(steps=1, extra=("flush_denormal=false",)), tmp_path / "b", progress=False)
    assert subnormal.mul(1.0).item() > 0


def _poison_loss(trainer: Trainer, poisoned_calls: set[int], weights: list[dict]) -> None:
    """Make the task loss infinite at the given (1-based) calls; record the weights seen by each call."""
    clean = trainer.task.loss

    def loss(pred, batch):
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        value = clean(pred, batch)
        return value * float("inf") if len(weights) in poisoned_calls else value

    trainer.task.loss = loss


def test_a_step_with_a_nonfinite_gradient_is_skipped_and_counted(tmp_path):
    trainer = Trainer(tiny(steps=5, extra=("log_every=5", "eval_every=5")), tmp_path / "run", progress=False)
    weights: list[dict] = []
    _poison_loss(trainer, {3}, weights)
    trainer.run()
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in itertools.pairwise(weights)]
    assert changed == [True, True, False, True]  # step 3 was skipped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    (line,) = metrics(tmp_path / "run")
    assert line["skipped_steps"] == 1 and torch.isfinite(torch.tensor(line["loss"]))


def test_training_stops_and_says_so_when_every_gradient_is_nonfinite(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "MAX_NONFINITE_STEPS", 3)
    trainer = Trainer(tiny(steps=10), tmp_path / "run", progress=False)
    _poison_loss(trainer, set(range(1, 11)), [])
    result = trainer.run()  # stops at step 3 and still tests the best checkpoint
    assert "step 3: the gradient was NaN or infinite in 3 steps in a row" in result["diverged"]
    assert result["train_steps"] == 3
    assert json.loads((tmp_path / "run" / "result.json").read_text())["diverged"] == result["diverged"]


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "task, model, extra",
    [
        # the RNG state must be restored, and the lr schedule must continue where it was
        ("adding", "skip-lstm", ("stochastic=true", "budget=1e-3", "lr_final=1e-4", "lr_decay_start=2")),
        ("char-lm", "gru", ("bptt=6", "batch_size=4", "eval_batches=2")),  # the carried TBPTT state too
    ],
)
def test_resume_gives_bit_equal_weights(tmp_path, monkeypatch, task, model, extra):
    config = tiny(task, model, steps=8, extra=extra)
    train(config, tmp_path / "straight", progress=False)

    task_class = type(make_task(task))
    original = task_class.train_batch

    def crash_at_5(self, step, batch_size):
        if step == 5:
            raise Crash
        return original(self, step, batch_size)

    monkeypatch.setattr(task_class, "train_batch", crash_at_5)
    with pytest.raises(Crash):
        train(config, tmp_path / "resumed", progress=False)
    assert load_trainer_state(tmp_path / "resumed/checkpoints/last/trainer_state.pt")["step"] == 3
    monkeypatch.setattr(task_class, "train_batch", original)
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, tmp_path / "resumed", progress=False)
    train(config, tmp_path / "resumed", resume=True, progress=False)

    for ckpt in ("last", "best"):
        a = load_file(tmp_path / f"straight/checkpoints/{ckpt}/model.safetensors")
        b = load_file(tmp_path / f"resumed/checkpoints/{ckpt}/model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "straight")) == strip(metrics(tmp_path / "resumed"))


def test_checkpoint_files_load_and_bad_files_give_clear_errors(tmp_path):
    task = make_task("adding", length=5)
    model = build_model(task, "skip-gru", hidden_size=6)
    state = {"step": 7, "rng": torch.get_rng_state(), "best": 0.5, "nested": {"a": [1, 2.0, None]}}
    save_checkpoint(tmp_path / "ck", model, state)
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]  # no temp files left
    other = build_model(task, "skip-gru", hidden_size=6)
    loaded = load_checkpoint(tmp_path / "ck", other)
    assert loaded["step"] == 7 and loaded["nested"] == {"a": [1, 2.0, None]}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    weights, trainer_state = tmp_path / "ck/model.safetensors", tmp_path / "ck/trainer_state.pt"
    with pytest.raises(CheckpointError, match="do not match"):
        load_weights(weights, build_model(task, "lstm", hidden_size=6))
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_weights(weights, other)
    trainer_state.write_bytes(trainer_state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable trainer state"):
        load_trainer_state(trainer_state)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else", "step": 1}, foreign)
    with pytest.raises(CheckpointError, match="not an adaptrnn trainer state"):
        load_trainer_state(foreign)
    torch.save({"obj": Crash()}, foreign)  # arbitrary objects are refused, never unpickled
    with pytest.raises(CheckpointError, match="not a readable trainer state"):
        load_trainer_state(foreign)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "garbage.safetensors", other)
    # a pair from different steps (crash between the two writes) is refused
    save_checkpoint(tmp_path / "ck", model, state)
    save_checkpoint(tmp_path / "ck2", model, {**state, "step": 8})
    os.replace(tmp_path / "ck2/trainer_state.pt", tmp_path / "ck/trainer_state.pt")
    with pytest.raises(CheckpointError, match="interrupted while saving"):
        load_checkpoint(tmp_path / "ck", other)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise Crash

    with pytest.raises(Crash):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_schedules_follow_the_papers(tmp_path):
    vc = Trainer(tiny(model="vc-gru", steps=101, extra=("sharpness=2", "sharpness_final=12")), tmp_path / "vc")
    vc._apply_schedules(0)
    assert float(vc.model.rnn.sharpness) == pytest.approx(2.0)
    vc._apply_schedules(50)
    assert float(vc.model.rnn.sharpness) == pytest.approx(7.0)
    vc._apply_schedules(100)
    assert float(vc.model.rnn.sharpness) == pytest.approx(12.0)
    sa = Trainer(tiny(model="sa-gru", steps=1000, extra=("slope_epoch_steps=10",)), tmp_path / "sa")
    for step, slope in ((0, 1.0), (9, 1.0), (10, 1.04), (250, 2.0), (5000, 5.0)):
        sa._apply_schedules(step)
        assert float(sa.model.rnn.slope) == pytest.approx(slope), step
    with pytest.raises(ValueError, match="vc-"):
        Trainer(tiny(model="gru", extra=("sharpness_final=5",)), tmp_path / "bad")


def test_lr_holds_then_follows_a_half_cosine_to_lr_final(tmp_path):
    config = tiny(steps=12, extra=("lr=1e-3", "lr_final=1e-4", "lr_decay_start=3", "log_every=1"))
    assert [train_module.lr_at(config, s) for s in (0, 3)] == [1e-3, 1e-3]
    # halfway through the decay (step 7 of 3..11) the cosine is at the mean of the two ends
    assert train_module.lr_at(config, 7) == pytest.approx(5.5e-4)
    assert train_module.lr_at(config, 11) == pytest.approx(1e-4)
    train(config, tmp_path / "run", progress=False)
    logged = [row["lr"] for row in metrics(tmp_path / "run") if "lr" in row]
    assert logged[:4] == pytest.approx([1e-3] * 4) and logged[-1] == pytest.approx(1e-4)
    assert logged == sorted(logged, reverse=True)
    constant = tiny(steps=11)
    assert {train_module.lr_at(constant, s) for s in range(11)} == {constant.lr}
    with pytest.raises(ValueError, match="lr_final must be"):
        tiny(extra=("lr_final=-1",))


def test_every_model_name_trains_a_step_and_writes_samples(tmp_path):
    import numpy as np

    for name in ("random-skip-lstm", "act-rnn", "sa-lstm", "vc-rnn"):
        run = tmp_path / name
        result = train(tiny(model=name, steps=2, extra=("eval_every=2",)), run, progress=False)
        samples = np.load(run / "samples.npz")
        assert samples["updates"].shape == (8, 12) and samples["x"].shape == (8, 12, 2)
        assert result["flops_per_sequence"] > 0
    assert {"ponder", "remainder"} <= set(np.load(tmp_path / "act-rnn/samples.npz").files)
    assert np.load(tmp_path / "sa-lstm/samples.npz")["neuron_updates"].shape == (8, 12, 12)
    assert "scheduler" in np.load(tmp_path / "vc-rnn/samples.npz").files
    with pytest.raises(ValueError, match="valid models"):
        build_model(make_task("adding"), "skip-transformer", 8)
    assert len(MODEL_NAMES) == 18


def test_random_skip_updates_about_half_the_steps(tmp_path):
    result = train(tiny(model="random-skip-gru", steps=1, extra=("eval_every=1",)), tmp_path / "r", progress=False)
    assert 0.4 < result["updates_fraction"] < 0.6
    assert result["flops_per_sequence"] == pytest.approx(
        result["dense_flops_per_sequence"] * result["updates_fraction"]
    )


# ---- DDP -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, sets: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    config = make_config(overrides={"task": "adding", "model": "skip-lstm", "steps": 6, "device": "cpu"}, sets=sets)
    trainer = Trainer(config, out, progress=False)
    trainer.run()
    torch.save(trainer.model.state_dict(), f"{out}/rank{rank}.pt")
    # The group is gone (its worker threads joined) when run() returns, though the trainer lives:
    # a group left for the garbage collector or interpreter exit to free could deadlock there.
    with open(f"{out}/threads{rank}.txt", "w") as f:
        f.write("\n".join(_thread_names()))


def _thread_names() -> list[str]:
    return [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]


def _run_ddp_workers(out: Path, sets: list[str]) -> None:
    workers = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(out), sets), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 180  # a hung collective must fail the test, not stall the suite
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("the two DDP workers did not finish within 180 s")


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    sets = [*TINY_ADDING, "batch_size=32"]
    _run_ddp_workers(tmp_path / "ddp", sets)
    rank0 = torch.load(tmp_path / "ddp/rank0.pt")
    rank1 = torch.load(tmp_path / "ddp/rank1.pt")
    config = make_config(overrides={"task": "adding", "model": "skip-lstm", "steps": 6, "device": "cpu"}, sets=sets)
    single = Trainer(config, tmp_path / "one", progress=False)
    single.run()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
        torch.testing.assert_close(value, single.model.state_dict()[name], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "ddp/result.json").read_text())["world_size"] == 2
    if Path("/proc/self/task").is_dir():  # Linux: threads are listed with their names
        for rank in (0, 1):
            names = (tmp_path / f"ddp/threads{rank}.txt").read_text().split()
            assert not [n for n in names if "gloo" in n], names


def test_ddp_ranks_stop_together_when_patience_runs_out(tmp_path):
    """Rank 0 alone validates; the other rank must leave the loop at the same step (or hang)."""
    _run_ddp_workers(tmp_path / "ddp", [*TINY_ADDING, "batch_size=32", "lr=1e-30", "eval_every=2", "patience=1"])
    result = json.loads((tmp_path / "ddp/result.json").read_text())
    assert result["train_steps"] == 4 and result["stopped_early"] == 4 and result["world_size"] == 2
    assert (tmp_path / "ddp/rank1.pt").is_file()
