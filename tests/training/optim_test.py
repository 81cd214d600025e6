"""Tests of the optimiser's grouped updates, its global norm and clipping."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.training import optim

SHAPES = [(3, 2), (4,), (3, 2), (4,), (5,)]
GROUPS = [[0, 1], [2, 3], [4]]  # Two groups of one signature (they share a trace), one other.


def variables_and_grads(seed=0):
  rng = np.random.RandomState(seed)
  variables = [tf.Variable(rng.randn(*s).astype('float32')) for s in SHAPES]
  grads = [tf.constant(rng.randn(*s).astype('float32')) for s in SHAPES]
  return variables, grads


def reference_step(kind, params, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
  """One step from zero moments, written out (Kingma & Ba, 2015, algorithm 1 and 2)."""
  out = []
  for p, g in zip(params, grads):
    m = (1 - b1) * g
    if kind == 'adam':
      v = (1 - b2) * g**2
      out.append(p - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps))
    else:
      v = np.abs(g)
      out.append(p - lr / (1 - b1) * m / (v + eps))
  return out


@pytest.mark.parametrize('kind', optim.OPTIMIZERS)
def test_one_step_matches_the_written_out_update(kind):
  variables, grads = variables_and_grads()
  before = [v.numpy() for v in variables]
  optimizer = optim.Optimizer(variables, kind=kind, groups=GROUPS)
  optimizer.apply(grads, 0.01)
  expected = reference_step(kind, before, [g.numpy() for g in grads], 0.01)
  for variable, value in zip(variables, expected):
    np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6)
  assert int(optimizer.iterations.numpy()) == 1


def test_global_norm_is_the_norm_of_every_gradient():
  variables, grads = variables_and_grads()
  optimizer = optim.Optimizer(variables, groups=GROUPS)
  np.testing.assert_allclose(
    optimizer.global_norm(grads).numpy(), tf.linalg.global_norm(grads).numpy(), rtol=1e-6
  )


def test_clipping_scales_the_gradients_to_the_clip_norm():
  variables, grads = variables_and_grads()
  twins, _ = variables_and_grads()
  clipped, plain = optim.Optimizer(variables, groups=GROUPS), optim.Optimizer(twins)
  norm = clipped.global_norm(grads)
  assert clipped.clip_scale(norm, 0.0) is None  # 0: no clipping.
  np.testing.assert_allclose(clipped.clip_scale(norm, 1e6).numpy(), 1.0)  # Below the clip.
  scale = clipped.clip_scale(norm, 0.5)
  np.testing.assert_allclose(scale.numpy(), 0.5 / norm.numpy(), rtol=1e-6)
  clipped.apply(grads, 0.01, grad_scale=scale)
  plain.apply([g * scale for g in grads], 0.01)
  for a, b in zip(variables, twins):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
  # A first Adamax step hardly depends on the gradients' scale (m / |g|): the first
  # moments do, m = (1 - b1) * scale * g, so an ignored scale fails here.
  for m, m_plain, g in zip(clipped.first_moments, plain.first_moments, grads):
    np.testing.assert_allclose(m.numpy(), m_plain.numpy(), rtol=1e-6)
    np.testing.assert_allclose(m.numpy(), 0.1 * scale.numpy() * g.numpy(), rtol=1e-5)


@pytest.mark.parametrize('kind', optim.OPTIMIZERS)
def test_a_step_not_applied_changes_nothing(kind):
  """Skipped with non-finite gradients after a real step (moments not zero), with and
  without a gradient scale: parameters and both moments stay bit for bit."""
  variables, grads = variables_and_grads()
  optimizer = optim.Optimizer(variables, kind=kind, groups=GROUPS)
  optimizer.apply(grads, 0.01)
  state = lambda: [  # noqa: E731
    t.numpy() for t in variables + optimizer.first_moments + optimizer.second_moments
  ]
  before = state()
  poisoned = [tf.fill(g.shape, np.nan if i % 2 else np.inf) for i, g in enumerate(grads)]
  for grad_scale in (None, tf.constant(0.5)):
    optimizer.apply(poisoned, 0.01, apply_if=tf.constant(False), grad_scale=grad_scale)
    for value, expected in zip(state(), before):
      np.testing.assert_array_equal(value, expected)
  assert int(optimizer.iterations.numpy()) == 1
  optimizer.apply(grads, 0.01, apply_if=tf.constant(True))  # And the condition is read.
  assert int(optimizer.iterations.numpy()) == 2
  assert not np.array_equal(variables[0].numpy(), before[0])


def test_an_average_not_updated_changes_nothing():
  variables, _ = variables_and_grads()
  ema = optim.ExponentialMovingAverage(variables, decay=0.9, groups=GROUPS)
  for variable in variables:
    variable.assign_add(tf.ones_like(variable))
  ema.update(apply_if=tf.constant(True))
  before = [a.numpy() for a in ema.averages]
  variables[0].assign(tf.fill(variables[0].shape, np.nan))  # Even then, nothing moves.
  variables[1].assign(tf.fill(variables[1].shape, np.inf))
  ema.update(apply_if=tf.constant(False), num_updates=tf.constant(3))
  for average, expected in zip(ema.averages, before):
    np.testing.assert_array_equal(average.numpy(), expected)
  ema.update(apply_if=tf.constant(True))
  assert not np.array_equal(ema.averages[2].numpy(), before[2])


@pytest.mark.parametrize('kind', optim.OPTIMIZERS)
def test_groups_of_one_structure_share_one_trace_whatever_their_shapes(kind):
  """A deep flow's levels: groups of the same ranks and dtypes, of other sizes. One trace
  each of the update, the average and the norm serves them all, and each group's
  values are its own (the written-out update, the average of its own variables)."""
  rng = np.random.RandomState(3)
  shapes = [(3, 2), (4,), (5, 7), (6,), (2, 9), (8,)]
  variables = [tf.Variable(rng.randn(*s).astype('float32')) for s in shapes]
  grads = [tf.constant(rng.randn(*s).astype('float32')) for s in shapes]
  groups = [[0, 1], [2, 3], [4, 5]]
  before = [v.numpy() for v in variables]
  optimizer = optim.Optimizer(variables, kind=kind, groups=groups)
  ema = optim.ExponentialMovingAverage(variables, decay=0.5, groups=groups)
  np.testing.assert_allclose(
    optimizer.global_norm(grads).numpy(), tf.linalg.global_norm(grads).numpy(), rtol=1e-6
  )
  optimizer.apply(grads, 0.01)
  expected = reference_step(kind, before, [g.numpy() for g in grads], 0.01)
  for variable, value in zip(variables, expected):
    np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6)
  ema.update()  # average = 0.5 * before + 0.5 * after
  for average, old, new in zip(ema.averages, before, expected):
    np.testing.assert_allclose(average.numpy(), 0.5 * old + 0.5 * new, rtol=1e-5, atol=1e-6)
  for shared in (optimizer._apply_group, optimizer._group_sum_of_squares, ema._update_group):
    assert shared.tracing_count() == 1, shared.__name__
