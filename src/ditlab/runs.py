"""Open a finished (or running) training run for sampling and evaluation."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ditlab.config import Config, read_saved_config
from ditlab.diffusion.objectives import build_objective
from ditlab.models.kernels import configure_fast_kernels
from ditlab.tasks.registry import build_model, build_task, task_kind
from ditlab.train.checkpoint import find_best_checkpoint, find_latest_checkpoint, load_weights


@dataclass
class LoadedRun:
    cfg: Config
    model: torch.nn.Module
    task: object  # the task.kind's task (ditlab.tasks.base.Task)
    checkpoint: Path
    info: dict
    run_dir: Path

    @property
    def kind(self) -> str:
        return self.cfg.task.kind


def resolve_checkpoint(run_dir: Path, checkpoint: Optional[str]) -> Path:
    """``--checkpoint``: None or 'latest' (the newest complete checkpoint), 'best' (the checkpoint
    RUN/checkpoints/best names: the best by train.eval_metric; an error, not a fallback, when it is
    missing or corrupt), a step name inside RUN/checkpoints, or a path (a checkpoint folder or a
    weights .safetensors file)."""
    if checkpoint == "best":
        found = find_best_checkpoint(run_dir)  # a corrupt best is skipped with a warning naming it
        if found is None:
            raise FileNotFoundError(f"--checkpoint best: {run_dir / 'checkpoints' / 'best'} is missing or names an "
                                    "unusable checkpoint (train with train.eval_every > 0; see the warning above), "
                                    "pass --checkpoint latest or a step name")
        return found[0]
    if checkpoint in (None, "", "latest"):
        ckpt = find_latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint yet (train it first, or pass --checkpoint)")
        return ckpt
    inside = run_dir / "checkpoints" / checkpoint
    if inside.exists():
        return inside
    given = Path(checkpoint).expanduser()
    if given.exists():
        return given
    folder = run_dir / "checkpoints"
    names = sorted(p.name for p in folder.glob("step_*")) if folder.is_dir() else []
    posthoc = sorted(p.name for p in folder.glob("posthoc_*")) if folder.is_dir() else []  # `ditlab ema`
    held = names[-5:] + posthoc
    raise FileNotFoundError(f"--checkpoint {checkpoint}: neither {inside} nor {given} exists"
                            + (f"; {folder} holds {', '.join(held)}" if held else ""))


def read_run_config(run_dir: Path) -> tuple[Config, dict]:
    for name in ("config.yaml", "model.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name} not found: {run_dir} is not a ditlab run directory")
    return read_saved_config(run_dir / "config.yaml"), json.loads((run_dir / "model.json").read_text())


def load_run(run_dir: str | Path, which: Optional[str] = None, checkpoint: Optional[str] = None,
             device: torch.device | str = "cpu", kind: Optional[str] = None, command: str = "") -> LoadedRun:
    """Rebuild the model of a run from its config.yaml + model.json and load EMA (or raw) weights.

    ``which`` (--weights): "ema" or "model" of a checkpoint folder; None: the EMA of a folder, or the one
    set of weights of a .safetensors file (a choice there would be ignored, so it is an error).
    ``kind``: the task.kind a command needs (``command`` names it in the error), checked before any
    weights are read."""
    run_dir = Path(run_dir).expanduser()
    cfg, info = read_run_config(run_dir)
    if kind is not None and cfg.task.kind != kind:
        raise ValueError(f"{command or 'this command'} needs a task.kind={kind} run; {run_dir} is "
                         f"task.kind={cfg.task.kind!r}")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    model = build_model(cfg, info)
    if which is not None and ckpt.suffix == ".safetensors":
        raise ValueError(f"--weights {which} picks the weights of a checkpoint folder, but --checkpoint {ckpt} is a "
                         "single weights file, loaded as it is: leave --weights out, or pass the checkpoint folder")
    weights = load_weights(ckpt, which=which or "ema")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights in {ckpt} do not fit the model of {run_dir / 'config.yaml'}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    # The fused adaLN kernels where the run trained with them (its in-training evaluations sampled its EMA with
    # them too) and this device has them: "on" becomes "auto" here, so a run trained with the kernels still
    # loads on a CPU. Commands that sample may override it (--fast-kernels).
    configure_fast_kernels(model, "off" if cfg.train.fast_kernels == "off" else "auto", device)
    run = LoadedRun(cfg, model, build_task(cfg, model, build_objective(cfg.diffusion), training=False), ckpt, info,
                    run_dir)
    hook = task_kind(cfg).open_run
    if hook is not None:
        hook(run)
    return run
