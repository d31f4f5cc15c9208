"""Tests of ditlab.configlib: a small local schema for the rules, the real Config for the wiring."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from ditlab import config as ditcfg
from ditlab.configlib import (ConfigError, config_from_dict, diff_configs, format_config,
                              load_config, save_config, to_dict)


@dataclass
class Net:
    hidden_size: int = 64
    dropout: float = 0.0
    norm: bool = False
    act: Literal["gelu", "silu"] = "gelu"
    width: Optional[int] = None


@dataclass
class Opt:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    steps: int = 10
    run_dir: str = "runs/x"


@dataclass
class Cfg:
    net: Net = field(default_factory=Net)
    opt: Opt = field(default_factory=Opt)


def write(path, text):
    path.write_text(text)
    return str(path)


def raises(match_all, fn, *args):
    """Call fn(*args), expect a ConfigError, and check every fragment is in its message."""
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    for frag in match_all:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_defaults_load():
    cfg = load_config(Cfg, None, [])
    assert cfg == Cfg()
    real = ditcfg.load_config()
    assert real == ditcfg.Config()
    assert real.optim.betas == (0.9, 0.999) and real.model.hidden_size is None


def test_file_then_overrides_in_order(tmp_path):
    p = write(tmp_path / "a.yaml", "net:\n  hidden_size: 128\n  act: silu\nopt:\n  lr: 1e-4\n")
    cfg = load_config(Cfg, p, ["net.hidden_size=256", "opt.steps=5", "opt.steps=7"])
    assert cfg.net.hidden_size == 256  # override beats file
    assert cfg.net.act == "silu"  # file beats default
    assert cfg.net.dropout == 0.0  # omitted key: default
    assert cfg.opt.lr == pytest.approx(1e-4) and isinstance(cfg.opt.lr, float)
    assert cfg.opt.steps == 7  # last override wins


def test_override_value_parsing():
    cfg = load_config(Cfg, None, ["opt.lr=1e-4", "net.norm=true", "opt.betas=[0.9, 0.95]",
                                  "net.width=null", "opt.run_dir=runs/exp1", "net.dropout=0"])
    assert cfg.opt.lr == pytest.approx(1e-4)
    assert cfg.net.norm is True
    assert cfg.opt.betas == (0.9, 0.95) and isinstance(cfg.opt.betas, tuple)
    assert cfg.net.width is None
    assert cfg.opt.run_dir == "runs/exp1"
    assert cfg.net.dropout == 0.0 and isinstance(cfg.net.dropout, float)


def test_str_field_keeps_override_text():
    # Documented choice: a CLI value that YAML made a number/bool is kept as typed for str fields.
    cfg = load_config(Cfg, None, ["opt.run_dir=123"])
    assert cfg.opt.run_dir == "123"
    assert load_config(Cfg, None, ["opt.run_dir=1e-4"]).opt.run_dir == "1e-4"


def test_str_field_number_in_file_is_error(tmp_path):
    p = write(tmp_path / "s.yaml", "opt:\n  run_dir: 123\n")
    raises(["opt.run_dir", "expected str", "int 123", "s.yaml"], load_config, Cfg, p, [])


def test_unknown_nested_key_from_file(tmp_path):
    p = write(tmp_path / "typo.yaml", "net:\n  hiden_size: 3\n")
    msg = raises(["unknown key 'net.hiden_size'", "did you mean 'net.hidden_size'"],
                 load_config, Cfg, p, [])
    assert str(tmp_path / "typo.yaml") in msg


def test_unknown_nested_key_from_command_line():
    raises(["unknown key 'model.hiden_size'", "did you mean 'model.hidden_size'",
            "model.hiden_size=8"], ditcfg.load_config, None, ["model.hiden_size=8"])


def test_unknown_section():
    raises(["unknown key 'modle'", "did you mean 'model'"],
           ditcfg.load_config, None, ["modle.depth=2"])
    raises(["unknown key 'xyz'", "valid keys: net, opt"], load_config, Cfg, None, ["xyz.a=1"])


def test_bad_override_syntax():
    raises(["'net.hidden_size'", "expected section.key=value"],
           load_config, Cfg, None, ["net.hidden_size"])
    raises(["'=3'"], load_config, Cfg, None, ["=3"])
    raises(["'net..x=1'"], load_config, Cfg, None, ["net..x=1"])


def test_int_field_rejects_text_bool_and_fraction():
    raises(["model.num_classes", "expected int", "str 'abc'"],
           ditcfg.load_config, None, ["model.num_classes=abc"])
    raises(["net.hidden_size", "expected int", "bool True"],
           load_config, Cfg, None, ["net.hidden_size=true"])
    raises(["net.hidden_size", "expected int", "float 2.5"],
           load_config, Cfg, None, ["net.hidden_size=2.5"])


def test_int_from_integral_float():
    cfg = ditcfg.load_config(None, ["train.steps=1e5"])
    assert cfg.train.steps == 100000 and isinstance(cfg.train.steps, int)


def test_bool_field_rejects_int():
    raises(["model.qk_norm", "expected bool", "int 1"],
           ditcfg.load_config, None, ["model.qk_norm=1"])
    raises(["net.norm", "expected bool"], load_config, Cfg, None, ["net.norm=maybe"])


def test_literal_lists_choices_and_suggests():
    msg = raises(["diffusion.process", "'ddpm'", "'flow'", "did you mean 'flow'"],
                 ditcfg.load_config, None, ["diffusion.process=flw"])
    assert "str 'flw'" in msg


def test_tuple_wrong_length_and_element():
    raises(["optim.betas", "length 3, need 2"],
           ditcfg.load_config, None, ["optim.betas=[0.9, 0.95, 0.99]"])
    raises(["opt.betas[1]", "expected float", "str 'x'"],
           load_config, Cfg, None, ["opt.betas=[0.9, x]"])
    raises(["opt.betas", "expected list of 2"], load_config, Cfg, None, ["opt.betas=0.9"])


def test_optional_null_from_file_and_cli(tmp_path):
    p = write(tmp_path / "n.yaml", "model:\n  hidden_size: 96\n  depth: null\n")
    cfg = ditcfg.load_config(p, [])
    assert cfg.model.hidden_size == 96 and cfg.model.depth is None
    assert ditcfg.load_config(p, ["model.hidden_size=null"]).model.hidden_size is None
    raises(["model.depth", "int or null", "str 'deep'"],
           ditcfg.load_config, p, ["model.depth=deep"])


def test_section_set_to_scalar_is_error(tmp_path):
    raises(["model", "expected a mapping"], ditcfg.load_config, None, ["model=3"])
    p = write(tmp_path / "sec.yaml", "opt: fast\n")
    raises(["opt", "expected a mapping", "sec.yaml"], load_config, Cfg, p, [])


def test_base_inheritance(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", "net:\n  hidden_size: 32\n  act: silu\nopt:\n  steps: 3\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../root.yaml\nnet:\n  hidden_size: 48\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml", "base: mid.yaml\nopt:\n  steps: 9\n")
    cfg = load_config(Cfg, leaf, [])
    assert (cfg.net.hidden_size, cfg.net.act, cfg.opt.steps) == (48, "silu", 9)


def test_base_error_names_the_base_file(tmp_path):
    write(tmp_path / "b.yaml", "net:\n  dropot: 0.1\n")
    child = write(tmp_path / "c.yaml", "base: b.yaml\n")
    msg = raises(["net.dropot", "did you mean 'net.dropout'"], load_config, Cfg, child, [])
    assert str(tmp_path / "b.yaml") in msg


def test_base_cycle(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    raises(["cycle", "a.yaml -> b.yaml -> a.yaml"], load_config, Cfg, a, [])
    s = write(tmp_path / "self.yaml", "base: self.yaml\n")
    raises(["cycle"], load_config, Cfg, s, [])


def test_missing_and_invalid_file(tmp_path):
    raises(["nope.yaml"], load_config, Cfg, str(tmp_path / "nope.yaml"), [])
    bad = write(tmp_path / "bad.yaml", "net: [unclosed\n")
    raises(["invalid YAML", "bad.yaml"], load_config, Cfg, bad, [])
    lst = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    raises(["list.yaml", "mapping"], load_config, Cfg, lst, [])


def test_round_trip_real_config(tmp_path):
    cfg = ditcfg.load_config(None, ["optim.betas=[0.9, 0.95]", "model.hidden_size=96",
                                    "train.run_dir=1e-4", "data.path=on", "optim.lr=3e-4"])
    d = to_dict(cfg)
    assert d["optim"]["betas"] == [0.9, 0.95] and d["data"]["path"] == "on"
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain YAML-serialisable
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(path))
    assert os.listdir(path.parent) == ["config.yaml"]  # no temp file left behind
    back = config_from_dict(ditcfg.Config, yaml.safe_load(path.read_text()))
    assert back == cfg and diff_configs(cfg, back) == {}
    assert ditcfg.load_config(str(path)) == cfg
    assert yaml.safe_load(format_config(cfg)) == yaml.safe_load(path.read_text())


def test_config_from_dict_is_strict():
    raises(["net.hidden_size", "expected int", "run.yaml"],
           config_from_dict, Cfg, {"net": {"hidden_size": "big"}}, "run.yaml")
    raises(["unknown key 'opt.lrr'", "did you mean 'opt.lr'", "<dict>"],
           config_from_dict, Cfg, {"opt": {"lrr": 1.0}})
    assert config_from_dict(Cfg, {"net": {"width": 5}}).net.width == 5


def test_diff_configs():
    a = ditcfg.load_config()
    b = ditcfg.load_config(None, ["optim.lr=2e-4", "model.qk_norm=true", "optim.betas=[0.9, 0.95]"])
    assert diff_configs(a, b) == {"optim.lr": (1e-4, 2e-4), "model.qk_norm": (False, True),
                                  "optim.betas": ([0.9, 0.999], [0.9, 0.95])}
    assert diff_configs(a, a) == {}


def test_format_config_is_yaml():
    text = format_config(Cfg())
    assert yaml.safe_load(text) == {"net": to_dict(Net()), "opt": to_dict(Opt())}
    assert text.index("net:") < text.index("opt:")  # schema order, not sorted
