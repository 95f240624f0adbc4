"""benchmarks/parity_error_by_count.py: a parity run's test error split by the count of non-zero entries.

A tiny ACT run trained for a few steps; the groups must cover the whole test split, and their
error and ponder time, weighted by size, must give what the trainer's evaluation says.
"""

from __future__ import annotations

import pytest

from adaptrnn.config import make_config
from adaptrnn.runs import evaluate
from adaptrnn.train import train
from conftest import load_benchmark

by_count = load_benchmark("parity_error_by_count")


def test_groups_cover_the_test_split_and_add_up_to_the_evaluation(tmp_path, capsys):
    sets = ["size=8", "hidden_size=12", "batch_size=16", "eval_batch_size=32", "val_size=32", "test_size=96"]
    config = make_config(overrides={"task": "parity", "model": "act-rnn", "steps": 4, "device": "cpu"}, sets=sets)
    train(config, tmp_path / "run", progress=False)
    result = by_count.error_by_count(str(tmp_path / "run"), "last", bins=4)
    want = evaluate(tmp_path / "run", checkpoint="last")
    groups = result["groups"]
    assert {(lo, hi) for lo, hi, *_ in groups} <= {(1, 2), (3, 4), (5, 6), (7, 8)}  # 4 bins of size 8
    assert sum(n for _, _, n, _, _ in groups) == result["sequences"] == 96
    assert sum(n * error for _, _, n, error, _ in groups) / 96 == pytest.approx(result["error"])
    assert result["error"] == pytest.approx(want["value"])
    assert sum(n * ponder for _, _, n, _, ponder in groups) / 96 == pytest.approx(want["updates_fraction"])
    by_count.print_table("run", result)
    assert "test error" in capsys.readouterr().out
