"""No call ever returns a value computed by an earlier call (glow_tf.bijectors.call_cache).

Each test keeps every tensor an earlier call returned alive (TFP's cache hands a
result back while its output lives), then checks what a later call gives: the
gradients and values of a fresh flow that holds the same weights.
"""

import gc

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import glow_tf
from glow_tf import bijectors as gb
from glow_tf import nn
from glow_tf.bijectors import call_cache
from tests import checks

tfb = tfp.bijectors

CONFIG = glow_tf.GlowConfig(image_shape=(8, 8, 3), levels=2, depth=2, width=16)
CLASSES = glow_tf.GlowConfig(image_shape=(8, 8, 3), levels=2, depth=2, width=16, num_classes=3)


def ready(config):
  """A flow initialised on data, its weights then perturbed, and a batch `x` of images."""
  flow = glow_tf.build_glow(config)
  x = tf.random.stateless_uniform((5, *config.image_shape), (1, 2), -0.5, 0.5)
  glow_tf.initialize(flow, x)
  checks.perturb(flow, 0.03, seed=3)
  label = tf.constant([0, 1, 2, 0, 1]) if config.num_classes else None
  return flow, x, label


def copy_of(flow, config):
  """A new flow with the same weights: what an uncached computation gives."""
  fresh = glow_tf.build_glow(config)
  for target, source in zip(fresh.variables, flow.variables):
    target.assign(source)
  return fresh


def nll_and_grads(flow, x, label):
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(flow.log_prob(x, bijector_kwargs=glow_tf.conditional_kwargs(label)))
  return loss, tape.gradient(loss, flow.trainable_variables)


def latent(flow, x, label):
  """A flat latent computed without touching `flow`'s own calls (a copy's)."""
  return tf.identity(flow.bijector.inverse(x, **glow_tf.conditional_kwargs(label)))


# What a user does first; each returns (the tensors it returned, the images whose
# log_prob is then taken).
EARLIER_CALLS = {
  'inverse': lambda flow, x, label: (
    flow.bijector.inverse(x, **glow_tf.conditional_kwargs(label)),
    x,
  ),
  'forward': lambda flow, x, label: (lambda y: (y, y))(
    flow.bijector.forward(tf.random.normal([5, 192], seed=4), **glow_tf.conditional_kwargs(label))
  ),
  'invert_forward': lambda flow, x, label: (
    tfb.Invert(flow.bijector).forward(x, **glow_tf.conditional_kwargs(label)),
    x,
  ),
  'encode': lambda flow, x, label: (glow_tf.encode(flow, x, label=label), x),
  'sample': lambda flow, x, label: (lambda y: (y, y))(
    flow.sample(5, seed=(7, 8), bijector_kwargs=glow_tf.conditional_kwargs(label))
  ),
}


@pytest.mark.parametrize('config', [CONFIG, CLASSES], ids=['unconditional', 'class_conditional'])
@pytest.mark.parametrize('earlier', sorted(EARLIER_CALLS))
def test_log_prob_after_an_earlier_call_has_every_gradient_of_a_fresh_flow(earlier, config):
  flow, x, label = ready(config)
  kept, images = EARLIER_CALLS[earlier](flow, x, label)  # `kept` stays alive.
  loss, grads = nll_and_grads(flow, images, label)
  assert [v.name for v, g in zip(flow.trainable_variables, grads) if g is None] == []
  fresh_loss, fresh_grads = nll_and_grads(copy_of(flow, config), tf.identity(images), label)
  np.testing.assert_allclose(loss, fresh_loss, rtol=1e-5)
  for variable, grad, expected in zip(flow.trainable_variables, grads, fresh_grads):
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6, err_msg=variable.name)
  del kept


def _outputs(flow, x, z, label):
  kwargs = glow_tf.conditional_kwargs(label)
  return dict(
    log_prob=flow.log_prob(x, bijector_kwargs=kwargs),
    inverse=flow.bijector.inverse(x, **kwargs),
    forward=flow.bijector.forward(z, **kwargs),
    inverse_log_det=flow.bijector.inverse_log_det_jacobian(x, event_ndims=3, **kwargs),
  )


