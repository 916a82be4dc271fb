"""Config files and ``--set`` overrides for the studies' frozen dataclass configs.

A study's configs are code (``jaxmouse.studies.cadena2019.QUICK``, ...); a user changes one
without editing the package:

- a TOML file names fields to replace in a base config::

    base = "quick"              # the config this file changes ("quick", "full", or "none")
    name = "deeper"             # default: the file's name
    layers = ["conv3_3", "conv4_3", "conv5_3"]

    [fit]                       # replaces max_steps and lr, keeps the base's other fit keys
    max_steps = 2000
    lr = 0.005

- ``--set KEY=VALUE`` replaces one key; dots reach into tables (``fit.max_steps=2000``,
  ``grids.ridge.alpha=[0.1,1,10]``); VALUE is read as a TOML value (``2000``, ``1e-3``, ``true``,
  ``["a", "b"]``) and otherwise taken as a string (``trained=weights/mine``); a comma-separated
  string fills a tuple (``layers=conv2_2,conv3_3``), and ``none`` sets a field that may be None.

Every key is checked against the dataclass it names (tables such as ``fit`` against the dataclass
their entries are passed to, ``FitConfig``); an unknown key is refused with the valid ones, and
every value is converted to its field's type or refused naming the key. In a file, a table
changes only the entries it names (the base's others stay); on the command line a dotted key
changes one entry and ``KEY={...}`` replaces the whole table (``readout_layers={}`` empties
it). ``base = "none"`` starts from the dataclass's defaults with every table empty, which is how
``to_toml`` writes a complete config that reads back as the same config.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

_NoneType = type(None)


@dataclasses.dataclass(frozen=True)
class Schema:
  """How the overridable keys of a config dataclass are checked.

  ``cls``: the config dataclass. ``tables``: per mapping field, the dataclass whose fields are its
  valid keys (e.g. ``{"fit": FitConfig}``), or a ``Schema`` for a mapping of such tables keyed by
  a free name (e.g. ``per_format``: format -> fields of ``cls`` itself, given as ``"self"``).
  Mapping fields not named here take any keys (``grids``, ``area_ranks``); their values are
  checked by the config itself.
  """
  cls: type
  tables: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def fields(self) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(self.cls)}

  def table(self, name: str):
    t = self.tables.get(name)
    return self.cls if t == "self" else t


# ---- values ------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
  """A ``--set`` value: a TOML value (``2000``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), else the
  text itself as a string."""
  text = text.strip()
  try:
    return tomllib.loads(f"v = {text}")["v"]
  except tomllib.TOMLDecodeError:
    return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
  """``["fit.max_steps=2000", ...]`` -> ``{"fit.max_steps": 2000, ...}`` (later items win)."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--set expects KEY=VALUE such as fit.max_steps=2000, got {item!r}")
    out[key.strip()] = parse_value(value)
  return out


def _is_union(hint) -> bool:
  return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _deep_tuple(value):
  if isinstance(value, (list, tuple)):
    return tuple(_deep_tuple(v) for v in value)
  if isinstance(value, dict):
    return {k: _deep_tuple(v) for k, v in value.items()}
  return value


def _split(value):
  """A comma-separated string as a list of its items (a tuple field given on the command line)."""
  return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value


def coerce(value, hint, *, key: str):
  """``value`` converted to the type ``hint`` (of the field ``key``); a ValueError names the key,
  the type expected and the value."""
  def bad(expected):
    return ValueError(f"config key {key!r}: expected {expected}, got {value!r}")

  if hint is Any or hint is object or hint is None:
    return _deep_tuple(value)
  if _is_union(hint):
    args = typing.get_args(hint)
    if _NoneType in args and (value is None or (isinstance(value, str)
                                                 and value.lower() == "none")):
      return None
    options = [a for a in args if a is not _NoneType]
    # Try the option that matches the value's shape first: a list fills a tuple, a scalar not.
    seq = isinstance(value, (list, tuple))
    options.sort(key=lambda a: (typing.get_origin(a) in (tuple, list)) != seq)
    errors = []
    for option in options:
      try:
        return coerce(value, option, key=key)
      except ValueError as e:
        errors.append(e)
    raise bad(" or ".join(_type_name(a) for a in args))
  origin = typing.get_origin(hint)
  if hint is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    raise bad("true or false")
  if hint is int:
    if isinstance(value, bool):
      raise bad("an integer")
    if isinstance(value, int):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      try:
        return int(value)
      except ValueError:
        pass
    raise bad("an integer")
  if hint is float:
    if isinstance(value, bool):
      raise bad("a number")
    if isinstance(value, (int, float)):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
    raise bad("a number")
  if hint is str:
    if isinstance(value, str):
      return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return str(value)
    raise bad("a string")
  if origin is tuple or hint is tuple:
    args = typing.get_args(hint)
    value = _split(value)
    if not isinstance(value, (list, tuple)):
      value = [value]
    if not args:
      return _deep_tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(coerce(v, args[0], key=key) for v in value)
    if len(value) != len(args):
      raise bad(f"{len(args)} values ({_type_name(hint)})")
    return tuple(coerce(v, a, key=key) for v, a in zip(value, args))
  if _is_mapping(hint):
    if not isinstance(value, Mapping):
      raise bad("a table (TOML {...})")
    args = typing.get_args(hint)
    vhint = args[1] if len(args) == 2 else Any
    return {str(k): coerce(v, vhint, key=f"{key}.{k}") for k, v in value.items()}
  return value


