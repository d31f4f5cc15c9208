"""The Task contract: what the trainer, the one generation loop and the CLI need from a task kind.

A task kind (image, superres, scene, icl, lift; docs/architecture.md shows how to add one) is a
package under ``ditlab.tasks`` whose ``__init__`` defines ``KIND``, a :class:`TaskKind`, listed in
:mod:`ditlab.tasks.registry`. Nothing outside the package looks inside its batches or streams.

Training side
- ``TrainData.batch(idx)`` turns example indices into a dict of device tensors (gather, augment, or
  draw synthetic examples from torch's global RNG, which checkpoints save, so resume stays exact).
  It runs inside the compiled step, so it must not sync with the host. ``TrainData.set_step(step)``
  and ``advance()`` are optional (a curriculum; see ditlab.tasks.icl.data). ``TrainData.info`` is
  JSON written to ``RUN/model.json``; ``TaskKind.model(cfg, info)`` rebuilds the network from it.
- ``task.loss_on_batch(**batch)`` returns the per-sample loss (B,).
- ``task.preview_conditions(data, num)`` -> the conditions of the training preview's samples (see
  below; ``{}`` for an unconditional one) or None for a task with nothing to draw;
  ``task.preview_figure(outputs, conditions)`` -> ``(uint8 images (N, 3, H, W), images per row or None)``.
  The trainer generates in between with :func:`ditlab.generation.generate`.

Generation side (driven by :func:`ditlab.generation.generate`, the one loop for every kind)
- *Conditions* are the per-sample inputs of generation: a dict of tensors whose first dimension is
  the sample (class labels, condition images, a context set, a scene, a prompt). They are split
  with the batches, so sample i sees row i whatever the batch size.
- ``task.batch_conditions(indices, given)`` completes one batch's conditions: ``given`` holds the
  rows the caller supplied; the task adds its defaults (e.g. label i mod K for sample index i) and
  raises ValueError, naming the missing input, when something it needs is absent.
- ``task.start(rng, settings, cond)`` -> ``(streams, TimePath)``: the starting value of every
  stream (noise from the :class:`ditlab.diffusion.noise.PerSampleRNG`, so sample i gets the same
  noise in any batch) and the noise levels of each stream at every sampler step. It runs in the
  sampling precision (autocast), so a start that itself generates a stream (LIFT's cascade: the low
  resolution, from ``rng.seed`` and ``rng.indices``) does so as the batch does.
- ``task.check_inputs(settings, given)`` (optional): ValueError, naming the flags, when the
  conditions given (their names) do not fit the settings; ``generate`` calls it before any batch
  (LIFT: each path and the inputs it takes).
- ``task.denoiser(model, cond)`` -> ``denoise(x, t, drop) -> {stream: (x0_hat, eps_hat)}``, the one
  denoiser signature: ``drop`` (B,) bool asks for the unconditional model (classifier-free
  guidance, ditlab.diffusion.guidance, may call it with a doubled batch of 2B rows: conditions are
  repeated to match). ``task.can_guide`` says whether the drop means anything.
  With several context sets ``drop`` may instead be a dict of (B,) bool flags, ``{"all": ..., NAME: ...}``:
  "all" drops every condition (label, every context set, condition streams: the (B,) tensor's meaning),
  NAME drops that context set alone to its own learned null; a condition is dropped when "all" or its
  own flag says so (``ditlab.diffusion.guidance.drop_flags``). Compositional guidance
  (``SampleSettings.cfg_context``, ``--cfg-context NAME=W``) sends such dicts to tasks whose
  ``task.context_sets`` (the public names of their sets) lists the names; no other task receives one.
- ``task.decode(streams, cond)`` -> the task's outputs for the batch: a dict of CPU tensors with
  the sample first (uint8 images, points in world coordinates, sampled y values...).
- ``task.npz_arrays(outputs)`` -> the arrays of the samples ``.npz`` (the task's file layout);
  :func:`ditlab.generation.save_samples` adds the metadata every consumer checks, with
  ``task.sample_meta(settings)``: the kind's own facts about its samples (superres and LIFT: the
  downsampling factor; LIFT: the path actually walked), ``{}`` for most kinds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch

from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.paths import TimePath

Conditions = dict[str, torch.Tensor]  # per-sample generation inputs, the sample first
# (x, t, drop) -> {stream: (x0_hat, eps_hat)}; drop: (B,) bool or {"all" | set name: (B,) bool} (docstring)
CondDenoiser = Callable[[dict, dict, "torch.Tensor | dict[str, torch.Tensor]"], dict]


@dataclass(frozen=True)
class SampleSettings:
    """How to run the sampler; the same for every task kind."""

    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 1.0
    cfg_interval: Optional[tuple[float, float]] = None  # guide only where sigma/alpha is in (lo, hi]
    # Compositional guidance per context set, ((name, W_i), ...) (--cfg-context NAME=W; the formula is in
    # ditlab.diffusion.guidance); names are the task's ``context_sets``.
    cfg_context: tuple[tuple[str, float], ...] = ()
    eta: float = 0.0  # DDIM only
    path: Optional[str] = None  # a multi-stream task's path through its streams' noise levels (LIFT)
    # Strength of the condition pathway (--cond-scale; superres, ditlab.models.control), apart from CFG.
    cond_scale: float = 1.0
    # Flow matching: the levels of the task's path warped t' = s t / (1 + (s - 1) t) (sample.time_shift;
    # applied by ditlab.generation to every stream that moves, ditlab.diffusion.paths.shift_path).
    time_shift: float = 1.0

    def describe(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "cfg": self.cfg_scale,
                **({"cfg_context": dict(self.cfg_context)} if self.cfg_context else {}),
                "cfg_interval": list(self.cfg_interval) if self.cfg_interval else None, "eta": self.eta,
                "path": self.path, "cond_scale": self.cond_scale,
                **({"time_shift": self.time_shift} if self.time_shift != 1.0 else {})}


class TrainData(Protocol):
    num_examples: int  # examples per epoch (the data order samples from range(num_examples))
    info: dict  # JSON facts the model is built from (written to RUN/model.json)

    def to(self, device: torch.device) -> "TrainData": ...

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Task(Protocol):
    """Both sides of a task (module docstring)."""

    objective: Any  # ditlab.diffusion.objectives.Objective
    can_guide: bool

    def loss_on_batch(self, **batch: torch.Tensor) -> torch.Tensor: ...

    def preview_conditions(self, data: TrainData, num: int) -> Optional[Conditions]: ...

    def preview_figure(self, outputs: dict, conditions: Conditions) -> tuple[torch.Tensor, Optional[int]]: ...

    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions: ...

    def start(self, rng: PerSampleRNG, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]: ...

    def denoiser(self, model: torch.nn.Module, cond: Conditions) -> CondDenoiser: ...

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]: ...

    def npz_arrays(self, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]: ...

    def sample_meta(self, settings: SampleSettings) -> dict: ...


@dataclass(frozen=True)
class TaskKind:
    """One task kind's constructors.

    ``task(cfg, model, objective, training)`` turns dropout off when ``training`` is False (the EMA
    copy, sampling). ``open_run(run)`` is called when a run is loaded for sampling or evaluation
    (e.g. LIFT reads its measured error grid).

    The kind's command line lives in its package's ``cli`` module (listed in
    :mod:`ditlab.tasks.commands`): ``add_cli(subparsers)`` adds its own subcommands (``ditlab icl
    eval`` ...) and ``sample_conditions(run, inputs, num, progress=True)`` turns the inputs of ``ditlab
    sample`` (a :class:`SampleInputs`) into conditions for samples 0..num-1, refusing inputs that do not
    apply (an input that is itself a generator, LIFT's --lo-run, is attached to ``run.task`` instead);
    ``progress`` False (--no-progress) keeps the reading of the inputs quiet.
    """

    name: str
    train_data: Callable[[Any, bool], TrainData]  # (cfg, progress) -> data
    model: Callable[[Any, dict], torch.nn.Module]  # (cfg, info) -> network
    task: Callable[[Any, torch.nn.Module, Any, bool], Task]  # (cfg, model, objective, training) -> task
    # Config keys of this kind that change parameter shapes or the meaning of the weights: a resumed
    # run may not change them (on top of the trainer's shared list).
    shape_keys: tuple[str, ...] = ()
    open_run: Optional[Callable[[Any], None]] = None
    # The kind-specific options in the shared sections (task.*, model.*, data.*) that this kind reads. A
    # key some kind lists, set away from its default on a run of a kind that does not list it, is a
    # start-up error (ditlab.tasks.registry.check_kind_options), never silently ignored. Not listed: the
    # sections named after a kind (scene:, icl:, lift:), whose names say whose they are, and task.factor
    # (superres and lift): one base config may serve runs of several kinds (an ablation's image baseline
    # beside its LIFT runs, docs/lift.md's low-resolution run from the LIFT config).
    reads: tuple[str, ...] = ()
    # Start-up checks of the kind's own options that training refuses but loading an existing run must not
    # (e.g. an option an old run's config.yaml carried unused): (cfg) -> None, raising ValueError.
    check_config: Optional[Callable[[Any], None]] = None


# The data.* keys of the kinds that read an image data set (ditlab.tasks.image.data): image, superres, lift.
IMAGE_DATA_KEYS = ("data.path", "data.image_size", "data.root", "data.hflip", "data.on_bad_image", "data.use_labels")


@dataclass(frozen=True)
class SampleInputs:
    """Task inputs of ``ditlab sample`` (beside the sampler settings): which apply depends on the kind."""

    data: Optional[str] = None  # a data set: condition images (superres, LIFT lo-oracle)
    context: Optional[str] = None  # a context file (image runs trained with data.context_path)
    contexts: Optional[tuple[tuple[str, str], ...]] = None  # named context files ((NAME, FILE), ...): data.contexts
    lo_run: Optional[str] = None  # a single-scale run at the low resolution: LIFT --path cascade generates with it
    lo_checkpoint: Optional[str] = None  # which checkpoint of lo_run (as --checkpoint: latest, best, a step name)


FLAG_OF = {"data": "--data", "context": "--context", "contexts": "--context NAME=FILE", "path": "--path",
           "lo_run": "--lo-run", "lo_checkpoint": "--lo-checkpoint"}
INPUTS = ("data", "context", "contexts", "lo_run", "lo_checkpoint")  # the SampleInputs fields that are inputs (refuse_inputs checks them)


def refuse_inputs(kind: str, inputs: SampleInputs, allowed: tuple[str, ...], why: str = "") -> None:
    """ValueError naming the first given input that a run of ``kind`` cannot use."""
    for name in INPUTS:
        if getattr(inputs, name) is not None and name not in allowed:
            raise ValueError(f"{FLAG_OF[name]} does not apply to this task.kind={kind} run{why}")


def refuse_path(settings: SampleSettings, kind: str) -> None:
    """ValueError for a --path on a task with a single time path (every kind but LIFT)."""
    if settings.path:
        raise ValueError(f"--path applies to task.kind=lift runs; this is a task.kind={kind} run")
