"""A kill at any instant of a run leaves a run that resumes (or restarts) to bit-equal weights.

Each kill point is an ``os.replace`` or ``os.fsync`` call (every write of the trainer ends in one
of them): a forked child trains and dies with ``os._exit`` at the N-th such call, so no
``finally`` block or buffer flush runs, as with ``kill -9``; N goes over every call of a run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptrnn.checkpoint import load_checkpoint, recover_checkpoints, save_checkpoint
from adaptrnn.config import ConfigError, make_config
from adaptrnn.model import build_model
from adaptrnn.tasks import make_task
from adaptrnn.tasks.synthetic import AddingTask
from adaptrnn.train import Trainer, train

KILLED = 77
SETS = ["hidden_size=8", "batch_size=8", "eval_batch_size=32", "log_every=1", "eval_every=2", "lr=1e-2",
        "length=6", "val_size=32", "test_size=32"]  # fmt: skip

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork (Linux)")


def config():
    # budget > 0 and stochastic: the RNG state and the best/last choice both matter on resume
    extra = ["stochastic=true", "budget=1e-2"]
    overrides = {"task": "adding", "model": "skip-gru", "steps": 4, "device": "cpu"}
    return make_config(overrides=overrides, sets=SETS + extra)


def train_killed_at(n: int, out: Path) -> bool:
    """Train ``out`` in a forked child that dies at the n-th replace/fsync call; True if it died."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            calls = 0

            def dying(real):
                def call(*args, **kwargs):
                    nonlocal calls
                    calls += 1
                    if calls == n:
                        os._exit(KILLED)
                    return real(*args, **kwargs)

                return call

            os.replace, os.fsync = dying(os.replace), dying(os.fsync)
            train(config(), out, progress=False)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the child failed (exit {code}) at kill point {n}"
    return code == KILLED


def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / name / "model.safetensors")


def lines(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def hidden_files(run: Path) -> list[str]:
    folders = [run, run / "checkpoints", *(run / "checkpoints").iterdir()]
    return [str(p) for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.startswith(".")]


def test_a_kill_at_every_write_resumes_bit_equal(tmp_path):
    straight = tmp_path / "straight"
    train(config(), straight, progress=False)
    expected = {name: weights(straight, name) for name in ("last", "best")}
    n, points, restarted = 0, 0, 0
    while True:
        n += 1
        out = tmp_path / f"k{n}"
        if not train_killed_at(n, out):
            break  # the run got past its last write
        points += 1
        last = out / "checkpoints" / "last"
        recover_checkpoints(out / "checkpoints")
        if last.is_dir():  # whatever is there is a whole checkpoint of a step the run reached
            state = load_checkpoint(last, build_model(make_task("adding", length=6), "skip-gru", 8))
            assert state["step"] in (2, 4), n
        try:
            trainer = Trainer(config(), out, resume=True, progress=False)
        except ConfigError as err:
            # killed before the first checkpoint was committed: the run starts again, and the
            # plain command accepts it (the two messages do not send the user to each other)
            assert "no checkpoint to resume from" in str(err) and "without --resume" in str(err), n
            trainer, restarted = Trainer(config(), out, progress=False), restarted + 1
        trainer.run()
        for name, tensors in expected.items():
            got = weights(out, name)
            assert got.keys() == tensors.keys()
            assert all(torch.equal(got[k], tensors[k]) for k in tensors), (n, name)
        assert lines(out) == lines(straight), n
        assert json.loads((out / "result.json").read_text())["train_steps"] == 4
        assert hidden_files(out) == [], (n, hidden_files(out))  # stale temporary files were removed
    assert points >= 20 and 0 < restarted < points  # every write of both checkpoints was a kill point


def test_a_checkpoint_moved_aside_is_put_back(tmp_path):
    """The one window where the checkpoint's name is missing: between its two renames."""
    task = make_task("adding", length=5)
    model = build_model(task, "gru", 6)
    save_checkpoint(tmp_path / "last", model, {"step": 3})
    os.replace(tmp_path / "last", tmp_path / ".last.old123")  # killed right after the first rename
    (tmp_path / ".last.new123").mkdir()  # ... with the new checkpoint half-written
    (tmp_path / ".last.new123" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.tmp99").write_bytes(b"x")
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert load_checkpoint(tmp_path / "last", model)["step"] == 3


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path, monkeypatch):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train(config(), straight, progress=False)
    original = AddingTask.train_batch

    def stop_at_3(self, step, batch_size):
        if step == 3:
            raise KeyboardInterrupt  # after the checkpoint of step 2
        return original(self, step, batch_size)

    monkeypatch.setattr(AddingTask, "train_batch", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(config(), cut, progress=False)
    monkeypatch.setattr(AddingTask, "train_batch", original)
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of appending a line
    Trainer(config(), cut, resume=True, progress=False).run()
    assert lines(cut) == lines(straight)
