"""Tests of the training CLI, `python -m glow_tf.train`, as a user runs it (subprocesses)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.training import data, trainer
from glow_tf.training.config import PRESETS

QUICK = ['--preset=tiny', '--train_steps=4', '--eval_every=100', '--checkpoint_every=2']


def run_cli(*args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, '-m', 'glow_tf.train', *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
  )


def error_lines(result):
  """The lines a user reads on stderr, without TensorFlow's start-up noise."""
  noise = ('WARNING: All log messages', 'I0000', 'E0000', 'W0000')
  return [line for line in result.stderr.splitlines() if line and not line.startswith(noise)]


@pytest.mark.slow
def test_flagfile_run_and_rerun_resumes(tmp_path):
  run = tmp_path / 'run'
  flagfile = tmp_path / 'flags.txt'
  flagfile.write_text('\n'.join(QUICK + [f'--model_dir={run}']))
  first = run_cli(f'--flagfile={flagfile}')
  assert first.returncode == 0, first.stderr[-2000:]
  assert 'test bits/dim' in first.stdout and 'best by validation' in first.stdout
  second = run_cli(f'--flagfile={flagfile}', '--train_steps=6')
  assert second.returncode == 0, second.stderr[-2000:]
  assert 'restored' in second.stderr and 'test bits/dim' in second.stdout
  with open(run / 'results.json') as f:
    assert json.load(f)['step'] == 6


