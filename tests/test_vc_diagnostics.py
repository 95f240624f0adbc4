"""benchmarks/vc_computation_by_char.py and vc_scheduler_gradient.py on a tiny trained VC run.

The classes must cover the whole test split and, weighted by their sizes, give the updates
fraction the trainer's evaluation reports; the gradient diagnostic must see the same loss with
and without the detached scheduler state (the forward pass is unchanged) and write one row per
setting and batch.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from adaptrnn.config import make_config
from adaptrnn.runs import evaluate
from adaptrnn.train import train
from conftest import load_benchmark

by_char = load_benchmark("vc_computation_by_char")
scheduler_gradient = load_benchmark("vc_scheduler_gradient")


@pytest.fixture(scope="module")
def vc_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vc") / "run"
    sets = ["hidden_size=16", "embed_size=8", "batch_size=8", "bptt=20", "eval_batch_size=64", "eval_batches=2"]
    config = make_config(overrides={"task": "char-lm", "model": "vc-gru", "steps": 3, "device": "cpu"}, sets=sets)
    train(config, out, progress=False)
    return out


def test_classes_cover_the_test_split_and_add_up_to_the_evaluation(vc_run: Path) -> None:
    rows = by_char.by_class(str(vc_run), "last", None)
    want = evaluate(vc_run, checkpoint="last")
    total = sum(r["characters"] for r in rows)
    assert len({r["class"] for r in rows}) == len(rows) >= 4
    assert sum(r["characters"] * r["mean_updates"] for r in rows) / total == pytest.approx(want["updates_fraction"])
    assert all(0 < r["mean_scheduler"] < 1 for r in rows)


def test_gradient_diagnostic_rows(vc_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.csv"
    assert (
        scheduler_gradient.main(
            [str(vc_run), "--checkpoint", "last", "--sharpness", "1,4", "--batches", "2", "--out", str(out)]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 2 * 2  # λ × detach × batch
    by_setting = {(r["sharpness"], r["detach_scheduler_state"], r["batch"]): r for r in rows}
    for (sharpness, detach, batch), r in by_setting.items():
        assert float(r["grad_gate"]) > 0 and float(r["grad_cell"]) > 0
        if detach == "True":  # the same forward pass: the same loss
            assert float(r["loss"]) == pytest.approx(float(by_setting[(sharpness, "False", batch)]["loss"]), rel=1e-6)
