"""``adaptrnn export --run DIR --format onnx|torchscript --out FILE``: a run's streaming step to a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from .build import ExportError
from .formats import FORMATS, export_step, read_interface


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Export the streaming step of a run's best checkpoint (``last`` if no best) to ``out``.

    Raises ConfigError for a missing run directory or checkpoint (CheckpointError for an
    unreadable one) and for a model that cannot be exported.
    """
    from ..runs import load_run

    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: run directory not found")
    model, _, _, _, _ = load_run(run_dir, device="cpu")
    try:
        return export_step(model, out, fmt)
    except ExportError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:  # an unwritable --out
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (its best checkpoint is exported)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (ONNX Runtime) or torchscript")
    parser.add_argument("--out", required=True, help="file to write (e.g. step.onnx, step.pt)")


def run(args: argparse.Namespace) -> int:
    path = export_run(args.run, args.format, args.out)
    info = read_interface(path)
    print(
        f"wrote {path} ({args.format}, {info['method']} {info['cell']}): "
        f"inputs {', '.join(info['inputs'])} -> outputs {', '.join(info['outputs'])}"
    )
    return 0
