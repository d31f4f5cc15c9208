"""task.kind=image: images (optionally class-conditional, optionally cross-attending to a context set)."""
from ditlab.tasks.base import TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.image.data import load_image_train_data

    # data.context_path adds a context set the model cross-attends to (ditlab.data.context_sets).
    return load_image_train_data(cfg, progress, allow_context=True)


def _model(cfg, info):
    from ditlab.tasks.image.model import build_image_model

    return build_image_model(cfg.model, info["image_size"], info["channels"], info.get("context_dim"))


def _task(cfg, model, objective, training):
    from ditlab.tasks.image.task import ImageTask

    return ImageTask(model, objective, cfg.model.label_dropout if training else 0.0,
                     cfg.task.cond_dropout if training else 0.0)


KIND = TaskKind("image", _train_data, _model, _task)
