"""Shared test helpers: execution regimes, perturbation, Jacobians, the bijector contract."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors
tfd = tfp.distributions

# 'graph' is TF1 graph mode with a Session (as TFP's own test regimes); 'function'
# is tf.function; 'xla' is tf.function(jit_compile=True).
REGIMES = ('graph', 'eager', 'function', 'xla')
DTYPES = (tf.float32, tf.float64)


def perturb(module: tf.Module, scale: float = 0.1, seed: int = 0):
  """Adds scale * N(0, 1) to every trainable variable: nothing is tested at its trivial init.

  Runs at once eagerly; in graph mode returns the ops to run after initialisation.
  """
  ops = []
  for i, v in enumerate(module.trainable_variables):
    noise = tf.random.stateless_normal(v.shape, seed=[seed, i], dtype=v.dtype)
    ops.append(v.assign_add(scale * noise))
  return ops


def evaluate(regime: str, make, compute, *inputs, perturb_scale: float = 0.1):
  """Builds with `make()`, perturbs it, returns NumPy results of `compute(built, *inputs)`.

  The module is built inside the regime (in its own graph for 'graph'); the
  inputs are converted to tensors there, so every call sees fresh tensors.
  """
  if regime == 'graph':
    with tf.Graph().as_default():
      built = make()
      perturb_ops = perturb(built, perturb_scale)
      outputs = compute(built, *[tf.constant(i) for i in inputs])
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(perturb_ops)
        return session.run(outputs)
  built = make()
  perturb(built, perturb_scale)
  if regime == 'eager':
    outputs = compute(built, *[tf.constant(i) for i in inputs])
  else:
    function = tf.function(lambda *args: compute(built, *args), jit_compile=regime == 'xla')
    outputs = function(*[tf.constant(i) for i in inputs])
  return tf.nest.map_structure(np.asarray, outputs)


def log_abs_det_jacobian(fn, x):
  """log|det d fn(x) / dx| per batch member, by autodiff; x is `[B, ...]`."""
  batch = x.shape[0]
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reshape(fn(x), [batch, -1])
  jacobian = tf.reshape(tape.batch_jacobian(y, x), [batch, y.shape[-1], -1])
  sign, log_abs_det = np.linalg.slogdet(jacobian.numpy())
  assert np.all(sign != 0), 'singular Jacobian'
  return log_abs_det


def tolerance(dtype):
  return dict(rtol=1e-4, atol=1e-4) if dtype == tf.float32 else dict(rtol=1e-9, atol=1e-9)


class BijectorContract:
  """The contract every glow_tf bijector keeps; a test class sets `make` and the shapes.

  Subclasses (named Test*) define:
    make(dtype) -> bijector   (built with random-rotation seeds; variables get perturbed)
    event_shape: forward event shape;  event_ndims: its rank
    kwargs(batch) -> conditional kwargs for forward/inverse (default none)
  """

  event_shape = (4, 4, 2)
  event_ndims = 3
  batch = 3

  def make(self, dtype):
    raise NotImplementedError

  def kwargs(self, batch):
    del batch
    return {}

  def inputs(self, dtype, batch=None, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(batch or self.batch, *self.event_shape).astype(dtype.as_numpy_dtype)

  @pytest.mark.parametrize('dtype', DTYPES, ids=['float32', 'float64'])
  @pytest.mark.parametrize('regime', REGIMES)
  def test_round_trip_and_log_dets(self, regime, dtype):
    x = self.inputs(dtype)
    kw = self.kwargs(self.batch)
    nd = self.event_ndims

    def compute(bijector, x):
      y = bijector.forward(x, **kw)
      fldj = bijector.forward_log_det_jacobian(x, event_ndims=nd, **kw)
      fresh_y = tf.identity(y)  # Not the cached output: inverse really runs.
      ildj = bijector.inverse_log_det_jacobian(fresh_y, event_ndims=nd, **kw)
      x_back = bijector.inverse(fresh_y, **kw)
      fldj_alone = bijector.forward_log_det_jacobian(tf.identity(x), event_ndims=nd, **kw)
      return dict(y=y, fldj=fldj, x_back=x_back, ildj=ildj, fldj_alone=fldj_alone)

    out = evaluate(regime, lambda: self.make(dtype), compute, x)
    tol = tolerance(dtype)
    np.testing.assert_allclose(out['x_back'], x, **tol)
    fldj = np.broadcast_to(out['fldj'], [self.batch])
    np.testing.assert_allclose(np.broadcast_to(out['ildj'], [self.batch]), -fldj, **tol)
    np.testing.assert_allclose(np.broadcast_to(out['fldj_alone'], [self.batch]), fldj, **tol)
    assert np.all(np.isfinite(out['y'])) and np.all(np.isfinite(fldj))
    assert not np.allclose(out['y'].reshape(self.batch, -1)[:, :8], 0.0)

  @pytest.mark.parametrize('regime', ['eager', 'function'])
  def test_log_det_matches_autodiff_jacobian(self, regime):
    bijector = self.make(tf.float64)
    perturb(bijector, 0.3)
    x = tf.constant(self.inputs(tf.float64, batch=2, seed=1))
    kw = self.kwargs(2)
    forward = lambda t: bijector.forward(t, **kw)
    fldj = lambda t: bijector.forward_log_det_jacobian(t, event_ndims=self.event_ndims, **kw)
    if regime == 'function':
      forward, fldj = tf.function(forward), tf.function(fldj)
    expected = log_abs_det_jacobian(forward, x)
    analytic = np.broadcast_to(fldj(tf.identity(x)).numpy(), [2])
    np.testing.assert_allclose(analytic, expected, rtol=1e-6, atol=1e-8)

  def test_inside_chain_invert_and_transformed_distribution(self):
    bijector = self.make(tf.float32)
    perturb(bijector)
    x = tf.constant(self.inputs(tf.float32))
    kw = self.kwargs(self.batch)
    nd = self.event_ndims
    y = bijector.forward(x, **kw)
    fldj = bijector.forward_log_det_jacobian(x, event_ndims=nd, **kw)

    chain = tfb.Chain([tfb.Scale(2.0), bijector])
    np.testing.assert_allclose(
      chain.forward(tf.identity(x), **{bijector.name: kw}), 2 * y, rtol=1e-5, atol=1e-5
    )
    size = int(np.prod(y.shape[1:]))
    np.testing.assert_allclose(
      chain.forward_log_det_jacobian(tf.identity(x), event_ndims=nd, **{bijector.name: kw}),
      fldj + size * np.log(2.0),
      rtol=1e-5,
      atol=1e-4,
    )

    inverted = tfb.Invert(bijector)
    np.testing.assert_allclose(inverted.inverse(tf.identity(x), **kw), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inverted.forward(tf.identity(y), **kw), x, rtol=1e-4, atol=1e-4)

    base = tfd.Sample(tfd.Normal(0.0, 1.0), y.shape[1:])
    dist = tfd.TransformedDistribution(base, inverted)
    expected = base.log_prob(y) + fldj
    np.testing.assert_allclose(
      dist.log_prob(tf.identity(x), bijector_kwargs=kw), expected, rtol=1e-5, atol=1e-4
    )
    assert dist.event_shape == self.event_shape

  def test_none_batch_in_tf_function(self):
    bijector = self.make(tf.float32)
    perturb(bijector)
    x = self.inputs(tf.float32)
    kw = self.kwargs(self.batch)
    spec = tf.TensorSpec([None, *self.event_shape], tf.float32)

    @tf.function(input_signature=[spec])
    def round_trip(x):
      y = bijector.forward(x, **kw)
      return bijector.inverse(tf.identity(y), **kw), bijector.forward_log_det_jacobian(
        x, event_ndims=self.event_ndims, **kw
      )

    x_back, fldj = round_trip(x)
    np.testing.assert_allclose(x_back, x, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(fldj))

  def test_non_float_input_raises_naming_dtypes(self):
    bijector = self.make(tf.float32)
    with pytest.raises((TypeError, ValueError), match='float32.*int32|int32.*float32'):
      bijector.forward(tf.zeros([1, *self.event_shape], tf.int32), **self.kwargs(1))

  def test_wrong_rank_raises_naming_shapes(self):
    bijector = self.make(tf.float32)
    with pytest.raises(ValueError, match=r'expects.*got'):
      bijector.forward(tf.zeros(self.event_shape[1:]), **self.kwargs(1))


def held(variable) -> tf.Variable:
  """The variable holding `variable`'s value: itself, or a `StackedRow`'s stacked variable."""
  return getattr(variable, 'stack', None) or variable


def variable_reads(graph, variable) -> int:
  """How many ReadVariableOps of `variable` a traced FuncGraph holds."""
  handles = [internal for external, internal in graph.captures if external is variable.handle]
  return sum(
    consumer.type == 'ReadVariableOp' for handle in handles for consumer in handle.consumers()
  )
