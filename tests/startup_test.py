"""Tests of glow_tf.startup: the commands start without TensorFlow's C++ start-up lines."""

import os
import re
import subprocess
import sys

import pytest

from glow_tf import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What TensorFlow 2.21 printed before any glow_tf line (glow_tf/startup.py says where from).
START_UP = (
  'All log messages before absl::InitializeLog()',
  'oneDNN custom operations are on',
  'Could not find cuda drivers',
  'This TensorFlow binary is optimized',
  'failed call to cuInit',
)

CPP_LINE = re.compile(r'[IWEF]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\] ')
NO_DRIVER = (
  b'I0000 00:00:1796.5  3872 cudart_stub.cc:31] '
  b'Could not find cuda drivers on your machine, GPU will not be used.\n'
)
CUINIT = b'E0000 00:00:1796.6  3872 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA\n'
ONEDNN = b'I0000 00:00:1796.7  3872 port.cc:153] oneDNN custom operations are on. You may see\n'
PRE_INIT = b'WARNING: All log messages before absl::InitializeLog() is called are written to ST\n'
OLD_FORMAT = (
  b'2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] '
  b'Could not find cuda drivers on your machine, GPU will not be used.\n'
)


def run(args, level=None, timeout=300):
  env = {k: v for k, v in os.environ.items() if k != startup.LOG_LEVEL_VARIABLE}
  if level is not None:
    env[startup.LOG_LEVEL_VARIABLE] = level
  return subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
  )


def test_start_up_noise_is_only_the_known_lines():
  lines = [PRE_INIT, ONEDNN, NO_DRIVER, OLD_FORMAT, CUINIT, b'E0000 1 2 other.cc:1] real\n', b'x\n']
  assert startup.start_up_noise(lines) == [True, True, True, True, True, False, False]


def test_the_cuinit_failure_is_kept_where_tensorflow_found_a_cuda_driver():
  assert startup.start_up_noise([ONEDNN, CUINIT]) == [True, False]


def test_filtered_stderr_writes_back_every_other_line_in_order_even_on_error(capfd):
  with pytest.raises(ImportError), startup.filtered_stderr(startup.start_up_noise):
    os.write(2, PRE_INIT + ONEDNN + b'first real line\n')
    os.write(2, b'a Python warning\n')  # What sys.stderr writes, outside pytest.
    os.write(2, NO_DRIVER + CUINIT + b'E0000 1 2 loader.cc:9] a real error\n')
    raise ImportError('the import failed')
  assert capfd.readouterr().err == (
    'first real line\na Python warning\nE0000 1 2 loader.cc:9] a real error\n'
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  'args',
  [
    ['-m', 'glow_tf.sample', '--help'],
    ['-m', 'glow_tf.export', '--help'],
    ['-m', 'glow_tf.check', '--help'],
    ['-m', 'glow_tf.benchmark', '--help'],
    ['-m', 'glow_tf.ablation', '--help'],
    [os.path.join('bin', 'glow_train'), '--help'],
  ],
)
def test_every_command_starts_quietly(args):
  result = run(args)  # absl's --help exits with status 1.
  assert result.returncode == 1, result.stderr[-3000:]
  starts = ('Pictures', 'Exports', 'Proves', 'Benchmarks', "The paper's ablation", 'Trains')
  assert result.stdout.startswith(starts)
  shown = [line for line in START_UP if line in result.stdout + result.stderr]
  assert not shown, result.stderr


@pytest.mark.slow
def test_a_training_run_starts_quietly_unless_the_user_sets_the_log_level(tmp_path):
  args = ['-m', 'glow_tf.train', '--preset=tiny', '--train_steps=2', '--eval_every=100']
  quiet = run([*args, f'--model_dir={tmp_path / "quiet"}'])
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert 'test bits/dim' in quiet.stdout
  assert not [line for line in START_UP if line in quiet.stdout + quiet.stderr], quiet.stderr
  first = quiet.stderr.splitlines()[0]
  assert 'trainer.py' in first and 'initialised' in first, quiet.stderr  # glow_tf's line first
  # No C++ log line later either (TF 2.21's oneDNN logged an error for Tile's gradient).
  assert not [line for line in quiet.stderr.splitlines() if CPP_LINE.match(line)], quiet.stderr
  # Nor TensorFlow's Python INFO lines ('Sharding callback duration' at each checkpoint).
  assert all('trainer.py:' in line for line in quiet.stderr.splitlines()), quiet.stderr
  # A user's own TF_CPP_MIN_LOG_LEVEL stands: with 0, TensorFlow's lines come back.
  loud = run([*args, f'--model_dir={tmp_path / "loud"}'], level='0')
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert [line for line in START_UP if line in loud.stderr], loud.stderr


@pytest.mark.slow
def test_tensorflow_python_warnings_are_printed_once_in_a_command():
  script = (
    'from glow_tf import startup\n'
    'startup.quiet_tensorflow()\n'
    'import tensorflow as tf\n'
    'from absl import app\n'
    "app.run(lambda argv: tf.get_logger().warning('probe from tensorflow'))\n"
  )
  result = run(['-c', script], level='2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count('probe from tensorflow') == 1, result.stderr
