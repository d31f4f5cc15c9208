"""task.kind=lift: an image and its low-resolution copy generated jointly, a noise level per scale (note 004)."""
from ditlab.tasks.base import IMAGE_DATA_KEYS, TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.image.data import load_image_train_data

    return load_image_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.lift.model import build_lift_model

    return build_lift_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor)


def _task(cfg, model, objective, training):
    from ditlab.tasks.lift.task import LiftTask

    return LiftTask(model, objective, cfg.lift, cfg.task.factor, cfg.model.label_dropout if training else 0.0)


def _open_run(run):
    run.task.load_errors(run.run_dir)  # RUN/lift_errors.npz, when measured: the dp-* paths plan on it


KIND = TaskKind("lift", _train_data, _model, _task, open_run=_open_run, reads=IMAGE_DATA_KEYS)
