"""PlainConv1x1: the invertible 1x1 convolution with an unconstrained weight."""

from collections.abc import Sequence

import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape
from glow_tf.bijectors.invertible_conv1x1 import apply_channel_matrix, random_rotation

__all__ = ['PlainConv1x1']


class PlainConv1x1(FlowBijector):
  """Invertible 1x1 convolution with a dense weight `W` (Glow, section 3.2, before LU).

  ```none
  forward:  y[h, w] = W x[h, w]
  inverse:  x[h, w] = W^-1 y[h, w]
  log|det J_forward| = H * W * log|det W| = H * W * sum(log|diag(R)|),  W = Q R
  ```

  The paper's comparison point for `InvertibleConv1x1`: it costs a C x C
  determinant and inverse per step. The determinant goes through a QR
  decomposition, which (unlike `slogdet`) compiles with XLA on TF 2.21. `W`
  starts as a random rotation.

  #### References

  [1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
       Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  """

  def __init__(
    self,
    num_channels: int,
    seed: Sequence[int] = (0, 0),
    dtype=tf.float32,
    validate_args: bool = False,
    name: str = 'plain_conv1x1',
  ):
    """Builds the layer with `W` a random rotation drawn with the stateless `seed`."""
    parameters = dict(locals())
    if num_channels < 1:
      raise ValueError(f'PlainConv1x1 needs num_channels >= 1; got {num_channels!r}.')
    self._num_channels = num_channels
    with tf.name_scope(name):
      self._weight = tf.Variable(random_rotation(num_channels, seed, dtype), name='weight')
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def weight(self) -> tf.Variable:
    return self._weight

  def _log_det(self, x):
    height, width = ps.shape(x)[-3], ps.shape(x)[-2]
    log_abs_det = tf.reduce_sum(
      tf.math.log(tf.abs(tf.linalg.diag_part(tf.linalg.qr(nn.read(self._weight))[1])))
    )
    return tf.cast(height * width, x.dtype) * log_abs_det

  def _forward_and_log_det(self, x):
    return apply_channel_matrix(x, nn.read(self._weight)), self._log_det(x)

  def _inverse_and_log_det(self, y):
    return apply_channel_matrix(y, tf.linalg.inv(nn.read(self._weight))), -self._log_det(y)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
