"""Tests of glow_tf.bijectors.AffineCoupling, AdditiveCoupling and SplitPrior."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import bijectors as gb
from glow_tf import nn
from glow_tf.bijectors import AdditiveCoupling, AffineCoupling, SplitPrior
from glow_tf.bijectors.flow_bijector import forward_and_log_det, reversible_backward
from tests import checks


def affine(channels=4, width=8, dtype=tf.float32):
  kept = channels // 2
  network = nn.CouplingNetwork(kept, 2 * (channels - kept), width, seed=(1, 2), dtype=dtype)
  return AffineCoupling(network, channels, dtype=dtype)


def additive(channels=4, width=8, dtype=tf.float32):
  kept = channels // 2
  network = nn.CouplingNetwork(kept, channels - kept, width, seed=(1, 2), dtype=dtype)
  return AdditiveCoupling(network, channels, dtype=dtype)


class TestAffineCoupling(checks.BijectorContract):
  event_shape = (4, 4, 4)

  def make(self, dtype):
    return affine(dtype=dtype)


class TestAffineCouplingOddChannels(checks.BijectorContract):
  event_shape = (2, 2, 5)

  def make(self, dtype):
    return affine(channels=5, dtype=dtype)


class TestAdditiveCoupling(checks.BijectorContract):
  event_shape = (4, 4, 4)

  def make(self, dtype):
    return additive(dtype=dtype)


class TestSplitPrior(checks.BijectorContract):
  event_shape = (4, 4, 4)

  def make(self, dtype):
    return SplitPrior(4, dtype=dtype)


def test_affine_at_init_is_the_official_sigmoid_2_scaling():
  coupling = affine()
  x = tf.random.normal([2, 4, 4, 4])
  y = coupling.forward(x)
  scale = 1.0 / (1.0 + np.exp(-2.0))
  np.testing.assert_array_equal(y[..., :2], x[..., :2])
  np.testing.assert_allclose(y[..., 2:], scale * x[..., 2:], rtol=1e-6)
  np.testing.assert_allclose(
    coupling.forward_log_det_jacobian(x, event_ndims=3), 4 * 4 * 2 * np.log(scale), rtol=1e-5
  )


def test_affine_matches_hand_computed_formula():
  coupling = affine()
  checks.perturb(coupling, 0.3)
  x = tf.random.normal([2, 4, 4, 4], seed=5)
  h = coupling.network(x[..., :2]).numpy()
  shift, scale = h[..., :2], 1.0 / (1.0 + np.exp(-(h[..., 2:] + 2.0)))
  y = coupling.forward(x)
  np.testing.assert_allclose(y[..., 2:], (x[..., 2:] + shift) * scale, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    coupling.forward_log_det_jacobian(x, event_ndims=3),
    np.log(scale).sum(axis=(1, 2, 3)),
    rtol=1e-5,
  )


def test_additive_starts_as_identity_with_constant_jacobian():
  coupling = additive()
  x = tf.random.normal([2, 4, 4, 4])
  np.testing.assert_array_equal(coupling.forward(x), x)
  assert coupling.is_constant_jacobian
  assert float(coupling.forward_log_det_jacobian(x, event_ndims=3)) == 0.0


def test_split_prior_standardises_under_its_gaussian():
  prior = SplitPrior(4)
  x = tf.random.normal([2, 4, 4, 4])
  np.testing.assert_array_equal(prior.forward(x), x)  # N(0, 1) at init.
  checks.perturb(prior, 0.2)
  x = tf.identity(x)
  mean, log_sigma = np.split(prior.network(x[..., :2]).numpy(), 2, axis=-1)
  np.testing.assert_allclose(
    prior.forward(x)[..., 2:], (x[..., 2:] - mean) / np.exp(log_sigma), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    prior.forward_log_det_jacobian(x, event_ndims=3), -log_sigma.sum(axis=(1, 2, 3)), rtol=1e-5
  )


def test_network_runs_once_per_call_and_no_result_outlives_its_call():
  coupling = affine()
  spec = tf.TensorSpec([None, 4, 4, 4])

  def reads(fn):
    graph = tf.function(fn).get_concrete_function(spec).graph
    return [
      checks.variable_reads(graph, k)
      for k in (coupling.network.conv_in.kernel, coupling.network.conv_out.kernel)
    ]

  # One public call computes value and log-det in one pass of the network.
  assert reads(lambda y: coupling.inverse_log_det_jacobian(y, event_ndims=3)) == [1, 1]
  # Within one call scope (as inside a distribution's log_prob) calls share it ...
  with_scope = lambda y: _in_call_scope(
    lambda: (coupling.inverse(y), coupling.inverse_log_det_jacobian(y, event_ndims=3))
  )
  assert reads(with_scope) == [1, 1]
  # ... and two separate calls never see each other's results.
  separate = lambda y: (coupling.inverse(y), coupling.inverse_log_det_jacobian(y, event_ndims=3))
  assert reads(separate) == [2, 2]


def split_prior(dtype=tf.float32):
  return SplitPrior(4, dtype=dtype)


@pytest.mark.parametrize('make', [affine, additive, split_prior])
def test_the_reversible_backward_runs_the_network_once_and_equals_the_tape(make):
  coupling = make(dtype=tf.float64)
  checks.perturb(coupling, seed=3)  # Not the zero-initialised start: every path is non-trivial.
  normal = lambda shape, i: tf.random.stateless_normal(shape, seed=[7, i], dtype=tf.float64)
  x, dy, d_log_det = normal([3, 4, 4, 4], 0), normal([3, 4, 4, 4], 1), normal([3], 2)
  weights = coupling.trainable_variables
  with tf.GradientTape() as tape:
    tape.watch(x)
    y, log_det = forward_and_log_det(coupling, x)
  seed = tf.reduce_sum(d_log_det) if log_det.shape.rank == 0 else d_log_det
  expected = tape.gradient([y, log_det], [x, *weights], output_gradients=[dy, seed])

  x_again, dx, pairs = reversible_backward(coupling, y, dy, d_log_det, nn.trained)
  np.testing.assert_allclose(x_again, x, rtol=1e-12, atol=1e-12)
  assert [w.ref() for w, _ in pairs] == [w.ref() for w in weights]
  for got, want in zip([dx, *(g for _, g in pairs)], expected):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

  # One pass of the network: its weights are read once (inverting, then recomputing
  # the forward pass under a tape, reads them twice).
  backward = tf.function(lambda y: reversible_backward(coupling, y, dy, d_log_det, nn.trained)[1])
  graph = backward.get_concrete_function(tf.TensorSpec([3, 4, 4, 4], tf.float64)).graph
  assert checks.variable_reads(graph, coupling.network.trainable_variables[0]) == 1


def _in_call_scope(fn):
  with gb.call_scope():
    return fn()


def test_network_variables_are_tracked():
  coupling = affine()
  names = {v.name for v in coupling.trainable_variables}
  assert len(names) == len(coupling.trainable_variables) == 9


@pytest.mark.parametrize('make', [affine, additive])
def test_too_few_channels_raises(make):
  with pytest.raises(ValueError, match='num_channels >= 2.*got 1'):
    make(channels=1)


@pytest.mark.parametrize('make, width, expected', [(affine, 2, 4), (additive, 4, 2)])
def test_a_network_of_the_wrong_width_is_refused_not_broadcast(make, width, expected):
  coupling = make()
  wrong = type(coupling)(nn.CouplingNetwork(2, width, 8), 4)
  with pytest.raises(
    ValueError, match=rf'needs a network with {expected} output channels.*got {width}'
  ):
    wrong.forward(tf.zeros([1, 4, 4, 4]))
