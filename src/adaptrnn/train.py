"""The trainer: loop, schedules, validation, logging, checkpoint/resume, DDP, final test evaluation.

Run directory (``out_dir``)::

    config.yaml          the fully resolved TrainConfig (rerun with --config)
    metrics.jsonl        one JSON line per log interval
    tb/                  TensorBoard event files
    checkpoints/last/    model.safetensors + trainer_state.pt, written at every validation
    checkpoints/best/    the same, for the best validation metric so far (both committed as one
                         unit each; a kill while saving leaves the previous one: see checkpoint.py)
    result.json          test metrics of the best checkpoint (see ``Trainer.finish``)
    samples.npz          per-step computation on 8 test sequences (see ``evaluation.sample_arrays``)

Exact resumption: the training batch of step k is a pure function of (seed, k); the checkpoint
holds the weights, optimizer state, RNG states, the carried TBPTT state and the logging
accumulators, and validation runs under a forked RNG so it never perturbs training. A run
interrupted at any checkpoint and resumed ends with bit-identical weights on the CPU.

DDP: under ``torchrun`` (WORLD_SIZE > 1) every rank draws the same global batch and trains on
its slice; gradients are averaged, so the run matches a single process with the same global
batch up to floating-point rounding. Only rank 0 evaluates and writes files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from .checkpoint import (
    atomic_write,
    load_checkpoint,
    load_weights,
    recover_checkpoints,
    remove_temp_files,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, save_config
from .console import progress_bar
from .distributed import close_group, init_group
from .evaluation import evaluate_split, measure_inference, sample_arrays, solved, valid_steps
from .layer import RecurrentState
from .model import count_parameters, set_schedule_values
from .runinfo import GROUPS, code_version, group_grad_norms, parameter_groups, run_record
from .runs import CHECKPOINTS, build_config_model, build_task, configure_cpu, resolve_device
from .tasks import Batch
from .tasks.base import slice_batch

# Consecutive steps with a non-finite gradient after which the run stops: the weights are still
# finite (those steps were skipped), so something in the data or the setup makes every gradient bad.
MAX_NONFINITE_STEPS = 50
INFERENCE_BATCH = 256
SAMPLE_COUNT = 8


class TrainingDiverged(RuntimeError):
    """Every gradient of many steps in a row was NaN or infinite (caught by ``Trainer.run``)."""


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): constant, or a half cosine from ``lr`` at
    ``lr_decay_start`` to ``lr_final`` at the last step."""
    if config.lr_final is None or step <= config.lr_decay_start:
        return config.lr
    progress = min(1.0, (step - config.lr_decay_start) / max(1, config.steps - 1 - config.lr_decay_start))
    return config.lr_final + (config.lr - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """One training run. ``Trainer(config, out_dir).run()`` trains, tests and writes the run dir.

    Args:
        config: the resolved configuration.
        out_dir: the run directory; must not hold a run unless ``resume``.
        resume: continue from ``out_dir/checkpoints/last``.
        progress: show progress on rank 0 (a bar on a terminal, plain lines otherwise).
    Raises:
        ConfigError / CheckpointError for problems the user can fix.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out_dir), progress
        code_version()  # cached now: result.json names the code this process runs, not a later checkout's
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {self.world} DDP ranks")
        last = self.out / CHECKPOINTS / "last"
        recover_checkpoints(self.out / CHECKPOINTS)  # a kill while saving leaves the previous checkpoint
        remove_temp_files(self.out)
        if resume and not last.is_dir():
            raise ConfigError(
                f"{self.out}: no checkpoint to resume from ({last} missing); "
                "a run stopped before its first checkpoint starts again without --resume"
            )
        if not resume and last.is_dir():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if not resume:  # what a run killed before its first complete checkpoint left (e.g. best/ only)
            shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        configure_cpu(config)
        seed_everything(config.seed)
        self.task = build_task(config)
        self.model = build_config_model(config, self.task).to(self.device)
        self._check_schedules()
        self.groups = parameter_groups(self.model)  # for the per-group gradient norms in the log
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
        self.step, self.best, self.best_step, self.elapsed = 0, None, None, 0.0
        self.carried: RecurrentState | None = None
        self.interval = _new_interval()
        self.nonfinite_steps = 0  # consecutive steps skipped for a non-finite gradient
        if resume:
            self._restore(load_checkpoint(last, self.model))
        self.ddp = self.model
        self.owns_group = False
        if self.world > 1:
            self.owns_group = init_group(self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        """Train to ``config.steps``, then test the best checkpoint; the result on rank 0, None elsewhere.

        Training stops early when the gradient was NaN or infinite in ``MAX_NONFINITE_STEPS``
        steps in a row (the result then says why under ``diverged``), or when ``patience``
        validations in a row found nothing better (``stopped_early``).
        """
        cfg, main = self.config, self.rank == 0
        writer = self._open_logs() if main else None
        bar = progress_bar(cfg.steps, self.step, enabled=main and self.progress, desc="train")
        start = time.perf_counter() - self.elapsed
        self.diverged = None
        # a run resumed after its patience ran out trains no further
        self.stopped_early = self.step if self.step and self._out_of_patience() else None
        remaining = range(self.step, cfg.steps) if self.stopped_early is None else range(0)
        try:
            for step in remaining:
                try:
                    self._train_step(step)
                except TrainingDiverged as err:
                    # The weights are those before the bad steps: test the best checkpoint as usual.
                    self.diverged, self.step = str(err), step + 1
                    break
                self.step = done = step + 1
                self.elapsed = time.perf_counter() - start
                evaluate_now = done % cfg.eval_every == 0 or done == cfg.steps
                val = self._validate() if evaluate_now and main else None
                if done % cfg.log_every == 0 or evaluate_now:
                    line = self._log_line(val)
                    if main:
                        self._write_log(writer, line)
                        bar.set_postfix(loss=f"{line['loss']:.4g}", upd=f"{line['updates_fraction']:.3f}")
                bar.update(1)
                if evaluate_now:
                    self._save(val)
                    if self._out_of_patience():
                        self.stopped_early = done
                        break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        result = self.finish() if main else None
        if self.world > 1:  # waits for rank 0's test evaluation; see adaptrnn.distributed for the order
            close_group(self._release_ddp, self.owns_group)
        return result

    def _out_of_patience(self) -> bool:
        """``patience`` validations since the best one; rank 0 decides (it alone validates)."""
        cfg = self.config
        since_best = self.step - (self.best_step if self.best_step is not None else self.step)
        stop = cfg.patience is not None and since_best >= cfg.patience * cfg.eval_every
        stop = torch.tensor(float(stop), device=self.device)
        if self.world > 1:
            dist.broadcast(stop, 0)
        return bool(stop)

    def _release_ddp(self) -> None:
        self.ddp = self.model

    def _train_step(self, step: int) -> None:
        cfg = self.config
        self._apply_schedules(step)
        batch = self._shard(self.task.train_batch(step, cfg.batch_size)).to(self.device)
        state = self.carried if batch.carry_state else None
        pred, stats, new_state = self.ddp(batch.x, batch.lengths, state)
        task_loss = self.task.loss(pred, batch)
        loss = task_loss + stats.cost
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        group_norms = group_grad_norms(self.groups)  # before clipping scales them
        # Under DDP every rank holds the same averaged gradient, so every rank decides alike.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
        self.carried = new_state.detach()
        acc = self.interval
        acc["steps"] += 1
        if not torch.isfinite(norm):
            # An exploding straight-through path or an overflow: one such step would make every
            # weight NaN for good, so skip it (as AMP's loss scaler does) and count it in the log.
            acc["skipped"] += 1
            self.nonfinite_steps += 1
            if self.nonfinite_steps >= MAX_NONFINITE_STEPS:
                raise TrainingDiverged(
                    f"step {step + 1}: the gradient was NaN or infinite in {self.nonfinite_steps} steps in a row "
                    f"(loss {float(loss.detach())}); the last checkpoint holds the weights before them"
                )
            return
        self.nonfinite_steps = 0
        self.optimizer.step()
        acc["grad_norm"] = max(acc["grad_norm"], float(norm))
        for group, value in group_norms.items():
            acc[f"grad_norm_{group}"] = max(acc[f"grad_norm_{group}"], value)
        acc["loss"] += float(loss.detach())
        acc["task_loss"] += float(task_loss.detach())
        acc["cost"] += float(stats.cost.detach())
        acc["updates"] += float(stats.updates.sum())
        acc["valid"] += valid_steps(batch)

    def _shard(self, batch: Batch) -> Batch:
        if self.world == 1:
            return batch
        rows = batch.x.shape[0] // self.world
        return slice_batch(batch, self.rank * rows, (self.rank + 1) * rows)

    def _check_schedules(self) -> None:
        options, cfg = self.config.method_options, self.config
        if cfg.sharpness_final is not None and "sharpness" not in options:
            raise ConfigError(f"sharpness_final applies to vc-* models only, not {cfg.model!r}")
        if cfg.slope_epoch_steps is not None and "slope" not in options:
            raise ConfigError(f"slope_epoch_steps applies to sa-* models only, not {cfg.model!r}")

    def _apply_schedules(self, step: int) -> None:
        """lr (``lr_at``); VCRNN sharpness: linear ramp to ``sharpness_final``; SA-RNN slope:
        ``min(5, α_0 + 0.04·epoch)``."""
        cfg, options = self.config, self.config.method_options
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        sharpness = slope = None
        if cfg.sharpness_final is not None:
            start = float(options["sharpness"])
            sharpness = start + (cfg.sharpness_final - start) * step / max(1, cfg.steps - 1)
        if "slope" in options:
            epoch = step // (cfg.slope_epoch_steps or max(1, cfg.steps // 100))
            start = float(options["slope"])
            slope = min(max(5.0, start), start + 0.04 * epoch)
        set_schedule_values(self.model, sharpness, slope)

    # ---- validation, logs, checkpoints -----------------------------------------------

    def _validate(self) -> dict[str, float]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation must not shift the training RNG
            return evaluate_split(
                self.model, self.task, "val", self.config.eval_batch_size, self.device, self.config.eval_batches
            )

    def _log_line(self, val: dict[str, float] | None) -> dict[str, Any]:
        acc = self.interval
        n = max(1.0, acc["steps"] - acc["skipped"])  # skipped steps' losses were not accumulated
        line = {
            "step": self.step,
            "loss": acc["loss"] / n,
            "task_loss": acc["task_loss"] / n,
            "cost": acc["cost"] / n,
            "updates_fraction": acc["updates"] / max(1.0, acc["valid"]),
            "val_metric": None if val is None else val["value"],
            "val_updates_fraction": None if val is None else val["updates_fraction"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": self.elapsed,
            "skipped_steps": int(acc["skipped"]),
            "grad_norm": acc["grad_norm"],  # the largest before clipping: an exploding gradient shows here
            **{f"grad_norm_{g}": acc[f"grad_norm_{g}"] for g in GROUPS},  # the same per parameter group
        }
        self.interval = _new_interval()
        return line

    def _open_logs(self) -> SummaryWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # resuming: drop lines logged after the checkpoint
            kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= self.step]
            atomic_write(metrics, lambda f: f.write("".join(f"{line}\n" for line in kept).encode()))
        return SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.step else None)

    def _write_log(self, writer: SummaryWriter, line: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        for key in ("loss", "task_loss", "cost", "updates_fraction", "lr", "grad_norm"):
            writer.add_scalar(f"train/{key}", line[key], line["step"])
        if line["val_metric"] is not None:
            writer.add_scalar(f"val/{self.task.metric_name}", line["val_metric"], line["step"])
            writer.add_scalar("val/updates_fraction", line["val_updates_fraction"], line["step"])

    def _save(self, val: dict[str, float] | None) -> None:
        """Write ``last`` (and ``best`` if the validation metric improved). Collective under DDP."""
        carried = self._global_carried()
        if self.rank != 0:
            return
        value = val["value"]
        better = self.best is None or (value > self.best if self.task.higher_is_better else value < self.best)
        if better and not math.isnan(value):
            self.best, self.best_step = value, self.step
        state = self._trainer_state(carried)
        # best first: last commits the step, so a kill in between resumes before this step and
        # rewrites best identically (a kill after last but before best would lose it)
        if self.best_step == self.step:
            save_checkpoint(self.out / CHECKPOINTS / "best", self.model, state)
        save_checkpoint(self.out / CHECKPOINTS / "last", self.model, state)

    def _trainer_state(self, carried: RecurrentState | None) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "carried": None if carried is None else {"cell": carried.cell.cpu(), "extras": _cpu(carried.extras)},
            "best": self.best,
            "best_step": self.best_step,
            "elapsed_s": self.elapsed,
            "interval": dict(self.interval),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.step, self.best, self.best_step = state["step"], state["best"], state["best_step"]
        self.elapsed, self.interval = state["elapsed_s"], {**_new_interval(), **state["interval"]}
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        carried = state["carried"]
        if carried is not None:
            rows = self.config.batch_size // self.world
            cut = slice(self.rank * rows, (self.rank + 1) * rows)
            extras = {k: v[cut].to(self.device) for k, v in carried["extras"].items()}
            self.carried = RecurrentState(carried["cell"][:, cut].to(self.device), extras)

    def _global_carried(self) -> RecurrentState | None:
        """The carried state of the whole global batch (gathered from every rank under DDP)."""
        if self.world == 1 or self.carried is None:
            return self.carried

        def gather(t: torch.Tensor, dim: int) -> torch.Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts, dim)

        extras = {k: gather(v, 0) for k, v in sorted(self.carried.extras.items())}
        return RecurrentState(gather(self.carried.cell, 1), extras)

    # ---- the end ---------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Test the best checkpoint; write result.json and samples.npz; return the result."""
        cfg = self.config
        best = self.out / CHECKPOINTS / "best" / "model.safetensors"
        # The tested weights: the best validation's checkpoint, else (no validation ran) the final ones.
        checkpoint, checkpoint_step = ("best", self.best_step) if best.is_file() else ("last", self.step)
        if best.is_file():
            load_weights(best, self.model)
        test = evaluate_split(self.model, self.task, "test", cfg.eval_batch_size, self.device)
        ms, rows = measure_inference(self.model, self.task, self.device, min(INFERENCE_BATCH, cfg.eval_batch_size))
        result = {
            "task": cfg.task,
            "model": cfg.model,
            "metric": self.task.metric_name,
            "split": "test",
            **{k: test[k] for k in ("value", "updates_fraction", "updates_per_sequence", "flops_per_sequence")},
            "dense_flops_per_sequence": test["dense_flops_per_sequence"],
            "solved": solved(self.task, test["value"]),
            "train_steps": self.step,
            "wall_s": self.elapsed,
            "seed": cfg.seed,
            "best_step": self.best_step,
            "val_value": self.best,
            "inference_ms_per_sequence": ms,
            "inference_batch_size": rows,
            "num_parameters": count_parameters(self.model),
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "method_options": dict(cfg.method_options),
            "device": str(self.device),
            "world_size": self.world,
            "torch_version": torch.__version__,
        }
        if self.diverged:
            result["diverged"] = self.diverged
        if self.stopped_early:
            result["stopped_early"] = self.stopped_early
        metrics = self.out / "metrics.jsonl"
        result.update(run_record(cfg, checkpoint, checkpoint_step, metrics, self.task.higher_is_better))
        arrays = sample_arrays(self.model, self.task, self.device, SAMPLE_COUNT)
        atomic_write(self.out / "samples.npz", lambda f: np.savez_compressed(f, **arrays))
        atomic_write(self.out / "result.json", lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
        return result


def train(
    config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any] | None:
    """Train ``config`` into ``out_dir`` (see :class:`Trainer`); returns result.json's content on rank 0."""
    return Trainer(config, out_dir, resume, progress).run()


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line cut short by a kill (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _new_interval() -> dict[str, float]:
    return {
        "steps": 0.0,
        "loss": 0.0,
        "task_loss": 0.0,
        "cost": 0.0,
        "updates": 0.0,
        "valid": 0.0,
        "skipped": 0.0,
        "grad_norm": 0.0,
        **{f"grad_norm_{g}": 0.0 for g in GROUPS},
    }


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in tensors.items()}
