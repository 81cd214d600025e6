"""Tests of glow_tf.bijectors.Squeeze."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.bijectors import Squeeze
from tests import checks


class TestSqueeze(checks.BijectorContract):
  def make(self, dtype):
    return Squeeze(dtype=dtype)


def official_squeeze(x):
  """openai/glow's squeeze2d, in NumPy."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def test_matches_official_channel_order():
  x = np.random.RandomState(0).randn(2, 6, 4, 3).astype(np.float32)
  np.testing.assert_array_equal(Squeeze().forward(x), official_squeeze(x))


def test_event_shapes():
  squeeze = Squeeze()
  assert squeeze.forward_event_shape([8, 6, 3]) == [4, 3, 12]
  assert squeeze.inverse_event_shape([4, 3, 12]) == [8, 6, 3]
  np.testing.assert_array_equal(squeeze.forward_event_shape_tensor([8, 6, 3]), [4, 3, 12])
  np.testing.assert_array_equal(squeeze.inverse_event_shape_tensor([4, 3, 12]), [8, 6, 3])


def test_extra_batch_dims_and_unknown_spatial_size():
  squeeze = Squeeze()
  x = tf.random.normal([2, 3, 4, 4, 1])
  y = squeeze.forward(x)
  assert y.shape == [2, 3, 2, 2, 4]
  np.testing.assert_array_equal(squeeze.inverse(tf.identity(y)), x)
  fn = tf.function(
    lambda t: squeeze.inverse(squeeze.forward(t)),
    input_signature=[tf.TensorSpec([None, None, None, 2])],
  )
  x = tf.random.normal([1, 6, 2, 2])
  np.testing.assert_array_equal(fn(x), x)


def test_odd_spatial_size_raises_naming_shapes():
  with pytest.raises(ValueError, match=r'multiples of 2; got event shape \[5, 4, 1\]'):
    Squeeze().forward(tf.zeros([2, 5, 4, 1]))


def test_inverse_needs_channels_multiple_of_4():
  with pytest.raises(ValueError, match=r'multiple of 4; got event shape \[2, 2, 6\]'):
    Squeeze().inverse(tf.zeros([1, 2, 2, 6]))
