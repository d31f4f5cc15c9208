"""task.kind=icl: in-context linear regression (user note 003), checked against the exact Bayes answer."""
from ditlab.tasks.base import TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.icl.data import load_icl_train_data

    return load_icl_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.icl.model import build_icl_model

    return build_icl_model(cfg.model, info["d"], info["n_points"])


def _check_config(cfg):
    from ditlab.config import off_default

    icl = cfg.icl
    growth = off_default(icl, "icl", ("d_inc", "points_inc", "curriculum_every"))
    if growth and not (icl.d_start or icl.points_start):
        raise ValueError(f"{', '.join(growth)} {'set' if len(growth) > 1 else 'sets'} the curriculum's growth, and "
                         f"the curriculum is off (icl.d_start = icl.points_start = 0: the full task from step 0); "
                         f"set icl.d_start or icl.points_start, or leave {'them' if len(growth) > 1 else 'it'} at the "
                         f"default")


def _task(cfg, model, objective, training):
    from ditlab.tasks.icl.task import build_icl_task

    return build_icl_task(cfg, model, objective, training)


KIND = TaskKind("icl", _train_data, _model, _task,
                shape_keys=("icl.d", "icl.n_points", "icl.objective"), check_config=_check_config)
