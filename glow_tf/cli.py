"""What every glow_tf command does with errors: a user's mistake is one line and exit 2;
anything else is a bug and keeps its traceback."""

import sys
from collections.abc import Callable

import tensorflow as tf
from absl import app

__all__ = ['UserError', 'run_main', 'user_errors']


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


def run_main(command: str, body: Callable[[], int | None], argv=()) -> None:
  """Runs `body`; a user error prints `command: error: ...` on stderr and exits with 2.

  `argv` is what `absl.app.run` passes to main: anything past the program name
  is a stray argument (flags are already parsed), and a usage error.
  """
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    status = body()
  except user_errors() as e:
    message = getattr(e, 'message', None) or str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
      message = f'{e.strerror or type(e).__name__}: {e.filename!r}'
    print(f'{command}: error: {" ".join(message.split())}', file=sys.stderr)
    sys.exit(2)
  if status:
    sys.exit(status)
