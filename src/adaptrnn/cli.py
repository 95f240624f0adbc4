"""The ``adaptrnn`` command: train, eval, and the report/plot/bench/dial commands of their modules.

Errors the user can cause print one line ``adaptrnn: error: ...`` on stderr and exit with 2;
a ``train`` that fails that way leaves no run directory behind.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .config import (
    RESUME_FIXED,
    RESUME_FREE,
    ConfigError,
    TrainConfig,
    changed_settings,
    load_config_file,
    make_config,
)

# Commands whose module (adaptrnn.<name>) provides add_arguments(parser) and run(args) -> int.
DELEGATED = {
    "report": "table over run directories (markdown/CSV)",
    "plot": "plots of runs (training curves, update patterns, Pareto fronts)",
    "bench": "speed benchmark, side by side with torch.nn",
    "dial": "inference compute dial: metric vs. computation of a trained run",
    "export": "a run's streaming step to ONNX or TorchScript, with the savings kept",
}


class UsageError(Exception):
    """A command-line mistake (argparse's), reported in one line."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors raise (so main prints them as one line) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser(command: str | None = None) -> Parser:
    """The argument parser; a delegated command's module is imported only when it is ``command``."""
    parser = Parser(prog="adaptrnn", description="Recurrent networks that learn to spend less computation.")
    parser.add_argument("--version", action="version", version=f"adaptrnn {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    train = sub.add_parser("train", help="train a model on a task and write a run directory")
    train.add_argument("--task", help="task name (adding, frequency, pixel-mnist, parity, char-lm, ...)")
    train.add_argument("--model", help="model name (lstm, skip-lstm, act-rnn, vc-gru, sa-gru, random-skip-lstm, ...)")
    train.add_argument("--steps", help="training steps")
    train.add_argument("--seed", help="random seed")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any trainer field, task option or method option (e.g. budget=1e-5, lr=1e-3, length=100)",
    )
    train.add_argument("--config", help="YAML config file (e.g. configs/skip_rnn/adding_skip_lstm_l1e-5.yaml)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its own settings (--steps may extend it)",
    )
    train.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="with --resume: continue with the --set values that differ from the run's (config.yaml is updated)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--out", required=True, help="run directory")

    evaluate = sub.add_parser("eval", help="recompute a run's metric from its best (or last) checkpoint")
    evaluate.add_argument("--run", required=True, help="run directory")
    evaluate.add_argument(
        "--split", default="test", choices=("val", "test"), help="the data to evaluate on: val or test (default)"
    )
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        help="best: the best validation's weights; last: the final ones (default: best, else last)",
    )

    for name, help_text in DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text)
        if name == command:
            importlib.import_module(f"adaptrnn.{name}").add_arguments(delegated)
    return parser


def package_version() -> str:
    """The installed distribution's version (the source tree's when run without installing)."""
    try:
        return importlib.metadata.version("adaptrnn")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def train_command(args: argparse.Namespace) -> int:
    """``adaptrnn train``: :func:`run_train`, leaving no half-made run directory on a user error."""
    out = Path(args.out)
    check_out_dir(out)
    fresh = not out.exists()
    try:
        return run_train(args)
    except (ConfigError, CheckpointError):
        if fresh and not args.resume:  # found after the folder was made (e.g. by the first batch)
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_out_dir(out: Path) -> None:
    """A run directory must be a directory (or not exist yet), and so must the folders above it."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == out else f" (in --out {out})"
                raise ConfigError(f"--out: {path} is a file, not a folder{where}; choose another --out")
            return


def run_train(args: argparse.Namespace) -> int:
    from .evaluation import summary_line
    from .plot import plot_curves, plot_update_pattern
    from .train import train

    out = Path(args.out)
    flags = {"task": args.task, "model": args.model, "steps": args.steps, "seed": args.seed, "device": args.device}
    if args.resume:
        config = resume_config(out, args, flags)
    else:
        if args.allow_changed_settings:
            raise ConfigError("--allow-changed-settings applies to --resume only")
        config = make_config(load_config_file(args.config) if args.config else {}, flags, args.set)
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    if result is None:  # DDP ranks other than 0
        return 0
    plot_curves([out], out / "curves.png")
    plot_update_pattern(out, out / "updates.png")
    print(summary_line(result))
    print(f"run directory: {out} (plots: curves.png, updates.png)")
    if "diverged" in result:
        message = f"{result['diverged']}; the result is the best checkpoint's"
        print(f"adaptrnn: training diverged: {message}", file=sys.stderr)
        return 1
    return 0


def resume_config(out: Path, args: argparse.Namespace, flags: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the run's own, unless changes are allowed explicitly.

    ``--steps``, ``--device`` and ``threads`` may differ freely; other changed settings need
    ``--allow-changed-settings``; the task, the model and the layer sizes never change (the
    checkpoint's weights have the run's shapes). Any change is announced on stderr, since
    config.yaml is rewritten with it.
    """
    if args.config:
        raise ConfigError("--resume continues with the run's own config.yaml; drop --config")
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"{out}: nothing to resume (no config.yaml)")
    base = load_config_file(out / "config.yaml")
    saved = make_config(base)
    asked = {k: v for k, v in flags.items() if v is not None}
    asked.update((k.strip(), v) for k, _, v in (s.partition("=") for s in args.set) if k.strip() in ("task", "model"))
    for key in ("task", "model"):  # before make_config, whose complaint would be about the other model's options
        if key in asked and str(asked[key]).strip() != getattr(saved, key):
            raise ConfigError(
                f"--{key} {str(asked[key]).strip()} differs from the run's {key} {getattr(saved, key)!r}; "
                f"--resume continues a run with its own {key} (choose another --out for a new run)"
            )
    config = make_config(base, flags, args.set)
    changes = changed_settings(saved, config)
    fixed = [k for k in changes if k in RESUME_FIXED]
    if fixed:
        shapes = "the checkpoint's weights have the run's shapes"
        raise ConfigError(f"--resume cannot change {_describe(changes, fixed)}: {shapes}")
    guarded = [k for k in changes if k not in RESUME_FREE]
    if guarded and not args.allow_changed_settings:
        raise ConfigError(
            f"--resume would change the run's settings ({_describe(changes, guarded)}); "
            "pass --allow-changed-settings to continue with them, or drop them"
        )
    if changes and os.environ.get("RANK", "0") == "0":
        described = _describe(changes, list(changes))
        print(f"adaptrnn: note: resuming with {described} (config.yaml updated)", file=sys.stderr)
    return config


def _describe(changes: dict[str, tuple[Any, Any]], keys: list[str]) -> str:
    return ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)


def run_eval(args: argparse.Namespace) -> int:
    from .evaluation import summary_line
    from .runs import evaluate

    result = evaluate(args.run, split=args.split, device=args.device, checkpoint=args.checkpoint)
    print(summary_line(result))
    print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for user errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        if args.command == "train":
            return train_command(args)
        if args.command == "eval":
            return run_eval(args)
        return int(importlib.import_module(f"adaptrnn.{args.command}").run(args))
    except (UsageError, ConfigError, CheckpointError) as err:
        print(f"adaptrnn: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as err:
        if err.filename is None:
            raise  # not about a path the user named: a real failure, keep its traceback
        # A path given on the command line that cannot be read or written (permissions, a file
        # where a folder is needed, a full disk): the system's reason, in one line.
        print(f"adaptrnn: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
