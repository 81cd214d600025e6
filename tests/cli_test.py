"""Tests of glow_tf.cli: every command refuses a bad command line in one line, with exit 2."""

import os
import subprocess
import sys

import pytest
from absl import flags

from glow_tf import cli


@pytest.fixture
def flag_values():
  values = flags.FlagValues()
  flags.DEFINE_enum('mode', 'a', ['a', 'b'], 'A choice.', flag_values=values)
  flags.DEFINE_integer('size', 1, 'A size.', lower_bound=1, flag_values=values)
  return values


@pytest.mark.parametrize(
  'argv, message',
  [
    (['--nope'], "glow_tf.x: error: Unknown command line flag 'nope'"),
    (['--mode=c'], 'glow_tf.x: error: flag --mode=c: value should be one of <a|b>'),
    (['--size=0'], 'glow_tf.x: error: flag --size=0: 0 is not a positive integer'),
    (['--size=2', 'stray', 'words'], 'glow_tf.x: error: unexpected arguments: stray words;'),
  ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(flag_values, capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    cli.parse_flags('glow_tf.x', flag_values)(['prog', *argv])
  assert e.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  lines = captured.err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), lines


def test_a_good_command_line_is_parsed(flag_values):
  assert cli.parse_flags('glow_tf.x', flag_values)(['prog', '--mode=b', '--size=3']) == ['prog']
  assert flag_values.mode == 'b' and flag_values.size == 3


def user_lines(stderr):
  noise = ('WARNING: All log messages', 'I0000', 'E0000', 'W0000')
  return [line for line in stderr.splitlines() if line and not line.startswith(noise)]


@pytest.mark.parametrize(
  'command, args, message',
  [
    ('train', ['--widht=3'], "glow_tf.train: error: Unknown command line flag 'widht'"),
    ('export', ['--model_dir=r', '--export_dir=e', 'now'], 'glow_tf.export: error: unexpected'),
    ('sample', ['--model_dir=r', '--mode=movie'], 'glow_tf.sample: error: flag --mode=movie'),
    ('check', ['--model_dir=r', '--crop=3'], 'glow_tf.check: error: flag --crop=3: expected even'),
    ('benchmark', ['--batch_size=0'], 'glow_tf.benchmark: error: flag --batch_size=0'),
  ],
)
def test_every_command_uses_the_one_line_flag_errors(command, args, message):
  result = subprocess.run(
    [sys.executable, '-m', f'glow_tf.{command}', *args],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )
  lines = user_lines(result.stderr)
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.slow
@pytest.mark.parametrize(
  'command, flag',
  [('train', '--width:'), ('sample', '--temperatures:'), ('benchmark', '--batch_size:')],
)
def test_help_lists_the_config_flags_of_the_command(command, flag):
  result = subprocess.run(
    [sys.executable, '-m', f'glow_tf.{command}', '--help'],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )
  assert flag in result.stdout.split('absl.app:')[0], result.stdout
