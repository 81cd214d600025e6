"""Tests of glow_tf.bijectors.InvertibleConv1x1 (LU) and PlainConv1x1."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.bijectors import InvertibleConv1x1, PlainConv1x1
from tests import checks


class TestInvertibleConv1x1(checks.BijectorContract):
  def make(self, dtype):
    return InvertibleConv1x1(num_channels=2, seed=(3, 4), dtype=dtype)


class TestInvertibleConv1x1Wide(checks.BijectorContract):
  event_shape = (2, 2, 6)

  def make(self, dtype):
    return InvertibleConv1x1(num_channels=6, seed=(5, 6), dtype=dtype)


class TestPlainConv1x1(checks.BijectorContract):
  event_shape = (2, 2, 6)

  def make(self, dtype):
    return PlainConv1x1(num_channels=6, seed=(5, 6), dtype=dtype)


def test_lu_weight_starts_as_a_rotation_and_factors_reproduce_it():
  conv = InvertibleConv1x1(8, seed=(1, 2), dtype=tf.float64)
  w = conv.weight().numpy()
  np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-10)
  np.testing.assert_allclose(np.sum(conv.log_s), 0.0, atol=1e-10)  # |det| of a rotation is 1.
  permutation, lower, upper = [t.numpy() for t in conv.factors()]
  np.testing.assert_array_equal(np.triu(lower, 1), 0.0)
  np.testing.assert_array_equal(np.diag(lower), 1.0)
  np.testing.assert_array_equal(np.tril(upper, -1), 0.0)
  np.testing.assert_allclose(np.sort(permutation, axis=None)[-8:], 1.0)
  np.testing.assert_allclose(conv.inverse_weight().numpy() @ w, np.eye(8), atol=1e-10)


def test_lu_log_det_is_h_w_sum_log_s_and_matches_slogdet():
  conv = InvertibleConv1x1(4, seed=(0, 9), dtype=tf.float64)
  checks.perturb(conv, 0.5)
  x = tf.random.normal([2, 3, 5, 4], dtype=tf.float64)
  expected = 15 * np.linalg.slogdet(conv.weight().numpy())[1]
  np.testing.assert_allclose(conv.forward_log_det_jacobian(x, event_ndims=3), expected, rtol=1e-10)
  np.testing.assert_allclose(15 * np.sum(conv.log_s), expected, rtol=1e-10)


def test_lu_step_needs_no_determinant_or_general_inverse():
  conv = InvertibleConv1x1(4, seed=(0, 1))

  @tf.function
  def both_directions(x):
    y = conv.forward(x)
    return conv.inverse(tf.identity(y)), conv.forward_log_det_jacobian(x, event_ndims=3)

  graph = both_directions.get_concrete_function(tf.TensorSpec([None, 4, 4, 4])).graph
  op_types = {op.type for op in graph.get_operations()}
  assert not op_types & {'MatrixDeterminant', 'LogMatrixDeterminant', 'MatrixInverse', 'Lu'}
  assert 'MatrixTriangularSolve' in op_types


def test_different_seeds_give_different_weights():
  a = InvertibleConv1x1(4, seed=(0, 1)).weight().numpy()
  b = InvertibleConv1x1(4, seed=(0, 2)).weight().numpy()
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, InvertibleConv1x1(4, seed=(0, 1)).weight().numpy())


def test_fixed_factors_are_not_trainable():
  conv = InvertibleConv1x1(4)
  names = sorted(v.name.split('/')[-1] for v in conv.trainable_variables)
  assert names == ['log_s:0', 'lower:0', 'upper:0']


@pytest.mark.parametrize('cls', [InvertibleConv1x1, PlainConv1x1])
def test_wrong_channel_count_raises(cls):
  with pytest.raises(ValueError, match=r'\[\.\.\., H, W, 4\].*got event shape \[2, 2, 3\]'):
    cls(4).forward(tf.zeros([1, 2, 2, 3]))
