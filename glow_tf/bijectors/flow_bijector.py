"""FlowBijector: the base of glow_tf's bijectors; each direction computes value and log-det once."""

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import chain as chain_lib
from tensorflow_probability.python.bijectors import invert as invert_lib

from glow_tf.bijectors.call_cache import CallCache, OneCallScope

tfb = tfp.bijectors

__all__ = [
  'FlowBijector',
  'check_flat_shape',
  'check_image_shape',
  'forward_and_log_det',
  'inverse_and_log_det',
  'reversible_backward',
]


class FlowBijector(OneCallScope, tfb.Bijector):
  """A `tfb.Bijector` written as `_forward_and_log_det` and `_inverse_and_log_det`.

  TFP asks a bijector for `_forward`, `_inverse` and a log-det separately. A
  coupling layer that implements them separately runs its network twice for
  every `log_prob`. Subclasses of `FlowBijector` write each direction once:

      _forward_and_log_det(x) -> (y, log|det dy/dx|)
      _inverse_and_log_det(y) -> (x, log|det dx/dy|)

  and the bijector cache stores the log-det beside the value, so `inverse`
  followed by `inverse_log_det_jacobian` on the same tensor computes the layer
  once. The cache is a `CallCache`: results are shared only within one public
  call (one `log_prob`, one `forward`, ...) and forgotten when it returns, so no
  call ever gets a value computed by an earlier one, under another
  `GradientTape` or with other weights. The log-det is reduced over the
  `forward_min_event_ndims` rightmost dims: one value per event, or a scalar
  when it does not depend on the input.

  Inputs are checked against the event-shape methods (`_forward_event_shape`,
  `_inverse_event_shape`) before any computation, so a tensor of the wrong rank,
  size or channel count fails with an error that names both shapes.

  Every instance owns variables, so two instances are never the same function:
  unlike TFP's parameter-based default, equality and the cache key use identity.
  """

  _cache = CallCache('_forward_with_ildj', '_inverse_with_ildj', greedy=True)

  def _forward_and_log_det(self, x, **kwargs):
    raise NotImplementedError(f'{type(self).__name__} must implement _forward_and_log_det.')

  def _inverse_and_log_det(self, y, **kwargs):
    raise NotImplementedError(f'{type(self).__name__} must implement _inverse_and_log_det.')

  @tf.autograph.experimental.do_not_convert
  def forward_and_log_det(self, x, **kwargs):
    """`(forward(x), log|det J_forward|)` in one pass, as composites compute their parts.

    No cache, name scope, dtype or event-shape check and no reduction: the log-det
    is per event (or a scalar shared by every event). Use `forward` and
    `forward_log_det_jacobian` for TFP's full contract.
    """
    return self._forward_and_log_det(x, **kwargs)

  @tf.autograph.experimental.do_not_convert
  def inverse_and_log_det(self, y, **kwargs):
    """`(inverse(y), log|det J_inverse|)` in one pass; see `forward_and_log_det`."""
    return self._inverse_and_log_det(y, **kwargs)

  def reversible_backward(self, y, dy, d_log_det, weights):
    """Backpropagates through this layer from its output: `(x, dx, weight_grads)`.

    The reversible backward's step for one layer (see `reversible_backward`, the
    function): the input rebuilt from `y`, d loss / d x from `dy` and `d_log_det`
    (d loss / d the layer's log-det, per example), and the gradient of each of
    `weights` (None for one the layer does not use). This default inverts, then
    recomputes the forward pass under a tape; a layer that can do better (a
    coupling runs its network once) overrides it.
    """
    return _rebuild_and_differentiate(self, y, dy, d_log_det, weights)

  # The cache calls these two: one computation yields the value and its log-det.
  def _forward_with_ildj(self, x, **kwargs):
    self._check_event(x, self.forward_min_event_ndims, self.forward_event_shape, 'forward')
    y, fldj = self._forward_and_log_det(x, **kwargs)
    return y, {'ildj': -fldj}

  def _inverse_with_ildj(self, y, **kwargs):
    self._check_event(y, self.inverse_min_event_ndims, self.inverse_event_shape, 'inverse')
    x, ildj = self._inverse_and_log_det(y, **kwargs)
    return x, {'ildj': ildj}

  def _forward(self, x, **kwargs):
    return self.forward(x, **kwargs)

  def _inverse(self, y, **kwargs):
    return self.inverse(y, **kwargs)

  # TFP asks for a log-det it has not cached: compute value and log-det together
  # (a nested call, so the result stays in this call's scope for `forward`).
  def _forward_log_det_jacobian(self, x, **kwargs):
    self.forward(x, **kwargs)
    return -self._cache.forward_attributes(x, **kwargs)['ildj']

  def _inverse_log_det_jacobian(self, y, **kwargs):
    self.inverse(y, **kwargs)
    return self._cache.inverse_attributes(y, **kwargs)['ildj']

  def _get_parameterization(self):
    return id(self)

  def _check_event(self, x, event_ndims, event_shape_fn, direction):
    """Raises ValueError when `x` cannot be an input of `direction`."""
    if x.shape.rank is None:
      return
    if x.shape.rank < event_ndims:
      raise ValueError(
        f'{type(self).__name__} ({self.name!r}) {direction} expects a tensor of rank >= '
        f'{event_ndims} (batch dims, then the event); got shape {x.shape}.'
      )
    event_shape_fn(x.shape[x.shape.rank - event_ndims :])


