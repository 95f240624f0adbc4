"""Checkpoints: weights as safetensors, trainer state via ``torch.save``, committed as one unit;
and the RNG states a checkpoint must hold for an exact resume.

A checkpoint is a directory with ``model.safetensors`` and ``trainer_state.pt``, both of the
same step. :func:`save_checkpoint` writes the two files into a fresh sibling directory
(``.NAME.new<pid>``), fsyncs them and that directory, then moves it into place: the old
directory is renamed aside (``.NAME.old<pid>``), the new one renamed to ``NAME`` and the old one
deleted. A kill at any instant therefore leaves one of:

* ``NAME`` complete (old or new), perhaps with a stale ``.new``/``.old`` sibling;
* no ``NAME`` but ``.NAME.old<pid>``, the previous checkpoint, complete (killed between the two
  renames).

:func:`recover_checkpoints`, run when a trainer starts, puts such an ``.old`` directory back and
deletes stale staging directories and temporary files, so the previous checkpoint is always
resumable. Loading still refuses a pair whose steps differ (files copied by hand).
The trainer state is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, so loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

FORMAT = "adaptrnn-trainer-state"
VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, foreign, mismatched); one-line message."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` so that readers see the old or the new content only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_synced(tmp, write)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # make the rename itself durable


def save_checkpoint(directory: str | Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Write ``model``'s weights and the trainer ``state`` (which must hold ``step``) to ``directory``.

    The two files are committed together (see the module docstring): a reader sees the previous
    pair or the new one, never one file of each.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = safetensors_bytes(tensors, metadata={"format": FORMAT, "step": str(step)})
    payload = {"format": FORMAT, "version": VERSION, **state}
    staging = directory.with_name(f".{directory.name}.new{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_synced(staging / WEIGHTS, lambda f: f.write(blob))
        _write_synced(staging / STATE, lambda f: torch.save(payload, f))
        _fsync_dir(staging)
        aside = directory.with_name(f".{directory.name}.old{os.getpid()}")
        if directory.exists():
            os.replace(directory, aside)
            _fsync_dir(directory.parent)
        os.replace(staging, directory)  # the commit
        _fsync_dir(directory.parent)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>new|old)(?P<pid>\d+)$")
_TEMP_FILE = re.compile(r"^\..+\.tmp\d+$")


def recover_checkpoints(root: str | Path) -> None:
    """Undo what a kill during :func:`save_checkpoint` or :func:`atomic_write` left in ``root``.

    A checkpoint moved aside whose replacement never arrived is put back; staging directories,
    checkpoints moved aside and since replaced, and temporary files are deleted. Safe to call from
    several processes at once (DDP ranks): each step tolerates another process having done it.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        match = _STAGING.match(entry.name)
        if match and entry.is_dir():
            target = root / match["name"]
            if match["kind"] == "old" and not target.exists():
                try:
                    os.replace(entry, target)
                    continue
                except OSError:  # another process put it back first
                    pass
            shutil.rmtree(entry, ignore_errors=True)
    remove_temp_files(root)
    for checkpoint in root.iterdir():
        if checkpoint.is_dir():  # temporary files of the old file-by-file layout
            remove_temp_files(checkpoint)
    _fsync_dir(root)


def remove_temp_files(directory: str | Path) -> None:
    """Delete the ``.NAME.tmp<pid>`` files that a killed :func:`atomic_write` left in ``directory``."""
    directory = Path(directory)
    if directory.is_dir():
        for entry in directory.iterdir():
            if _TEMP_FILE.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)


def _write_synced(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_weights(path: str | Path, model: nn.Module) -> int:
    """Load a ``model.safetensors`` into ``model`` (strict); returns the step it was saved at."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint weights not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises its own error types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an adaptrnn checkpoint (no adaptrnn metadata)")
    missing = sorted(set(model.state_dict()) - set(tensors))
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model (missing: {', '.join(missing[:5]) or 'none'}; "
            f"unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the model ({_first_line(err)})") from None
    return int(metadata.get("step", -1))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The trainer state saved by :func:`save_checkpoint` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: trainer state not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle refused by weights_only, garbage ...
        raise CheckpointError(f"{path}: not a readable trainer state ({_first_line(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an adaptrnn trainer state")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: trainer state version {state.get('version')!r}, expected {VERSION}")
    return state


def checkpoint_step(directory: str | Path) -> int:
    """The step a checkpoint directory was saved at, without a model; refuses a mismatched pair.

    For copies made while a trainer may be replacing the checkpoint (``reproduce.py --park``).
    """
    directory = Path(directory)
    state_step = load_trainer_state(directory / STATE)["step"]
    try:
        with safe_open(str(directory / WEIGHTS), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # missing, truncated or foreign: safetensors' own error types
        raise CheckpointError(f"{directory / WEIGHTS}: not a readable safetensors file ({_first_line(err)})") from None
    if metadata.get("format") != FORMAT or int(metadata.get("step", -1)) != state_step:
        raise CheckpointError(f"{directory}: weights and trainer state are not of one step")
    return int(state_step)


def load_checkpoint(directory: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the trainer state; both must be from the same step."""
    directory = Path(directory)
    state = load_trainer_state(directory / STATE)
    step = load_weights(directory / WEIGHTS, model)
    if step != state["step"]:
        raise CheckpointError(
            f"{directory}: weights (step {step}) and trainer state (step {state['step']}) differ; "
            "the run was interrupted while saving"
        )
    return state


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), python and numpy."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
