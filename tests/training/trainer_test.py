"""Tests of glow_tf.train_lib: the training loop, distribution, resumption, non-finite steps."""

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import errors, nn
from glow_tf.training import data, distribute, optim, rundir
from glow_tf.training import trainer as trainer_lib
from glow_tf.training.config import PRESETS
from glow_tf.training.state import TrainState
from tests import checks
from tests.training.data_test import write_folder

TINY = PRESETS['tiny']


@pytest.fixture(scope='module')
def digits():
  return data.load('digits')


def make_trainer(config, model_dir, source, strategy=None):
  trainer = trainer_lib.Trainer(
    config, str(model_dir), source, strategy or tf.distribute.get_strategy()
  )
  trainer.restore_or_initialize()
  return trainer


def values(variables):
  return [v.numpy().copy() for v in variables]


def assert_train_alike(first, second, steps, grad_rtol, rtol, atol):
  """`steps` training steps of two trainers: the same losses (1e-5), gradient norms
  and then variables (this replica's copy under a strategy)."""
  first_it, second_it = first.train_iterator(), second.train_iterator()
  for _ in range(steps):
    a, b = first.train_step(first_it), second.train_step(second_it)
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=grad_rtol)
  for v_a, v_b in zip(first.variables, second.variables):
    v_b = second.strategy.experimental_local_results(v_b)[0]
    np.testing.assert_allclose(v_a.numpy(), v_b.numpy(), rtol=rtol, atol=atol, err_msg=v_a.name)


@pytest.mark.slow
def test_tiny_preset_trains_writes_its_run_and_test_bpd_decreases(tmp_path, digits):
  before = make_trainer(TINY, tmp_path / 'probe', digits).evaluate()
  run = str(tmp_path / 'run')
  results = trainer_lib.train_and_evaluate(TINY, run)
  assert results['step'] == TINY.train_steps and results['nonfinite_steps'] == 0
  assert results['test_bits_per_dim'] < before - 0.05
  for name in ('config.json', 'results.json', 'samples.png', 'checkpoints/checkpoint'):
    assert os.path.exists(os.path.join(run, name)), name
  for writer in ('train', 'test'):
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(run, writer)))
  saved = rundir.load_run_config(run)
  assert saved.model.image_shape == (8, 8, 1) and saved.data['num_bins'] == 17
  assert saved.train == TINY
  with open(os.path.join(run, 'config.json')) as f:
    assert json.load(f)['version'] == rundir.CONFIG_VERSION
  with open(os.path.join(run, 'results.json')) as f:
    assert json.load(f)['test_bits_per_dim'] == pytest.approx(results['test_bits_per_dim'])
  png = tf.io.decode_png(tf.io.read_file(os.path.join(run, 'samples.png')))
  assert png.shape[0] > 64 and png.shape[1] > 64


@pytest.mark.slow
def test_evaluating_a_digits_run_reads_no_cache_partially(tmp_path):
  """No `The calling iterator did not fully read the dataset being cached` at evaluations.

  That warning is TensorFlow's C++ logging (level W, on fd 2), which this test session
  hides (conftest): a fresh interpreter logging every level shows it. A partial read
  of a cached dataset first shows that the warning would be seen.
  """
  script = textwrap.dedent(
    f"""
    import sys
    import tensorflow as tf
    from glow_tf.training import trainer
    from glow_tf.training.config import PRESETS
    for _ in tf.data.Dataset.range(4).cache().take(1):
      pass
    print('control done', file=sys.stderr, flush=True)
    results = trainer.train_and_evaluate(
      PRESETS['tiny'].replace(train_steps=2), {str(tmp_path / 'run')!r}
    )
    print(results['test_bits_per_dim'])
    """
  )
  result = subprocess.run(
    [sys.executable, '-c', script],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '0'},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  control, evaluation = result.stderr.split('control done')
  warning = 'did not fully read the dataset being cached'
  assert warning in control
  assert float(result.stdout) > 0 and warning not in evaluation, evaluation[-3000:]


