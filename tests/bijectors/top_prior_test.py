"""Tests of glow_tf.bijectors.TopPrior."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.bijectors import TopPrior
from tests import checks

LATENT_SIZE, TOP_SHAPE = 20, (2, 2, 3)


class TestLearnedTopPrior(checks.BijectorContract):
  event_shape = (LATENT_SIZE,)
  event_ndims = 1

  def make(self, dtype):
    return TopPrior(LATENT_SIZE, TOP_SHAPE, dtype=dtype)


class TestClassConditionalTopPrior(checks.BijectorContract):
  event_shape = (LATENT_SIZE,)
  event_ndims = 1

  def make(self, dtype):
    return TopPrior(LATENT_SIZE, TOP_SHAPE, num_classes=4, dtype=dtype)

  def kwargs(self, batch):
    return {'label': np.arange(batch) % 4}


def test_only_the_top_segment_is_transformed():
  prior = TopPrior(LATENT_SIZE, TOP_SHAPE)
  checks.perturb(prior, 0.5)
  x = tf.random.normal([2, LATENT_SIZE])
  y = prior.forward(x)
  np.testing.assert_array_equal(y[:, :8], x[:, :8])
  loc, log_scale = prior.loc_and_log_scale()
  z = tf.reshape(x[:, 8:], [2, *TOP_SHAPE])
  expected = (z - loc) * tf.exp(-log_scale)
  np.testing.assert_allclose(tf.reshape(y[:, 8:], [2, *TOP_SHAPE]), expected, rtol=1e-6)
  np.testing.assert_allclose(
    prior.forward_log_det_jacobian(x, event_ndims=1), -4 * np.sum(log_scale), rtol=1e-6
  )


def test_integer_and_one_hot_labels_agree_and_labels_matter():
  prior = TopPrior(LATENT_SIZE, TOP_SHAPE, learn_top=False, num_classes=3)
  checks.perturb(prior, 0.5)
  x = tf.random.normal([3, LATENT_SIZE])
  by_int = prior.forward(x, label=[0, 1, 2])
  by_one_hot = prior.forward(tf.identity(x), label=tf.eye(3))
  np.testing.assert_allclose(by_int, by_one_hot, rtol=1e-6)
  other = prior.forward(tf.identity(x), label=[2, 0, 1])
  assert not np.allclose(by_int, other)


def test_conditional_prior_without_label_raises():
  prior = TopPrior(LATENT_SIZE, TOP_SHAPE, num_classes=3)
  with pytest.raises(ValueError, match=r'num_classes=3\) and needs a label'):
    prior.forward(tf.zeros([1, LATENT_SIZE]))


def test_unconditional_prior_with_label_raises():
  with pytest.raises(ValueError, match='unconditional.*got a label'):
    TopPrior(LATENT_SIZE, TOP_SHAPE).forward(tf.zeros([1, LATENT_SIZE]), label=[1])


def test_one_hot_of_wrong_width_raises():
  prior = TopPrior(LATENT_SIZE, TOP_SHAPE, num_classes=3)
  with pytest.raises(ValueError, match=r'\[\.\.\., 3\]; got a float32 tensor of shape \(1, 4\)'):
    prior.forward(tf.zeros([1, LATENT_SIZE]), label=tf.zeros([1, 4]))


def test_identity_configuration_is_refused():
  with pytest.raises(ValueError, match='identity'):
    TopPrior(LATENT_SIZE, TOP_SHAPE, learn_top=False)


@pytest.mark.parametrize('label, bad', [([0, 4], 4), ([-1, 2], -1)])
def test_a_class_out_of_range_is_refused_not_made_no_class(label, bad):
  prior = TopPrior(LATENT_SIZE, TOP_SHAPE, num_classes=4)
  x = tf.zeros([2, LATENT_SIZE])
  with pytest.raises(ValueError, match=rf'class labels in 0\.\.3; got \[{bad}\]'):
    prior.forward(x, label=tf.constant(label))
  in_graph = tf.function(lambda x, y: prior.forward(x, label=y))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'class labels in 0\.\.3'):
    in_graph(x, tf.constant(label))
  np.testing.assert_allclose(in_graph(x, tf.constant([0, 3])), prior.forward(x, label=[0, 3]))
