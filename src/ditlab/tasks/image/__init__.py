"""task.kind=image: images (optionally class-conditional, optionally cross-attending to a context set)."""
from ditlab.tasks.base import IMAGE_DATA_KEYS, TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.image.data import load_image_train_data

    # data.context_path adds a context set the model cross-attends to (ditlab.data.context_sets).
    return load_image_train_data(cfg, progress, allow_context=True)


def _model(cfg, info):
    from ditlab.models.context_sets import ContextSpec, context_specs_of
    from ditlab.tasks.image.model import build_image_model

    # Named sets (data.contexts): model.contexts entries, or the defaults for a file without an entry.
    dims = info.get("contexts") or {}
    listed = {cs.name: cs for cs in context_specs_of(cfg.model, dims)}
    specs = [listed.get(n) or ContextSpec(n, d) for n, d in dims.items()]  # in data.contexts order
    return build_image_model(cfg.model, info["image_size"], info["channels"], info.get("context_dim"), specs or None)


def _check_config(cfg):
    if cfg.task.cond_dropout and not (cfg.data.context_path or cfg.data.contexts):
        raise ValueError(f"task.cond_dropout={cfg.task.cond_dropout} drops an image run's context sets (with the "
                         "label); this run has none (data.context_path, data.contexts): use model.label_dropout for "
                         "the label's CFG dropout, or set task.cond_dropout=0")
    if cfg.model.cross_attn_dropout and not cfg.data.context_path:
        raise ValueError(f"model.cross_attn_dropout={cfg.model.cross_attn_dropout} is the dropout of the unnamed context "
                         "set (data.context_path); this run has none: a named set of model.contexts takes its own "
                         "cross_attn_dropout there, e.g. model.contexts=[{name: text, cross_attn_dropout: 0.1}]")


def _task(cfg, model, objective, training):
    from ditlab.tasks.image.task import ImageTask

    trained = {cs.name: cs.cfg_dropout for cs in cfg.model.contexts}
    set_dropout = {n: p if training else 0.0 for n, p in trained.items()}
    return ImageTask(model, objective, cfg.model.label_dropout if training else 0.0,
                     cfg.task.cond_dropout if training else 0.0, set_dropout, trained_set_dropout=trained)


KIND = TaskKind("image", _train_data, _model, _task, shape_keys=("model.contexts", "data.contexts"),
                check_config=_check_config,
                reads=("task.cond_dropout", "model.contexts", "model.cross_attn_dropout", "data.contexts",
                       "data.context_path", *IMAGE_DATA_KEYS))
