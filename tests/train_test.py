"""Tests of the training CLI, `python -m glow_tf.train`, as a user runs it (subprocesses)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import data, train_lib

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
  assert 'test bits/dim' in first.stdout and 'at step 4' in first.stdout
  second = run_cli(f'--flagfile={flagfile}', '--train_steps=6')
  assert second.returncode == 0, second.stderr[-2000:]
  assert 'restored' in second.stderr and 'at step 6' in second.stdout
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
  assert result.returncode != 0
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
  config = train_lib.PRESETS['tiny'].replace(train_steps=6, eval_every=100, checkpoint_every=3)
  source = data.load('digits')
  restored = train_lib.Trainer(config, str(run), source, tf.distribute.get_strategy())
  assert restored.restore_or_initialize().startswith('restored')
  single = train_lib.Trainer(config, str(tmp_path / 'single'), source, tf.distribute.get_strategy())
  single.restore_or_initialize()
  iterator = single.train_iterator()
  for _ in range(6):
    single.train_step(iterator)
  for a, b in zip(restored.variables, single.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
