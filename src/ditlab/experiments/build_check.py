"""Whether a variant's network can be built, without training it: for the combination a stage merges.

A combination (``combine:``, ditlab.experiments.promotion) merges the overrides of the best variants of the stage
before. Each of them trained alone, but options can refuse each other only once the network is built (token
routing refuses U-ViT long skips, for example, in the DiT's constructor): a combination that passes the config
checks could still fail at the start of its training, and a stage whose unit fails at start-up fails again on
every rerun. So the merged config is also built here, on the meta device (no memory, no data; ~15 ms).

Building needs the data facts a run writes to RUN/model.json (image size, channels, classes, context widths).
:class:`DataFacts` takes them from a trained run of the study with the same task kind and data options, or, on a
fresh machine whose runs are gone (a study restored from its score files), from the training data itself.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from ditlab.experiments.ablation import MACHINE_KEYS

# Data options that differ between machines without changing what the data tells the network (data.path).
_MACHINE_DATA_KEYS = tuple(k.partition(".")[2] for k in MACHINE_KEYS if k.startswith("data."))


def _data_key(cfg) -> str:
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _MACHINE_DATA_KEYS}
    return json.dumps([cfg.task.kind, data], sort_keys=True, default=str)


class DataFacts:
    """The RUN/model.json facts of a study's data, per (task kind, data options), for :func:`check_builds`.

    ``load_data`` lets it read the training data when no trained run has the facts (the runner on the device;
    ``--plan`` leaves it off and so checks only what trained runs can tell)."""

    def __init__(self, out, load_data: bool = False):
        self.out = Path(out)
        self.load_data = load_data
        self._known: dict[str, Optional[dict]] = {}

    def __call__(self, cfg) -> Optional[dict]:
        key = _data_key(cfg)
        if key not in self._known:
            self._known[key] = self._from_runs(key) or (self._from_data(cfg) if self.load_data else None)
        return self._known[key]

    def _from_runs(self, key: str) -> Optional[dict]:
        from ditlab.config import read_saved_config
        from ditlab.experiments.study_files import study_files

        for facts in study_files(self.out, "runs/*/model.json"):
            try:
                if _data_key(read_saved_config(facts.parent / "config.yaml")) == key:
                    return json.loads(facts.read_text())
            except (OSError, ValueError, TypeError, AttributeError):
                continue  # a run being written, or one of an older layout: another may do
        return None

    @staticmethod
    def _from_data(cfg) -> Optional[dict]:
        from ditlab.tasks.registry import build_train_data

        try:
            return build_train_data(cfg, progress=False).info
        except (OSError, ValueError):  # no data here (a bad path is the trainer's error to report, by name)
            return None


def check_builds(cfg, info: dict) -> None:
    """Build the network of ``cfg`` on the meta device: raises the constructor's ValueError when its options
    refuse each other."""
    from ditlab.tasks.registry import build_model

    with torch.device("meta"):
        build_model(cfg, info)
