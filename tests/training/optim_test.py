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


def test_a_step_not_applied_changes_nothing():
  variables, grads = variables_and_grads()
  before = [v.numpy() for v in variables]
  optimizer = optim.Optimizer(variables, groups=GROUPS)
  optimizer.apply(grads, 0.01, apply_if=tf.constant(False), grad_scale=tf.constant(0.5))
  for variable, value in zip(variables, before):
    np.testing.assert_array_equal(variable.numpy(), value)
  assert int(optimizer.iterations.numpy()) == 0
  assert all(not np.any(m.numpy()) for m in optimizer.first_moments)