@pytest.mark.slow
@pytest.mark.parametrize(
  'args, message',
  [
    (['--dataset=no_such_dataset_xyz'], "error: unknown dataset 'no_such_dataset_xyz'"),
    (['--n_bits=9'], 'flag --n_bits=9: 9 is not an integer in the range [1, 8]'),
    (
      ['--strategy=mirrored', '--cpu_devices=2', '--batch_size=33'],
      r'error: batch_size (global) must be divisible by the number of replicas (2); got 33',
    ),
    (['--levels=4'], 'error: image height and width must be multiples of 2**levels = 16'),
    (['--coupling=spline'], 'flag --coupling=spline: value should be one of <affine|additive>'),
    (['stray'], 'unexpected arguments: stray'),
  ],
)
def test_bad_flags_exit_nonzero_with_one_clear_line(tmp_path, args, message):
  result = run_cli(*QUICK, f'--model_dir={tmp_path / "run"}', *args)
  assert result.returncode == 2
  lines = error_lines(result)
  assert any(message in line for line in lines), lines
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_on_loopback_train_and_write_one_consistent_checkpoint(tmp_path):
  workers = [f'127.0.0.1:{free_port()}' for _ in range(2)]
  run = tmp_path / 'run'
  args = [
    '--preset=tiny',
    '--train_steps=6',
    '--eval_every=100',
    '--checkpoint_every=3',
    '--strategy=multi_worker',
    f'--model_dir={run}',
  ]
  processes = []
  for index in range(2):
    config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
    env = {**os.environ, 'TF_CONFIG': json.dumps(config)}
    processes.append(
      subprocess.Popen(
        [sys.executable, '-m', 'glow_tf.train', *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [p.communicate(timeout=400) for p in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert 'replica(s)' in outputs[0][1] and 'on 2 replica(s)' in outputs[0][1]
  checkpoints = sorted(os.listdir(run / 'checkpoints'))
  assert 'ckpt-6.index' in checkpoints and 'ckpt-3.index' in checkpoints
  assert not os.path.exists(run / '.worker_tmp' / 'worker_1')
  # The checkpoint restores, and equals one device trained on the same global batches.
  config = PRESETS['tiny'].replace(train_steps=6, eval_every=100, checkpoint_every=3)
  source = data.load('digits')
  restored = trainer.Trainer(config, str(run), source, tf.distribute.get_strategy())
  assert restored.restore_or_initialize().startswith('restored')
  single = trainer.Trainer(config, str(tmp_path / 'single'), source, tf.distribute.get_strategy())
  single.restore_or_initialize()
  iterator = single.train_iterator()
  for _ in range(6):
    single.train_step(iterator)
  for a, b in zip(restored.variables, single.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def latest_step(run):
  state = tf.train.get_checkpoint_state(str(run / 'checkpoints'))
  return int(state.model_checkpoint_path.rsplit('-', 1)[1]) if state else 0


def restored_step(stderr):
  for line in stderr.splitlines():
    if 'restored' in line and 'at step' in line:
      return int(line.rsplit('at step', 1)[1].split()[0])
  return 0


@pytest.mark.slow
def test_killed_at_random_moments_it_resumes_from_its_last_complete_checkpoint(tmp_path):
  run = tmp_path / 'run'
  args = [
    '--preset=tiny',
    '--train_steps=100000',
    '--checkpoint_every=1',  # A checkpoint write is under way most of the time.
    '--eval_every=100000',
    f'--model_dir={run}',
  ]
  rng = np.random.RandomState(0)
  previous = 0
  for _ in range(4):
    process = subprocess.Popen(
      [sys.executable, '-m', 'glow_tf.train', *args],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    deadline = time.time() + 120
    while latest_step(run) <= previous and time.time() < deadline:  # Training in this life.
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.0))
    process.kill()
    _, stderr = process.communicate()
    assert latest_step(run) > previous, stderr[-2000:]
    if previous == 0:
      assert 'initialised' in stderr
    else:  # Resumed exactly where the last life's latest checkpoint was; no ActNorm init.
      assert restored_step(stderr) == previous and 'initialised' not in stderr
    previous = latest_step(run)
    assert os.path.exists(run / 'checkpoints' / f'ckpt-{previous}.index')
  final = run_cli(*args[:1], f'--train_steps={previous + 3}', *args[2:])
  assert final.returncode == 0, final.stderr[-2000:]
  assert restored_step(final.stderr) == previous and 'initialised' not in final.stderr
  with open(run / 'results.json') as f:
    assert json.load(f)['step'] == previous + 3


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_with_128_plus_15(tmp_path):
  run = tmp_path / 'run'
  process = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'glow_tf.train',
      '--preset=tiny',
      '--train_steps=100000',
      '--checkpoint_every=100000',
      '--eval_every=100000',
      f'--model_dir={run}',
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 120
  while latest_step(run) == 0 and not os.path.exists(run / 'train') and time.time() < deadline:
    time.sleep(0.5)
  time.sleep(6)  # Well into training.
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143
  lines = error_lines(type('R', (), {'stderr': stderr})())
  assert any('SIGTERM at step' in line and 'saved' in line for line in lines), lines[-5:]
  assert latest_step(run) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  'args, message',
  [
    (['--dataset=folder:/no/such/folder'], "image folder '/no/such/folder' does not exist"),
    (['--model_dir=/proc/glow_tf_run'], 'error:'),
  ],
)
def test_unusable_paths_are_one_line_errors(tmp_path, args, message):
  result = run_cli(*QUICK, f'--model_dir={tmp_path / "run"}', *args)
  assert result.returncode == 2
  lines = error_lines(result)
  assert len(lines) == 1 and message in lines[0], lines
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_a_second_training_is_refused_and_a_killed_one_leaves_no_stuck_lock(tmp_path):
  run = tmp_path / 'run'
  args = [
    '--preset=tiny',
    '--train_steps=100000',
    '--checkpoint_every=5',
    '--eval_every=100000',
    f'--model_dir={run}',
  ]
  first = subprocess.Popen(
    [sys.executable, '-m', 'glow_tf.train', *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 120
    while latest_step(run) == 0 and time.time() < deadline:  # Training, with a checkpoint.
      time.sleep(0.2)
    second = run_cli(*args[:1], '--train_steps=3', *args[2:])
    assert second.returncode == 2
    lines = error_lines(second)
    assert len(lines) == 1, lines
    assert f'is already being trained (pid {first.pid} on ' in lines[0], lines
  finally:
    first.kill()
    first.communicate()
  reached = latest_step(run)
  third = run_cli(*args[:1], f'--train_steps={reached + 2}', *args[2:])
  assert third.returncode == 0, third.stderr[-2000:]
  assert restored_step(third.stderr) == reached and 'initialised' not in third.stderr


@pytest.mark.slow
def test_a_garbage_state_file_resumes_instead_of_starting_over(tmp_path):
  run = tmp_path / 'run'
  first = run_cli(*QUICK, f'--model_dir={run}')
  assert first.returncode == 0, first.stderr[-2000:]
  (run / 'checkpoints' / 'checkpoint').write_text('garbage {{{\n')
  again = run_cli(*QUICK, '--train_steps=6', f'--model_dir={run}')
  assert again.returncode == 0, again.stderr[-2000:]
  assert restored_step(again.stderr) == 4 and 'initialised' not in again.stderr
  assert "'checkpoint' is unreadable or names no ckpt-N" in again.stderr
