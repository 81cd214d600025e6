"""A quiet start for the commands: the first screen is glow_tf's, not TensorFlow's C++ log.

Measured with TensorFlow 2.21 on a Linux machine without a GPU: before its first
line, every command printed

- when TensorFlow is imported, from static initialisers of two of its libraries
  (`libtensorflow_framework.so` and the profiler plugin), so twice, and before
  TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` (no value of it hides them,
  tensorflow/tensorflow#100442):
  `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`,
  `I... port.cc:153] oneDNN custom operations are on. ...`,
  `I... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.`;
- later in the import, once: `I... cpu_feature_guard.cc:227] This TensorFlow binary is
  optimized to use available CPU instructions ...` (two lines; hidden by
  `TF_CPP_MIN_LOG_LEVEL>=1`);
- when the devices are first listed (device initialisation, not the import):
  `E... cuda_platform.cc:52] failed call to cuInit: ...`, an error that only repeats
  that there is no GPU (hidden only by `TF_CPP_MIN_LOG_LEVEL=3`, which would hide every
  C++ error).

`quiet_tensorflow()` is called by the commands before anything imports TensorFlow;
the library (`import glow_tf`) changes no logging. Nothing here imports TensorFlow
at module level.
"""

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

from absl import logging as absl_logging

__all__ = ['quiet_tensorflow', 'start_up_noise']

LOG_LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'

# A C++ log line of TensorFlow, in the absl format of TF 2.21 (`I0000 00:00:17.. 123 file.cc:1]`)
# or the older one (`2025-09-17 14:44:05.157831: I path/file.cc:32]`).
_PREFIX = rb'(?:[IWEF]\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] \S*?)'


def _log_line(source: str, message: str) -> re.Pattern:
  return re.compile(_PREFIX + re.escape(source).encode() + rb':\d+\] ' + message.encode())


_NOISE = (
  re.compile(rb'WARNING: All log messages before absl::InitializeLog\(\) is called are written '),
  _log_line('port.cc', 'oneDNN custom operations are on'),
  _log_line('cudart_stub.cc', 'Could not find cuda drivers on your machine, GPU will not be used'),
)
_NO_GPU = _NOISE[2]
_CUINIT_FAILED = _log_line('cuda_platform.cc', 'failed call to cuInit: ')


def start_up_noise(lines: Sequence[bytes]) -> list[bool]:
  """Which of TensorFlow's start-up `lines` (stderr) say nothing a user of a command needs.

  The lines of the module docstring that `TF_CPP_MIN_LOG_LEVEL=1` cannot hide, and the
  cuInit failure only when TensorFlow has said in the same lines that it found no CUDA
  driver and will use no GPU (on a machine with a driver it is a real error).
  """
  no_gpu = any(_NO_GPU.match(line) for line in lines)
  return [
    any(p.match(line) for p in _NOISE) or (no_gpu and bool(_CUINIT_FAILED.match(line)))
    for line in lines
  ]


@contextlib.contextmanager
def filtered_stderr(is_noise: Callable[[Sequence[bytes]], list[bool]]) -> Iterator[None]:
  """Captures file descriptor 2 in the block, then writes back every line not `is_noise`.

  Whatever C++ and Python write to stderr in the block is held in a temporary file
  and written back in order when the block ends, also when it raises.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().splitlines(keepends=True)
      kept = [line for line, noise in zip(lines, is_noise(lines)) if not noise]
      if kept:
        os.write(2, b''.join(kept))


def quiet_tensorflow() -> None:
  """Imports TensorFlow and lists its devices without the start-up lines described above.

  Does nothing when TensorFlow is already imported. TensorFlow's Python log lines go
  through absl's handler only, so each is printed once. A user's own
  `TF_CPP_MIN_LOG_LEVEL` stands: when it is set (`0` shows everything), that is all.
  Otherwise it sets `TF_CPP_MIN_LOG_LEVEL=1` for this process and its children
  (TensorFlow's C++ INFO lines off; its warnings and errors, and every Python log line,
  stay), and drops the lines no setting reaches (`start_up_noise`); every other line
  is written back.
  """
  if 'tensorflow' in sys.modules:
    return
  # absl's handler on the root logger before TensorFlow makes its logger: TensorFlow
  # then adds no handler of its own, and each of its Python warnings is printed once
  # (it was printed twice: 'WARNING:tensorflow:...' and again in absl's format).
  absl_logging.use_absl_handler()
  if LOG_LEVEL_VARIABLE in os.environ:
    return
  os.environ[LOG_LEVEL_VARIABLE] = '1'
  with filtered_stderr(start_up_noise):
    import tensorflow as tf

    tf.config.list_physical_devices()
