"""Command-line mistakes: one line, exit code 2, no traceback, no half-made run directory;
and what the commands print besides their results (version, progress, folders they create)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrnn import console
from adaptrnn.cli import main
from adaptrnn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--set", "hidden_size=8", "--set", "batch_size=16", "--set", "length=10", "--set", "val_size=32",
    "--set", "test_size=32", "--set", "eval_batch_size=32", "--set", "eval_every=2", "--set", "log_every=1",
]  # fmt: skip


def train_args(out: Path, *extra: str, model: str = "skip-gru") -> list[str]:
    return ["train", "--task", "adding", "--model", model, "--steps", "3", "--device", "cpu", *TINY,
            "--no-progress", "--out", str(out), *extra]  # fmt: skip


def one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("adaptrnn: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errors") / "run"
    assert main(train_args(out)) == 0
    return out


# ---- train -----------------------------------------------------------------------------------


def test_out_naming_a_file(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    one_line_error(capsys, main(train_args(a_file)), f"--out: {a_file} is a file, not a folder")
    one_line_error(capsys, main(train_args(a_file / "run")), f"{a_file} is a file", f"(in --out {a_file / 'run'})")
    assert a_file.read_text() == "mine"


def test_char_lm_corpus_too_small_for_the_batch(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 45)  # about 2 KB
    out = tmp_path / "run"
    args = ["train", "--task", "char-lm", "--model", "gru", "--set", f"path={corpus}", "--out", str(out)]
    one_line_error(capsys, main(args), "too short for batch_size=256 x bptt=100", "25856")
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "fragments"),
    [
        ("eval_batch_size=0", ["eval_batch_size must be >= 1"]),
        ("lr=nan", ["lr must be a finite number > 0, got nan"]),
        ("grad_clip=nan", ["grad_clip must be a number >= 0"]),
        ("weight_decay=-1", ["weight_decay must be a finite number >= 0"]),
        ("budget=-1e-5", ["SkipRNN: budget must be a finite number >= 0"]),
        ("budget=nan", ["budget must be a finite number >= 0, got nan"]),
        ("threshold=-1", ["SkipRNN: threshold must be in [0, 1], got -1.0"]),
    ],
)
def test_bad_settings_are_one_line_and_leave_no_directory(setting, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(capsys, main(train_args(out, "--set", setting)), *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "setting", "fragment"),
    [
        ("vc-gru", "target=1.5", "VCRNN: target must be in [0, 1]"),
        ("vc-gru", "penalty=-1", "VCRNN: penalty must be a finite number >= 0"),
        ("sa-gru", "slope=0", "SARNN: slope must be a finite number > 0"),
        ("act-gru", "time_penalty=nan", "ACTRNN: time_penalty must be a finite number >= 0"),
        ("act-gru", "max_steps=2.5", "max_steps"),
    ],
)
def test_bad_method_options_on_the_command_line(model, setting, fragment, tmp_path, capsys):
    one_line_error(capsys, main(train_args(tmp_path / "run", "--set", setting, model=model)), fragment)
    assert not (tmp_path / "run").exists()


def test_an_error_after_the_run_directory_was_made_removes_it(tmp_path, capsys, monkeypatch):
    from adaptrnn.train import Trainer

    def fail(self, step):
        raise ConfigError("the data ran out")

    monkeypatch.setattr(Trainer, "_train_step", fail)
    out = tmp_path / "nested" / "run"
    one_line_error(capsys, main(train_args(out)), "the data ran out")
    assert not out.exists()
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("kept")  # a folder that was there before is never removed
    one_line_error(capsys, main(train_args(out)), "the data ran out")
    assert (out / "mine.txt").read_text() == "kept"


# ---- eval, dial, bench ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--values", "a,b"], ["--values: 'a' is not a number"]),
        (["--values", "0.5,-1"], ["--values: SkipRNN: threshold must be in [0, 1], got -1.0"]),
        (["--values", "0.5,nan"], ["threshold must be in [0, 1], got nan"]),
        (["--knob", "max_steps"], ["has no compute knob 'max_steps'", "threshold"]),
        (["--repeats", "0"], ["--repeats must be >= 1"]),
        (["--max-batches", "0"], ["--max-batches must be >= 1"]),
    ],
)
def test_dial_errors(run_dir, extra, fragments, capsys, tmp_path):
    out = tmp_path / "dial.csv"
    code = main(["dial", "--run", str(run_dir), "--device", "cpu", "--out", str(out), *extra])
    one_line_error(capsys, code, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--cells", "foo"], ["--cells: unknown 'foo'; choose from rnn, gru, lstm"]),
        (["--cells", "gru,lsmt"], ["--cells: unknown 'lsmt'"]),
        (["--methods", "skip,fast"], ["--methods: unknown 'fast'; choose from skip, act, vc, sa"]),
        (["--modes", "eval"], ["--modes: unknown 'eval'; choose from train, infer"]),
        (["--shapes", "1,2"], ["--shapes: '1,2' is not B,T,I,H"]),
        (["--shapes", "4,12,x,16"], ["--shapes: '4,12,x,16' is not B,T,I,H"]),
        (["--shapes", "4,0,2,16"], ["four positive integers"]),
        (["--fractions", "0"], ["--fractions: '0' is not a fraction in (0, 1]"]),
        (["--fractions", "half"], ["--fractions: 'half' is not a fraction"]),
        (["--device", "tpu"], ["--device must be auto, cpu, cuda or cuda:N, got 'tpu'"]),
        (["--repeats", "0"], ["--repeats must be >= 1"]),
    ],
)
def test_bench_errors(extra, fragments, capsys, tmp_path):
    out = tmp_path / "bench.csv"
    one_line_error(capsys, main(["bench", "--quick", "--out", str(out), *extra]), *fragments)
    assert not out.exists()


def test_report_group_by_a_key_no_run_has(run_dir, capsys):
    assert main(["report", str(run_dir), "--group-by", "task,model,bugdet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--group-by: no run has bugdet; e.g. task, model, seed" in err
    assert "budget" in err
    assert main(["report", str(run_dir), "--group-by", "task,model,budget"]) == 0


def test_eval_split_has_help_and_bench_shapes_help_names_no_missing_file(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "the data to evaluate on" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SPEED.md" not in text and "256,50,2,110" in text
    assert (ROOT / "docs" / "speed.md").is_file()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    import adaptrnn

    assert capsys.readouterr().out.strip() == f"adaptrnn {adaptrnn.__version__}"


# ---- files and folders ----------------------------------------------------------------------


def test_output_into_a_missing_folder_is_created_with_a_note(run_dir, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "p.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert out.is_file()
    assert f"adaptrnn: created folder {out.parent} for p.png" in capsys.readouterr().err
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert "created folder" not in capsys.readouterr().err  # said once, when it happened


def test_output_under_a_file_is_one_line(run_dir, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    code = main(["report", str(run_dir), "--out", str(a_file / "sub" / "table")])
    one_line_error(capsys, code, str(a_file))


# ---- progress ----------------------------------------------------------------------------------


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path):
    args = [sys.executable, "-m", "adaptrnn.cli", *train_args(tmp_path / "run")]
    args.remove("--no-progress")
    # ADAPTRNN_NATIVE=0: a build without the native loops would warn once on stderr, between the lines
    env = {"PYTHONPATH": str(ROOT / "src"), "ADAPTRNN_NATIVE": "0"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no bar redraws
    assert [line.split(",")[0] for line in lines] == [f"train: step {n}/3 ({round(100 * n / 3)}%)" for n in (1, 2, 3)]
    assert "loss=" in lines[-1] and "upd=" in lines[-1]


def test_plain_progress_writes_one_line_per_twentieth(monkeypatch):
    stream = io.StringIO()
    bar = console.PlainProgress(total=2000, initial=0, desc="train", file=stream)
    for _ in range(2000):
        bar.set_postfix(loss="0.1")
        bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20
    assert lines[0].startswith("train: step 100/2000 (5%), ") and lines[-1].startswith("train: step 2000/2000 (100%)")
    assert lines[-1].endswith(", loss=0.1")


def test_progress_bar_on_a_terminal_is_tqdm(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = console.progress_bar(10, enabled=True, desc="train")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(console.progress_bar(10, enabled=True), console.PlainProgress)
    assert isinstance(console.progress_bar(10, enabled=False), tqdm)  # disabled: tqdm's no-op
