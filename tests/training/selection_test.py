"""Choosing the weights honestly: the validation split, the best checkpoint, the schedule.

The validation split is carved from the training split (or is the dataset's own); every
evaluation scores the raw and the Polyak-averaged weights on it, and the run keeps the
best as its own checkpoint, which results.json reports and the tools load by default.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import errors
from glow_tf.tools import runs, serving, synthetic_data
from glow_tf.training import data, optim, rundir
from glow_tf.training import trainer as trainer_lib
from glow_tf.training.config import PRESETS
from tests.training.data_test import write_folder
from tests.training.trainer_test import make_trainer

TINY = PRESETS['tiny']


def rows(split: data.Split) -> set[bytes]:
  """The examples of `split`, each as the bytes of its image and label."""
  return {
    image.numpy().astype(np.uint8).tobytes() + bytes([int(label)])
    for image, label in split.dataset()
  }


def test_the_carved_validation_split_is_disjoint_complete_and_stable():
  source = data.load('digits')
  (train_x, train_y), (test_x, test_y) = data.digits_arrays()
  whole = {x.astype(np.uint8).tobytes() + bytes([y]) for x, y in zip(train_x, train_y)}
  test = {x.astype(np.uint8).tobytes() + bytes([y]) for x, y in zip(test_x, test_y)}
  assert len(whole) == 1497 and not whole & test  # The digits hold no duplicate.
  train, validation = rows(source.train_split), rows(source.validation_split)
  assert (len(train), len(validation)) == (1347, 150)  # 10% by default, rounded.
  assert not train & validation and train | validation == whole and not validation & test
  assert rows(data.load('digits').validation_split) == validation  # Stable across loads.
  other = data.load_config(data.DataConfig(validation_seed=1))
  assert (
    rows(other.validation_split) != validation
    and rows(other.train_split) | rows(other.validation_split) == whole
  )


@pytest.mark.parametrize(('size', 'count'), [(0.2, 299), (100, 100), (0, 0), (1.0, 1)])
def test_validation_size_is_a_fraction_or_a_count(size, count):
  source = data.load_config(data.DataConfig(validation_size=size))
  assert (source.num_validation, source.num_train) == (count, 1497 - count)


@pytest.mark.parametrize(
  ('size', 'match'),
  [
    (
      1.5,
      r'validation_size must be 0, a fraction in \(0, 1\), or a whole number of images; '
      r'got 1.5',
    ),
    (-0.1, r'validation_size must be .*; got -0.1'),
    (1497, r'validation_size=1497 of the 1497 training images .* expected at least 1 and fewer'),
    (0.0001, r'gives 0 validation images; expected at least 1'),
  ],
)
def test_a_bad_validation_size_is_named(size, match):
  with pytest.raises(errors.UserError, match=match):
    data.load_config(data.DataConfig(validation_size=size))


def test_a_dataset_s_own_validation_split_is_used(tmp_path):
  root = str(tmp_path / 'images')
  write_folder(root, splits=('train', 'validation', 'test'), per_label=4)
  source = data.load(f'folder:{root}')
  assert (source.num_train, source.num_validation, source.num_test) == (8, 8, 8)
  assert source.validation_origin == f'{root}/validation'


def test_a_tfds_validation_split_is_its_own_when_there_is_also_a_test_split(tmp_path):
  directory = synthetic_data.prepare_tfds(str(tmp_path), 20, 6, size=8, num_validation=5)
  source = data.load('synthetic_images', data_dir=directory)
  assert (source.num_train, source.num_validation, source.num_test) == (20, 5, 6)
  assert source.validation_origin == "synthetic_images's own 'validation' split"
  with tfds.testing.mock_data(num_examples=12):  # train and test: carved from train.
    mnist = data.load('mnist')
    assert (mnist.num_train, mnist.num_validation, mnist.num_test) == (11, 1, 12)


def test_cosine_schedule_warms_up_then_decays_to_the_floor(tmp_path):
  config = TINY.replace(
    train_steps=101, warmup_steps=10, learning_rate=1e-3, lr_schedule='cosine', lr_floor=0.1
  )
  trainer = make_trainer(config, tmp_path / 'run', data.load('digits'))
  rate = lambda step: float(trainer.learning_rate(tf.constant(step, tf.int64)))  # noqa: E731
  assert rate(0) == pytest.approx(1e-4) and rate(9) == pytest.approx(1e-3)
  assert rate(55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)  # Half way.
  assert rate(100) == pytest.approx(1e-4, rel=1e-5)  # The last step: the floor.
  decreasing = [rate(s) for s in range(10, 101, 10)]
  assert decreasing == sorted(decreasing, reverse=True)
  constant = make_trainer(config.replace(lr_schedule='constant'), tmp_path / 'c', trainer.source)
  assert float(constant.learning_rate(tf.constant(100, tf.int64))) == pytest.approx(1e-3)


def test_polyak_averages_forget_the_initial_weights_early():
  variable = tf.Variable([0.0])
  ema = optim.ExponentialMovingAverage([variable], decay=0.999)
  assert float(ema.decay_at(0)) == pytest.approx(0.1)
  assert float(ema.decay_at(10**6)) == pytest.approx(0.999)
  variable.assign([1.0])
  for step in range(100):
    ema.update(num_updates=step)
  # A constant decay of 0.999 would leave 0.999**100 = 90% of the initial 0: 0.095.
  assert float(ema.averages[0][0]) > 0.99


def worse_at_the_end(tmp_path):
  """A tiny run whose validation score is best at step 10, then made worse by a learning
  rate far too high; returns (run directory, the config it resumes with)."""
  run = str(tmp_path / 'run')
  config = TINY.replace(train_steps=10, eval_every=10, checkpoint_every=10)
  first = trainer_lib.train_and_evaluate(config, run)
  assert first['best']['step'] == 10
  bad = config.replace(train_steps=20, learning_rate=0.05, warmup_steps=0)
  return run, first, bad


@pytest.mark.slow
def test_the_best_checkpoint_survives_worse_steps_resume_and_is_what_tools_load(tmp_path):
  run, first, bad = worse_at_the_end(tmp_path)
  second = trainer_lib.train_and_evaluate(bad, run)
  assert second['latest']['step'] == 20 and second['best']['step'] == 10
  assert (
    second['best'] == first['best'] and second['test_bits_per_dim'] == first['test_bits_per_dim']
  )
  assert second['checkpoint'] == os.path.join(run, 'checkpoints', 'best', 'ckpt-10')
  with open(os.path.join(run, 'results.json')) as f:
    assert json.load(f)['best']['step'] == 10
  # Resumed: the record of step 10 is what later evaluations must beat, not infinity.
  third = trainer_lib.train_and_evaluate(bad.replace(train_steps=30), run)
  assert third['latest']['step'] == 30 and third['best'] == first['best']
  assert tf.io.gfile.listdir(rundir.checkpoint_dir(run, 'best')).count('ckpt-10.index') == 1

  best = runs.load_run(run)
  assert (best.step, best.checkpoint) == (10, first['best']['checkpoint'])
  assert best.averaged == (first['best']['weights'] == 'averaged')
  latest = runs.load_run(run, checkpoint='latest')
  assert (latest.step, latest.averaged) == (30, True)
  facts = serving.export_run(run, str(tmp_path / 'export'))
  assert (facts['checkpoint'], facts['step']) == (first['best']['checkpoint'], 10)

  # The export holds the validation-chosen weights: it scores as the best run does.
  x = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 8, 8, 1)).astype(np.float32)
  exported = tf.saved_model.load(str(tmp_path / 'export')).signatures['log_prob_float']
  served = exported(x=tf.constant(x))['log_prob']
  np.testing.assert_allclose(served, best.flow.log_prob(x), rtol=1e-5)
  assert not np.allclose(served, latest.flow.log_prob(x), rtol=1e-3)


def test_a_run_without_validation_reports_its_latest_weights(tmp_path):
  config = TINY.replace(train_steps=4, eval_every=2, checkpoint_every=2, validation_size=0)
  results = trainer_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['best'] is None and results['num_validation'] == 0
  assert results['test_bits_per_dim'] == results['latest']['test_bits_per_dim']
  assert results['checkpoint'].endswith(os.path.join('checkpoints', 'ckpt-4'))
  assert not tf.io.gfile.exists(rundir.checkpoint_dir(str(tmp_path / 'run'), 'best'))
  run = runs.load_run(str(tmp_path / 'run'))  # 'best' falls back to the latest.
  assert (run.step, run.averaged) == (4, True)


def test_validation_size_is_part_of_a_run_s_identity(tmp_path):
  run = str(tmp_path / 'run')
  config = TINY.replace(train_steps=2, eval_every=2, checkpoint_every=2)
  trainer_lib.train_and_evaluate(config, run)
  with pytest.raises(errors.UserError, match='validation_size was 0.1, now 0.2'):
    trainer_lib.train_and_evaluate(config.replace(train_steps=4, validation_size=0.2), run)


def test_a_new_best_written_just_before_a_kill_is_kept_on_resume(tmp_path):
  """The best checkpoint is written at an evaluation; the latest checkpoint may lag it
  (killed in between): the resumed run takes the better record from the best one."""
  run = str(tmp_path / 'run')
  config = TINY.replace(train_steps=4, eval_every=4, checkpoint_every=2)
  trainer_lib.train_and_evaluate(config, run)
  latest = rundir.checkpoint_dir(run, 'latest')
  for name in tf.io.gfile.listdir(latest):  # As if killed before the latest ckpt-4.
    if name.startswith('ckpt-4'):
      tf.io.gfile.remove(os.path.join(latest, name))
  trainer = trainer_lib.Trainer(
    dataclasses.replace(config, train_steps=6),
    run,
    data.load('digits'),
    tf.distribute.get_strategy(),
  )
  assert trainer.restore_or_initialize().endswith('ckpt-2 at step 2')
  assert trainer.state.best.to_dict()['step'] == 4
