"""benchmarks/trained_inference.py: trained runs timed against torch.nn, with their own computation counts.

Tiny runs trained for a few steps; no timing is asserted, only that every row is there, the
times are positive, and the counted computation equals what the trainer's evaluation says.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from adaptrnn.config import make_config
from adaptrnn.evaluation import evaluate_split
from adaptrnn.runs import load_run
from adaptrnn.train import train
from conftest import load_benchmark

trained_inference = load_benchmark("trained_inference")

SETS = ["hidden_size=12", "batch_size=16", "eval_batch_size=32", "eval_every=3", "val_size=64", "test_size=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """An SA-LSTM on the adding task (fixed length) and a Skip GRU on logic (padded, lengths vary)."""
    root = tmp_path_factory.mktemp("trained")
    plan = (("adding", "sa-lstm", ["length=12"]), ("logic", "skip-gru", ["max_len=9", "threshold=0.9"]))
    for task, model, extra in plan:
        config = make_config(overrides={"task": task, "model": model, "steps": 3, "device": "cpu"}, sets=SETS + extra)
        train(config, root / model, progress=False)
    return root


def expected_counts(run: Path, batch_size: int) -> tuple[float, float]:
    """(updates_fraction, FLOPs fraction) of the first test batch of ``batch_size`` by the trainer's evaluation."""
    model, task, _, device, _ = load_run(run, device="cpu")
    result = evaluate_split(model, task, "test", batch_size, device, max_batches=1)
    return result["updates_fraction"], result["flops_per_sequence"] / result["dense_flops_per_sequence"]


@pytest.mark.parametrize("model", ["sa-lstm", "skip-gru"])
def test_rows_columns_and_counts(runs, model):
    run = runs / model
    rows = trained_inference.measure_run(run, ["1", "test"], [1], sequences=3, repeats=1)
    assert len(rows) == 2 * 3  # batches x paths (one thread count)
    assert all(set(r) == set(trained_inference.COLUMNS) for r in rows)
    assert [r["path"] for r in rows] == list(trained_inference.PATHS) * 2
    assert [r["batch"] for r in rows] == [1] * 3 + [32] * 3
    assert [r["sequences"] for r in rows] == [3] * 3 + [32] * 3
    for r in rows:
        assert r["ms_per_seq"] > 0 and r["ratio_to_torch_nn"] > 0 and r["threads"] == 1
        assert r["model"] == model and r["hidden"] == 12 and r["layers"] == 1
        if r["path"] == "torch.nn":
            assert r["ratio_to_torch_nn"] == 1.0 and r["updates_fraction"] == r["flops_fraction"] == 1.0
    for batch, group in ((3, rows[:3]), (32, rows[3:])):
        updates, flops = expected_counts(run, batch)
        for r in group[:2]:  # fast and reference count the same computation as the evaluation
            assert r["updates_fraction"] == pytest.approx(updates, rel=1e-6)
            assert r["flops_fraction"] == pytest.approx(flops, rel=1e-6)
        assert 0 < updates < 1  # a computation was saved, and it is not all of it
    if model == "skip-gru":  # padded task: batch 1 streams each sequence cut to its length
        assert rows[0]["mean_length"] < 9 and rows[3]["mean_length"] < 9


def test_command_line_writes_csv_and_table(runs, tmp_path, capsys):
    out = tmp_path / "trained.csv"
    argv = [str(runs / "sa-lstm"), "--batches", "1", "--threads", "1", "--sequences", "2", "--repeats", "1"]
    assert trained_inference.main([*argv, "--out", str(out)]) == 0
    with out.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == trained_inference.COLUMNS
        rows = list(reader)
    assert [r["path"] for r in rows] == list(trained_inference.PATHS)
    text = capsys.readouterr().out
    assert "sa-lstm" in text and "updates" in text and f"wrote 3 rows to {out}" in text
    assert torch.get_num_threads() == 1  # conftest's setting, restored after the run


def test_bad_arguments_are_one_line_errors(runs, capsys):
    with pytest.raises(SystemExit, match="--batches: 'zero'"):
        trained_inference.main([str(runs / "sa-lstm"), "--batches", "1,zero"])
    assert trained_inference.main([str(runs / "sa-lstm"), "--threads", "two"]) == 2
    assert "--threads" in capsys.readouterr().err
