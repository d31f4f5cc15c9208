"""Issue 7, item 27: config errors follow the same rules from a file and from the command line.

Each bad setting is written once as a ``section.key=value`` override and once as the equivalent
YAML file: both must raise ConfigError with the same message apart from the source it names (the
file path or the override), naming the dotted key and, where one exists, a did-you-mean, including
a key given in the wrong section (``train.lr`` -> ``optim.lr``). A missing key takes its default
from both sides; a missing value (``train.steps=``, ``steps:``) and an override without a key are
errors that name the key or the override. A key repeated in a file is an error (PyYAML alone keeps
the last one silently); repeated overrides are a sequence, the last wins. The one documented
difference (the text of a str field given on the command line is kept as typed) is tested as such.
"""
from __future__ import annotations

import re

import pytest
import yaml

from ditlab import config as ditcfg
from ditlab.cli import main
from ditlab.configlib import ConfigError, _Loader, config_from_dict


def as_yaml(override: str) -> str:
    """``a.b=value`` -> the YAML file that sets the same key (``a:\\n  b: value``)."""
    key, _, value = override.partition("=")
    parts = key.split(".")
    lines = [f"{'  ' * i}{part}:" for i, part in enumerate(parts[:-1])]
    lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}")
    return "\n".join(lines) + "\n"


def error_of(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return str(info.value)


def without_source(msg: str) -> str:
    return re.sub(r" \(in [^()]*(\([^()]*\))?[^()]*\)$", "", msg)


# override -> fragments every message must hold
CASES = {
    "model.hiden_size=8": ["unknown key 'model.hiden_size'", "did you mean 'model.hidden_size'"],
    "modle.depth=2": ["unknown key 'modle'", "did you mean 'model'"],
    "train.lr=1e-3": ["unknown key 'train.lr'", "did you mean 'optim.lr'"],
    "train.warmup_steps=10": ["unknown key 'train.warmup_steps'", "did you mean 'optim.warmup_steps'"],
    "model.seed=1": ["unknown key 'model.seed'", "'train.seed'", "'sample.seed'"],
    "sample.cfg=2": ["unknown key 'sample.cfg'", "valid keys: sample.sampler", "sample.cfg_scale"],
    "train.steps=abc": ["train.steps: expected int, got str 'abc'"],
    "train.steps=2.5": ["train.steps: expected int, got float 2.5"],
    "train.steps=true": ["train.steps: expected int, got bool True"],
    "model.qk_norm=1": ["model.qk_norm: expected bool, got int 1"],
    "optim.lr=fast": ["optim.lr: expected float, got str 'fast'"],
    "diffusion.process=flw": ["diffusion.process: expected one of 'ddpm', 'flow'", "did you mean 'flow'"],
    "train.precision=BF16": ["train.precision: expected one of 'bf16', 'fp16', 'fp32'", "str 'BF16'"],
    "optim.betas=[0.9, 0.95, 0.99]": ["optim.betas", "length 3, need 2"],
    "sample.cfg_interval=[1, x]": ["sample.cfg_interval[1]: expected float, got str 'x'"],
    "data.image_size=32.5": ["data.image_size: expected int or null, got float 32.5"],
    "model=3": ["model: expected a mapping (section), got int 3"],
    "model.arch.size=3": ["model.arch: expected str, got dict"],
}


@pytest.mark.parametrize("override", CASES)
def test_same_error_from_file_and_command_line(tmp_path, override):
    path = tmp_path / "bad.yaml"
    path.write_text(as_yaml(override))
    from_cli = error_of(ditcfg.load_config, None, [override])
    from_file = error_of(ditcfg.load_config, str(path))
    for fragment in CASES[override]:
        assert fragment in from_cli, (fragment, from_cli)
    assert from_cli.endswith(f"(in override {override!r})")
    assert from_file.endswith(f"(in {path})")
    assert without_source(from_cli) == without_source(from_file)


@pytest.mark.parametrize("override", ["model.hiden_size=8", "train.lr=1e-3", "train.steps=abc"])
def test_same_error_from_a_saved_run_config(override):
    """A saved RUN/config.yaml is read back (resume, sampling) with the same checks."""
    key, _, value = override.partition("=")
    section, name = key.split(".")
    parsed = {"8": 8, "1e-3": 1e-3}.get(value, value)
    msg = error_of(config_from_dict, ditcfg.Config, {section: {name: parsed}}, "runs/x/config.yaml")
    assert without_source(msg) == without_source(error_of(ditcfg.load_config, None, [override]))
    assert msg.endswith("(in runs/x/config.yaml)")


def test_missing_keys_take_the_defaults_from_both_sides(tmp_path):
    """A key left out is the default, whether the file or the command line leaves it out; the values
    that are given mean the same from both."""
    overrides = ["model.hidden_size=96", "optim.lr=3e-4", "optim.betas=[0.9, 0.95]", "data.image_size=null",
                 "diffusion.process=flow", "train.compile=true"]
    sections: dict[str, list[str]] = {}
    for o in overrides:  # one YAML section per config section: a repeated section is an error
        key, _, value = o.partition("=")
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"  {name}: {value}")
    path = tmp_path / "same.yaml"
    path.write_text("".join(f"{section}:\n" + "\n".join(lines) + "\n" for section, lines in sections.items()))
    from_file, from_cli = ditcfg.load_config(str(path)), ditcfg.load_config(None, overrides)
    assert from_file == from_cli
    assert from_file.model.depth is None and from_file.train.steps == ditcfg.TrainConfig().steps


