"""The errors a user can cause: one base, so every command catches one thing.

A `UserError`'s message says what was received and what was expected; the
command-line tools print it as one line, `glow_tf.<command>: error: ...`, and exit
with status 2. Anything else that escapes is a bug and keeps its traceback.
"""

__all__ = ['ConfigError', 'DataError', 'ExportError', 'RunError', 'SampleError', 'UserError']


class UserError(ValueError):
  """A request that cannot be carried out as given; the message names what and why."""


class ConfigError(UserError):
  """A configuration that cannot train, or does not fit the run directory it is given."""


class DataError(UserError):
  """A dataset that cannot be used: unknown, unprepared, unreachable, empty or too small."""


class RunError(UserError):
  """A run directory that cannot be used: missing, not a glow_tf run, or without checkpoint."""


class ExportError(UserError):
  """An export that cannot be written: names the path and what is wrong with it."""


class SampleError(UserError):
  """A figure that cannot be drawn: names what it got and what it needs."""
