"""task.kind=superres: an image given its low-resolution copy as a condition stream (user note 000)."""
from ditlab.tasks.base import IMAGE_DATA_KEYS, TaskKind


def _train_data(cfg, progress):
    from ditlab.tasks.image.data import load_image_train_data

    return load_image_train_data(cfg, progress)


def _model(cfg, info):
    from ditlab.tasks.superres.model import build_superres_model

    return build_superres_model(cfg.model, info["image_size"], info["channels"], cfg.task.factor, cfg.task)


def _check_config(cfg):
    from ditlab.config import off_default

    t = cfg.task
    if t.branch_blocks and t.cond_injection != "branch":
        raise ValueError(f"task.branch_blocks={t.branch_blocks} applies to task.cond_injection=branch only, got "
                         f"task.cond_injection={t.cond_injection}")
    dummy = off_default(t, "task", ("dummy_prob", "dummy_kind"))
    if dummy and t.cond_mode != "dummy":
        raise ValueError(f"{', '.join(dummy)} {'apply' if len(dummy) > 1 else 'applies'} to task.cond_mode=dummy "
                         f"(dummy-condition pretraining) only, got task.cond_mode={t.cond_mode}")
    if cfg.model.cross_attn_dropout and t.cond_injection != "cross":
        raise ValueError(f"model.cross_attn_dropout={cfg.model.cross_attn_dropout} applies to a superres run with "
                         f"task.cond_injection=cross (the condition as a context set); task.cond_injection="
                         f"{t.cond_injection} has no cross-attention")


def _task(cfg, model, objective, training):
    from ditlab.tasks.superres.task import SuperResTask

    return SuperResTask(model, objective, cfg.task, cfg.model.label_dropout if training else 0.0)


KIND = TaskKind("superres", _train_data, _model, _task,
                shape_keys=("task.cond_injection", "task.cond_blocks", "task.branch_blocks"), check_config=_check_config,
                reads=(*IMAGE_DATA_KEYS, "task.cond_dropout", "task.cond_noise_max", "task.cond_noise_sample",
                       "task.cond_mode", "task.dummy_prob", "task.dummy_kind", "task.cond_injection",
                       "task.cond_blocks", "task.branch_blocks", "model.cross_attn_dropout"))
