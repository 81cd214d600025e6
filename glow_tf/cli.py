"""What every glow_tf command does with errors: a user's mistake is one line and exit 2;
anything else is a bug and keeps its traceback."""

import sys
from collections.abc import Callable
from typing import NoReturn

import tensorflow as tf
from absl import app, flags

__all__ = ['UserError', 'fail', 'parse_flags', 'run_app', 'run_main', 'user_errors']

USAGE_STATUS = 2


class UserError(ValueError):
  """A request the command cannot carry out; its message says what was received and expected."""


def user_errors() -> tuple:
  """Exception types that mean the user's input is wrong (paths, permissions, values)."""
  from glow_tf import data, export_lib, runs, sample_lib, train_lib  # Avoid import cycles.

  return (
    UserError,
    data.DataError,
    train_lib.ConfigError,
    runs.RunError,
    export_lib.ExportError,
    sample_lib.SampleError,
    PermissionError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    tf.errors.PermissionDeniedError,
    tf.errors.NotFoundError,
  )


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
      fail(command, f'{e} (see --helpfull).')
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
  except user_errors() as e:
    message = getattr(e, 'message', None) or str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
      message = f'{e.strerror or type(e).__name__}: {e.filename!r}'
    fail(command, message)
  if status:
    sys.exit(status)
