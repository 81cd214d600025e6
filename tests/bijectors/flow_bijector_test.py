"""forward_and_log_det / inverse_and_log_det: one pass through glow_tf layers and containers."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import glow_tf
from glow_tf.bijectors.flow_bijector import forward_and_log_det, inverse_and_log_det
from tests import checks

tfb = tfp.bijectors


def test_conditional_kwargs_reach_the_top_prior_through_chains_and_inverts():
  config = glow_tf.GlowConfig(image_shape=(8, 8, 3), levels=2, depth=1, width=8, num_classes=3)
  flow = glow_tf.build_glow(config)
  x = tf.random.stateless_uniform((4, 8, 8, 3), (1, 2), -0.5, 0.5)
  glow_tf.initialize(flow, x)
  checks.perturb(flow, 0.03)
  label = tf.constant([0, 1, 2, 1])
  kwargs = glow_tf.conditional_kwargs(label)  # Routed by name: {'top_prior': {'label': ...}}.
  encoder = flow.bijector.bijector
  # A user's chain with one of TFP's own bijectors, routed by part name as TFP does.
  chain = tfb.Chain([tfb.Scale(2.0), encoder], name='outer')
  chain_kwargs = {encoder.name: kwargs}
  z, log_det = forward_and_log_det(chain, x, **chain_kwargs)
  np.testing.assert_allclose(z, chain.forward(tf.identity(x), **chain_kwargs), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    log_det,
    chain.forward_log_det_jacobian(tf.identity(x), event_ndims=3, **chain_kwargs),
    rtol=1e-5,
  )
  # The label changes the answer, so it was not dropped on the way.
  other = {encoder.name: glow_tf.conditional_kwargs((label + 1) % 3)}
  assert not np.allclose(forward_and_log_det(chain, x, **other)[0], z)
  # tfb.Invert passes kwargs through, in either direction.
  latent, log_det = inverse_and_log_det(flow.bijector, x, **kwargs)
  np.testing.assert_allclose(latent, flow.bijector.inverse(tf.identity(x), **kwargs), atol=1e-5)
  np.testing.assert_allclose(
    log_det,
    flow.bijector.inverse_log_det_jacobian(tf.identity(x), event_ndims=3, **kwargs),
    rtol=1e-5,
  )
  np.testing.assert_allclose(forward_and_log_det(tfb.Invert(flow.bijector), x, **kwargs)[0], latent)
  x_back, _ = forward_and_log_det(flow.bijector, latent, event_ndims=1, **kwargs)
  np.testing.assert_allclose(x_back, x, atol=1e-4)
