"""One place that turns a config into (training data, model, task), for training and for loading a run.

Each ``task.kind`` is one :class:`ditlab.tasks.base.TaskKind` entry in :data:`KINDS`.
"""
from __future__ import annotations

from ditlab.diffusion.objectives import Objective
from ditlab.tasks.base import TaskKind, TrainData
from ditlab.tasks.icl.task import build_icl_model, build_icl_task
from ditlab.tasks.icl.data import load_icl_train_data
from ditlab.tasks.image.task import ImageTask, build_image_model
from ditlab.tasks.image.data import load_image_train_data
from ditlab.tasks.scene.data import load_scene_train_data
from ditlab.tasks.scene.task import SceneTask, build_scene_model
from ditlab.tasks.superres.task import SuperResTask, build_superres_model
from ditlab.tasks.lift.task import LiftTask, build_lift_model


def _label_dropout(cfg, training: bool) -> float:
    return cfg.model.label_dropout if training else 0.0


KINDS: dict[str, TaskKind] = {
    "image": TaskKind(
        # data.context_path adds a context set the model cross-attends to (ditlab.data.context_sets).
        train_data=lambda cfg, progress: load_image_train_data(cfg, progress, allow_context=True),
        model=lambda cfg, info: build_image_model(cfg.model, info["image_size"], info["channels"],
                                                  info.get("context_dim")),
        task=lambda cfg, model, objective, training: ImageTask(model, objective, _label_dropout(cfg, training),
                                                               cfg.task.cond_dropout if training else 0.0),
    ),
    "superres": TaskKind(
        train_data=load_image_train_data,
        model=lambda cfg, info: build_superres_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor),
        task=lambda cfg, model, objective, training: SuperResTask(model, objective, cfg.task,
                                                                  _label_dropout(cfg, training)),
    ),
    "scene": TaskKind(
        train_data=load_scene_train_data,
        model=build_scene_model,
        task=lambda cfg, model, objective, training: SceneTask(
            model, objective, cfg.task.cond_dropout if training else 0.0, cfg.scene.coord_scale, cfg.scene.frame),
        shape_keys=("scene.num_target_points", "scene.fourier_bands"),
    ),
    "icl": TaskKind(
        train_data=load_icl_train_data,
        model=lambda cfg, info: build_icl_model(cfg.model, info["d"], info["n_points"]),
        task=build_icl_task,
        shape_keys=("icl.d", "icl.n_points", "icl.objective"),
    ),
    "lift": TaskKind(  # joint multi-scale generation (docs/lift.md)
        train_data=load_image_train_data,
        model=lambda cfg, info: build_lift_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor),
        task=lambda cfg, model, objective, training: LiftTask(model, objective, cfg.lift, cfg.task.factor,
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
