"""Tests of `python -m glow_tf.check` and of the health figures training logs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import bijectors as gb
from glow_tf import errors, nn
from glow_tf.model import health
from glow_tf.tools import checks, runs
from glow_tf.training import data, rundir
from glow_tf.training import trainer as trainer_lib
from glow_tf.training.config import PRESETS

CHECKS = {'actnorm', 'nonfinite', 'round_trip', 'condition', 'log_det', 'model_round_trip'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  run = str(tmp_path_factory.mktemp('runs') / 'healthy')
  config = PRESETS['tiny'].replace(train_steps=10, eval_every=100)
  trainer_lib.train_and_evaluate(config, run)
  return run


def run_check(*args):
  return subprocess.run(
    [sys.executable, '-m', 'glow_tf.check', *args],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )


def break_one_conv(run_dir):
  """Makes the first 1x1 conv singular (one |s| = e^-40, in weights and averages);
  returns its layer name."""
  trainer = trainer_lib.Trainer(
    rundir.load_run_config(run_dir).train,
    run_dir,
    data.load('digits'),
    tf.distribute.get_strategy(),
  )
  trainer.restore_or_initialize()
  leaf = next(
    f for f in health.leaves(trainer.flow) if isinstance(f.bijector, gb.InvertibleConv1x1)
  )
  log_s = leaf.bijector.log_s  # A row of the level's stacked log_s.
  index = [v.ref() for v in trainer.variables].index(log_s.stack.ref())
  broken = tf.tensor_scatter_nd_update(log_s, [[0]], [-40.0])
  log_s.assign(broken)
  trainer.ema.averages[index].scatter_update(tf.IndexedSlices(broken[None], [log_s.index]))
  trainer.step.assign_add(1)
  trainer.save()
  return leaf.name


def test_a_healthy_run_passes_every_check(trained):
  result = run_check(f'--model_dir={trained}', '--num_images=4')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert ', 0 outside tolerance' in result.stdout
  for name in CHECKS:
    assert f'\n{name} ' in result.stdout, name
  # One Jacobian per layer, each of its own shape: TF's retracing warning is expected
  # there and left out.
  assert 'triggered tf.function retracing' not in result.stderr, result.stderr[-3000:]


def test_json_output_lists_every_figure_per_layer(trained):
  result = run_check(f'--model_dir={trained}', '--num_images=2', '--json')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report['ok'] and report['step'] == 10
  figures = report['figures']
  assert {f['check'] for f in figures} == CHECKS | {'model_nonfinite'}
  run = runs.load_run(trained)
  names = {leaf.name for leaf in health.leaves(run.flow)}
  for kind in ('round_trip', 'log_det', 'nonfinite'):
    assert {f['layer'] for f in figures if f['check'] == kind} == names, kind
  convs = [f for f in figures if f['check'] == 'condition']
  assert len(convs) == run.model_config.levels * run.model_config.depth
  assert all(1.0 <= f['value'] < 100.0 for f in convs)  # near-orthogonal after 10 steps


def test_a_singular_1x1_conv_fails_the_check_and_is_named(trained, tmp_path):
  broken = str(tmp_path / 'broken')
  shutil.copytree(trained, broken)
  name = break_one_conv(broken)  # Saved as the newest checkpoint, not the best.
  result = run_check(f'--model_dir={broken}', '--num_images=2', '--checkpoint=latest')
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
  failed = [line for line in result.stdout.splitlines() if line.strip().startswith('FAILED')]
  assert any(line.split()[1:3] == ['condition', f'{name}:'] for line in failed), failed
  assert all(name in line or 'model' in line for line in failed), failed


def test_the_library_call_flags_a_non_initialised_actnorm(trained):
  run = runs.load_run(trained)
  layer = next(m for m in run.flow.submodules if isinstance(m, nn.ActNormLayer))
  layer.initialized.assign(False)
  x, _ = runs.test_images(run, 2)
  figures = {f.check: f for f in checks.check_run(run, x) if f.check == 'actnorm'}
  assert not figures['actnorm'].ok and figures['actnorm'].value == 1.0
  assert figures['actnorm'].layer == layer.name


@pytest.mark.parametrize(
  'args, message',
  [
    (['--model_dir=/no/such/run'], "run directory '/no/such/run' does not exist"),
    (['--model_dir=/tmp', '--num_images=0'], '--num_images=0'),
  ],
)
def test_user_errors_are_one_line(args, message):
  result = run_check(*args)
  assert result.returncode in (1, 2)
  assert 'Traceback' not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert any(message in line for line in lines), lines


def test_weight_health_reports_every_conv_and_its_minimum(trained):
  run = runs.load_run(trained)
  figures = health.weight_health(run.flow)
  per_layer = {k: v for k, v in figures.items() if '/' in k}
  assert len(per_layer) == run.model_config.levels * run.model_config.depth
  assert figures['conv1x1_min_abs_s'] == min(per_layer.values()) > 0.0


def test_batch_health_reports_coupling_scales_in_sigmoid_range(trained):
  run = runs.load_run(trained)
  x, _ = runs.test_images(run, 4)
  figures = health.batch_health(run.flow, x)
  assert figures['nonfinite_values'] == 0
  assert 0.0 < figures['coupling_min_scale'] <= figures['coupling_max_scale'] < 1.0
  poisoned = tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0]], [np.nan])
  assert health.batch_health(run.flow, poisoned)['nonfinite_values'] > 0


def test_walk_passes_the_label_to_a_class_conditional_top_prior():
  flow = glow_tf.build_glow(
    glow_tf.GlowConfig(image_shape=(8, 8, 1), levels=2, depth=1, width=8, num_classes=10)
  )
  x = tf.random.uniform([4, 8, 8, 1], -0.5, 0.5, seed=1)
  glow_tf.initialize(flow, x)
  label = tf.constant([1, 2, 3, 4])
  records = health.walk(flow, x, label)
  leaf, flat, y, _ = records[-1]
  assert isinstance(leaf.bijector, gb.TopPrior)
  np.testing.assert_allclose(
    leaf.bijector.inverse(y, label=label).numpy(), flat.numpy(), rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match='needs a label'):
    health.walk(flow, x)


@pytest.mark.parametrize('crop', [3, 0, 18])
def test_a_crop_no_squeeze_can_take_or_too_large_is_refused_up_front(trained, crop):
  run = runs.load_run(trained)
  x, label = runs.test_images(run, 1)
  with pytest.raises(errors.UserError, match=rf'crop must be an even size in 2\.\.16; got {crop}'):
    checks.check_run(run, x, label, crop)
