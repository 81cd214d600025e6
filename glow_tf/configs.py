"""Config dataclasses whose fields are declared once: default, help, choices, bounds.

Every config of glow_tf (`GlowConfig`, `TrainConfig`, ...) is a frozen dataclass
whose fields come from `option(...)`. What a field may hold is said there, once;
from it derive the check in `validate`, the command-line flags (`glow_tf.cli`),
and the dictionaries of `to_dict` / `from_dict` (nested configs included).
"""

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from glow_tf.errors import ConfigError

__all__ = ['INT32', 'expected', 'from_dict', 'option', 'options', 'to_dict', 'validate']

INT32 = (-(2**31), 2**31 - 1)  # Seeds reach TensorFlow's stateless ops as int32.


def option(
  default: Any,
  help: str,  # noqa: A002 (the word every flag library uses)
  *,
  choices: Sequence[Any] | None = None,
  minimum: float | None = None,
  maximum: float | None = None,
  above: float | None = None,
  below: float | None = None,
  check: Callable[[Any], bool] | None = None,
  expected: str | None = None,
  identity: bool = False,
) -> Any:
  """A dataclass field with what it means and what it may hold.

  Args:
    default: the default value (an immutable one: configs are frozen).
    help: one line for `--help`.
    choices: the values allowed.
    minimum, maximum: inclusive bounds; `above`, `below`: exclusive ones.
    check: any other rule, `check(value) -> bool`, described by `expected`.
    expected: the rule in words, for a `check` (the others describe themselves).
    identity: the field defines what a run directory holds (model and data); a
      run keeps it for ever.
  """
  metadata = dict(
    help=help,
    choices=tuple(choices) if choices is not None else None,
    minimum=minimum,
    maximum=maximum,
    above=above,
    below=below,
    check=check,
    expected=expected,
    identity=identity,
  )
  if dataclasses.is_dataclass(default):
    return dataclasses.field(default_factory=lambda: default, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def options(config_class) -> list[dataclasses.Field]:
  """The fields of a config class, in declaration order."""
  return list(dataclasses.fields(config_class))


def field_type(config_class, name: str):
  """The type of a field, without `| None`: `int`, `str`, `tuple[float, ...]`, a config class."""
  hint = typing.get_type_hints(config_class)[name]
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(t for t in typing.get_args(hint) if t is not type(None))
  return hint


def optional(config_class, name: str) -> bool:
  """Whether the field may hold None."""
  hint = typing.get_type_hints(config_class)[name]
  return type(None) in typing.get_args(hint)


def expected(f: dataclasses.Field) -> str | None:
  """The rule of field `f` in words, e.g. 'in 1..8', or None if any value of its type goes."""
  m = f.metadata
  if m.get('expected'):
    return m['expected']
  if m.get('choices') is not None:
    return f'one of {m["choices"]}'
  low = (f'{m["minimum"]}', '[') if m.get('minimum') is not None else None
  low = low or ((f'{m["above"]}', '(') if m.get('above') is not None else None)
  high = (f'{m["maximum"]}', ']') if m.get('maximum') is not None else None
  high = high or ((f'{m["below"]}', ')') if m.get('below') is not None else None)
  if low and high:
    if low[1] == '[' and high[1] == ']':
      return f'in {low[0]}..{high[0]}'
    return f'in {low[1]}{low[0]}, {high[0]}{high[1]}'
  if low:
    return f'>= {low[0]}' if low[1] == '[' else f'> {low[0]}'
  if high:
    return f'<= {high[0]}' if high[1] == ']' else f'< {high[0]}'
  return None


def _holds(f: dataclasses.Field, value) -> bool:
  m = f.metadata
  try:
    return (
      (m.get('choices') is None or value in m['choices'])
      and (m.get('minimum') is None or value >= m['minimum'])
      and (m.get('maximum') is None or value <= m['maximum'])
      and (m.get('above') is None or value > m['above'])
      and (m.get('below') is None or value < m['below'])
      and (m.get('check') is None or bool(m['check'](value)))
    )
  except TypeError:  # A value of the wrong type (a string for a number, ...).
    return False


def validate(config) -> None:
  """Raises ConfigError naming the first field whose value breaks its declared rule."""
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if value is None and optional(type(config), f.name):
      continue
    kind = field_type(type(config), f.name)
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise ConfigError(f'{f.name} must be a number; got {value!r}.')
    if kind is float and isinstance(value, float) and math.isnan(value):
      raise ConfigError(f'{f.name} must be a number; got nan.')
    if not _holds(f, value):
      rule = expected(f) + (' or None' if optional(type(config), f.name) else '')
      raise ConfigError(f'{f.name} must be {rule}; got {value!r}.')


def to_dict(config) -> dict[str, Any]:
  """A config as JSON-ready values: nested configs as dicts, tuples as lists."""

  def plain(value):
    if dataclasses.is_dataclass(value):
      return to_dict(value)
    if isinstance(value, tuple):
      return [plain(v) for v in value]
    return value

  return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_dict(config_class, values: dict[str, Any]):
  """The inverse of `to_dict`; raises ConfigError naming unknown or malformed fields."""
  if not isinstance(values, dict):
    raise ConfigError(f'{config_class.__name__} needs a dict of fields; got {values!r}.')
  known = {f.name for f in dataclasses.fields(config_class)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(
      f'unknown {config_class.__name__} fields {unknown}; expected some of {sorted(known)}.'
    )
  kwargs = {}
  for name, value in values.items():
    kind = field_type(config_class, name)
    if dataclasses.is_dataclass(kind) and value is not None:
      value = from_dict(kind, value)
    elif typing.get_origin(kind) is tuple and isinstance(value, list):
      value = tuple(value)
    kwargs[name] = value
  try:
    return config_class(**kwargs)
  except TypeError as e:  # e.g. a tuple field holding a number
    raise ConfigError(f'{config_class.__name__}: {e}.') from e


def identity(config) -> dict[str, Any]:
  """The fields marked `identity`, nested configs included, flat by field name."""
  values = {}
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value):
      values.update(identity(value))
    elif f.metadata.get('identity'):
      values[f.name] = list(value) if isinstance(value, tuple) else value
  return values