@pytest.mark.parametrize("override,given", [("train.steps=", "str ''"), ("train.steps=null", "null")])
def test_missing_value_is_an_error_naming_the_key(tmp_path, override, given):
    assert f"train.steps: expected int, got {given}" in error_of(ditcfg.load_config, None, [override])
    path = tmp_path / "empty_value.yaml"
    path.write_text("train:\n  steps:\n")  # YAML reads an empty value as null
    msg = error_of(ditcfg.load_config, str(path))
    assert "train.steps: expected int, got null" in msg and str(path) in msg


@pytest.mark.parametrize("override", ["=5", "train.=5", ".steps=5", "train.steps", "train..steps=5"])
def test_override_without_a_key_names_the_override(override):
    msg = error_of(ditcfg.load_config, None, [override])
    assert repr(override) in msg and "expected section.key=value" in msg


def test_empty_section_in_a_file_names_the_section(tmp_path):
    path = tmp_path / "empty_section.yaml"
    path.write_text("train:\n  # steps: 10\n")
    msg = error_of(ditcfg.load_config, str(path))
    assert "train: expected a mapping (section), got null" in msg and str(path) in msg


@pytest.mark.parametrize("text,key,lines", [
    ("optim:\n  lr: 3.0e-4\ntrain:\n  steps: 10\noptim:\n  betas: [0.9, 0.95]\n", "optim", (1, 5)),
    ("train:\n  steps: 10\n  steps: 20\n", "steps", (2, 3)),
])
def test_repeated_key_in_a_file_is_an_error_not_a_silent_replacement(tmp_path, text, key, lines):
    """PyYAML alone keeps the last of two keys: the second optim section would drop optim.lr."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    msg = error_of(ditcfg.load_config, str(path))
    assert f"duplicate key {key!r} (first at line {lines[0]})" in msg and f"line {lines[1]}" in msg
    assert str(path) in msg


def test_merge_keys_may_still_be_overridden():
    """Only a mapping's own keys must be unique: an explicit key beats a ``<<`` merged one, as YAML intends."""
    data = yaml.load("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n", Loader=_Loader)
    assert data["d"] == {"b": 3, "c": 2}


def test_the_documented_difference_str_fields_keep_command_line_text(tmp_path):
    """train.run_dir=123 is the text '123' on the command line; a file must quote it."""
    assert ditcfg.load_config(None, ["train.run_dir=123"]).train.run_dir == "123"
    path = tmp_path / "number.yaml"
    path.write_text(as_yaml("train.run_dir=123"))
    assert "quote it in YAML" in error_of(ditcfg.load_config, str(path))


def test_cli_reports_a_file_error_with_the_file_and_the_suggestion(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(as_yaml("train.lr=1e-3"))
    assert main(["config", "show", str(path)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'train.lr'" in err and "did you mean 'optim.lr'" in err and str(path) in err


# ---- an option that does not apply is an error, never silently ignored --------------------------------------
@pytest.mark.parametrize("overrides, fragments, fixed", [
    (["ema.posthoc_every=100"], ["ema.posthoc_every=100 applies to post-hoc EMA", "ema.posthoc_sigma_rels is empty"],
     ["ema.posthoc_every=100", "ema.posthoc_sigma_rels=[0.05, 0.1]"]),
    (["optim.min_lr_ratio=0.1"], ["optim.min_lr_ratio=0.1 applies to optim.decay=cosine or linear",
                                  "optim.decay=constant"],
     ["optim.min_lr_ratio=0.1", "optim.decay=cosine"]),
    (["train.init_weights=model"], ["train.init_weights=model applies to two-stage training", "train.init_from=RUN"],
     ["train.init_weights=model", "train.init_from=runs/unconditional"]),
    (["model.label_dropout=0.2"], ["model.label_dropout=0.2 drops the class label", "(model.num_classes=0)"],
     ["model.label_dropout=0.2", "model.num_classes=10"]),
])
def test_an_option_its_switch_leaves_unread_is_an_error(tmp_path, overrides, fragments, fixed):
    """From the command line and from a file alike; with its feature on, the same value loads."""
    msg = error_of(ditcfg.load_config, None, overrides)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    path = tmp_path / "unread.yaml"
    path.write_text("".join(as_yaml(o) for o in overrides))
    assert without_source(error_of(ditcfg.load_config, str(path))) == without_source(msg)
    ditcfg.load_config(None, fixed)
    # at their defaults the keys are never an error, whatever the switch
    ditcfg.load_config(None, ["ema.posthoc_every=0", "optim.min_lr_ratio=0.0", "optim.decay=constant",
                              "train.init_weights=ema", "model.label_dropout=0.1"])
