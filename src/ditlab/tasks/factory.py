"""One place that turns a config into (model, task), for training and for loading a run."""
from __future__ import annotations

from ditlab.diffusion.objectives import Objective
from ditlab.tasks.image import ImageTask, build_image_model
from ditlab.tasks.superres import SuperResTask, build_superres_model


def build_model(cfg, image_size: int, channels: int):
    if cfg.task.kind == "image":
        return build_image_model(cfg.model, image_size, channels)
    if cfg.task.kind == "superres":
        return build_superres_model(cfg.model, image_size, channels, cfg.task.factor)
    raise ValueError(f"unknown task.kind {cfg.task.kind!r}")


def build_task(cfg, model, objective: Objective, training: bool = True):
    """The task around ``model``; ``training=False`` (e.g. for the EMA copy) turns dropout off."""
    label_dropout = cfg.model.label_dropout if training else 0.0
    if cfg.task.kind == "image":
        return ImageTask(model, objective, label_dropout)
    return SuperResTask(model, objective, cfg.task, label_dropout)
