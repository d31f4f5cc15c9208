"""The task kinds: ``task.kind`` -> its :class:`ditlab.tasks.base.TaskKind`, and the constructors
the trainer, ``ditlab.runs`` and the CLI reach a task through."""
from __future__ import annotations

from ditlab.tasks import icl, image, lift, scene, superres
from ditlab.tasks.base import TaskKind, TrainData

KINDS: dict[str, TaskKind] = {k.name: k for k in (image.KIND, superres.KIND, scene.KIND, icl.KIND, lift.KIND)}


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


def build_task(cfg, model, objective, training: bool = True):
    """The task around ``model``; ``training=False`` (e.g. for the EMA copy) turns dropout off."""
    return task_kind(cfg).task(cfg, model, objective, training)
