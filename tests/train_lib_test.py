"""Tests of glow_tf.train_lib: the training loop, distribution, resumption, non-finite steps."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import data, nn, train_lib

TINY = train_lib.PRESETS['tiny']


@pytest.fixture(scope='module')
def digits():
  return data.load('digits')


def make_trainer(config, model_dir, source, strategy=None):
  trainer = train_lib.Trainer(
    config, str(model_dir), source, strategy or tf.distribute.get_strategy()
  )
  trainer.restore_or_initialize()
  return trainer


def values(variables):
  return [v.numpy().copy() for v in variables]


@pytest.mark.slow
def test_tiny_preset_trains_writes_its_run_and_test_bpd_decreases(tmp_path, digits):
  before = make_trainer(TINY, tmp_path / 'probe', digits).evaluate()
  run = str(tmp_path / 'run')
  results = train_lib.train_and_evaluate(TINY, run)
  assert results['step'] == TINY.train_steps and results['nonfinite_steps'] == 0
  assert results['test_bits_per_dim'] < before - 0.05
  for name in ('config.json', 'results.json', 'samples.png', 'checkpoints/checkpoint'):
    assert os.path.exists(os.path.join(run, name)), name
  for writer in ('train', 'test'):
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(run, writer)))
  saved = train_lib.load_run_config(run)
  assert saved['model']['image_shape'] == [8, 8, 1] and saved['data']['num_bins'] == 17
  assert train_lib.TrainConfig.from_dict(saved['train']) == TINY
  with open(os.path.join(run, 'results.json')) as f:
    assert json.load(f)['test_bits_per_dim'] == pytest.approx(results['test_bits_per_dim'])
  png = tf.io.decode_png(tf.io.read_file(os.path.join(run, 'samples.png')))
  assert png.shape[0] > 64 and png.shape[1] > 64


def test_tiny_model_parameter_count(tmp_path, digits):
  trainer = train_lib.Trainer(TINY, str(tmp_path), digits, tf.distribute.get_strategy())
  assert sum(int(np.prod(v.shape)) for v in trainer.variables) == 7000


def test_mirrored_over_two_cpus_matches_one_device(tmp_path, digits):
  config = TINY.replace(batch_size=16)
  single = make_trainer(config, tmp_path / 'single', digits)
  mirrored_strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  mirrored = make_trainer(config, tmp_path / 'mirrored', digits, mirrored_strategy)
  for layer in (m for m in mirrored.flow.submodules if isinstance(m, nn.ActNormLayer)):
    first, second = mirrored_strategy.experimental_local_results(layer.log_scale)
    np.testing.assert_array_equal(first, second)
  single_it, mirrored_it = single.train_iterator(), mirrored.train_iterator()
  for _ in range(4):
    a, b = single.train_step(single_it), mirrored.train_step(mirrored_it)
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-4)
  for v_single, v_mirrored in zip(single.variables, mirrored.variables):
    replicas = mirrored_strategy.experimental_local_results(v_mirrored)
    np.testing.assert_array_equal(replicas[0], replicas[1])
    np.testing.assert_allclose(v_single.numpy(), replicas[0].numpy(), rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_replicas_is_refused(tmp_path, digits):
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with pytest.raises(
    train_lib.ConfigError,
    match=r'divisible by the number of replicas \(2\); '
    'got 33',
  ):
    train_lib.Trainer(TINY.replace(batch_size=33), str(tmp_path), digits, strategy)


@pytest.mark.slow
def test_resuming_n_plus_n_steps_equals_2n_steps(tmp_path):
  config = TINY.replace(train_steps=12, checkpoint_every=6, eval_every=100)
  resumed_dir, straight_dir = str(tmp_path / 'resumed'), str(tmp_path / 'straight')
  first = train_lib.train_and_evaluate(config.replace(train_steps=6), resumed_dir)
  assert first['step'] == 6
  resumed = train_lib.train_and_evaluate(config, resumed_dir)
  straight = train_lib.train_and_evaluate(config, straight_dir)
  assert resumed['step'] == straight['step'] == 12
  assert resumed['test_bits_per_dim'] == pytest.approx(straight['test_bits_per_dim'], rel=1e-5)
  source = data.load('digits')
  a = train_lib.Trainer(config, resumed_dir, source, tf.distribute.get_strategy())
  b = train_lib.Trainer(config, straight_dir, source, tf.distribute.get_strategy())
  assert a.restore_or_initialize().startswith('restored')
  b.restore_or_initialize()
  assert int(a.step.numpy()) == 12
  for x, y in zip(a.checkpoint_variables(), b.checkpoint_variables()):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-7)


def test_nonfinite_step_is_skipped_counted_and_lowers_the_learning_rate(tmp_path, digits):
  config = TINY.replace(nonfinite_patience=3)
  trainer = make_trainer(config, tmp_path, digits)
  nan_steps = {1, 3, 4, 5}

  def poisoned(context):
    del context
    batches = data.train_dataset(digits, trainer.global_batch, config.seed)
    return batches.enumerate().map(
      lambda i, batch: (
        tf.where(tf.reduce_any(tf.equal(i, list(nan_steps))), np.nan, batch[0]),
        batch[1],
      )
    )

  iterator = iter(trainer.distribute(poisoned))
  trainer.train_step(iterator)
  before = values(trainer.variables + trainer.ema.averages + trainer.optimizer.first_moments)
  metrics = trainer.train_step(iterator)
  assert not metrics['finite']
  after = values(trainer.variables + trainer.ema.averages + trainer.optimizer.first_moments)
  for x, y in zip(before, after):
    np.testing.assert_array_equal(x, y)
  assert int(trainer.step.numpy()) == 2 and int(trainer.nonfinite_total.numpy()) == 1
  assert float(trainer.lr_scale.numpy()) == 1.0
  assert trainer.train_step(iterator)['finite']
  for _ in range(3):  # Three in a row reach nonfinite_patience.
    trainer.train_step(iterator)
  assert int(trainer.nonfinite_total.numpy()) == 4
  assert float(trainer.lr_scale.numpy()) == 0.5
  assert int(trainer.nonfinite_streak.numpy()) == 3  # consecutive, kept for max_nonfinite_steps
  assert trainer.train_step(iterator)['finite']
  assert int(trainer.nonfinite_streak.numpy()) == 0 and float(trainer.lr_scale.numpy()) == 0.5


def test_run_dir_of_another_model_is_refused_and_left_alone(tmp_path):
  run = str(tmp_path / 'run')
  train_lib.train_and_evaluate(TINY.replace(train_steps=2, eval_every=100), run)
  listing = sorted(os.listdir(os.path.join(run, 'checkpoints')))
  with pytest.raises(
    train_lib.ConfigError,
    match=r'different model or data: width was 16, '
    r'now 32\. Use another --model_dir',
  ):
    train_lib.train_and_evaluate(TINY.replace(width=32), run)
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == listing


def test_class_conditional_training_step(tmp_path, digits):
  trainer = make_trainer(
    TINY.replace(class_conditional=True, class_loss_weight=1.0), tmp_path, digits
  )
  iterator = trainer.train_iterator()
  first = trainer.train_step(iterator)
  assert first['finite'] and first['loss'] > first['bpd']  # class bits are added
  head = trainer.classifier.kernel.numpy().copy()
  trainer.train_step(iterator)
  assert not np.array_equal(head, trainer.classifier.kernel.numpy())
  assert np.isfinite(trainer.evaluate())
  assert trainer.sample_grid(0.7).dtype == np.uint8


@pytest.mark.parametrize(
  'changes, match',
  [
    (dict(batch_size=None), 'set exactly one of batch_size'),
    (dict(ema_decay=1.0), r'ema_decay must be in \[0, 1\); got 1.0'),
    (dict(coupling='spline'), "coupling must be one of .*; got 'spline'"),
    (dict(temperatures=(-1.0,)), 'temperatures must be all >= 0'),
  ],
)
def test_bad_config_is_named(changes, match):
  with pytest.raises(train_lib.ConfigError, match=match):
    TINY.replace(**changes)


def test_image_size_not_divisible_by_2_to_the_levels(digits):
  with pytest.raises(train_lib.ConfigError, match=r'multiples of 2\*\*levels = 16'):
    TINY.replace(levels=4).model_config(digits)


def test_recompute_gives_the_same_training_steps(tmp_path, digits):
  plain = make_trainer(TINY, tmp_path / 'plain', digits)
  recomputed = make_trainer(TINY.replace(recompute=True), tmp_path / 'recompute', digits)
  plain_it, recomputed_it = plain.train_iterator(), recomputed.train_iterator()
  for _ in range(3):
    a, b = plain.train_step(plain_it), recomputed.train_step(recomputed_it)
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-3)
  for x, y in zip(plain.variables, recomputed.variables):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-3, atol=1e-5)


def test_a_nan_streak_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, digits):
  config = TINY.replace(
    max_nonfinite_steps=4, nonfinite_patience=2, checkpoint_every=2, eval_every=100, train_steps=50
  )
  trainer = make_trainer(config, tmp_path, digits)

  def poisoned(context):
    del context
    batches = data.train_dataset(digits, trainer.global_batch, config.seed)
    return batches.enumerate().map(lambda i, batch: (tf.where(i >= 3, np.nan, batch[0]), batch[1]))

  trainer.train_iterator = lambda: iter(trainer.distribute(poisoned))
  writers = {k: tf.summary.create_noop_writer() for k in ('train', 'test')}
  with pytest.raises(
    train_lib.Diverged,
    match=r'non-finite for 4 consecutive steps .* last '
    r'good checkpoint kept: .*ckpt-2',
  ):
    train_lib._train_loop(trainer, writers, 0, received=[])
  assert int(trainer.step.numpy()) == 7
  assert float(trainer.lr_scale.numpy()) == 0.25  # halved after 2 and after 4 in a row
  checkpoints = tf.train.get_checkpoint_state(str(tmp_path / 'checkpoints'))
  assert checkpoints.model_checkpoint_path.endswith('ckpt-2')
  restored = make_trainer(config, tmp_path, digits)
  assert int(restored.step.numpy()) == 2
  assert all(np.all(np.isfinite(v.numpy())) for v in restored.variables)


def test_a_signal_saves_a_checkpoint_and_stops(tmp_path, digits):
  trainer = make_trainer(TINY.replace(checkpoint_every=100, eval_every=100), tmp_path, digits)
  writers = {k: tf.summary.create_noop_writer() for k in ('train', 'test')}
  with pytest.raises(train_lib.Interrupted, match='SIGTERM at step 1: saved .*ckpt-1') as e:
    train_lib._train_loop(trainer, writers, 0, received=[15])
  assert e.value.exit_status == 143
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-1')
