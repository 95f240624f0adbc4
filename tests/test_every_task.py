"""Every task trains every method family end to end (two steps, tiny sizes) and is evaluated."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from adaptrnn.config import make_config
from adaptrnn.runs import evaluate
from adaptrnn.train import train
from test_tasks import idx_bytes

SMALL = ["val_size=16", "test_size=16"]
TASK_OPTIONS = {
    "adding": ["length=12", *SMALL],
    "frequency": ["sampling_period_ms=5.0", *SMALL],
    "copy": ["delay=5", "copy_length=3", *SMALL],
    "parity": ["size=8", *SMALL],
    "logic": ["max_len=3", *SMALL],
    "addition": ["max_len=2", "max_digits=2", *SMALL],
    "sort": ["max_len=4", *SMALL],
    "char-lm": ["bptt=10"],
    "pixel-mnist": ["val_size=8"],
    "pixel-fashion-mnist": ["val_size=8"],
}
MODELS = ["lstm", "skip-gru", "act-rnn", "vc-lstm", "sa-gru"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny text corpus and tiny 4x4 IDX image sets (T = 16 pixels)."""
    root = tmp_path_factory.mktemp("data")
    (root / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 24), ("t10k", 8)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 4, 4))))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 10, (n,))))
    return root


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", list(TASK_OPTIONS))
def test_task_trains_and_evaluates(task, model, data, tmp_path):
    sets = [*TASK_OPTIONS[task], "hidden_size=8", "batch_size=8", "eval_batch_size=8", "eval_every=2", "lr=1e-2"]
    if task == "char-lm":
        sets.append(f"path={data / 'text.txt'}")
    if task.startswith("pixel"):
        sets.append(f"data_dir={data}")
    if model.startswith("act"):
        sets.append("max_steps=3")
    config = make_config(overrides={"task": task, "model": model, "steps": 2, "device": "cpu"}, sets=sets)
    result = train(config, tmp_path / "run", progress=False)
    assert result["task"] == task and result["model"] == model and result["train_steps"] == 2
    assert math.isfinite(result["value"]) and result["flops_per_sequence"] > 0
    again = evaluate(tmp_path / "run")  # the best checkpoint reloads and gives the same metric
    assert again["value"] == pytest.approx(result["value"], rel=1e-5, abs=1e-7)