def check_image_shape(
  bijector: tfb.Bijector,
  shape: tf.TensorShape,
  channels: int | None = None,
  spatial: Sequence[int] | None = None,
  spatial_multiple: int = 1,
) -> tf.TensorShape:
  """Checks an event shape `[H, W, C]`; returns it, or raises a ValueError naming both shapes.

  Args:
    bijector: the bijector that receives the shape (named in the error).
    shape: the received event shape.
    channels: expected C, or None for any.
    spatial: expected (H, W), or None for any.
    spatial_multiple: H and W must be multiples of this.
  """
  shape = tf.TensorShape(shape)
  if shape.rank is None:
    return shape
  expected = '[..., {}, {}, {}]'.format(
    *(spatial or ('H', 'W')), channels if channels is not None else 'C'
  )
  if spatial_multiple > 1 and spatial is None:
    expected += f' with H and W multiples of {spatial_multiple}'
  problem = shape.rank != 3
  if not problem:
    h, w, c = shape.as_list()
    problem = (
      (channels is not None and c is not None and c != channels)
      or (spatial is not None and any(d is not None and d != e for d, e in zip((h, w), spatial)))
      or any(d is not None and d % spatial_multiple for d in (h, w))
    )
  if problem:
    raise ValueError(
      f'{type(bijector).__name__} ({bijector.name!r}) expects images of shape {expected}; '
      f'got event shape {shape.as_list()}.'
    )
  return shape


def check_flat_shape(bijector: tfb.Bijector, shape: tf.TensorShape, size: int) -> tf.TensorShape:
  """Checks a flat event shape `[size]`; returns it, or raises a ValueError naming both shapes."""
  shape = tf.TensorShape(shape)
  if shape.rank is not None and shape.as_list() not in ([size], [None]):
    raise ValueError(
      f'{type(bijector).__name__} ({bijector.name!r}) expects flat latents of '
      f'shape [..., {size}]; got event shape {shape.as_list()}.'
    )
  return shape


@tf.autograph.experimental.do_not_convert
def forward_and_log_det(bijector: tfb.Bijector, x, event_ndims: int = 3, **kwargs):
  """`(bijector.forward(x, **kwargs), its log-det)`, computed once.

  For glow_tf bijectors, and `tfb.Chain`s and `tfb.Invert`s of them, this calls
  `_forward_and_log_det` directly: a composite that computes its parts this way
  needs no per-layer cache, name scopes or reduction logic, and tracing a deep
  flow then creates a fraction of the ops. Any other bijector goes through its
  public methods. `kwargs` are routed as TFP routes them: a glow_tf bijector
  takes them itself (e.g. `label`), a chain hands each part
  `kwargs.get(part.name, {})`, an inversion passes them through.
  """
  if isinstance(bijector, FlowBijector):
    return bijector.forward_and_log_det(x, **kwargs)
  if isinstance(bijector, chain_lib._Chain):  # pylint: disable=protected-access
    log_det = tf.zeros([], x.dtype)
    for part in reversed(bijector.bijectors):
      part_kwargs = kwargs.get(part.name, {})
      x, part_log_det = forward_and_log_det(part, x, event_ndims, **part_kwargs)
      event_ndims = part.forward_event_ndims(event_ndims, **part_kwargs)
      log_det += part_log_det
    return x, log_det
  if isinstance(bijector, invert_lib._Invert):  # pylint: disable=protected-access
    return inverse_and_log_det(bijector.bijector, x, event_ndims, **kwargs)
  return (
    bijector.forward(x, **kwargs),
    bijector.forward_log_det_jacobian(x, event_ndims=event_ndims, **kwargs),
  )


