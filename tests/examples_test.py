"""The examples in examples/ run as a user would run them, at a tiny size."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.tools import serving
from glow_tf.training import data, trainer
from glow_tf.training.config import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, env=None, cwd=None):
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, 'examples', name), *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **(env or {})},
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


@pytest.mark.slow
def test_custom_training_loop_trains_and_reports_bits_per_dim():
  lines = run_example('custom_training_loop.py', '--steps=30', '--batch_size=32').splitlines()
  assert lines[-1].startswith('step 30: ') and lines[-1].endswith(' bits/dim')
  assert 0 < float(lines[-1].split()[2]) < 8


@pytest.mark.slow
def test_tfp_composition_runs_and_its_chain_round_trips():
  out = run_example('tfp_composition.py')
  error = float(
    next(line for line in out.splitlines() if line.startswith('round trip')).split()[-1]
  )
  assert error < 1e-4
  assert 'samples: (4, 8, 8, 1)' in out


@pytest.mark.slow
def test_score_export_needs_only_tensorflow(tmp_path):
  run = str(tmp_path / 'run')
  trainer.train_and_evaluate(PRESETS['tiny'].replace(train_steps=2), run)
  export = str(tmp_path / 'export')
  serving.export_run(run, export)
  ((test_images, _),) = [data.digits_arrays()[1]]
  paths = []
  for i, bins in enumerate(test_images[:3]):
    path = str(tmp_path / f'digit_{i}.png')
    pixels = np.round(bins * 255.0 / 16.0).astype(np.uint8)  # As glow_tf draws them.
    tf.io.write_file(path, tf.io.encode_png(pixels))
    paths.append(path)
  blocker = tmp_path / 'no_glow_tf' / 'glow_tf'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text("raise ImportError('glow_tf is not installed here')\n")
  env = {'PYTHONPATH': str(blocker.parent)}
  probe = subprocess.run(
    [sys.executable, '-c', 'import glow_tf'],
    capture_output=True,
    text=True,
    env={**os.environ, **env},
    cwd=tmp_path,
  )
  assert 'glow_tf is not installed here' in probe.stderr  # The blocker works.
  out = run_example('score_export.py', export, *paths, env=env, cwd=tmp_path)
  # The same scores as the SavedModel gives the bins directly.
  model = tf.saved_model.load(export)
  expected = model.signatures['log_prob'](images=tf.constant(test_images[:3], tf.uint8))[
    'bits_per_dim'
  ].numpy()
  scores = [float(line.split(': ')[1].split()[0]) for line in out.splitlines()]
  np.testing.assert_allclose(scores, expected, atol=1e-3)