def test_tiny_model_parameter_count(tmp_path, digits):
  trainer = trainer_lib.Trainer(TINY, str(tmp_path), digits, tf.distribute.get_strategy())
  assert sum(int(np.prod(v.shape)) for v in trainer.variables) == 7000


@pytest.mark.parametrize('precision', ['float32', 'float16'])
def test_mirrored_over_two_cpus_matches_one_device(tmp_path, digits, precision):
  config = TINY.replace(batch_size=16, precision=precision)
  single = make_trainer(config, tmp_path / 'single', digits)
  mirrored_strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  mirrored = make_trainer(config, tmp_path / 'mirrored', digits, mirrored_strategy)
  for layer in (m for m in mirrored.flow.submodules if isinstance(m, nn.ActNormLayer)):
    first, second = mirrored_strategy.experimental_local_results(checks.held(layer.log_scale))
    np.testing.assert_array_equal(first, second)
  # float16 gradients of 8 images per replica round differently from those of 16;
  # Adamax's normalised update then moves a weight by up to lr = 1e-3 per step either
  # way (a near-zero gradient whose rounding flips its sign: 4.1e-4 after 4 steps in
  # one of 576 weights, seen), so 5e-4 still catches any replica applying another update.
  rtol, atol = (1e-4, 1e-6) if precision == 'float32' else (1e-3, 5e-4)
  single_it, mirrored_it = single.train_iterator(), mirrored.train_iterator()
  for _ in range(4):
    a, b = single.train_step(single_it), mirrored.train_step(mirrored_it)
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=rtol / 10)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=rtol)
  good_steps = mirrored_strategy.experimental_local_results(mirrored.loss_scale.good_steps)
  expected = 4 if precision == 'float16' else 0  # The loss scale moves in float16 only.
  assert [int(g) for g in good_steps] == [expected] * 2
  assert int(single.loss_scale.good_steps.numpy()) == expected
  for v_single, v_mirrored in zip(single.variables, mirrored.variables):
    replicas = mirrored_strategy.experimental_local_results(v_mirrored)
    np.testing.assert_array_equal(replicas[0], replicas[1])
    np.testing.assert_allclose(v_single.numpy(), replicas[0].numpy(), rtol=rtol, atol=atol)


def test_batch_not_divisible_by_replicas_is_refused(tmp_path, digits):
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with pytest.raises(
    errors.ConfigError,
    match=r'divisible by the number of replicas \(2\); '
    'got 33',
  ):
    trainer_lib.Trainer(TINY.replace(batch_size=33), str(tmp_path), digits, strategy)


@pytest.mark.slow
def test_resuming_n_plus_n_steps_equals_2n_steps(tmp_path):
  config = TINY.replace(train_steps=12, checkpoint_every=6, eval_every=100)
  resumed_dir, straight_dir = str(tmp_path / 'resumed'), str(tmp_path / 'straight')
  first = trainer_lib.train_and_evaluate(config.replace(train_steps=6), resumed_dir)
  assert first['step'] == 6
  resumed = trainer_lib.train_and_evaluate(config, resumed_dir)
  straight = trainer_lib.train_and_evaluate(config, straight_dir)
  assert resumed['step'] == straight['step'] == 12
  assert resumed['test_bits_per_dim'] == pytest.approx(straight['test_bits_per_dim'], rel=1e-5)
  source = data.load('digits')
  a = trainer_lib.Trainer(config, resumed_dir, source, tf.distribute.get_strategy())
  b = trainer_lib.Trainer(config, straight_dir, source, tf.distribute.get_strategy())
  assert a.restore_or_initialize().startswith('restored')
  b.restore_or_initialize()
  assert int(a.step.numpy()) == 12
  for x, y in zip(a.state.checkpointed_variables(), b.state.checkpointed_variables()):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-7)


