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


def kind_option_readers() -> dict[str, tuple[str, ...]]:
    """{kind-specific config key: the kinds that read it} (TaskKind.reads)."""
    readers: dict[str, list[str]] = {}
    for kind in KINDS.values():
        for key in kind.reads:
            readers.setdefault(key, []).append(kind.name)
    return {key: tuple(kinds) for key, kinds in readers.items()}


def _dotted(cfg, key: str):
    """The value of the dotted config key ``key``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_kind_options(cfg) -> None:
    """ValueError naming the first kind-specific option (TaskKind.reads) set on a run whose kind does not
    read it: e.g. task.cond_injection on a task.kind=image run, model.contexts on an icl run."""
    from ditlab.config import Config

    entry = task_kind(cfg)
    if entry.check_config is not None:
        entry.check_config(cfg)
    kind = entry.name
    defaults = Config()
    for key, kinds in kind_option_readers().items():
        if kind in kinds:
            continue
        value, default = _dotted(cfg, key), _dotted(defaults, key)
        if value != default:
            raise ValueError(f"{key}={value!r} applies to task.kind {' or '.join(kinds)}; this run is "
                             f"task.kind={kind}, which does not read it (set {key}={default!r}, its default, "
                             "e.g. on the command line over a preset)")


def build_train_data(cfg, progress: bool = True) -> TrainData:
    return task_kind(cfg).train_data(cfg, progress)


def build_model(cfg, info: dict):
    """The network of a run from its config and the data facts of RUN/model.json."""
    return task_kind(cfg).model(cfg, info)


def build_task(cfg, model, objective, training: bool = True):
    """The task around ``model``; ``training=False`` (e.g. for the EMA copy) turns dropout off."""
    return task_kind(cfg).task(cfg, model, objective, training)
