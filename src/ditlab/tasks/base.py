"""What the trainer needs from a task kind: its training data, its model and the task around it.

A task kind (image, superres, and every later one: scenes, in-context regression, ...) registers a
:class:`TaskKind` in :mod:`ditlab.tasks.registry`. The trainer then never looks inside a batch:

- ``TrainData.batch(idx)`` turns example indices into a dict of device tensors (gather, augment, or
  draw synthetic examples from torch's global RNG, which checkpoints save, so resume stays exact).
  It runs inside the compiled step, so it must not sync with the host.
- ``task.loss_on_batch(**batch)`` returns the per-sample loss (B,).
- ``task.preview(model, data, sample_cfg, device, autocast_dtype)`` returns what the trainer writes
  as the run's sample grid: ``(uint8 images (N, 3, H, W), images per row or None)``, or None for a
  task with nothing to draw.
- ``TrainData.set_step(step)``, optional, tells data whose batches depend on the training step (a
  curriculum) the step the run starts from, 0 or that of the checkpoint it resumes; such data also
  has ``advance()``, which the trainer calls after every step *outside* the compiled region (a
  tensor mutated inside it makes Inductor skip CUDA graphs for that graph).
- ``TrainData.info`` is JSON written to ``RUN/model.json``; ``build_model(cfg, info)`` must rebuild
  the network from it (``ditlab sample`` and evaluation do so without reading the data again).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch


class TrainData(Protocol):
    num_examples: int  # examples per epoch (the data order samples from range(num_examples))
    info: dict  # JSON facts the model is built from (written to RUN/model.json)

    def to(self, device: torch.device) -> "TrainData": ...

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class TaskKind:
    """Constructors of one task kind; ``task(cfg, model, objective, training)`` turns dropout off
    when ``training`` is False (the EMA copy, sampling)."""

    train_data: Callable[[Any, bool], TrainData]  # (cfg, progress) -> data
    model: Callable[[Any, dict], torch.nn.Module]  # (cfg, info) -> network
    task: Callable[[Any, torch.nn.Module, Any, bool], Any]  # (cfg, model, objective, training) -> task
    # Config keys of this kind that change parameter shapes or the meaning of the weights: a resumed
    # run may not change them (on top of the trainer's shared list).
    shape_keys: tuple[str, ...] = ()
