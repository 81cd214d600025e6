"""Tests of the stacked variable layout (`GlowConfig.stack_steps`, `nn.StepStack`).

A flow whose steps' variables are stacked, `[K, ...]` per layer variable, must
compute what the same weights held step by step compute, on every path (compiled
steps, per layer, the reversible backward), and a checkpoint of either layout
must restore into the other.
"""

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import nn
from glow_tf.training import reversible
from glow_tf.training.loss import Loss
from glow_tf.training.state import TrainState
from tests import checks

TINY = dict(image_shape=(8, 8, 2), levels=2, depth=3, width=8, dtype='float64')


def images(batch=5, seed=0):
  rng = np.random.RandomState(seed)
  return tf.constant(rng.rand(batch, 8, 8, 2) - 0.5)


def step_parameters(flow):
  """Each step's parameters (variables or rows), level by level, step by step."""
  multiscale = flow.multiscale
  return [
    nn.parameters(step)
    for level in range(len(multiscale.levels))
    for step in multiscale.steps(level)
  ]


def other_variables(flow):
  """The flow's variables that no step holds (split priors, top prior)."""
  in_steps = {
    (p.stack if isinstance(p, nn.StackedRow) else p).ref()
    for params in step_parameters(flow)
    for p in params
  }
  return [v for v in flow.variables if v.ref() not in in_steps]


def stacked_and_per_step(**overrides):
  """One model twice: steps' variables stacked, and each step's its own; same weights."""
  config = glow_tf.GlowConfig(**{**TINY, **overrides})
  stacked = glow_tf.build_glow(config)
  per_step = glow_tf.build_glow(config.replace(stack_steps=False))
  x = images()
  glow_tf.initialize(per_step, x)
  checks.perturb(per_step, 0.05, seed=3)
  for mine, theirs in zip(step_parameters(stacked), step_parameters(per_step), strict=True):
    for row, variable in zip(mine, theirs, strict=True):
      assert isinstance(row, nn.StackedRow) and isinstance(variable, tf.Variable)
      row.assign(variable)
  for mine, theirs in zip(other_variables(stacked), other_variables(per_step), strict=True):
    mine.assign(theirs)
  return config, stacked, per_step, x


def per_step_view(flow, grads):
  """Gradients of a flow listed as per-step variables: each step's parameters' (a stacked
  variable's row), then the other variables'; non-trained parameters skipped."""
  by_variable = {v.ref(): tf.convert_to_tensor(g) for v, g in zip(flow.trainable_variables, grads)}
  listed = []
  for params in step_parameters(flow):
    for p in params:
      if not p.trainable:
        continue
      if isinstance(p, nn.StackedRow):
        listed.append(by_variable[p.stack.ref()][p.index])
      else:
        listed.append(by_variable[p.ref()])
  return listed + [by_variable[v.ref()] for v in other_variables(flow) if v.trainable]


def test_each_layer_variable_is_one_stacked_variable_per_level():
  config = glow_tf.GlowConfig(**TINY)
  stacked = glow_tf.build_glow(config)
  per_step = glow_tf.build_glow(config.replace(stack_steps=False))
  per_level = len(step_parameters(per_step)[0])  # Variables of one step.
  assert len(stacked.multiscale.step_stacks) == config.levels
  for level, stack in enumerate(stacked.multiscale.step_stacks):
    assert len(stack.stacked) == per_level
    assert all(v.shape[0] == config.depth for v in stack.stacked)
    for step in stacked.multiscale.steps(level):
      assert not step.variables  # The rows are not variables: the level's stack holds them.
      trained = {v.ref() for v in nn.trained(step)}
      assert trained == {v.ref() for v in stack.stacked if v.trainable}
  # Every parameter appears once either way; the stacked flow has K times fewer.
  size = lambda flow: sum(int(np.prod(v.shape)) for v in flow.variables)  # noqa: E731
  assert size(stacked) == size(per_step)
  others = len(other_variables(per_step))
  assert len(per_step.variables) - others == config.depth * (len(stacked.variables) - others)

  # Rows of one stacked variable hold each step's own initial values.
  def first_kernels(flow):
    return [
      next(p for p in params if 'conv_in/kernel' in p.name).numpy()
      for params in step_parameters(flow)[: config.depth]
    ]

  rows, values = first_kernels(stacked), first_kernels(per_step)
  np.testing.assert_array_equal(rows, values)
  assert not np.array_equal(rows[0], rows[1])


