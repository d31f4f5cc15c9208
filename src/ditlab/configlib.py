"""Typed, strict configuration from nested dataclasses, YAML presets and ``a.b=value`` overrides.

Generic: it knows nothing of ditlab's sections, only of the dataclass schema it is handed. A typo in
a config silently falls back to a default and wastes a training run, so every unknown key and
every wrong type is an error that names the dotted key, where it came from (file or override) and,
when it can, a did-you-mean: the same key in another section (``train.lr`` -> ``optim.lr``), else the
closest valid spelling. Files and overrides go through the same checks and messages.

Decisions worth knowing:

* YAML is read with a loader that also takes ``1e-4`` / ``1e5`` as floats (PyYAML's YAML 1.1
  rules read them as strings); the dumper quotes strings that would read back as numbers.
* A command-line value is parsed as YAML, but when the field takes a string (a ``str`` field, or a
  ``Literal`` that lists the text) and YAML made it a number, bool or date, the text as typed is
  kept: ``train.run_dir=123`` is ``"123"`` and ``x=1e-4`` stays ``"1e-4"`` (not ``str(0.0001)``).
  Files get no such leniency. An empty value (``data.path=``) is the empty string; use ``null``.
* A key repeated in one mapping of a file (two ``train:`` sections, ``lr`` twice) is an error with
  both line numbers; PyYAML alone would keep the last one silently. Repeated overrides are a
  sequence: the last one wins.
* ``base`` is reserved at the top level of a file: ``base: other.yaml`` (relative to the file)
  is applied first, recursively. All schema fields must have defaults.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "load_config", "config_from_dict", "to_dict", "save_config",
           "diff_configs", "format_config"]

_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as every user expects."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper with the same float rule, so the string ``"1e-4"`` is written quoted."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_unique_mapping(loader: _Loader, node: yaml.MappingNode):
    """A mapping whose own keys are unique. PyYAML keeps the last of repeated keys without a word,
    so a second ``train:`` section would silently drop every key of the first one. Keys merged in
    with ``<<`` may be overridden, as YAML intends. A generator, like PyYAML's own constructor, so
    that aliases to an enclosing mapping still resolve."""
    first_line: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            seen = key in first_line
        except TypeError:  # an unhashable key: SafeLoader's own error names it below
            continue
        if seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first_line[key] + 1}); the second "
                "would silently replace the first", key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    data: dict = {}
    yield data
    data.update(loader.construct_mapping(node))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                 flow_style=True))


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key and its source."""


class _Cli:
    """An override value: the YAML-parsed value plus the raw text (see the module docstring)."""

    def __init__(self, raw: str):
        self.raw = raw
        try:
            self.value = "" if raw == "" else yaml.load(raw, Loader=_Loader)
        except yaml.YAMLError:
            self.value = raw  # not valid YAML (e.g. "a: b: c"): the text itself

    def __repr__(self) -> str:
        return self.raw


def _where(source: str) -> str:
    return f" (in {source})" if source else ""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Field types of a dataclass, resolved (the schema may use ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _tname(tp: Any) -> str:
    """A readable name of a type for messages: ``int or null``, ``one of 'a', 'b'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _tname(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_tname(args[0])}"
        return f"list of {len(args)} ({', '.join(_tname(a) for a in args)})"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _got(v: Any) -> str:
    return "null" if v is None else f"{type(v).__name__} {v!r}"


def _takes_text(tp: Any, raw: str) -> bool:
    """Whether the raw override text is itself a valid value of ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_takes_text(a, raw) for a in args)
    return tp is str or (origin is Literal and raw in args)


