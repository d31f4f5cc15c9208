"""task.kind=scene: points on one object's surface given the scene's point cloud (user note 001)."""
from ditlab.tasks.base import TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.scene.data import load_scene_train_data

    return load_scene_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.scene.model import build_scene_model

    return build_scene_model(cfg, info)


def _task(cfg, model, objective, training):
    from ditlab.tasks.scene.model import describe_set_config
    from ditlab.tasks.scene.task import SceneTask

    entry = describe_set_config(cfg)  # the description's own CFG dropout (default task.cond_dropout)
    describe_dropout = entry.cfg_dropout if entry is not None else cfg.task.cond_dropout
    return SceneTask(model, objective, cfg.task.cond_dropout if training else 0.0, cfg.scene.coord_scale,
                     cfg.scene.frame, describe_dropout if training else 0.0,
                     trained_dropout={"scene": cfg.task.cond_dropout, "target": describe_dropout})


KIND = TaskKind("scene", _train_data, _model, _task,
                shape_keys=("scene.num_target_points", "scene.fourier_bands", "scene.describe_target", "model.contexts"),
                reads=("task.cond_dropout", "model.contexts", "model.cross_attn_dropout"))
