"""task.kind=lift: an image and its low-resolution copy generated jointly, a noise level per scale (note 004)."""
from ditlab.tasks.base import IMAGE_DATA_KEYS, TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.image.data import load_image_train_data

    return load_image_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.lift.model import build_lift_model

    return build_lift_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor)


def _check_config(cfg):
    from ditlab.config import LiftConfig, off_default

    lift = cfg.lift
    mixed = off_default(lift, "lift", ("mix_lo_ahead", "mix_independent", "mix_lo_noise", "mix_hi_noise"))
    if mixed and lift.train_mode != "mixture":
        raise ValueError(f"{', '.join(mixed)} {'apply' if len(mixed) > 1 else 'applies'} to lift.train_mode=mixture "
                         f"only, got lift.train_mode={lift.train_mode}")
    if lift.train_mode == "clean_lo" and lift.beta != LiftConfig.beta:
        raise ValueError(f"lift.beta={lift.beta} weighs the low-resolution loss, which lift.train_mode=clean_lo does "
                         "not have (t_lo = 0: the clean stream carries no loss); leave lift.beta at 1")


def _task(cfg, model, objective, training):
    from ditlab.tasks.lift.task import LiftTask

    return LiftTask(model, objective, cfg.lift, cfg.task.factor, cfg.model.label_dropout if training else 0.0)


def _open_run(run):
    run.task.load_errors(run.run_dir)  # RUN/lift_errors.npz, when measured: the dp-* paths plan on it


KIND = TaskKind("lift", _train_data, _model, _task, open_run=_open_run, reads=IMAGE_DATA_KEYS,
                check_config=_check_config)