def kept(trainer):
  """What a skipped step must leave as it was: parameters, moments, averages."""
  optimizer = trainer.optimizer
  return (
    trainer.variables + trainer.ema.averages + optimizer.first_moments + optimizer.second_moments
  )


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
  before = values(kept(trainer))
  metrics = trainer.train_step(iterator)
  assert not metrics['finite']
  after = values(kept(trainer))
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
  trainer_lib.train_and_evaluate(TINY.replace(train_steps=2, eval_every=100), run)
  listing = sorted(os.listdir(os.path.join(run, 'checkpoints')))
  with pytest.raises(
    errors.ConfigError,
    match=r'different model or data: width was 16, '
    r'now 32\. Use another --model_dir',
  ):
    trainer_lib.train_and_evaluate(TINY.replace(width=32), run)
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
    (dict(ema_decay=1.0), r'ema_decay must be in \[0.0, 1.0\); got 1.0'),
    (dict(coupling='spline'), "coupling must be one of .*; got 'spline'"),
    (dict(temperatures=(-1.0,)), 'temperatures must be one or more, all finite and >= 0'),
    (
      dict(temperatures=(0.5, float('inf'))),
      r'temperatures must be one or more, all finite.*got \(0.5, inf\)',
    ),
  ],
)
def test_bad_config_is_named(changes, match):
  with pytest.raises(errors.ConfigError, match=match):
    TINY.replace(**changes)


def test_image_size_not_divisible_by_2_to_the_levels(digits):
  with pytest.raises(errors.ConfigError, match=r'multiples of 2\*\*levels = 16'):
    TINY.replace(levels=4).model_config(digits)


@pytest.mark.parametrize('precision', ['float32', 'bfloat16', 'float16'])
def test_recompute_gives_the_same_training_steps(tmp_path, digits, precision):
  # In low precision too (float16: the gradients under its loss scale).
  config = TINY.replace(precision=precision)
  plain = make_trainer(config, tmp_path / 'plain', digits)
  recomputed = make_trainer(config.replace(recompute=True), tmp_path / 'recompute', digits)
  assert_train_alike(plain, recomputed, 3, grad_rtol=1e-3, rtol=1e-3, atol=1e-5)


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
    trainer_lib.Diverged,
    match=r'non-finite for 4 consecutive steps .* last '
    r'good checkpoint kept: .*ckpt-2',
  ):
    trainer_lib._train_loop(trainer, writers, 0, received=[])
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
  with pytest.raises(trainer_lib.Interrupted, match='SIGTERM at step 1: saved .*ckpt-1') as e:
    trainer_lib._train_loop(trainer, writers, 0, received=[15])
  assert e.value.exit_status == 143
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-1')


# ---- The run directory is never rewound, overwritten or shared ------------------------------

SHORT = TINY.replace(train_steps=4, checkpoint_every=2, eval_every=100)


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  """A finished run with checkpoints ckpt-2 and ckpt-4."""
  run = str(tmp_path_factory.mktemp('short') / 'run')
  trainer_lib.train_and_evaluate(SHORT, run)
  return run


def copy_run(short_run, tmp_path):
  run = str(tmp_path / 'run')
  shutil.copytree(short_run, run, ignore=shutil.ignore_patterns('train.lock'))
  return run


