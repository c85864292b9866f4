"""A training run's state on disk, so that a stopped ``iht train`` resumes where it was.

A checkpoint holds everything the next step depends on: the model's and the optimizer's
state dicts (the pools' supports and the schedule's clock included), the shuffling
generator's state at the start of the current epoch with the batches of that epoch already
taken, and the history of the finished steps. Resuming from it continues on the very batches,
supports and values of the uninterrupted run (tested bit for bit).

The file is written atomically beside the run's ``config.json`` and names the config it
belongs to (its SHA-256); it is read back with ``weights_only=True`` and checked against the
run (config, model keys and shapes, step counts) before anything is restored.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import StoreError
from ..storage.files import atomic_write_bytes, first_line, read_bounded, torch_bytes
from ..training import History

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "read_checkpoint", "restore", "write_checkpoint"]

CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = "iht-train-checkpoint-v1"


@dataclass
class Checkpoint:
    """The state of a run after ``steps_done`` steps."""

    steps_done: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    #: The shuffling generator's state at the start of the current epoch (None: full batch).
    epoch_generator: Tensor | None
    #: Batches of the current epoch already taken.
    epoch_position: int
    history: History


def config_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically to ``directory/checkpoint.pt`` (StoreError on a fault)."""
    payload = {
        "format": _FORMAT,
        "config_sha256": config_sha256(directory),
        "steps_done": checkpoint.steps_done,
        "model": checkpoint.model,
        "optimizer": checkpoint.optimizer,
        "epoch_generator": checkpoint.epoch_generator,
        "epoch_position": checkpoint.epoch_position,
        "history_layers": list(checkpoint.history.layers),
        "history_score": checkpoint.history.score,
        "history": {k: v.tolist() for k, v in checkpoint.history.columns().items()},
    }
    atomic_write_bytes(directory / CHECKPOINT_FILE, torch_bytes(payload))


def read_checkpoint(directory: Path, model: nn.Module, *, steps: int) -> Checkpoint | None:
    """The checkpoint of the run in ``directory`` checked against ``model`` and the config on
    disk, or None when there is none.

    Raises:
        StoreError: it cannot be read, belongs to another config, or does not fit the model.
    """
    path = directory / CHECKPOINT_FILE
    limit = 64 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (
        256 << 20
    )
    try:
        raw = read_bounded(path, limit)
    except FileNotFoundError:
        return None
    try:
        payload = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise _bad(path, f"it cannot be read ({first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise _bad(path, "it is not an iht training checkpoint")
    if payload.get("config_sha256") != config_sha256(directory):
        raise _bad(path, "it belongs to another config.json")
    try:
        steps_done = int(payload["steps_done"])
        position = int(payload["epoch_position"])
        history = History.from_columns(
            tuple(payload["history_layers"]),
            payload["history"],
            score=str(payload.get("history_score", "accuracy")),
        )
        state, optimizer = payload["model"], payload["optimizer"]
        generator = payload["epoch_generator"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"a field is missing or malformed ({first_line(exc)})") from None
    if not 0 <= steps_done <= steps or len(history) != steps_done or position < 0:
        raise _bad(path, f"its step counts ({steps_done} of {steps}) do not fit this run")
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        raise _bad(path, "its model has other parameters than this run's")
    for name, value in state.items():
        if not isinstance(value, Tensor) or value.shape != expected[name].shape:
            raise _bad(path, f"its {name} does not have the shape of this run's")
        if value.dtype != expected[name].dtype or not bool(torch.isfinite(value).all()):
            raise _bad(path, f"its {name} has another dtype or non-finite values")
    if generator is not None and (
        not isinstance(generator, Tensor)
        or generator.dtype != torch.uint8
        or generator.shape != torch.Generator().get_state().shape
    ):
        raise _bad(path, "its generator state is not a CPU generator's")
    if not isinstance(optimizer, dict):
        raise _bad(path, "its optimizer state is not a state dict")
    clock = optimizer.get("steps_taken", 0)
    if not isinstance(clock, int) or not 0 <= clock <= steps_done:
        raise _bad(path, f"its optimizer clock ({clock!r}) does not fit its {steps_done} steps")
    return Checkpoint(steps_done, state, optimizer, generator, position, history)


def restore(
    checkpoint: Checkpoint,
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    steps_per_epoch: int,
) -> None:
    """Put ``checkpoint`` into the run's objects; a state they refuse is one StoreError.

    Everything is checked before the model is written: the optimizer's state is loaded into
    the optimizer first (torch checks its groups and shapes), then the generator's.
    """
    if not 0 <= checkpoint.epoch_position < max(steps_per_epoch, 1):
        raise _bad(
            path,
            f"its epoch position {checkpoint.epoch_position} is not in 0..{steps_per_epoch - 1}",
        )
    try:
        optimizer.load_state_dict(checkpoint.optimizer)
        for p in (q for group in optimizer.param_groups for q in group["params"]):
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError("a state tensor does not have its parameter's shape")
        if checkpoint.epoch_generator is not None:
            generator.set_state(checkpoint.epoch_generator)
    except (ValueError, RuntimeError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise _bad(
            path, f"its optimizer or generator state does not fit this run ({first_line(exc)})"
        ) from None
    model.load_state_dict(checkpoint.model)


def _bad(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path}: {why}; use --overwrite to move the run aside and start again, or another --out"
    )
