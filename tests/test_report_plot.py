"""`adaptrnn report` and `adaptrnn plot` on small fake run directories."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from adaptrnn import plot, report
from adaptrnn.config import TrainConfig
from adaptrnn.plot import pareto_front, plot_runs
from adaptrnn.report import aggregate, collect_runs, to_csv, to_markdown

# (model, budget) -> per-seed (value, updates_fraction, flops, inference ms, solved)
FAKE = {
    ("lstm", None): [
        (0.010, 1.0, 2.46e6, 0.50, True),
        (0.030, 1.0, 2.46e6, 0.55, True),
        (0.020, 1.0, 2.46e6, 0.45, False),
    ],
    ("skip-lstm", 1e-5): [
        (0.02, 0.52, 1.3e6, 0.31, True),
        (0.04, 0.56, 1.4e6, 0.35, True),
        (0.05, 0.54, 1.35e6, 0.30, True),
    ],
}


def make_run(
    root: Path, name: str, result: dict, config: dict, samples: dict | None = None, metrics: list | None = None
) -> Path:
    """A run directory as the trainer writes it."""
    run = root / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(result))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if samples is not None:
        np.savez(run / "samples.npz", **samples)
    if metrics is not None:
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n{partial")
    return run


def adding_runs(root: Path) -> Path:
    """3 seeds × 2 models of the adding task, nested one level below ``root/sweep``."""
    rng = np.random.default_rng(0)
    for (model, budget), seeds in FAKE.items():
        for seed, (value, upd, flops, ms, solved) in enumerate(seeds):
            result = {
                "task": "adding",
                "model": model,
                "metric": "mse",
                "value": value,
                "updates_fraction": upd,
                "flops_per_sequence": flops,
                "train_steps": 100,
                "wall_s": 3.0,
                "seed": seed,
                "solved": solved,
                "inference_ms_per_sequence": ms,
                "device": "cpu",
            }
            options = {"budget": budget, "stochastic": False, "threshold": 0.5} if budget else {"impl": "auto"}
            config = asdict(TrainConfig(task="adding", model=model, method_options=options, seed=seed, steps=100))
            updates = (rng.random((2, 50)) < upd).astype(np.float32)
            samples = {
                "x": rng.random((2, 50, 2)).astype(np.float32),
                "updates": updates,
                "lengths": np.array([50, 30]),
            }
            metrics = [{"step": s, "loss": 1.0 / s, "task_loss": 0.9 / s, "updates_fraction": upd} for s in (1, 2, 3)]
            metrics[-1]["val_metric"] = value
            make_run(root / "sweep" / model, f"seed{seed}", result, config, samples, metrics)
    return root / "sweep"


def test_aggregate_mean_std_against_numpy(tmp_path):
    runs = collect_runs([adding_runs(tmp_path)])
    assert len(runs) == 6
    rows = aggregate(runs)
    # Resolved option defaults differ between models only: no option columns.
    assert report.group_columns(rows) == ["task", "model"]
    assert [r["model"] for r in rows] == ["lstm", "skip-lstm"]
    for row, seeds in zip(rows, FAKE.values(), strict=True):
        cols = np.array([s[:4] for s in seeds])
        assert row["n"] == 3
        for j, stat in enumerate(("value", "updates_fraction", "flops_per_sequence", "inference_ms_per_sequence")):
            assert row[f"{stat}_mean"] == pytest.approx(cols[:, j].mean())
            assert row[f"{stat}_std"] == pytest.approx(cols[:, j].std(ddof=1))
        assert row["solved"] == sum(s[4] for s in seeds)
        assert row["device"] == "cpu"


def test_group_by_and_option_discovery(tmp_path):
    adding_runs(tmp_path)
    rows = aggregate(collect_runs([tmp_path]), ["task"])
    assert len(rows) == 1 and rows[0]["n"] == 6
    all_values = [s[0] for seeds in FAKE.values() for s in seeds]
    assert rows[0]["value_mean"] == pytest.approx(np.mean(all_values))
    # A second budget for skip-lstm makes budget a grouping column by default.
    base = {"task": "adding", "model": "skip-lstm", "metric": "mse", "value": 0.1, "updates_fraction": 0.8}
    base |= {"flops_per_sequence": 2e6, "train_steps": 100, "wall_s": 1.0}
    config = yaml.safe_load((tmp_path / "sweep" / "skip-lstm" / "seed0" / "config.yaml").read_text())
    make_run(tmp_path / "extra", "b0", base, {**config, "method_options": {**config["method_options"], "budget": 0.0}})
    rows = aggregate(collect_runs([tmp_path]))
    assert report.group_columns(rows) == ["task", "model", "budget"]
    assert [(r["model"], r["budget"], r["n"]) for r in rows] == [
        ("lstm", None, 3),
        ("skip-lstm", 0.0, 1),
        ("skip-lstm", 1e-5, 3),
    ]
    assert rows[1]["value_std"] is None and rows[1]["solved"] is None


def test_markdown_and_csv(tmp_path, capsys):
    sweep = adding_runs(tmp_path)
    rows = aggregate(collect_runs([sweep]))
    md = to_markdown(rows).splitlines()
    assert md[0].startswith("| task | model | metric | n | value | updates | FLOPs/seq | inference ms/seq | solved")
    assert "speedup" not in "\n".join(md).lower()
    lstm = md[2].split(" | ")
    assert lstm[:4] == ["| adding", "lstm", "mse", "3"]
    assert lstm[4] == "0.02 ± 0.01"
    assert lstm[5] == "100% ± 0"
    assert lstm[6] == "2.46e6 ± 0"
    assert lstm[8] == "2/3"
    assert md[3].split(" | ")[1:6] == ["skip-lstm", "mse", "3", "0.0367 ± 0.0153", "54% ± 2"]

    prefix = tmp_path / "out" / "table"
    code = report.run(argparse.Namespace(runs=[str(sweep)], out=str(prefix), group_by=None))
    assert code == 0
    assert capsys.readouterr().out == (tmp_path / "out" / "table.md").read_text()
    with open(tmp_path / "out" / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["lstm", "skip-lstm"]
    assert float(table[1]["value_mean"]) == pytest.approx(np.mean([0.02, 0.04, 0.05]))
    assert float(table[1]["value_std"]) == pytest.approx(np.std([0.02, 0.04, 0.05], ddof=1))
    assert table[0]["solved"] == "2" and table[0]["dense_flops_per_sequence_mean"] == ""
    assert to_csv(rows, tmp_path / "t.csv").read_text().splitlines()[0].startswith("task,model,metric,n,value_mean")


def test_errors_name_the_path(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_runs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no result.json"):
        collect_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad/result.json.*invalid JSON"):
        collect_runs([bad])
    (bad / "result.json").write_text(json.dumps({"task": "adding", "model": "lstm"}))
    with pytest.raises(ValueError, match="missing required keys.*metric"):
        collect_runs([bad])
    assert report.run(argparse.Namespace(runs=[str(tmp_path / "empty")], out=None, group_by=None)) == 2
    assert "empty" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="samples.npz"):
        plot.plot_update_pattern(tmp_path / "empty", tmp_path / "x.png")
    with pytest.raises(ValueError, match="unknown plot kind"):
        plot_runs([tmp_path], tmp_path / "x.png", kind="bars")


@pytest.mark.parametrize(
    ("points", "lower", "front"),
    [
        ([(1.0, 0.5), (0.5, 0.6), (0.7, 0.4), (0.9, 0.45), (0.2, 0.9)], True, [4, 1, 2]),
        ([(1.0, 0.95), (0.5, 0.9), (0.7, 0.85), (0.2, 0.6), (0.9, 0.97)], False, [3, 1, 4]),
        ([(0.5, 0.3), (0.5, 0.3), (0.6, float("nan"))], True, [0, 1]),
    ],
)
def test_pareto_front(points, lower, front):
    assert pareto_front(points, lower) == front


def test_method_family():
    names = ["lstm", "random-skip-gru", "skip-lstm", "act-rnn", "vc-gru", "sa-lstm"]
    assert [report.method_family(n) for n in names] == ["dense", "random-skip", "skip", "act", "vc", "sa"]


def test_metric_direction():
    assert plot.lower_is_better("mse") and plot.lower_is_better("bpc") and plot.lower_is_better("sequence_error")
    assert not plot.lower_is_better("accuracy")


def read_png(path: Path) -> np.ndarray:
    assert path.stat().st_size > 0
    return mpimg.imread(path)


@pytest.mark.parametrize("kind", ["pareto", "curves", "auto"])
def test_plot_kinds_over_a_sweep(tmp_path, kind):
    sweep = adding_runs(tmp_path)
    out = plot_runs([sweep], tmp_path / f"{kind}.png", kind, figsize=(6.0, 4.0))
    image = read_png(out)
    assert image.shape[:2] == (400, 600)
    assert image[..., :3].std() > 0.01  # something was drawn


def test_curves_of_a_run_in_progress(tmp_path):
    run = adding_runs(tmp_path) / "lstm" / "seed1"
    (run / "result.json").unlink()  # still training: metrics only
    records = report.read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["val_metric"] == 0.03
    out = plot_runs([run], tmp_path / "progress.png")  # auto -> curves
    assert read_png(out).shape[:2] == (round(plot.DPI * 4.2), plot.DPI * 15)


def test_pattern_plots(tmp_path):
    sweep = adding_runs(tmp_path)
    run = sweep / "skip-lstm" / "seed0"
    out = plot_runs([run], tmp_path / "raster.png")  # auto, one run -> pattern
    assert read_png(out).shape[:2] == (round(plot.DPI * (3.4 * 2 + 0.6)), plot.DPI * 10)

    rng = np.random.default_rng(1)
    image_updates = np.zeros((3, 784), np.float32)
    image_updates[:, ::2] = 1
    base = {"metric": "accuracy", "value": 0.9, "updates_fraction": 0.5, "flops_per_sequence": 1.0}
    base |= {"train_steps": 1, "wall_s": 1.0}
    mnist = make_run(
        tmp_path,
        "mnist",
        {"task": "pixel-mnist", "model": "skip-gru", **base},
        {},
        {"x": rng.random((3, 784, 1)).astype(np.float32), "updates": image_updates},
    )
    image = read_png(plot.plot_update_pattern(mnist, tmp_path / "mnist.png", max_samples=2))
    assert image.shape[:2] == (round(plot.DPI * 3.2), round(plot.DPI * 2.6 * 2))
    # Used (even) pixels are red, skipped ones blue: both colours appear.
    reds = (image[..., 0] > 0.6) & (image[..., 2] < 0.3)
    blues = (image[..., 2] > 0.6) & (image[..., 0] < 0.3)
    assert reds.sum() > 100 and blues.sum() > 100

    neurons = np.zeros((2, 30, 16), np.float32)  # nothing updated: only the markers are coloured
    x = np.stack([rng.random((2, 30)), np.zeros((2, 30))], axis=-1)
    x[:, [3, 20], 1] = 1.0  # the adding task's two marked steps
    sa = make_run(
        tmp_path,
        "sa",
        {"task": "adding", "model": "sa-gru", **base},
        {},
        {"x": x, "updates": neurons.mean(2), "neuron_updates": neurons},
    )
    image = read_png(plot_runs([sa], tmp_path / "sa.png", "pattern", figsize=(5.0, 3.0)))
    assert image.shape[:2] == (300, 500)
    reddish = image[..., 0] - image[..., 1] > 0.15
    columns = np.flatnonzero(reddish.sum(0) > 50)  # the marker bands, drawn over the full height
    assert len(columns) > 0 and columns.max() - columns.min() > 100  # two bands, apart


@pytest.mark.parametrize("key", ["ponder", "scheduler"])
def test_text_plot(tmp_path, key):
    text = "To be, or not to be:\nthat is the question. " * 3
    values = np.array([[3.0 if ch in " .,\n" else 1.0 for ch in text]])
    base = {"task": "char-lm", "model": "act-lstm", "metric": "bpc", "value": 2.0, "updates_fraction": 1.2}
    base |= {"flops_per_sequence": 1.0, "train_steps": 1, "wall_s": 1.0}
    samples = {"x": np.zeros((1, len(text)), np.int64), "updates": values, key: values, "text": np.array(text)}
    run = make_run(tmp_path, "lm", base, {}, samples)
    out = plot_runs([run], tmp_path / "text.png")  # auto -> text
    image = read_png(out)
    assert image.shape[:2] == (round(plot.DPI * (0.22 * 4 + 2.6)), round(plot.DPI * (0.12 * 80 + 1.6)))
    assert plot.char_class(" ") == "space" and plot.char_class("a", "T") == "letter"


def test_char_classes() -> None:
    got = [
        plot.char_class(ch, prev)
        for ch, prev in [(" ", "a"), ("\n", "a"), ("!", "a"), ("W", " "), ("W", ""), ("e", "W"), ("3", " ")]
    ]
    assert got == ["space", "newline", "punctuation", "word start", "word start", "letter", "other"]


def test_plot_cli(tmp_path, capsys):
    sweep = adding_runs(tmp_path)
    out = tmp_path / "cli.png"
    parser = argparse.ArgumentParser()
    plot.add_arguments(parser)
    args = parser.parse_args([str(sweep), "--out", str(out)])
    assert plot.run(args) == 0 and capsys.readouterr().out.strip() == str(out)
    assert read_png(out).shape[:2] == (round(plot.DPI * 4.8), round(plot.DPI * 13.0))
    args = parser.parse_args([str(sweep), "--out", str(out), "--kind", "text"])
    assert plot.run(args) == 2 and "plots one run" in capsys.readouterr().err


def test_rows_say_which_checkpoint_and_how_many_collapsed(tmp_path):
    root = adding_runs(tmp_path)
    # two of the skip-lstm seeds come from the new trainer: one collapsed, one tested at its last weights
    for seed, extra in (
        (0, {"checkpoint": "best", "checkpoint_step": 60, "collapsed": True}),
        (1, {"checkpoint": "last", "checkpoint_step": 100, "collapsed": False}),
    ):
        path = root / "skip-lstm" / f"seed{seed}" / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    old = root / "skip-lstm" / "seed2" / "result.json"  # an older result: best checkpoint, no flag
    old.write_text(json.dumps({**json.loads(old.read_text()), "best_step": 80}))
    rows = {r["model"]: r for r in aggregate(collect_runs([root]))}
    assert rows["skip-lstm"]["collapsed"] == 1 and rows["lstm"]["collapsed"] is None
    assert rows["skip-lstm"]["checkpoint"] == "best@60, best@80, last@100" and rows["lstm"]["checkpoint"] is None
    md = to_markdown(list(rows.values())).splitlines()
    assert md[0].endswith("| collapsed | checkpoint |")
    assert md[3].endswith("| 1/3 | best@60, best@80, last@100 |")
    table = list(csv.DictReader(to_csv(list(rows.values()), tmp_path / "t.csv").open()))
    assert table[1]["collapsed"] == "1" and table[0]["collapsed"] == ""
