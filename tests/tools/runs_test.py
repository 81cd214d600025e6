"""Tests of glow_tf.runs: loading a run for sample, check and export, whatever state it is in."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import errors, nn
from glow_tf.tools import runs
from glow_tf.training import trainer
from glow_tf.training.config import PRESETS


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  """A finished tiny run with checkpoints ckpt-2 and ckpt-4."""
  run = str(tmp_path_factory.mktemp('short') / 'run')
  config = PRESETS['tiny'].replace(train_steps=4, checkpoint_every=2, eval_every=100)
  trainer.train_and_evaluate(config, run)
  return run


@pytest.fixture
def run(short_run, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(short_run, copy)
  return copy


def test_load_run_restores_the_best_or_the_latest_checkpoint(run):
  best = runs.load_run(run)  # Evaluated at the end only: step 4 is the best.
  assert best.step == 4 and best.checkpoint == os.path.join(run, 'checkpoints', 'best', 'ckpt-4')
  loaded = runs.load_run(run, checkpoint='latest')
  assert loaded.step == 4 and loaded.checkpoint == os.path.join(run, 'checkpoints', 'ckpt-4')


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(run):
  data_file = os.path.join(run, 'checkpoints', 'ckpt-4.data-00000-of-00001')
  with open(data_file, 'r+b') as f:
    f.truncate(1000)
  loaded = runs.load_run(run, checkpoint='latest')
  assert loaded.step == 2 and loaded.checkpoint.endswith('ckpt-2')


def test_a_garbage_state_file_still_finds_the_latest_checkpoint(run):
  with open(os.path.join(run, 'checkpoints', 'checkpoint'), 'w') as f:
    f.write('garbage {{{\n')
  assert runs.load_run(run, checkpoint='latest').step == 4


@pytest.mark.parametrize(
  'text, match',
  [
    ('{"train": ', r"config\.json' is not valid JSON"),
    ('{}', r"expected the objects \['train', 'model', 'data'\]; got \[\]"),
    ('[1, 2]', r"expected the objects \['train', 'model', 'data'\]; got list"),
    (
      '{"train": {"levels": "two"}, "model": {}, "data": {}}',
      r"config\.json' is not a glow_tf run config \(levels must be a number; got 'two'",
    ),
  ],
)
def test_an_unusable_config_json_is_one_named_error(run, text, match):
  with open(os.path.join(run, 'config.json'), 'w') as f:
    f.write(text)
  with pytest.raises(errors.RunError, match=match):
    runs.load_run(run)


def test_a_file_is_not_a_run_directory(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(errors.RunError, match=r"run directory '.*file' is not a directory\."):
    runs.load_run(str(path))


def test_checkpoints_none_of_which_restores_are_named(run):
  for step in (2, 4):
    os.remove(os.path.join(run, 'checkpoints', f'ckpt-{step}.index'))
  with pytest.raises(
    errors.RunError,
    match=r'none can be restored: ckpt-4: no \.index file: .*; ckpt-2: no \.index file',
  ):
    runs.load_run(run, checkpoint='latest')


def test_check_batch_refuses_a_batch_beyond_a_gib_per_activation(run):
  loaded = runs.load_run(run)  # 8x8 digits at width 16: 4 x 4 x 16 float32 = 1 KiB an image.
  runs.check_batch(loaded, '--num_images=1048576', 2**20)
  with pytest.raises(
    errors.RunError,
    match=r'--num_images=1048577 asks for a batch of 1048577 images; at most 1048576 fit this '
    r'model \(8x8 images, width 16: 1024 bytes each',
  ):
    runs.check_batch(loaded, '--num_images=1048577', 2**20 + 1)


def test_a_bfloat16_run_loads_at_full_precision_and_inverts_exactly(tmp_path):
  run = str(tmp_path / 'run')
  config = PRESETS['tiny'].replace(train_steps=30, eval_every=100, precision='bfloat16')
  trainer.train_and_evaluate(config, run)
  loaded = runs.load_run(run)
  assert loaded.model_config.precision == 'float32'
  networks = [m for m in loaded.flow.submodules if isinstance(m, nn.CouplingNetwork)]
  assert networks and all(n.compute_dtype == tf.float32 for n in networks)
  x = tf.random.stateless_uniform([8, 8, 8, 1], seed=(1, 2), minval=-0.5, maxval=0.5)
  z = glow_tf.encode(loaded.flow, x)
  assert np.max(np.abs(glow_tf.decode(loaded.flow, z) - x)) < 1e-5
