"""The ablation file read by ``ditlab ablate``: a base config, a budget, sample settings and variants.

::

    config: ../cifar10_lift.yaml         # preset every variant starts from (relative to this file)
    overrides: [data.hflip=true]         # applied to every variant, before the variant's own
    seeds: [0]                           # training seeds; every variant trains once per seed
    budget: {steps: 1000000, time_limit: 75}   # train.steps and train.time_limit of every run
    sample: {num: 2000, seed: 1, sampler: heun, steps: 20, batch_size: 1000, cfg_scale: 1.0}
    errors: {grid: 12, num: 256, batch_size: 256}   # the per-node error grid of the dp-* paths
    variants:
      baseline: {overrides: [task.kind=image], paths: [default], note: "single scale"}
      lift:     {overrides: [task.kind=lift], paths: [diagonal, dp-hi]}
      small:    {overrides: [task.kind=image, data.image_size=16], paths: [default]}
      casc:     {overrides: [task.kind=lift], paths: [cascade], lo_variant: small}

Unknown keys are errors naming the key. Paths: "default" for single-scale kinds (the task's own
grid), any ditlab.tasks.lift.paths name for task.kind=lift (default [diagonal]). The ``cascade``
path needs ``lo_variant``: the variant (task.kind=image, at the LIFT image size / task.factor) whose
run of the same training seed generates the low resolution; the runner trains it first.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ditlab.configlib import ConfigError


@dataclass
class Budget:
    steps: int = 1_000_000
    time_limit: float = 0.0  # seconds of training per run (0: steps only)


@dataclass
class SampleSpec:
    num: int = 2000
    seed: int = 1
    sampler: str = "heun"
    steps: int = 20
    batch_size: int = 1000
    cfg_scale: float = 1.0


@dataclass
class ErrorsSpec:
    grid: int = 12
    num: int = 256
    batch_size: int = 256
    seed: int = 0


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    note: str = ""
    lo_variant: str = ""  # the variant whose run supplies the low resolution of the cascade path


@dataclass
class AblationSpec:
    source: Path
    config: str
    overrides: list[str]
    seeds: list[int]
    budget: Budget
    sample: SampleSpec
    errors: ErrorsSpec
    variants: list[Variant]


def _section(cls, data, key: str, source: Path):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{key} must be a mapping (in {source})")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]} (in {source}); valid: {', '.join(sorted(names))}")
    out = cls()
    for k, v in data.items():
        default = getattr(out, k)
        try:
            v = type(default)(v) if not isinstance(default, bool) else bool(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{k} must be a {type(default).__name__}, got {v!r} (in {source})") from None
        setattr(out, k, v)
    return out


def _str_list(v, key: str, source: Path) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
        raise ConfigError(f"{key} must be a list of strings (in {source})")
    return [str(x) for x in v]


def load_ablation(path) -> AblationSpec:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"ablation file {source} not found")
    data = yaml.safe_load(source.read_text()) or {}
    top = {"config", "overrides", "seeds", "budget", "sample", "errors", "variants"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {source}; valid: {', '.join(sorted(top))}")
    if "config" not in data:
        raise ConfigError(f"{source} needs `config:` (the preset every variant starts from)")
    config = str((source.parent / data["config"]).resolve()) if not Path(data["config"]).is_absolute() else data["config"]
    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError(f"{source} needs `variants:`, a mapping of name -> {{overrides, paths, note}}")
    variants = []
    for name, v in variants_raw.items():
        v = v or {}
        bad = sorted(set(v) - {"overrides", "paths", "note", "lo_variant"})
        if bad:
            raise ConfigError(f"unknown key variants.{name}.{bad[0]} in {source}; valid: lo_variant, note, overrides, "
                              "paths")
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"variant name {name!r} in {source}: use letters, digits, '-' and '_' (it names folders)")
        variants.append(Variant(str(name), _str_list(v.get("overrides"), f"variants.{name}.overrides", source),
                                _str_list(v.get("paths"), f"variants.{name}.paths", source), str(v.get("note", "")),
                                str(v.get("lo_variant") or "")))
    names = [v.name for v in variants]
    for v in variants:
        if v.lo_variant and (v.lo_variant not in names or v.lo_variant == v.name):
            raise ConfigError(f"variants.{v.name}.lo_variant: {v.lo_variant!r} is not another variant of {source} "
                              f"(variants: {', '.join(names)})")
        if bool(v.lo_variant) != ("cascade" in v.paths):
            raise ConfigError(f"variants.{v.name}: the cascade path and lo_variant go together (lo_variant names the "
                              f"variant whose run generates the cascade's low resolution) in {source}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers (in {source})")
    return AblationSpec(source, config, _str_list(data.get("overrides"), "overrides", source), seeds,
                        _section(Budget, data.get("budget"), "budget", source),
                        _section(SampleSpec, data.get("sample"), "sample", source),
                        _section(ErrorsSpec, data.get("errors"), "errors", source), variants)
