"""What every glow_tf command shares: flags made from config fields, and errors.

A command's options are the fields of a config dataclass (`glow_tf.configs`);
`define_config_flags` makes one absl flag per field, with its help, choices and
bounds, and `config_overrides` reads back the ones the user set. A user's mistake
(a `glow_tf.errors.UserError`, a bad command line, a missing path) is one line and
exit 2; anything else is a bug and keeps its traceback.
"""

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import tensorflow as tf
from absl import app, flags

from glow_tf import configs
from glow_tf.errors import ConfigError, UserError

__all__ = [
  'UserError',
  'config_overrides',
  'define_config_flags',
  'define_weights_flags',
  'fail',
  'parse_flags',
  'print_report',
  'report_command',
  'run_app',
  'run_main',
]

USAGE_STATUS = 2
# What a command reports as the user's mistake: glow_tf's own, and a path that is not there.
USER_ERRORS = (
  UserError,
  PermissionError,
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  tf.errors.PermissionDeniedError,
  tf.errors.NotFoundError,
)


def _config_fields(
  config_class, skip: Sequence[str], prefix: str = ''
) -> list[tuple[str, dataclasses.Field, Any]]:
  """`(name, field, owner class)` of every field, nested configs' fields flattened.

  `skip` names fields not to list by their path, e.g. 'seed' or 'model.seed'.
  """
  found = []
  for f in dataclasses.fields(config_class):
    kind = configs.field_type(config_class, f.name)
    if dataclasses.is_dataclass(kind):
      found += _config_fields(kind, skip, f'{prefix}{f.name}.')
    elif f'{prefix}{f.name}' not in skip:
      found.append((f.name, f, config_class))
  return found


def define_config_flags(
  config_class,
  flag_values: flags.FlagValues = flags.FLAGS,
  defaults=None,
  skip: Sequence[str] = (),
) -> list[str]:
  """One flag per field of `config_class` (nested configs flattened); returns their names.

  Each flag takes the field's help, its choices (an enum flag) and inclusive bounds.
  With `defaults` (a config instance) flags default to its values; without, they
  default to None, "unset", so that a preset fills what the user leaves out. `skip`
  names fields that get no flag, by path ('seed', 'model.seed').
  """
  names = []
  for name, f, owner in _config_fields(config_class, skip):
    kind = configs.field_type(owner, name)
    m = f.metadata
    default = None
    if defaults is not None:
      default = _value_of(defaults, name)
      default = list(map(str, default)) if isinstance(default, tuple) else default
    bounds = {
      k: v
      for k, v in (('lower_bound', m.get('minimum')), ('upper_bound', m.get('maximum')))
      if v is not None
    }
    if kind is bool:
      flags.DEFINE_bool(name, default, m['help'], flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(name, default, m['help'], flag_values=flag_values, **bounds)
    elif kind is float:
      flags.DEFINE_float(name, default, m['help'], flag_values=flag_values, **bounds)
    elif kind is str and m.get('choices'):
      flags.DEFINE_enum(name, default, list(m['choices']), m['help'], flag_values=flag_values)
    elif kind is str:
      flags.DEFINE_string(name, default, m['help'], flag_values=flag_values)
    elif typing.get_origin(kind) is tuple:
      flags.DEFINE_list(name, default, m['help'], flag_values=flag_values)
    else:
      raise TypeError(f'define_config_flags cannot make a flag of {name}: {kind}.')
    names.append(name)
  return names


def define_weights_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """`--checkpoint` and `--averaged`: which weights of a run a tool uses (`runs.load_run`)."""
  flags.DEFINE_enum(
    'checkpoint',
    'best',
    ['best', 'latest'],
    'best: the checkpoint validation chose (as results.json reports); latest: the newest.',
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    'averaged',
    None,
    'Polyak-averaged (--averaged) or raw (--noaveraged) weights of that checkpoint. '
    'Default: the ones validation chose for the best checkpoint, else the averaged.',
    flag_values=flag_values,
  )


def report_command(command: str) -> tuple[str, Callable[[str], None]]:
  """For a command that prints a markdown report: its command line as typed (to
  reproduce the report), and a logger of progress lines to stderr."""
  line = ' '.join(['python -m', command, *sys.argv[1:]])
  return line, lambda message: print(message, file=sys.stderr, flush=True)


def print_report(text: str, output: str | None) -> None:
  """Prints a markdown report and, with `output`, also writes it there (its directory made)."""
  print(text)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
      f.write(text)


def _value_of(config, name: str):
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if f.name == name:
      return value
    if dataclasses.is_dataclass(value):
      try:
        return _value_of(value, name)
      except KeyError:
        continue
  raise KeyError(name)


def config_overrides(
  config_class, flag_values: flags.FlagValues = flags.FLAGS, skip: Sequence[str] = ()
) -> dict[str, Any]:
  """The fields whose flags are set (not None), by name, as the field's type.

  Raises:
    ConfigError: a list flag of numbers holding something else.
  """
  overrides = {}
  for name, _, owner in _config_fields(config_class, skip):
    value = flag_values[name].value
    if value is None:
      continue
    kind = configs.field_type(owner, name)
    if typing.get_origin(kind) is tuple:
      item = typing.get_args(kind)[0]
      try:
        value = tuple(item(v) for v in value)
      except ValueError as e:
        raise ConfigError(f'--{name} must be {item.__name__}s; got {",".join(value)!r}.') from e
    overrides[name] = value
  return overrides


def fail(command: str, message: str) -> NoReturn:
  """Prints `command: error: message` as one line on stderr and exits with status 2."""
  print(f'{command}: error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(USAGE_STATUS)


def parse_flags(
  command: str, flag_values: flags.FlagValues = flags.FLAGS
) -> Callable[[list[str]], list[str]]:
  """An absl `flags_parser` that reports a bad command line in one line, with exit 2.

  absl's own parser exits with 1 and "FATAL Flags parsing error"; a stray argument
  would reach main and print the whole help. Here an unknown flag, a value outside
  its enum or bounds, a missing required flag and a stray argument all end the
  same way as any other user error (`fail`). `--help`, `--helpfull` and
  `--flagfile` work as usual.
  """

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flag_values(argv)
    except flags.Error as e:
      fail(command, f'{e} (see --help).')
    if len(rest) > 1:
      fail(command, f'unexpected arguments: {" ".join(rest[1:])}; every option is a --flag.')
    return rest

  return parse


def run_app(command: str, main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the command line checked by `parse_flags(command)`."""
  app.run(main, flags_parser=parse_flags(command))


def run_main(command: str, body: Callable[[], int | None], argv=()) -> None:
  """Runs `body`; a user error prints `command: error: ...` on stderr and exits with 2.

  `argv` is what `absl.app.run` passes to main: anything past the program name
  is a stray argument (`parse_flags` already refuses it; this guards other callers).
  """
  if len(argv) > 1:
    fail(command, f'unexpected arguments: {" ".join(argv[1:])}; every option is a --flag.')
  try:
    status = body()
  except USER_ERRORS as e:
    message = getattr(e, 'message', None) or str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
      message = f'{e.strerror or type(e).__name__}: {e.filename!r}'
    fail(command, message)
  if status:
    sys.exit(status)