@pytest.mark.parametrize('compile_steps', [True, False], ids=['compiled', 'per_layer'])
def test_stacked_layout_computes_what_the_per_step_layout_computes(compile_steps):
  config, stacked, per_step, x = stacked_and_per_step(
    compile_steps=compile_steps, num_classes=3, permutation='conv1x1'
  )
  label = tf.constant([0, 1, 2, 0, 1])
  kwargs = glow_tf.conditional_kwargs(label)

  def log_prob_and_grads(flow):
    with tf.GradientTape() as tape:
      log_prob = flow.log_prob(x, bijector_kwargs=kwargs)
      loss = -tf.reduce_mean(log_prob)
    return log_prob, per_step_view(flow, tape.gradient(loss, flow.trainable_variables))

  lp_s, grads_s = log_prob_and_grads(stacked)
  lp_p, grads_p = log_prob_and_grads(per_step)
  np.testing.assert_allclose(lp_s, lp_p, rtol=1e-12)
  assert len(grads_s) == len(grads_p) == len(per_step.trainable_variables)
  for a, b in zip(grads_s, grads_p):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads_p) > 0

  # The reversible backward: the same gradients, from the stacked variables.
  loss = Loss(17)
  for flow in (stacked, per_step):
    _, _, grads = reversible.loss_and_gradients(
      flow, x, loss, flow.trainable_variables, label=label
    )
    expected_scale = 1.0 / (config.num_dims * np.log(2.0))  # bits/dim per nat
    for a, b in zip(per_step_view(flow, grads), grads_s):
      np.testing.assert_allclose(a, b * expected_scale, rtol=1e-7, atol=1e-12)

  s_s = glow_tf.sample(stacked, 3, temperature=0.7, seed=(7, 8), label=label[:3])
  s_p = glow_tf.sample(per_step, 3, temperature=0.7, seed=(7, 8), label=label[:3])
  np.testing.assert_allclose(s_s, s_p, rtol=1e-12, atol=1e-12)
  z = stacked.bijector.inverse(x, **kwargs)
  np.testing.assert_allclose(stacked.bijector.forward(z, **kwargs), x, atol=1e-10)


def test_initialisation_sets_each_steps_row():
  config = glow_tf.GlowConfig(**TINY)
  stacked = glow_tf.build_glow(config)
  per_step = glow_tf.build_glow(config.replace(stack_steps=False))
  x = images()
  assert glow_tf.initialize(stacked, x) == glow_tf.initialize(per_step, x) > 0
  for mine, theirs in zip(step_parameters(stacked), step_parameters(per_step), strict=True):
    for row, variable in zip(mine, theirs, strict=True):
      np.testing.assert_allclose(row.numpy(), variable.numpy(), rtol=1e-12, atol=1e-12)
  assert glow_tf.initialize(stacked, x) == 0  # Every row's flag was set.


def test_steps_of_different_structures_cannot_be_stacked():
  with pytest.raises(ValueError, match=r'one structure; step 1 has variables .*step 0'):
    nn.StepStack.build(lambda k: nn.ActNormLayer(3 + k), 2)


def filled_state(config):
  """A state of `config` with every value distinct: weights, moments, averages, counters."""
  state = TrainState.create(config, 'adam', 0.9)
  glow_tf.initialize(state.flow, images())
  checks.perturb(state.flow, 0.05, seed=5)
  for i, (m, v, average) in enumerate(
    zip(state.optimizer.first_moments, state.optimizer.second_moments, state.ema.averages)
  ):
    m.assign(tf.random.stateless_normal(m.shape, seed=[1, i], dtype=m.dtype))
    v.assign(tf.random.stateless_uniform(v.shape, seed=[2, i], dtype=v.dtype))
    average.assign(tf.random.stateless_normal(average.shape, seed=[3, i], dtype=average.dtype))
  for counter, value in ((state.step, 7), (state.optimizer.iterations, 5), (state.lr_scale, 0.5)):
    counter.assign(value)
  return state


def held_per_step(state):
  """Everything a state holds about the model, listed in the per-step layout."""
  flow = state.flow
  held = {
    'm': state.optimizer.first_moments,
    'v': state.optimizer.second_moments,
    'average': state.ema.averages,
  }
  listed = {'weights': [p.numpy() for params in step_parameters(flow) for p in params]}
  listed['weights'] += [v.numpy() for v in other_variables(flow)]
  for name, values in held.items():
    listed[name] = [g.numpy() for g in per_step_view(flow, values[: len(flow.trainable_variables)])]
  listed['counters'] = [
    int(state.step.numpy()),
    int(state.optimizer.iterations.numpy()),
    float(state.lr_scale.numpy()),
  ]
  return listed


@pytest.mark.parametrize('restoring', [False, True], ids=['initialised', 'to_be_restored'])
@pytest.mark.parametrize('written_stacked', [False, True], ids=['per_step', 'stacked'])
@pytest.mark.parametrize('read_stacked', [False, True], ids=['into_per_step', 'into_stacked'])
def test_a_checkpoint_of_either_layout_restores_into_either(
  tmp_path, written_stacked, read_stacked, restoring
):
  """Every value, into a state built with initial values or without (a resume's)."""
  config = glow_tf.GlowConfig(**{**TINY, 'num_classes': None})
  written = filled_state(config.replace(stack_steps=written_stacked))
  prefix = written.checkpoint().save(str(tmp_path / 'ckpt'))
  names = [name for name, _ in tf.train.list_variables(prefix)]
  assert any('_step_stacks' in name for name in names) == written_stacked

  read = TrainState.create(config.replace(stack_steps=read_stacked), 'adam', 0.9, restoring)
  assert read.awaiting_restore == restoring
  read.restore(prefix)
  assert not read.awaiting_restore
  expected, got = held_per_step(written), held_per_step(read)
  for name in expected:
    assert len(got[name]) == len(expected[name]), name
    for a, b in zip(got[name], expected[name]):
      np.testing.assert_array_equal(a, b, err_msg=name)
  np.testing.assert_array_equal(read.flow.log_prob(images()), written.flow.log_prob(images()))
