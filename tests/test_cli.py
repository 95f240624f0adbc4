"""The ``adaptrnn`` command end to end on tiny settings, its one-line errors, and the shipped configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrnn.cli import main
from adaptrnn.config import ConfigError, load_config_file, make_config
from adaptrnn.model import parse_model_name

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--set", "hidden_size=8", "--set", "batch_size=16", "--set", "length=10", "--set", "val_size=32",
    "--set", "test_size=32", "--set", "eval_batch_size=32", "--set", "eval_every=2", "--set", "log_every=1",
]  # fmt: skip


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "adding", "--model", "skip-gru", "--steps", "3", "--device", "cpu", *TINY,
            "--no-progress", "--out", str(out), *extra]  # fmt: skip


def assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("adaptrnn: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(train_args(out)) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir):
    for name in ("config.yaml", "metrics.jsonl", "result.json", "samples.npz", "tb"):
        assert (run_dir / name).exists(), name
    for ckpt in ("last", "best"):
        assert (run_dir / "checkpoints" / ckpt / "model.safetensors").is_file()
        assert (run_dir / "checkpoints" / ckpt / "trainer_state.pt").is_file()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["task"] == "adding" and result["model"] == "skip-gru" and result["train_steps"] == 3
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (run_dir / "curves.png").is_file() and (run_dir / "updates.png").is_file()
    # the saved config reruns the same experiment
    config = make_config(load_config_file(run_dir / "config.yaml"))
    assert config.steps == 3 and config.task_options["length"] == 10 and config.hidden_size == 8


def test_eval_prints_a_summary_and_json(run_dir, capsys):
    assert main(["eval", "--run", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first.startswith("test mse ")
    reported = json.loads(rest)
    assert reported["value"] == pytest.approx(json.loads((run_dir / "result.json").read_text())["value"], rel=1e-6)
    assert main(["eval", "--run", str(run_dir), "--device", "cpu", "--checkpoint", "last"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["checkpoint"].endswith("last")


def test_resume_extends_a_finished_run(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", "--out", str(copy), "--steps", "4", "--no-progress"]) == 0
    assert json.loads((copy / "result.json").read_text())["train_steps"] == 4
    capsys.readouterr()
    assert_one_line_error(capsys, main(train_args(copy)), "already holds a run", "--resume")


def test_a_run_killed_at_its_first_checkpoint_is_started_again(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints")  # as a kill while the first checkpoint was staged leaves it:
    (copy / "checkpoints" / ".last.new4242").mkdir(parents=True)  # no checkpoint, a staging folder
    (copy / "checkpoints" / ".last.new4242" / "model.safetensors").write_bytes(b"half")
    (copy / ".metrics.jsonl.tmp4242").write_bytes(b"half")
    resume = ["train", "--resume", "--out", str(copy), "--no-progress"]
    err = assert_one_line_error(capsys, main(resume), "no checkpoint to resume from", "without --resume")
    assert "--resume to continue" not in err
    assert main(train_args(copy)) == 0  # the plain command starts it again instead of sending back to --resume
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best", "last"]
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]


def test_resume_refuses_changed_settings_unless_allowed(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    saved = (copy / "config.yaml").read_bytes()
    weights = (copy / "checkpoints" / "last" / "model.safetensors").read_bytes()
    resume = ["train", "--resume", "--out", str(copy), "--no-progress"]
    err = assert_one_line_error(capsys, main([*resume, "--set", "lr=0.5"]), "lr 0.001 -> 0.5", "would change")
    assert "pass --allow-changed-settings" in err
    assert_one_line_error(capsys, main([*resume, "--seed", "3", "--set", "budget=0.5"]), "seed 0 -> 3", "method.budget")
    # another model: said as such (the model's options were the complaint before)
    err = assert_one_line_error(capsys, main([*resume, "--model", "gru"]), "--model gru differs", "'skip-gru'")
    assert "unknown option" not in err
    assert_one_line_error(capsys, main([*resume, "--set", "model=lstm"]), "--model lstm differs")
    assert_one_line_error(capsys, main([*resume, "--task", "parity"]), "--task parity differs", "'adding'")
    allowed = [*resume, "--allow-changed-settings"]
    assert_one_line_error(capsys, main([*allowed, "--set", "hidden_size=9"]), "cannot change hidden_size 8 -> 9")
    assert_one_line_error(capsys, main(train_args(tmp_path / "new", "--allow-changed-settings")), "--resume only")
    # nothing was written by the refused commands
    assert (copy / "config.yaml").read_bytes() == saved
    assert (copy / "checkpoints" / "last" / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "new").exists()
    # told explicitly: the change is made, announced and recorded
    assert main([*allowed, "--set", "lr=0.5", "--steps", "4"]) == 0
    err = capsys.readouterr().err
    assert "resuming with" in err and "lr 0.001 -> 0.5" in err and "steps 3 -> 4" in err
    config = make_config(load_config_file(copy / "config.yaml"))
    assert (config.lr, config.steps) == (0.5, 4)


def test_report_command(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "skip-gru" in capsys.readouterr().out


def test_plot_command(run_dir, tmp_path):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_dial_command(run_dir, tmp_path):
    out = tmp_path / "dial.csv"
    args = ["dial", "--run", str(run_dir), "--values", "0.5,0.9", "--max-batches", "1", "--repeats", "1"]
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3  # header + one row per value


def test_bench_command(tmp_path):
    out = tmp_path / "bench.csv"
    args = ["bench", "--quick", "--device", "cpu", "--methods", "skip", "--modes", "infer", "--fractions", "1"]
    assert main([*args, "--shapes", "2,6,2,8", "--repeats", "1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--task", "addng", "--model", "lstm", "--out", "X"], ["unknown task 'addng'", "adding"]),
        (["train", "--task", "adding", "--model", "skip-lsmt", "--out", "X"], ["unknown model", "skip-lstm"]),
        (["train", "--task", "adding", "--model", "lstm", "--set", "bugdet=1", "--out", "X"], ["bugdet", "valid"]),
        (["train", "--task", "adding", "--model", "skip-lstm", "--set", "budget=lots", "--out", "X"], ["budget"]),
        (["train", "--task", "adding", "--model", "lstm", "--steps", "ten", "--out", "X"], ["steps", "integer"]),
        (["train", "--task", "adding", "--model", "lstm", "--set", "length", "--out", "X"], ["key=value"]),
        (["train", "--task", "adding", "--model", "lstm", "--device", "tpu", "--out", "X"], ["device"]),
        (["train", "--task", "adding", "--out", "X"], ["no model"]),
        (["train", "--task", "adding", "--model", "lstm"], ["--out"]),
        (["train", "--config", "/nonexistent.yaml", "--out", "X"], ["not found"]),
        (["eval", "--run", "/nonexistent/run"], ["not a run directory"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(capsys, main(args), *fragments)
    assert not (tmp_path / "X").exists()


def test_data_and_checkpoint_errors_are_one_line(tmp_path, capsys, run_dir):
    missing = tmp_path / "no-such-dir"
    args = ["train", "--task", "pixel-fashion-mnist", "--model", "lstm", "--set", f"data_dir={missing}"]
    assert_one_line_error(capsys, main([*args, "--out", str(tmp_path / "a")]), "not found", "data_dir")
    args = ["train", "--task", "pixel-mnist", "--model", "lstm", "--out", str(tmp_path / "b")]
    assert_one_line_error(capsys, main(args), "data_dir")
    args = ["train", "--task", "char-lm", "--model", "gru", "--set", f"path={missing}", "--out", str(tmp_path / "c")]
    assert_one_line_error(capsys, main(args), "not found")
    assert_one_line_error(capsys, main(["train", "--resume", "--out", str(tmp_path / "d")]), "nothing to resume")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: adding\nmodel: [unclosed\n")
    assert_one_line_error(capsys, main(["train", "--config", str(bad_yaml), "--out", str(tmp_path / "e")]), "YAML")
    bad_yaml.write_text("task: adding\nmodel: lstm\nlearning_rate: 0.1\n")
    assert_one_line_error(
        capsys, main(["train", "--config", str(bad_yaml), "--out", str(tmp_path / "e")]), "learning_rate"
    )

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    weights = broken / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    assert_one_line_error(capsys, main(["eval", "--run", str(broken), "--device", "cpu"]), "model.safetensors")
    state = broken / "checkpoints" / "last" / "trainer_state.pt"
    state.write_bytes(b"not a checkpoint")
    assert_one_line_error(capsys, main(["train", "--resume", "--out", str(broken)]), "trainer_state.pt")


def test_errors_from_the_installed_command_have_no_traceback(tmp_path):
    args = "-m adaptrnn.cli train --task adding --model lstm --set nope=1 --out".split()
    proc = subprocess.run(
        [sys.executable, *args, str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("adaptrnn: error: unknown setting 'nope'") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_is_a_config_for_every_paper_table_row():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert len(names) >= 50
    for expected in (
        "skip_rnn/adding_lstm.yaml",
        "skip_rnn/adding_skip_lstm_l1e-5.yaml",
        "skip_rnn/adding_random_skip_gru.yaml",
        "skip_rnn/pixel_mnist_skip_gru.yaml",
        "skip_rnn/frequency_t200_skip_lstm_l1e-4.yaml",
        "sa_rnn/adding_t500_sa_gru_l1e-4.yaml",
        "act/parity_act_rnn_t1e-2.yaml",
        "act/sort_lstm.yaml",
        "vc_rnn/char_lm_vc_gru.yaml",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_resolves(path):
    text = path.read_text()
    assert text.startswith("#"), "each config starts with a comment saying which paper row it reproduces"
    config = make_config(load_config_file(path))
    parse_model_name(config.model)
    assert config.steps >= 1000


def test_flags_override_the_config_file(tmp_path):
    path = ROOT / "configs" / "skip_rnn" / "adding_skip_lstm_l1e-5.yaml"
    config = make_config(load_config_file(path), {"steps": "7", "seed": "3"}, ["budget=0.5", "lr=1e-2"])
    assert (config.steps, config.seed, config.lr, config.method_options["budget"]) == (7, 3, 1e-2, 0.5)
    with pytest.raises(ConfigError, match="ambiguous|unknown"):
        make_config(load_config_file(path), sets=["method.length=3"])