@tf.autograph.experimental.do_not_convert
def inverse_and_log_det(bijector: tfb.Bijector, y, event_ndims: int = 3, **kwargs):
  """`(bijector.inverse(y, **kwargs), its log-det)`, computed once; see `forward_and_log_det`."""
  if isinstance(bijector, FlowBijector):
    return bijector.inverse_and_log_det(y, **kwargs)
  if isinstance(bijector, chain_lib._Chain):  # pylint: disable=protected-access
    log_det = tf.zeros([], y.dtype)
    for part in bijector.bijectors:
      part_kwargs = kwargs.get(part.name, {})
      y, part_log_det = inverse_and_log_det(part, y, event_ndims, **part_kwargs)
      event_ndims = part.inverse_event_ndims(event_ndims, **part_kwargs)
      log_det += part_log_det
    return y, log_det
  if isinstance(bijector, invert_lib._Invert):  # pylint: disable=protected-access
    return forward_and_log_det(bijector.bijector, y, event_ndims, **kwargs)
  return (
    bijector.inverse(y, **kwargs),
    bijector.inverse_log_det_jacobian(y, event_ndims=event_ndims, **kwargs),
  )


def _log_det_seed(log_det, d_log_det):
  """d loss / d a log-det: `d_log_det` per example, or summed over the batch for a
  log-det shared by every example (a scalar)."""
  if log_det.shape.rank == 0:
    return tf.reduce_sum(d_log_det)
  return d_log_det


def _rebuild_and_differentiate(bijector, y, dy, d_log_det, weights):
  """`reversible_backward` of any bijector: invert, then differentiate the forward pass
  recomputed from the rebuilt input."""
  x, _ = inverse_and_log_det(bijector, y)
  x = tf.stop_gradient(x)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch([x, *weights])
    y_again, log_det = forward_and_log_det(bijector, x)
  dx, *weight_grads = tape.gradient(
    [y_again, log_det], [x, *weights], output_gradients=[dy, _log_det_seed(log_det, d_log_det)]
  )
  return x, dx, weight_grads


def _summed(pairs):
  """`(weight, grad)` pairs with each weight once, its gradients summed (None if all are)."""
  sums = {}
  for weight, grad in pairs:
    _, total = sums.get(weight.ref(), (weight, None))
    if grad is not None:
      total = grad if total is None else tf.convert_to_tensor(total) + tf.convert_to_tensor(grad)
    sums[weight.ref()] = (weight, total)
  return list(sums.values())


@tf.autograph.experimental.do_not_convert
def reversible_backward(bijector: tfb.Bijector, y, dy, d_log_det, weights_of):
  """Backpropagates `dy` through `bijector` from its output `y`, rebuilding its input.

  No activation of the forward pass is needed: each layer's input is rebuilt from
  its output, and only that layer's activations are held while it is
  differentiated. A chain goes part by part, last applied first; a glow_tf layer
  uses its `reversible_backward` (a coupling runs its network once); any other
  bijector is inverted, then its forward pass recomputed under a tape.

  Args:
    bijector: the bijector (no kwargs are routed: conditioning is not supported).
    y: its output.
    dy: d loss / d y.
    d_log_det: d loss / d its log-det, per example.
    weights_of: `part -> [weights]`, what to differentiate of each layer reached
      (variables, or the values standing in for them).

  Returns:
    `(x, dx, [(weight, grad), ...])`: the rebuilt input, d loss / d x, and each
    weight reached, once, with its gradient (summed over the layers that use it;
    None if none does).
  """
  if isinstance(bijector, chain_lib._Chain):  # pylint: disable=protected-access
    pairs = []
    for part in bijector.bijectors:  # The last applied is the first rebuilt.
      y, dy, part_pairs = reversible_backward(part, y, dy, d_log_det, weights_of)
      pairs += part_pairs
    return y, dy, _summed(pairs)
  weights = weights_of(bijector)
  if isinstance(bijector, FlowBijector):
    x, dx, grads = bijector.reversible_backward(y, dy, d_log_det, weights)
  else:
    x, dx, grads = _rebuild_and_differentiate(bijector, y, dy, d_log_det, weights)
  return x, dx, list(zip(weights, grads))