def _type_name(hint) -> str:
  if hint is _NoneType:
    return "none"
  if isinstance(hint, type) and not typing.get_args(hint):
    return {"str": "a string", "int": "an integer", "float": "a number",
            "bool": "true or false"}.get(hint.__name__, hint.__name__)
  return str(hint).replace("typing.", "")


# ---- applying changes ----------------------------------------------------------------------------

def _hints(cls) -> dict[str, Any]:
  import sys

  module = sys.modules[cls.__module__]
  return typing.get_type_hints(cls, vars(module))


def valid_keys(schema: Schema) -> list[str]:
  """Every key a change may name, tables as ``table.<key>``: what an unknown key is told."""
  out = []
  for name in schema.fields():
    table, spec = schema.table(name), schema.tables.get(name)
    if isinstance(spec, Schema) or spec == "self":
      out.append(f"{name}.<name>.<field>")
    elif dataclasses.is_dataclass(table):
      out.append(f"{name}.<{table.__name__} field>")
    else:
      out.append(name)
  return out


def _unknown(key: str, where: str, valid: Sequence[str]) -> ValueError:
  return ValueError(f"unknown config key {key!r}; valid keys{where}: {', '.join(valid)}")


def _set_in(d: dict, path: Sequence[str], value) -> dict:
  """A copy of nested dict ``d`` with ``value`` at ``path``."""
  d = dict(d)
  if len(path) == 1:
    d[path[0]] = value
  else:
    inner = d.get(path[0], {})
    d[path[0]] = _set_in(dict(inner) if isinstance(inner, Mapping) else {}, path[1:], value)
  return d


def apply(config, changes: Mapping[str, Any], schema: Schema, *, source: str = "--set",
          merge: bool = False):
  """``config`` with each dotted key of ``changes`` replaced (checked against ``schema``).

  A table given whole (``fit = {...}``) replaces the field, or with ``merge`` (config files)
  changes only the entries it names. Values are converted to the fields' types; the result is
  built with ``dataclasses.replace``, so the config's own checks run on it. Every error is one
  ValueError that starts with ``source`` (where the changes came from: ``--set``, a file).
  """
  if not changes:
    return config
  try:
    return dataclasses.replace(config, **_changed_fields(config, changes, schema, merge=merge))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: {e}") from None


def _changed_fields(config, changes: Mapping[str, Any], schema: Schema, *,
                    merge: bool) -> dict[str, Any]:
  fields = schema.fields()
  hints = _hints(schema.cls)
  new: dict[str, Any] = {}
  for full, value in changes.items():
    field = full.split(".")[0]
    if field not in fields or not fields[field].init:
      raise _unknown(full, "", valid_keys(schema))
    if "." in full:
      new = _merge_one(new, config, schema, full, value)
    elif _is_mapping(hints[field]) and isinstance(value, Mapping):
      # Each key of the table is checked (and merged) like a dotted key.
      if not merge:
        new[field] = {}
      for k, v in _flatten(value, field, schema).items():
        new = _merge_one(new, config, schema, k, v)
    else:
      new[field] = coerce(value, hints[field], key=full)
  return new


def _is_mapping(hint) -> bool:
  return (typing.get_origin(hint) in (dict, collections.abc.Mapping)
          or hint in (dict, Mapping, collections.abc.Mapping))


