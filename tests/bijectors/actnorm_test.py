"""Tests of glow_tf.bijectors.ActNorm."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors import ActNorm
from tests import checks


class TestActNorm(checks.BijectorContract):
  def make(self, dtype):
    return ActNorm(num_channels=2, dtype=dtype)


def test_starts_as_identity_with_zero_log_det():
  x = tf.random.normal([2, 4, 4, 3])
  actnorm = ActNorm(3)
  np.testing.assert_array_equal(actnorm.forward(x), x)
  assert float(actnorm.forward_log_det_jacobian(x, event_ndims=3)) == 0.0
  assert not bool(actnorm.initialized)


def test_data_dependent_init_normalises_each_channel():
  x = tf.random.normal([16, 5, 5, 3], mean=[1.0, -4.0, 10.0], stddev=[0.1, 3.0, 20.0], seed=2)
  actnorm = ActNorm(3)
  with nn.data_dependent_init():
    y = actnorm.forward(x)
  np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]), 0.0, atol=1e-5)
  np.testing.assert_allclose(tf.math.reduce_std(y, [0, 1, 2]), 1.0, rtol=1e-4)
  assert bool(actnorm.initialized)
  # log-det is H * W * sum(log s) with s = 1 / std.
  expected = -25 * np.sum(np.log(np.std(x.numpy(), axis=(0, 1, 2))))
  np.testing.assert_allclose(
    actnorm.forward_log_det_jacobian(x, event_ndims=3), expected, rtol=1e-4
  )


def test_second_init_does_not_reinitialise():
  actnorm = ActNorm(2)
  with nn.data_dependent_init():
    actnorm.forward(tf.random.normal([8, 3, 3, 2], seed=1))
  log_scale, shift = actnorm.log_scale.numpy(), actnorm.shift.numpy()
  with nn.data_dependent_init():
    actnorm.forward(10.0 + 5.0 * tf.random.normal([8, 3, 3, 2], seed=3))
  np.testing.assert_array_equal(actnorm.log_scale, log_scale)
  np.testing.assert_array_equal(actnorm.shift, shift)


def test_zero_variance_channel_stays_finite_with_unit_scale():
  x = tf.concat([tf.random.normal([8, 3, 3, 1]), tf.fill([8, 3, 3, 1], 7.0)], axis=-1)
  actnorm = ActNorm(2)
  with nn.data_dependent_init():
    y = actnorm.forward(x)
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(actnorm.log_scale))
  assert float(actnorm.log_scale[1]) == 0.0
  np.testing.assert_allclose(y[..., 1], 0.0, atol=1e-6)
  assert np.isfinite(float(actnorm.forward_log_det_jacobian(x, event_ndims=3)))


def test_init_outside_eager_raises():
  actnorm = ActNorm(2)

  @tf.function
  def init(x):
    with nn.data_dependent_init():
      return actnorm.forward(x)

  with pytest.raises(RuntimeError, match='eagerly'):
    init(tf.zeros([1, 2, 2, 2]))


def test_wrong_channel_count_raises_naming_shapes():
  with pytest.raises(ValueError, match=r'\[\.\.\., H, W, 3\].*\[4, 4, 2\]'):
    ActNorm(3).forward(tf.zeros([1, 4, 4, 2]))


def test_invalid_num_channels_raises():
  with pytest.raises(ValueError, match='got 0'):
    ActNorm(0)