def contents(directory):
  """Every file's bytes, but the lock (which says who trained last)."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in set(names) - {'train.lock'}:
      with open(os.path.join(root, name), 'rb') as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


def cut(path, keep):
  with open(path, 'rb') as f:
    head = f.read()[:keep]
  with open(path, 'wb') as f:
    f.write(head)


DAMAGES = {
  'garbage state file': lambda d: open(f'{d}/checkpoint', 'w').write('garbage {{{\n'),
  'empty state file': lambda d: open(f'{d}/checkpoint', 'w').close(),
  'state names a missing checkpoint': lambda d: open(f'{d}/checkpoint', 'w').write(
    'model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n'
  ),
  'truncated data': lambda d: cut(f'{d}/ckpt-4.data-00000-of-00001', 1000),
  'truncated index': lambda d: cut(f'{d}/ckpt-4.index', 40),
  'missing index': lambda d: os.remove(f'{d}/ckpt-4.index'),
  'missing data': lambda d: os.remove(f'{d}/ckpt-4.data-00000-of-00001'),
}


@pytest.mark.parametrize(
  'damage, step, reason',
  [
    ('garbage state file', 4, "'checkpoint' is unreadable"),
    ('empty state file', 4, "'checkpoint' is unreadable"),
    ('state names a missing checkpoint', 4, 'names ckpt-99, whose files are missing'),
    ('truncated data', 2, 'ckpt-4: does not restore'),
    ('truncated index', 2, 'ckpt-4: does not restore'),
    ('missing index', 2, 'ckpt-4: no .index file'),
    ('missing data', 2, 'ckpt-4: no .data file'),
  ],
)
def test_a_damaged_checkpoint_is_skipped_and_named_never_reinitialised(
  short_run, tmp_path, digits, caplog, damage, step, reason
):
  run = copy_run(short_run, tmp_path)
  directory = os.path.join(run, 'checkpoints')
  DAMAGES[damage](directory)
  intact = {k: v for k, v in contents(directory).items() if k.startswith(f'ckpt-{step}.')}
  trainer = trainer_lib.Trainer(SHORT, run, digits, tf.distribute.get_strategy())
  assert trainer.state.awaiting_restore  # Built without initial values (checkpoints exist).
  with caplog.at_level('WARNING'):
    message = trainer.restore_or_initialize()
  assert message == f'restored {directory}/ckpt-{step} at step {step}'
  # Every value is the intact checkpoint's, whatever a newer one's failed restore wrote
  # (but the best record, which a newer best checkpoint may give: `_adopt_saved_best`).
  reference = TrainState.create(trainer.model_config, SHORT.optimizer, SHORT.ema_decay)
  reference.restore(f'{directory}/ckpt-{step}')
  best = {v.ref() for v in trainer.state.best.variables}
  for mine, theirs in zip(
    trainer.state.checkpointed_variables(), reference.checkpointed_variables(), strict=True
  ):
    if mine.ref() not in best:
      np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.name)
  assert reason in ' '.join(r.getMessage() for r in caplog.records)
  # The state file now names what was restored, and the manager saves after it.
  assert tf.train.get_checkpoint_state(directory).model_checkpoint_path.endswith(f'ckpt-{step}')
  trainer.step.assign(step + 1)
  trainer.save()
  after = contents(directory)
  assert all(after[k] == v for k, v in intact.items())


def test_checkpoints_none_of_which_restores_are_refused_and_left_alone(short_run, tmp_path):
  run = copy_run(short_run, tmp_path)
  directory = os.path.join(run, 'checkpoints')
  for step in (2, 4):
    cut(f'{directory}/ckpt-{step}.data-00000-of-00001', 1000)
  before = contents(run)
  with pytest.raises(
    errors.ConfigError,
    match=r'holds checkpoint files but none can be restored: ckpt-4: does not restore .*; '
    r'ckpt-2: does not restore .* Nothing was changed',
  ):
    trainer_lib.train_and_evaluate(SHORT.replace(train_steps=6), run)
  assert contents(run) == before


def test_checkpoints_removed_after_set_up_are_refused_not_initialised(short_run, tmp_path, digits):
  run = copy_run(short_run, tmp_path)
  trainer = trainer_lib.Trainer(SHORT, run, digits, tf.distribute.get_strategy())
  shutil.rmtree(os.path.join(run, 'checkpoints'))
  with pytest.raises(errors.ConfigError, match=r'held checkpoint files when this run was set up'):
    trainer.restore_or_initialize()
  assert trainer.state.awaiting_restore


def test_a_garbage_state_file_resumes_from_the_newest_checkpoint(short_run, tmp_path, caplog):
  run = copy_run(short_run, tmp_path)
  DAMAGES['garbage state file'](os.path.join(run, 'checkpoints'))
  with caplog.at_level('INFO', logger='absl'):
    resumed = trainer_lib.train_and_evaluate(SHORT.replace(train_steps=6), run)
  assert resumed['step'] == 6
  log = ' '.join(r.getMessage() for r in caplog.records)
  assert 'restored ' + os.path.join(run, 'checkpoints', 'ckpt-4') + ' at step 4' in log
  assert 'initialised' not in log


def test_a_refused_resume_leaves_config_json_as_it_was(short_run, tmp_path):
  run = copy_run(short_run, tmp_path)
  os.remove(os.path.join(run, 'config.json'))
  with pytest.raises(
    errors.ConfigError,
    match=r'none can be restored: ckpt-4: does not restore \(ValueError: Received incompatible',
  ):
    trainer_lib.train_and_evaluate(SHORT.replace(width=32), run)
  assert not os.path.exists(os.path.join(run, 'config.json'))
  assert trainer_lib.train_and_evaluate(SHORT.replace(train_steps=6), run)['step'] == 6
  assert rundir.load_run_config(run).train.model.width == 16


def test_the_config_of_a_run_without_checkpoints_does_not_bind_it(short_run, tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  stale = rundir.load_run_config(short_run)
  stale = dataclasses.replace(stale, train=stale.train.replace(seed=7))  # As a run that
  (run / 'config.json').write_text(json.dumps(stale.to_dict()))  # crashed before ckpt-1 left it.
  assert trainer_lib.train_and_evaluate(SHORT.replace(train_steps=2), str(run))['step'] == 2
  assert rundir.load_run_config(str(run)).train.seed == 0


def test_a_second_training_into_a_run_is_refused_naming_the_first(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  with open(run / 'train.lock', 'w') as holder:  # What the first training holds.
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write('pid 12345 on elsewhere, since 2026-11-24 10:00:00\n')
    holder.flush()
    with pytest.raises(
      errors.ConfigError,
      match=r"'.*run' is already being trained \(pid 12345 on elsewhere, since .*\); wait",
    ):
      trainer_lib.train_and_evaluate(SHORT, str(run))
  assert os.listdir(run) == ['train.lock']
  # Released (as the kernel does when the first process dies): training goes ahead.
  assert trainer_lib.train_and_evaluate(SHORT.replace(train_steps=2), str(run))['step'] == 2


@pytest.mark.parametrize(
  'below, match',
  [('', r"model_dir '.*file' is a file; expected a run"), ('run', "lies under '.*file', which is")],
)
def test_a_model_dir_that_is_or_lies_under_a_file_is_refused(tmp_path, below, match):
  path = tmp_path / 'file'
  path.write_text('not a run')
  with pytest.raises(errors.ConfigError, match=match):
    trainer_lib.train_and_evaluate(SHORT, str(path / below) if below else str(path))
  assert path.read_text() == 'not a run'


@pytest.mark.parametrize(
  'text, match',
  [
    ('{"train": ', 'is not valid JSON'),
    ('{}', r"expected the objects \['train', 'model', 'data'\]"),
  ],
)
def test_an_unusable_config_json_of_a_run_with_checkpoints_is_refused(
  short_run, tmp_path, text, match
):
  run = copy_run(short_run, tmp_path)
  with open(os.path.join(run, 'config.json'), 'w') as f:
    f.write(text)
  before = contents(run)
  with pytest.raises(errors.ConfigError, match=match + '.*delete it to have training write'):
    trainer_lib.train_and_evaluate(SHORT.replace(train_steps=6), run)
  assert contents(run) == before


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_files(tmp_path, digits, monkeypatch):
  trainer = make_trainer(SHORT, tmp_path, digits)
  trainer.step.assign(2)
  kept = trainer.save()

  def disk_full(prefix, options=None):
    os.makedirs(f'{prefix}_temp')
    with open(f'{prefix}_temp/part-00000-of-00001.data-00000-of-00001', 'wb') as f:
      f.write(b'half a checkpoint')
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')

  monkeypatch.setattr(trainer.checkpoint, '_write', disk_full)
  trainer.step.assign(4)
  with pytest.raises(
    errors.ConfigError,
    match=r'cannot write checkpoint ckpt-4 .*No space left on device\); .*ckpt-2 is intact\. Free',
  ):
    trainer.save()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [
    'checkpoint',
    'ckpt-2.data-00000-of-00001',
    'ckpt-2.index',
  ]
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')) == kept
  assert make_trainer(SHORT, tmp_path, digits).step.numpy() == 2


@pytest.mark.parametrize(
  'tf_config, match',
  [
    ('{cluster', 'TF_CONFIG is not JSON'),
    ('{}', '"cluster" must map job names to lists of "host:port"; got None'),
    (
      '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
      r'task index must be an int in 0\.\.0; got 1',
    ),
    (
      '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}',
      r"task type 'chief' is not a job of the cluster \['worker'\]",
    ),
  ],
)
def test_a_malformed_tf_config_is_named(monkeypatch, tf_config, match):
  monkeypatch.setenv('TF_CONFIG', tf_config)
  with pytest.raises(errors.ConfigError, match=match):
    distribute.make_strategy('multi_worker')


@pytest.mark.parametrize('seed', [2**31, -(2**31) - 1])
def test_a_seed_outside_int32_is_refused(seed):
  with pytest.raises(
    errors.ConfigError, match=rf'seed must be in -2147483648..2147483647; got {seed}'
  ):
    TINY.replace(seed=seed)


def test_a_folder_without_usable_test_images_is_refused_before_step_0(tmp_path):
  root = write_folder(str(tmp_path / 'images'), splits=('train',), per_label=20)
  os.makedirs(os.path.join(root, 'test', 'a'))
  with open(os.path.join(root, 'test', 'a', 'broken.png'), 'wb') as f:
    f.write(b'not a png')
  run = tmp_path / 'run'
  with pytest.raises(
    errors.DataError, match=r'has no test images; .* needs usable images in .*/test/<label>/\*\.png'
  ):
    trainer_lib.train_and_evaluate(SHORT.replace(dataset=f'folder:{root}'), str(run))
  assert not run.exists()


@pytest.mark.parametrize(
  'recompute, jit_compile, replicas',
  [(False, True, 1), (True, False, 1), (True, False, 2), (True, True, 1)],
  ids=['xla', 'recompute', 'recompute_mirrored', 'recompute_xla'],
)
def test_compiled_steps_train_as_the_per_layer_path(
  tmp_path, digits, recompute, jit_compile, replicas
):
  config = TINY.replace(batch_size=16)
  per_layer = make_trainer(config.replace(compile_steps=False), tmp_path / 'layers', digits)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']) if replicas == 2 else None
  compiled = make_trainer(
    config.replace(recompute=recompute, jit_compile=jit_compile),
    tmp_path / 'compiled',
    digits,
    strategy,
  )
  assert compiled.flow.multiscale.compiled_steps(0) is not None
  assert per_layer.flow.multiscale.compiled_steps(0) is None
  assert_train_alike(per_layer, compiled, 3, grad_rtol=1e-3, rtol=1e-4, atol=1e-5)


def test_a_run_resumes_across_precisions(tmp_path, digits):
  run = tmp_path / 'run'
  full = make_trainer(TINY, run, digits)
  iterator = full.train_iterator()
  for _ in range(2):
    full.train_step(iterator)
  full.save()
  low = make_trainer(TINY.replace(precision='bfloat16'), run, digits)
  assert int(low.step.numpy()) == 2
  for a, b in zip(full.variables, low.variables):
    assert b.dtype == tf.float32  # Master weights stay float32 in bfloat16.
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  iterator = low.train_iterator()
  metrics = [low.train_step(iterator) for _ in range(3)]
  assert all(np.isfinite(m['loss']) for m in metrics)
  assert int(low.nonfinite_total.numpy()) == 0
  low.save()
  again = make_trainer(TINY, run, digits)
  assert int(again.step.numpy()) == 5
  for a, b in zip(low.variables, again.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_graph_optimizer_setting_is_scoped_to_training_calls():
  assert distribute.graph_optimizer_enabled('on') and not distribute.graph_optimizer_enabled('off')
  assert distribute.graph_optimizer_enabled('auto') == bool(tf.config.list_physical_devices('GPU'))
  options = tf.config.optimizer.get_experimental_options
  before = options().get('disable_meta_optimizer', False)
  with pytest.raises(ValueError):
    with distribute.graph_optimizer(enabled=before):  # The opposite of now.
      assert options()['disable_meta_optimizer'] == (not before)  # Switched inside...
      raise ValueError
  assert options().get('disable_meta_optimizer', False) == before  # ...and back after.


def test_graph_optimizer_on_and_off_train_alike(tmp_path, digits):
  trainers = [
    make_trainer(TINY.replace(graph_optimizer=setting), tmp_path / setting, digits)
    for setting in ('on', 'off')
  ]
  iterators = [t.train_iterator() for t in trainers]
  for _ in range(2):
    on, off = (t.train_step(i) for t, i in zip(trainers, iterators))
    np.testing.assert_allclose(on['loss'], off['loss'], rtol=1e-5)


def test_float16_trains_with_a_dynamic_loss_scale(tmp_path, digits):
  trainer = make_trainer(TINY.replace(precision='float16'), tmp_path / 'run', digits)
  scale = trainer.loss_scale.scale
  assert float(scale.numpy()) == optim.DynamicLossScale.INITIAL
  iterator = trainer.train_iterator()
  metrics = [trainer.train_step(iterator) for _ in range(3)]
  assert all(m['finite'] for m in metrics), metrics
  assert int(trainer.loss_scale.good_steps.numpy()) == 3

  # An injected overflow: float16 backward activations beyond 65504.
  scale.assign(2.0**40)
  before = values([*trainer.variables, *trainer.optimizer.variables, *trainer.ema.averages])
  skipped = trainer.train_step(iterator)
  assert not skipped['finite']
  assert float(scale.numpy()) == 2.0**39  # Halved...
  assert int(trainer.loss_scale.good_steps.numpy()) == 0
  after = values([*trainer.variables, *trainer.optimizer.variables, *trainer.ema.averages])
  for a, b in zip(before, after):  # ...and nothing else touched, moments and averages included.
    np.testing.assert_array_equal(a, b)
  assert int(trainer.nonfinite_total.numpy()) == 1
  assert int(trainer.nonfinite_streak.numpy()) == 0  # Not a diverging model.

  # A run of finite steps doubles it.
  scale.assign(2.0**10)
  trainer.loss_scale.good_steps.assign(trainer.loss_scale.growth_interval - 1)
  assert trainer.train_step(iterator)['finite']
  assert float(scale.numpy()) == 2.0**11 and int(trainer.loss_scale.good_steps.numpy()) == 0


def test_float16_scale_is_checkpointed_and_a_run_resumes_across_precisions(tmp_path, digits):
  run = tmp_path / 'run'
  low = make_trainer(TINY.replace(precision='float16'), run, digits)
  iterator = low.train_iterator()
  low.train_step(iterator)
  low.loss_scale.scale.assign(1024.0)
  low.save()
  full = make_trainer(TINY, run, digits)
  assert int(full.step.numpy()) == 1
  iterator = full.train_iterator()
  assert full.train_step(iterator)['loss_scale'] == 1.0  # float32 never scales.
  full.save()
  again = make_trainer(TINY.replace(precision='float16'), run, digits)
  assert int(again.step.numpy()) == 2 and float(again.loss_scale.scale.numpy()) == 1024.0


def test_tracing_the_step_changes_nothing_and_the_first_step_runs_that_trace(tmp_path, digits):
  trainer = make_trainer(TINY, tmp_path, digits)
  iterator = trainer.train_iterator()
  before = values(kept(trainer))
  trainer.trace_train_step(iterator)
  assert trainer._train_step.experimental_get_tracing_count() == 1
  for x, y in zip(before, values(kept(trainer))):
    np.testing.assert_array_equal(x, y)
  assert int(trainer.step.numpy()) == 0
  first = trainer.train_step(iterator)
  assert trainer._train_step.experimental_get_tracing_count() == 1
  assert int(trainer.step.numpy()) == 1 and first['finite']
  # The batch the first step trained on is the run's first: tracing read none.
  fresh = make_trainer(TINY, tmp_path / 'fresh', digits)
  np.testing.assert_allclose(
    fresh.train_step(fresh.train_iterator())['loss'], first['loss'], rtol=1e-6
  )