def _merge_one(new: dict, config, schema: Schema, full: str, value) -> dict:
  """``new`` (the fields changed so far) with the dotted key ``full`` set inside its table."""
  field, *rest = full.split(".")
  hints = _hints(schema.cls)
  table, spec = schema.table(field), schema.tables.get(field)
  keyed = spec == "self" or isinstance(spec, Schema)
  if dataclasses.is_dataclass(table) and not keyed:  # e.g. fit.<FitConfig field>
    names = [f.name for f in dataclasses.fields(table)]
    if rest[0] not in names:
      raise _unknown(full, f" under {field!r}", names)
    if len(rest) > 1:
      raise ValueError(f"config key {full!r}: {field}.{rest[0]} is not a table")
    value = coerce(value, _hints(table)[rest[0]], key=full)
  elif keyed:  # e.g. per_format.<format>.<field>
    inner = schema if spec == "self" else spec
    if len(rest) != 2:
      raise ValueError(f"config key {full!r}: expected {field}.<name>.<field>")
    if rest[1] not in inner.fields():
      raise _unknown(full, f" under {field}.{rest[0]}", list(inner.fields()))
    value = coerce(value, _hints(inner.cls)[rest[1]], key=full)
  else:  # a table with free keys (grids, area_ranks): entries typed by the annotation
    hint = hints[field]
    for _ in rest:
      if not _is_mapping(hint):
        raise ValueError(f"config key {full!r}: {field} is not a table")
      args = typing.get_args(hint)
      hint = args[1] if len(args) == 2 else Any
    value = coerce(value, hint, key=full)
  current = new.get(field, getattr(config, field))
  new = dict(new)
  new[field] = _set_in(_plain(current) if isinstance(current, Mapping) else {}, rest, value)
  return new


def _plain(d):
  if isinstance(d, Mapping):
    return {k: _plain(v) for k, v in d.items()}
  return d


def _flatten(table: Mapping, prefix: str, schema: Schema) -> dict[str, Any]:
  """A TOML table under ``prefix`` as dotted keys, down to the schema's leaves: one level for a
  dataclass table (``fit.lr``), two for a keyed table of fields (``per_format.allen.areas``),
  every level for a free table (``grids.ridge.alpha``)."""
  field = prefix.split(".")[0]
  spec = schema.tables.get(field)
  levels = (2 if spec == "self" or isinstance(spec, Schema) else
            1 if dataclasses.is_dataclass(schema.table(field)) else None)
  depth = prefix.count(".") + 1  # levels below the field of an entry of this table
  out = {}
  for k, v in table.items():
    key = f"{prefix}.{k}"
    if isinstance(v, Mapping) and (levels is None or depth < levels):
      out.update(_flatten(v, key, schema))
    else:
      out[key] = v
  return out


def read_toml(path: str | Path) -> dict[str, Any]:
  """The tables of a TOML config file; a syntax error names the file and the line."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} not found")
  try:
    with open(path, "rb") as f:
      return tomllib.load(f)
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"{path}: not a valid TOML config ({e})") from None


def from_toml(path: str | Path, *, configs: Mapping[str, Any], schema: Schema,
              default_base: str):
  """The config a TOML file describes: its ``base`` (a name in ``configs``, or ``"none"``) with
  every other key of the file replaced; ``name`` defaults to the file's stem."""
  path = Path(path)
  doc = read_toml(path)
  base = doc.pop("base", default_base)
  if base == "none":
    start = empty(schema, name=path.stem)
  elif base in configs:
    start = dataclasses.replace(configs[base], name=path.stem)
  else:
    raise ValueError(f"{path}: base {base!r} is not a config; available: "
                     f"{', '.join([*configs, 'none'])}")
  return apply(start, doc, schema, source=str(path), merge=True)


def empty(schema: Schema, **fields):
  """The dataclass with its defaults and every table (mapping field) empty."""
  out = {}
  for f in dataclasses.fields(schema.cls):
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      value = f.default_factory()
      if isinstance(value, Mapping):
        out[f.name] = {}
  out.update(fields)
  return schema.cls(**out)


# ---- writing -------------------------------------------------------------------------------------

def _toml_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if math.isnan(v):
      return "nan"
    if math.isinf(v):
      return "inf" if v > 0 else "-inf"
    return repr(v)
  if isinstance(v, str):
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
  if v is None:
    return '"none"'
  if isinstance(v, (list, tuple)):
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"
  if isinstance(v, Mapping):
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
  raise ValueError(f"cannot write {v!r} as TOML")


def _toml_key(k) -> str:
  k = str(k)
  return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def to_toml(config, *, header: str = "") -> str:
  """A complete config as TOML (``base = "none"``: every field written), which ``from_toml``
  reads back as the same config. None is written as ``"none"``."""
  data = dataclasses.asdict(config)
  lines = [f"# {line}" if line else "#" for line in header.splitlines()]
  lines += ['base = "none"']
  tables = []
  for k, v in data.items():
    if isinstance(v, Mapping):
      tables.append((k, v))
    else:
      lines.append(f"{_toml_key(k)} = {_toml_value(v)}")

  def table(prefix, d):
    scalars = {k: v for k, v in d.items() if not isinstance(v, Mapping)}
    nested = {k: v for k, v in d.items() if isinstance(v, Mapping)}
    if scalars or not nested:
      lines.extend(["", f"[{prefix}]"])
      lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
    for k, v in nested.items():
      table(f"{prefix}.{_toml_key(k)}", v)

  for k, v in tables:
    table(_toml_key(k), v)
  return "\n".join(lines) + "\n"
