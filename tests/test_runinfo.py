"""What a run records beside its metric: collapse flag, tested checkpoint, gradient norms per
parameter group, code and machine (``adaptrnn.runinfo`` and its use by the trainer)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from adaptrnn import runinfo
from adaptrnn import train as train_module
from adaptrnn.model import build_model
from adaptrnn.runinfo import detect_collapse, group_grad_norms, parameter_groups
from adaptrnn.tasks import make_task
from adaptrnn.train import train
from test_train import metrics, tiny


@pytest.mark.parametrize(
    ("values", "higher", "collapsed"),
    [
        ([0.5, 0.9, 0.99, 0.5], True, True),  # accuracy back to chance after a peak
        ([0.5, 0.9, 0.99, 0.7], True, True),  # gave back 0.29 of 0.49
        ([0.5, 0.9, 0.99, 0.8], True, False),  # gave back 0.19 of 0.49: a dip, not a collapse
        ([0.5, 0.9, 0.99, 0.99], True, False),
        ([0.50, 0.51, 0.49, 0.495], True, False),  # never learned: noise at chance is no collapse
        ([0.486, 0.46, 0.531, 0.502], False, False),  # parity error wandering around 0.5 (act_long/ run)
        ([0.97, 0.978, 0.971, 0.487], True, True),  # frequency T=100 gate closed (skip_rnn/ run)
        ([0.17, 0.001, 0.0012], False, False),  # MSE noise after solving
        ([0.17, 0.001, 0.15], False, True),  # MSE back up
        ([0.001, 0.0009, 0.17], False, True),  # a good start, then lost: the final is the worst
        ([0.17, 0.001, float("nan")], False, True),  # NaN after a finite value
        ([0.3], False, False),  # one validation: nothing to compare
        ([], True, False),
    ],
)
def test_collapse_rule(values, higher, collapsed):
    assert detect_collapse(values, higher) is collapsed


@pytest.mark.parametrize(
    ("model", "gate"),
    [
        ("lstm", set()),
        ("skip-lstm", {"update_weight", "update_bias"}),
        ("act-rnn", {"halting_weight", "halting_bias"}),
        ("vc-gru", {"scheduler_h_l0", "scheduler_x_l0", "scheduler_bias_l0"}),
        ("sa-gru", {"update_weight_hh_l0", "update_weight_ih_l0", "update_bias_l0"}),
    ],
)
def test_parameter_groups_cover_every_parameter_once(model, gate):
    task = make_task("adding", length=5)
    m = build_model(task, model, 6)
    groups = parameter_groups(m)
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)].removeprefix("rnn.") for p in groups["gate"]} == gate
    assert {names[id(p)] for p in groups["head"]} == {"head.weight", "head.bias"}
    assert all(names[id(p)].startswith("rnn.") for p in groups["cell"])
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert sorted(map(id, trainable)) == sorted(id(p) for g in groups.values() for p in g)
    # the group norms compose into the total norm that the trainer clips
    batch = task.train_batch(0, 8)
    pred, stats, _ = m(batch.x, batch.lengths)
    (task.loss(pred, batch) + stats.cost).backward()
    norms = group_grad_norms(groups)
    total = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
    assert math.isclose(math.sqrt(sum(v * v for v in norms.values())), float(total), rel_tol=1e-5)
    assert norms["cell"] > 0 and norms["head"] > 0 and (norms["gate"] > 0) == bool(gate)


def test_result_records_checkpoint_collapse_environment_and_settings(tmp_path):
    config = tiny(model="skip-gru", steps=7, extra=("eval_every=3",))
    result = train(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["checkpoint"] == "best" and saved["checkpoint_step"] == saved["best_step"] in (3, 6, 7)
    vals = [line["val_metric"] for line in metrics(tmp_path / "run") if line["val_metric"] is not None]
    assert saved["final_val_step"] == 7 and saved["final_val_value"] == vals[-1] and len(vals) == 3
    assert saved["collapsed"] is detect_collapse(vals, False)
    for key in ("code_commit", "code_dirty", "torch_version", "python_version", "cpu_model"):
        assert key in saved
    assert saved["torch_version"] == torch.__version__ and saved["threads"] == torch.get_num_threads()
    assert saved["code_commit"] is None or len(saved["code_commit"]) == 40
    assert saved["config"]["lr"] == config.lr and saved["config"]["method_options"]["graph"] == "official"
    assert saved["config"]["task_options"]["length"] == 12 and saved["config"]["steps"] == 7
    for line in metrics(tmp_path / "run"):
        assert line["grad_norm_cell"] > 0 and line["grad_norm_gate"] > 0 and line["grad_norm_head"] > 0
        # the overall (pre-clip) maximum is at least each group's
        assert line["grad_norm"] >= max(line[f"grad_norm_{g}"] for g in ("cell", "gate", "head")) * (1 - 1e-6)


def test_a_collapsed_run_is_flagged(tmp_path, monkeypatch):
    """Validation values forced to peak and fall back: result.json says collapsed, and which checkpoint."""
    from adaptrnn import train as train_module

    values = iter([0.5, 0.01, 0.4])
    real = train_module.evaluate_split

    def scripted(model, task, split, *args, **kw):
        out = real(model, task, split, *args, **kw)
        return {**out, "value": next(values)} if split == "val" else out

    monkeypatch.setattr(train_module, "evaluate_split", scripted)
    result = train(tiny(model="lstm", steps=9, extra=("eval_every=3",)), tmp_path / "run", progress=False)
    assert result["collapsed"] is True and result["final_val_value"] == 0.4
    assert result["checkpoint"] == "best" and result["checkpoint_step"] == 6 and result["val_value"] == 0.01


def test_the_code_commit_is_read_when_training_starts(tmp_path, monkeypatch):
    """A campaign may check out a newer commit while a run trains: result.json must name the
    code the process imported (read at the start), not the tree's commit at the end."""
    tree = {"commit": "a" * 40}
    fake = functools.cache(lambda: (tree["commit"], False))  # cached, as the real one
    monkeypatch.setattr(runinfo, "code_version", fake)
    monkeypatch.setattr(train_module, "code_version", fake)
    step = train_module.Trainer._train_step

    def checkout_meanwhile(self, *args, **kwargs):
        tree["commit"] = "b" * 40
        return step(self, *args, **kwargs)

    monkeypatch.setattr(train_module.Trainer, "_train_step", checkout_meanwhile)
    saved = train(tiny(model="skip-gru", steps=3), tmp_path / "run", progress=False)
    assert saved["code_commit"] == "a" * 40
