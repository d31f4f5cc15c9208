"""task.kind=icl: in-context linear regression (user note 003), checked against the exact Bayes answer."""
from ditlab.tasks.base import TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.icl.data import load_icl_train_data

    return load_icl_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.icl.model import build_icl_model

    return build_icl_model(cfg.model, info["d"], info["n_points"])


def _task(cfg, model, objective, training):
    from ditlab.tasks.icl.task import build_icl_task

    return build_icl_task(cfg, model, objective, training)


KIND = TaskKind("icl", _train_data, _model, _task,
                shape_keys=("icl.d", "icl.n_points", "icl.objective"))