def _coerce(tp: Any, v: Any, key: str, source: str, current: Any = None, root: Any = None) -> Any:
    """Check ``v`` against ``tp`` and return the value to store; raise ConfigError if it is wrong.
    ``root`` is the top-level schema, searched for a key given in the wrong section."""
    if isinstance(v, _Cli):  # the parsed value first; failing that, the text as typed
        try:
            return _coerce(tp, v.value, key, source, current, root)
        except ConfigError:
            if isinstance(v.value, (type(None), str, Mapping, list)) or not _takes_text(tp, v.raw):
                raise
            v = v.raw
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(f"{key}: expected {_tname(tp)}, got {_got(v)}{extra}{_where(source)}")

    if dataclasses.is_dataclass(tp):
        if not isinstance(v, Mapping):
            raise bad()
        obj = current if dataclasses.is_dataclass(current) else tp()
        _apply(obj, v, key + ".", source, root)
        return obj
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            try:
                return _coerce(a, v, key, source, current, root)
            except ConfigError as e:
                if len(options) == 1 and not str(e).startswith(f"{key}: expected"):
                    raise  # a nested error (an element, a section's key) says more
        raise bad()
    if origin is Literal:
        if any(v == c and type(v) is type(c) for c in args):
            return v
        close = difflib.get_close_matches(str(v), [str(c) for c in args], n=1)
        raise bad(f" — did you mean {close[0]!r}?" if close else "")
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise bad()
        elems = [args[0]] * len(v) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(v) != len(elems):
            raise bad(f" (length {len(v)}, need {len(elems)})")
        return tuple(_coerce(t, x, f"{key}[{i}]", source) for i, (t, x) in enumerate(zip(elems, v)))
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int and number and (isinstance(v, int) or v.is_integer()):
        return int(v)  # 1e5 -> 100000; 2.5 is refused
    if tp is float and number:
        return float(v)
    if tp is str and isinstance(v, (int, float, datetime.date)):
        raise bad(" (quote it in YAML)")
    if tp in (int, float) or not (tp is Any or not isinstance(tp, type) or isinstance(v, tp)):
        raise bad()  # bool is strict by isinstance: 0/1 and "yes" (a str) are refused
    return v


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dataclass schema that holds a value, in schema order."""
    paths: list[str] = []
    for name, tp in _hints(cls).items():
        if dataclasses.is_dataclass(tp):
            paths.extend(_leaf_paths(tp, f"{prefix}{name}."))
        else:
            paths.append(prefix + name)
    return paths


def _unknown_key_hint(name: str, hints: dict, prefix: str, root: Any) -> str:
    """The did-you-mean of an unknown key. A key of the same name in another section comes first
    (``train.lr`` -> ``optim.lr``: the usual slip, which a spelling match inside ``train`` would
    answer with an unrelated key), then a close spelling in this section, else the valid keys."""
    elsewhere = [p for p in _leaf_paths(root) if p.rsplit(".", 1)[-1] == name] if root is not None else []
    if elsewhere:
        return " — did you mean " + " or ".join(repr(p) for p in elsewhere) + "?"
    close = difflib.get_close_matches(name, list(hints), n=1)
    if close:
        return f" — did you mean {prefix + close[0]!r}?"
    return f" — valid keys: {', '.join(prefix + h for h in hints)}"


def _apply(obj: Any, data: Mapping, prefix: str, source: str, root: Any = None) -> None:
    """Set the fields of dataclass instance ``obj`` from ``data`` (nested mappings recurse).
    ``root``: the top-level schema (default: ``obj``'s own class, for a top-level call)."""
    root = type(obj) if root is None else root
    hints = _hints(type(obj))
    for k, v in data.items():
        key = prefix + str(k)
        if k not in hints:
            raise ConfigError(f"unknown key {key!r}{_unknown_key_hint(str(k), hints, prefix, root)}{_where(source)}")
        setattr(obj, k, _coerce(hints[k], v, key, source, getattr(obj, k), root))


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _apply_file(obj: Any, path: str, chain: tuple[str, ...] = ()) -> None:
    """Apply ``path`` to ``obj``, its ``base:`` preset first; ``chain`` detects cycles."""
    real = os.path.realpath(path)
    if real in chain:
        names = [os.path.basename(p) for p in chain + (real,)]
        raise ConfigError(f"cycle of 'base:' presets: {' -> '.join(names)} (in {path})")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"base: expected str (a file name), got {_got(base)} (in {path})")
        _apply_file(obj, os.path.join(os.path.dirname(path), base), chain + (real,))
    _apply(obj, data, "", path)


def _parse_override(arg: str) -> dict:
    """``a.b=value`` -> ``{"a": {"b": _Cli("value")}}``."""
    key, eq, raw = arg.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(parts):
        raise ConfigError(f"bad override {arg!r}: expected section.key=value")
    out: Any = _Cli(raw)
    for part in reversed(parts):
        out = {part: out}
    return out


def load_config(cls: type, path: str | None = None, overrides: typing.Iterable[str] = ()) -> Any:
    """Defaults of ``cls``, then the YAML preset ``path`` (with its ``base:`` chain), then the
    ``a.b=value`` overrides in order; the last one to set a key wins."""
    obj = cls()
    if path is not None:
        _apply_file(obj, str(path))
    for arg in overrides or ():
        _apply(obj, _parse_override(arg), "", f"override {arg!r}")
    return obj


def config_from_dict(cls: type, data: Mapping, source: str = "<dict>") -> Any:
    """Rebuild a config (e.g. a saved run's) with the same checks; missing keys take defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of sections, got {type(data).__name__}{_where(source)}")
    obj = cls()
    _apply(obj, data, "", source)
    return obj


def to_dict(instance: Any) -> dict:
    """Plain nested dict of YAML-native values (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(instance)


def format_config(instance: Any) -> str:
    """YAML text of a config, in schema order (for ``ditlab config show`` and saved runs)."""
    return yaml.dump(to_dict(instance), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(instance: Any, path: str) -> None:
    """Write the config as YAML atomically: a crash never leaves a half-written config.yaml."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(format_config(instance))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def diff_configs(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ, as ``{key: (a's value, b's value)}``; a key present on
    one side only has None on the other. Accepts config instances or plain dicts."""
    fa, fb = (_flatten(x if isinstance(x, Mapping) else to_dict(x)) for x in (a, b))
    return {k: (fa.get(k), fb.get(k)) for k in {**fa, **fb} if fa.get(k) != fb.get(k)}
