"""Squeeze: 2x2 space-to-depth, the reshape between Glow's levels."""

import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = ['Squeeze']


def _squeeze(x):
  """[N, H, W, C] -> [N, H/2, W/2, 4C], channel order (c, dy, dx) as in the official code."""
  _, h, w, c = nn.dims(x)
  x = tf.reshape(x, [-1, h // 2, 2, w // 2, 2, c])
  x = tf.transpose(x, [0, 1, 3, 5, 2, 4])
  return tf.reshape(x, [-1, h // 2, w // 2, 4 * c])


def _unsqueeze(y):
  """[N, H/2, W/2, 4C] -> [N, H, W, C], the inverse of `_squeeze`."""
  _, h, w, c4 = nn.dims(y)
  y = tf.reshape(y, [-1, h, w, c4 // 4, 2, 2])
  y = tf.transpose(y, [0, 1, 4, 2, 5, 3])
  return tf.reshape(y, [-1, 2 * h, 2 * w, c4 // 4])


class Squeeze(FlowBijector):
  """Trades space for channels: each 2x2 block of pixels becomes one pixel.

  ```none
  forward:  y[i, j, 4c + 2dy + dx] = x[2i + dy, 2j + dx, c],   [H, W, C] -> [H/2, W/2, 4C]
  inverse:  the reverse reshape
  log|det J| = 0
  ```

  H and W must be even. The channel order is that of the official Glow code.
  """

  def __init__(self, validate_args: bool = False, dtype=tf.float32, name: str = 'squeeze'):
    parameters = dict(locals())
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  def _forward_and_log_det(self, x):
    return nn.apply_to_images(_squeeze, x), tf.zeros([], x.dtype)

  def _inverse_and_log_det(self, y):
    return nn.apply_to_images(_unsqueeze, y), tf.zeros([], y.dtype)

  def _forward_event_shape(self, input_shape):
    h, w, c = check_image_shape(self, input_shape, spatial_multiple=2)
    return tf.TensorShape(
      [None if h is None else h // 2, None if w is None else w // 2, None if c is None else 4 * c]
    )

  def _inverse_event_shape(self, output_shape):
    h, w, c = check_image_shape(self, output_shape)
    if c is not None and c % 4:
      raise ValueError(
        f'Squeeze ({self.name!r}) inverse expects images [..., H, W, C] with C a '
        f'multiple of 4; got event shape {output_shape.as_list()}.'
      )
    return tf.TensorShape(
      [None if h is None else 2 * h, None if w is None else 2 * w, None if c is None else c // 4]
    )

  def _forward_event_shape_tensor(self, input_shape):
    return ps.stack([input_shape[0] // 2, input_shape[1] // 2, 4 * input_shape[2]])

  def _inverse_event_shape_tensor(self, output_shape):
    return ps.stack([2 * output_shape[0], 2 * output_shape[1], output_shape[2] // 4])