def _change_weights(flow):
  for i, v in enumerate(flow.trainable_variables):
    v.assign_add(0.01 * tf.random.stateless_normal(v.shape, (5, i), dtype=v.dtype))


@pytest.mark.parametrize('config', [CONFIG, CLASSES], ids=['unconditional', 'class_conditional'])
@pytest.mark.parametrize('regime', ['eager', 'function'])
def test_changed_weights_give_new_values_on_the_same_input_tensors(regime, config):
  flow, x, label = ready(config)
  z = latent(copy_of(flow, config), x, label)

  def compute_change_compute():
    before = _outputs(flow, x, z, label)
    _change_weights(flow)
    return before, _outputs(flow, x, z, label)

  if regime == 'function':
    compute_change_compute = tf.function(compute_change_compute)
  before_weights = copy_of(flow, config)
  before, after = compute_change_compute()
  after_weights = copy_of(flow, config)
  fresh_x, fresh_z = tf.identity(x), tf.identity(z)
  for name, expected in _outputs(before_weights, fresh_x, fresh_z, label).items():
    np.testing.assert_allclose(before[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
  for name, expected in _outputs(after_weights, fresh_x, fresh_z, label).items():
    np.testing.assert_allclose(after[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert not np.allclose(after[name], before[name]), name


def _count_network_calls(monkeypatch):
  calls = []
  original = nn.CouplingNetwork._call

  def counted(self, x):
    calls.append(self.name)
    return original(self, x)

  monkeypatch.setattr(nn.CouplingNetwork, '_call', counted)
  return calls


def test_each_coupling_network_runs_once_per_public_call(monkeypatch):
  # Layer by layer, each network call is a Python call to count. (Compiled steps call
  # one traced network per level K times: tests/model/flow_test.py counts its reads.)
  flow, x, _ = ready(CONFIG.replace(compile_steps=False))
  calls = _count_network_calls(monkeypatch)
  networks = CONFIG.levels * CONFIG.depth
  flow.log_prob(x)
  assert len(calls) == networks
  flow.experimental_sample_and_log_prob(2, seed=(1, 1))
  assert len(calls) == 2 * networks
  flow.bijector.inverse_log_det_jacobian(x, event_ndims=3)
  assert len(calls) == 3 * networks
  flow.log_prob(x)  # The same tensor again: computed again, not looked up.
  assert len(calls) == 4 * networks


def test_results_live_within_one_call_scope_and_are_forgotten_after():
  flow, x, _ = ready(CONFIG)
  with gb.call_scope():
    z = flow.bijector.inverse(x)
    assert flow.bijector.inverse(x) is z  # Shared within the scope ...
    assert flow.bijector.forward(z) is x  # ... both ways.
  assert call_cache._results() is None
  assert flow.bijector.inverse(x) is not z  # Forgotten after.


def test_a_long_eager_loop_keeping_outputs_alive_keeps_nothing_in_any_cache():
  flow, x, _ = ready(CONFIG)
  tfp_storage = tfb.Bijector._cache.storage  # TFP's own cache, shared by its bijectors.

  def step():
    return (
      flow.log_prob(x),
      flow.bijector.inverse(x),
      flow.bijector.forward_log_det_jacobian(tf.zeros([5, 192])),
      flow.sample(2, seed=(1, 2)),
    )

  kept = step()
  gc.collect()
  objects, entries = len(gc.get_objects()), len(tfp_storage)
  for _ in range(100):
    kept = step()  # noqa: F841 (each iteration's outputs stay alive into the next)
  gc.collect()
  assert call_cache._results() is None
  assert len(tfp_storage) == entries
  # Tensors and Python objects do not pile up (a cache record per call would be 100s).
  assert len(gc.get_objects()) - objects < 50
