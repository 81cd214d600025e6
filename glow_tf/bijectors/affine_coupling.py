"""AffineCoupling: Glow's affine coupling layer on the channels of an image."""

from collections.abc import Callable

import tensorflow as tf

from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = [
  'AffineCoupling',
  'check_network_output',
  'couple',
  'coupling_backward',
  'split_channels',
  'uncouple',
]


def split_channels(x: tf.Tensor):
  """`x[..., :C//2], x[..., C//2:]`: the kept half and the transformed half."""
  channels = x.shape[-1]
  return tf.split(x, [channels // 2, channels - channels // 2], axis=-1)


def couple(x2, shift, log_scale):
  """A coupling's transformed half, forward: `(x2 + shift) * exp(log_scale)` (additive:
  `log_scale` None)."""
  return x2 + shift if log_scale is None else (x2 + shift) * tf.exp(log_scale)


def uncouple(y2, shift, log_scale):
  """A coupling's transformed half, inverse: `y2 * exp(-log_scale) - shift`."""
  return y2 - shift if log_scale is None else y2 * tf.exp(-log_scale) - shift


def coupling_backward(transform, y, dy, d_log_det, weights):
  """The reversible backward of a coupling layer, its network run once.

  `transform(x1) -> (shift, log_scale)` is the layer's (`log_scale` None: additive).
  The layer passes its kept half through, so `x1 = y1` exactly: one forward of the
  network on `y1`, under a tape, both rebuilds `x2` and is what the gradients flow
  back through. (Rebuilding the input, then recomputing the output under a tape,
  would run the network twice.)

  Args:
    transform: the layer's `x1 -> (shift, log_scale)`.
    y: the layer's output.
    dy: d loss / d y.
    d_log_det: d loss / d the layer's log-det, per example.
    weights: what to differentiate (variables, or the values standing in for them).

  Returns:
    `(x, dx, weight_grads)`: the rebuilt input, d loss / d x, and one gradient per
    weight (None for a weight the layer does not use).
  """
  y1, y2 = split_channels(y)
  dy1, dy2 = split_channels(dy)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch([y1, *weights])
    shift, log_scale = transform(y1)
    x2 = tf.stop_gradient(uncouple(y2, shift, log_scale))
    tape.watch(x2)
    targets, seeds = [couple(x2, shift, log_scale)], [dy2]
    if log_scale is not None:
      targets.append(tf.reduce_sum(log_scale, axis=[-3, -2, -1]))
      seeds.append(d_log_det)
  dx1, dx2, *weight_grads = tape.gradient(targets, [y1, x2, *weights], output_gradients=seeds)
  dx1 = dy1 if dx1 is None else dy1 + dx1
  return tf.concat([y1, x2], axis=-1), tf.concat([dx1, dx2], axis=-1), weight_grads


def check_network_output(bijector, h: tf.Tensor, expected: int, what: str) -> tf.Tensor:
  """`h`, the network output of a coupling, once its channel count is `expected`.

  A network of another width would broadcast against the transformed half and give
  a wrong log-det without any error; this raises ValueError naming both counts.
  """
  if h.shape.rank is not None and h.shape[-1] is not None and h.shape[-1] != expected:
    raise ValueError(
      f'{type(bijector).__name__} ({bijector.name!r}) needs a network with {expected} output '
      f'channels ({what}); got {h.shape[-1]} (output shape {h.shape}).'
    )
  return h


class AffineCoupling(FlowBijector):
  """Affine coupling (Glow, section 3.3) on images `[..., H, W, C]`.

  With `x = [x1, x2]` split along channels (`x1`: the first `C//2`):

  ```none
  (shift, log_scale) = f(x1)               f: `network`, then the head below
  forward:  y1 = x1,  y2 = (x2 + shift) * exp(log_scale)
  inverse:  x1 = y1,  x2 = y2 * exp(-log_scale) - shift
  log|det J_forward| = sum(log_scale)      over H, W and the C - C//2 channels
  ```

  The head is the official code's: `network(x1)` gives `2 * (C - C//2)` channels
  `h = [h_shift, h_scale]`, `shift = h_shift` and `scale = sigmoid(h_scale + 2)`,
  so `log_scale = log_sigmoid(h_scale + 2)`. `nn.CouplingNetwork` ends in a
  zero-initialised convolution, so at initialisation `shift = 0` and
  `scale = sigmoid(2) ~= 0.881`: the official starting point, a fixed contraction
  of `x2` rather than exactly the identity (`AdditiveCoupling` starts as the
  identity).

  Subclasses may replace `_shift_and_log_scale` (see `SplitPrior`).

  #### References

  [1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
       Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  [2]: Laurent Dinh, Jascha Sohl-Dickstein, Samy Bengio. Density estimation
       using Real NVP. ICLR 2017. https://arxiv.org/abs/1605.08803
  """

  def __init__(
    self,
    network: Callable[[tf.Tensor], tf.Tensor],
    num_channels: int,
    dtype=tf.float32,
    validate_args: bool = False,
    name: str = 'affine_coupling',
  ):
    """Builds the layer.

    Args:
      network: maps `x1` `[..., H, W, C//2]` to `[..., H, W, 2 * (C - C//2)]`; a
        `tf.Module` (its variables are then tracked), e.g. `nn.CouplingNetwork`.
      num_channels: C, at least 2.
      dtype: float dtype of inputs.
      validate_args: TFP's flag; shapes are always checked statically.
      name: name of the bijector.
    """
    parameters = dict(locals())
    if num_channels < 2:
      raise ValueError(
        f'{type(self).__name__} needs num_channels >= 2 to split; got {num_channels!r}.'
      )
    self._num_channels = num_channels
    self._network = network
    super().__init__(
      forward_min_event_ndims=3,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def network(self):
    return self._network

  @property
  def num_channels(self) -> int:
    return self._num_channels

  def _apply_network(self, x1):
    return self._network(x1)

  def _network_output(self, x1):
    """The network's output for the kept half, checked to hold a shift and a scale per channel."""
    transformed = self._num_channels - self._num_channels // 2
    return check_network_output(
      self,
      self._apply_network(x1),
      2 * transformed,
      f'a shift and a scale for each of the {transformed} transformed channels',
    )

  def shift_and_log_scale(self, x1):
    """`(shift, log_scale)` of the transformed half, given the kept half `x1`."""
    return self._shift_and_log_scale(x1)

  def _shift_and_log_scale(self, x1):
    h_shift, h_scale = tf.split(self._network_output(x1), 2, axis=-1)
    return h_shift, tf.math.log_sigmoid(h_scale + 2.0)

  def _forward_and_log_det(self, x):
    x1, x2 = split_channels(x)
    shift, log_scale = self._shift_and_log_scale(x1)
    y2 = couple(x2, shift, log_scale)
    return tf.concat([x1, y2], axis=-1), tf.reduce_sum(log_scale, axis=[-3, -2, -1])

  def _inverse_and_log_det(self, y):
    y1, y2 = split_channels(y)
    shift, log_scale = self._shift_and_log_scale(y1)
    x2 = uncouple(y2, shift, log_scale)
    return tf.concat([y1, x2], axis=-1), -tf.reduce_sum(log_scale, axis=[-3, -2, -1])

  def reversible_backward(self, y, dy, d_log_det, weights):
    """See `FlowBijector.reversible_backward`: the network runs once (`coupling_backward`)."""
    return coupling_backward(self._shift_and_log_scale, y, dy, d_log_det, weights)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
