"""Tests of glow_tf.reversible: reversible gradients equal ordinary backprop."""

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf.training import reversible
from glow_tf.training.loss import Loss
from tests import checks

TINY = dict(image_shape=(8, 8, 2), levels=2, depth=3, width=8)


def images(batch, dtype=np.float32):
  rng = np.random.RandomState(0)
  return (rng.rand(batch, 8, 8, 2) - 0.5).astype(dtype)


@pytest.mark.parametrize(
  'overrides, dtype, rtol',
  [
    ({}, 'float64', 1e-8),
    ({}, 'float32', 2e-3),
    ({'coupling': 'additive', 'permutation': 'shuffle', 'learn_top': False}, 'float64', 1e-8),
    ({'num_classes': 3}, 'float64', 1e-8),
    # Several depths through the compiled steps, and the per-layer path.
    ({'depth': 1}, 'float64', 1e-8),
    ({'depth': 6, 'levels': 1}, 'float64', 1e-8),
    ({'depth': 6, 'levels': 1}, 'float32', 2e-3),
    ({'compile_steps': False}, 'float64', 1e-8),
  ],
)
def test_matches_ordinary_backprop(overrides, dtype, rtol):
  config = glow_tf.GlowConfig(**{**TINY, **overrides, 'dtype': dtype})
  flow = glow_tf.build_glow(config)
  x = tf.constant(images(6, np.dtype(dtype)))
  glow_tf.initialize(flow, x)
  checks.perturb(flow, 0.03, seed=4)
  label = tf.constant([0, 1, 2, 0, 1, 2]) if config.num_classes else None
  classifier = glow_tf.build_classifier(flow) if config.num_classes else None
  variables = list(flow.trainable_variables)
  if classifier is not None:
    checks.perturb(classifier, 0.1)
    variables += list(classifier.trainable_variables)

  with tf.GradientTape() as tape:
    kwargs = glow_tf.conditional_kwargs(label)
    bpd = glow_tf.bits_per_dim(flow.log_prob(x, bijector_kwargs=kwargs), config.num_dims, 17)
    loss = bpd
    if classifier is not None:
      logits = classifier(glow_tf.top_latent(flow, x))
      loss = loss + 0.5 * tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits) / np.log(2)
    total = tf.reduce_mean(loss)
  expected = tape.gradient(total, variables)

  loss_r, bpd_r, grads = reversible.loss_and_gradients(
    flow, x, Loss(17, class_loss_weight=0.5), variables, label=label, classifier=classifier
  )
  np.testing.assert_allclose(bpd_r, bpd, rtol=1e-6)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  assert len(grads) == len(variables)
  for variable, want, got in zip(variables, expected, grads):
    want = np.zeros(variable.shape) if want is None else tf.convert_to_tensor(want).numpy()
    scale = max(np.max(np.abs(want)), 1e-6)
    np.testing.assert_allclose(got.numpy() / scale, want / scale, atol=rtol, err_msg=variable.name)


def test_traces_inside_tf_function_with_a_none_batch():
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  glow_tf.initialize(flow, images(8))
  variables = flow.trainable_variables
  fn = tf.function(
    lambda x: reversible.loss_and_gradients(flow, x, Loss(17), variables),
    input_signature=[tf.TensorSpec([None, 8, 8, 2])],
  )
  loss, bpd, grads = fn(images(3))
  assert loss.shape == [3] and all(np.all(np.isfinite(g)) for g in grads)
