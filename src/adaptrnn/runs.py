"""From a config to a task, a model and a device; and back from a run directory to its model.

Shared by the trainer (``train.py``) and the commands that reload a finished run
(``adaptrnn eval``, ``dial``, ``export``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_weights
from .config import ConfigError, TrainConfig, load_config_file, make_config
from .evaluation import evaluate_split, solved
from .model import SequenceModel, build_model
from .tasks import Task, make_task

CHECKPOINTS = "checkpoints"


def build_task(config: TrainConfig) -> Task:
    """The task of ``config``; data problems (missing files, bad options) become ConfigError."""
    options = {k: v for k, v in config.task_options.items() if v is not None}  # None: the task's default
    try:
        task = make_task(config.task, seed=config.seed, **options)
        task.check_batch_size(config.batch_size)
        return task
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def build_config_model(config: TrainConfig, task: Task) -> SequenceModel:
    """The model of ``config`` for ``task``; bad method options become ConfigError."""
    try:
        return build_model(
            task, config.model, config.hidden_size, config.num_layers, config.embed_size, **config.method_options
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is cuda when available (this rank's GPU under torchrun), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    return torch.device(name)


def configure_cpu(config: TrainConfig) -> None:
    """Size torch's CPU thread pool (None leaves torch's default) and set subnormal flushing."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(config.flush_denormal)


def load_run(
    run_dir: str | Path, device: str = "auto", checkpoint: str | None = None
) -> tuple[SequenceModel, Task, TrainConfig, torch.device, Path]:
    """A run's model in eval mode, with the weights of ``checkpoint`` (``best`` or ``last``;
    None: best, else last).

    Returns the model, its task, the run's config, the device and the checkpoint folder used.
    """
    if checkpoint not in (None, "best", "last"):
        raise ConfigError(f"checkpoint must be best or last, got {checkpoint!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    config = make_config(load_config_file(run_dir / "config.yaml"), {"device": device})
    configure_cpu(config)
    task = build_task(config)
    dev = resolve_device(config.device)
    model = build_config_model(config, task).to(dev)
    names = ("best", "last") if checkpoint is None else (checkpoint,)
    folder = next((run_dir / CHECKPOINTS / n for n in names if (run_dir / CHECKPOINTS / n).is_dir()), None)
    if folder is None:
        raise ConfigError(f"{run_dir} has no {checkpoint + ' ' if checkpoint else ''}checkpoint")
    load_weights(folder / "model.safetensors", model)
    return model.eval(), task, config, dev, folder


def evaluate(
    run_dir: str | Path, split: str = "test", device: str = "auto", checkpoint: str | None = None
) -> dict[str, Any]:
    """Reload a run's config and the weights of ``checkpoint`` (``best`` or ``last``; None: best,
    else last) and recompute its metric.

    Returns task, model, metric, split, value, updates_fraction, updates_per_sequence,
    flops_per_sequence, dense_flops_per_sequence, solved, checkpoint.
    """
    model, task, config, dev, folder = load_run(run_dir, device, checkpoint)
    metrics = evaluate_split(model, task, split, config.eval_batch_size, dev)
    return {
        "task": config.task,
        "model": config.model,
        "metric": task.metric_name,
        "split": split,
        **{k: v for k, v in metrics.items() if k != "sequences"},
        "solved": solved(task, metrics["value"]),
        "checkpoint": str(folder),
    }
