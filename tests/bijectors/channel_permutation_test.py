"""Tests of glow_tf.bijectors.ChannelPermutation."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.bijectors import ChannelPermutation
from tests import checks


class TestShuffle(checks.BijectorContract):
  event_shape = (2, 2, 5)

  def make(self, dtype):
    return ChannelPermutation.shuffle(5, seed=3, dtype=dtype)


def test_reverse_reverses_channels():
  x = tf.random.normal([2, 3, 3, 4])
  np.testing.assert_array_equal(ChannelPermutation.reverse(4).forward(x), x[..., ::-1])


def test_shuffle_is_fixed_by_seed_and_not_identity():
  a = ChannelPermutation.shuffle(16, seed=7).permutation.numpy()
  np.testing.assert_array_equal(a, ChannelPermutation.shuffle(16, seed=7).permutation.numpy())
  assert not np.array_equal(a, np.arange(16))
  assert not np.array_equal(a, ChannelPermutation.shuffle(16, seed=8).permutation.numpy())


def test_not_a_permutation_raises():
  with pytest.raises(ValueError, match=r'permutation of range\(C\); got'):
    ChannelPermutation([0, 0, 1])
