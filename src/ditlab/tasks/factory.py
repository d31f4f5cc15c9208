"""One place that turns a config into (training data, model, task), for training and for loading a run.

Each ``task.kind`` is one :class:`ditlab.tasks.base.TaskKind` entry in :data:`KINDS`.
"""
from __future__ import annotations

from ditlab.diffusion.objectives import Objective
from ditlab.tasks.base import TaskKind, TrainData
from ditlab.tasks.image import ImageTask, build_image_model
from ditlab.tasks.image_data import load_image_train_data
from ditlab.tasks.superres import SuperResTask, build_superres_model


def _label_dropout(cfg, training: bool) -> float:
    return cfg.model.label_dropout if training else 0.0


KINDS: dict[str, TaskKind] = {
    "image": TaskKind(
        train_data=load_image_train_data,
        model=lambda cfg, info: build_image_model(cfg.model, info["image_size"], info["channels"]),
        task=lambda cfg, model, objective, training: ImageTask(model, objective, _label_dropout(cfg, training)),
    ),
    "superres": TaskKind(
        train_data=load_image_train_data,
        model=lambda cfg, info: build_superres_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor),
        task=lambda cfg, model, objective, training: SuperResTask(model, objective, cfg.task,
                                                                  _label_dropout(cfg, training)),
    ),
}


def task_kind(cfg) -> TaskKind:
    try:
        return KINDS[cfg.task.kind]
    except KeyError:
        raise ValueError(f"unknown task.kind {cfg.task.kind!r}; choose one of {sorted(KINDS)}") from None


def build_train_data(cfg, progress: bool = True) -> TrainData:
    return task_kind(cfg).train_data(cfg, progress)


def build_model(cfg, info: dict):
    """The network of a run from its config and the data facts of RUN/model.json."""
    return task_kind(cfg).model(cfg, info)


def build_task(cfg, model, objective: Objective, training: bool = True):
    """The task around ``model``; ``training=False`` (e.g. for the EMA copy) turns dropout off."""
    return task_kind(cfg).task(cfg, model, objective, training)
