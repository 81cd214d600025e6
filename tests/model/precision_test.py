"""Tests of mixed precision: bfloat16 or float16 networks, everything else float32."""

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf.errors import ConfigError
from tests import checks

TINY = dict(image_shape=(8, 8, 2), levels=2, depth=2, width=8)
# What may compute in bfloat16: the networks' convolutions (a 1x1 one is a MatMul on
# reshaped images), their bias and ReLU, and the casts and reshapes around them.
# And their gradients; with compiled steps, the bfloat16 activations a step's
# forward call hands its gradient's call (call outputs and function inputs).
CONVOLUTIONS = {'Conv2D', 'MatMul', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'}
NETWORK_OPS = CONVOLUTIONS | {'Cast', 'BiasAdd', 'BiasAddGrad', 'Relu', 'ReluGrad', 'Reshape'}
# Calls of the compiled steps (their bodies are checked as graphs of their own).
NETWORK_OPS |= {'Identity', 'Placeholder', 'PartitionedCall', 'StatefulPartitionedCall'}


def ready_flow(precision='bfloat16', **overrides):
  config = glow_tf.GlowConfig(**{**TINY, **overrides, 'precision': precision})
  flow = glow_tf.build_glow(config)
  x = tf.random.stateless_uniform([4, 8, 8, 2], seed=(1, 2), minval=-0.5, maxval=0.5)
  glow_tf.initialize(flow, x)
  checks.perturb(flow, 0.05, seed=5)
  return flow, x, config


@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
def test_low_precision_flow_round_trips_up_to_rounding_flips(precision):
  flow, x, config = ready_flow(precision)
  z = flow.bijector.inverse(x)
  assert z.dtype == tf.float32
  error = np.max(np.abs(flow.bijector.forward(z) - x))
  # Each coupling's inverse recomputes its network on a kept half equal to the
  # forward's up to float32 rounding. Rounding to low precision is discontinuous:
  # where that difference crosses a rounding boundary the network's output moves by
  # one low-precision step (2^-8 relative in bfloat16, 2^-11 in float16), so the
  # round trip is bounded by those flips, not by float32 (1.5e-5 measured in float16
  # here; 8e-3 for a trained digits model, which is why tools load runs at full
  # precision: tests/tools/runs_test.py).
  assert error < 1e-3
  full = glow_tf.build_glow(config.replace(precision='float32'))
  for a, b in zip(flow.variables, full.variables):
    b.assign(a)
  assert np.max(np.abs(full.bijector.forward(full.bijector.inverse(x)) - x)) < 1e-5


def test_bfloat16_log_det_matches_autodiff():
  flow, x, _ = ready_flow(levels=1, depth=2)
  encoder = flow.bijector.bijector  # image -> latent
  want = checks.log_abs_det_jacobian(encoder.forward, x)
  got = encoder.forward_log_det_jacobian(x, event_ndims=3)
  # The Jacobian is block-triangular: the networks' bfloat16 outputs enter only its
  # off-diagonal blocks and the scales (float32, from those outputs), so the log-det
  # is as exact as float32's (checks.tolerance).
  np.testing.assert_allclose(got, want, **checks.tolerance(tf.float32))


def test_bfloat16_changes_log_prob_by_network_rounding_only():
  flow, x, config = ready_flow()
  full = glow_tf.build_glow(config.replace(precision='float32'))
  for a, b in zip(flow.variables, full.variables):
    b.assign(a)
  low, high = flow.log_prob(x).numpy(), full.log_prob(x).numpy()
  assert not np.array_equal(low, high)  # The networks did run in bfloat16.
  # bfloat16 keeps 8 bits of mantissa: ~0.4% relative error in each network output.
  np.testing.assert_allclose(low, high, rtol=2e-2)


@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
@pytest.mark.parametrize('compile_steps', [False, True])
def test_only_the_networks_compute_in_low_precision(compile_steps, precision):
  flow, x, config = ready_flow(precision, compile_steps=compile_steps)
  low_dtype = tf.as_dtype(precision)
  variables = flow.trainable_variables

  def loss_and_grads(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(glow_tf.bits_per_dim(flow.log_prob(x), config.num_dims, 256))
    return loss, tape.gradient(loss, variables)

  fn = tf.function(loss_and_grads, autograph=False)
  concrete = fn.get_concrete_function(tf.TensorSpec([4, 8, 8, 2]))
  loss, grads = concrete(x)
  assert loss.dtype == tf.float32 and all(g.dtype == tf.float32 for g in grads)
  low = [
    op
    for graph in [concrete.graph, *_called_graphs(concrete)]
    for op in graph.get_operations()
    if any(t.dtype == low_dtype for t in op.outputs)
  ]
  # Log-dets, the 1x1 convolutions, ActNorm of the flow, priors and the loss would
  # bring other ops (Log, Sigmoid, Exp, Sum, Softplus, ...) or more convolutions.
  assert {op.type for op in low} <= NETWORK_OPS, {op.type for op in low} - NETWORK_OPS
  networks = config.levels * config.depth
  forward_convs = 3 * networks + (config.levels - 1)  # Three per coupling, one per prior.
  convs = [op for op in low if op.type in CONVOLUTIONS]
  if not compile_steps:
    # Forward convolutions and, in the gradient, two per convolution (input, kernel).
    assert len(convs) == 3 * forward_convs
  else:
    assert len(convs) >= forward_convs


def _called_graphs(concrete):
  """The FuncGraphs of functions `concrete` calls (compiled steps and their gradients)."""
  graphs, seen = [], set()
  pending = list(concrete.graph._functions.values())  # pylint: disable=protected-access
  while pending:
    function = pending.pop()
    graph = getattr(function, 'graph', None)
    if graph is None or id(graph) in seen:
      continue
    seen.add(id(graph))
    graphs.append(graph)
    pending += list(graph._functions.values())  # pylint: disable=protected-access
  return graphs


def test_bfloat16_needs_float32_variables():
  with pytest.raises(ConfigError, match=r"precision bfloat16 .*got dtype='float64'"):
    glow_tf.GlowConfig(**TINY, precision='bfloat16', dtype='float64')
