"""InvertibleConv1x1: Glow's LU-parameterised invertible 1x1 convolution."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = ['InvertibleConv1x1', 'random_rotation', 'apply_channel_matrix']


def random_rotation(num_channels: int, seed: Sequence[int], dtype=tf.float32) -> tf.Tensor:
  """A random orthogonal `[C, C]` matrix: Q of the QR of a Gaussian, from a stateless seed."""
  gaussian = tf.random.stateless_normal([num_channels, num_channels], seed=seed, dtype=tf.float64)
  return tf.cast(tf.linalg.qr(gaussian)[0], dtype)


def apply_channel_matrix(x: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
  """`y[..., i] = sum_j matrix[i, j] x[..., j]`: a 1x1 convolution of images `[..., H, W, C]`."""
  kernel = tf.transpose(matrix)[tf.newaxis, tf.newaxis]
  return nn.apply_to_images(lambda t: tf.nn.conv2d(t, kernel, strides=1, padding='VALID'), x)


class InvertibleConv1x1(FlowBijector):
  """Invertible 1x1 convolution with an LU-decomposed weight (Glow, section 3.2).

  Every pixel's channel vector is multiplied by the same `[C, C]` matrix

  ```none
  W = P @ L @ (U + diag(sign * exp(log_s)))
  forward:  y[h, w] = W x[h, w]
  inverse:  x[h, w] = W^-1 y[h, w],   W^-1 = (U + diag(s))^-1 L^-1 P^T  (two triangular solves)
  log|det J_forward| = H * W * sum(log_s)
  ```

  `P` (a permutation) and `sign` are fixed; `L` is unit lower-triangular, `U`
  strictly upper-triangular; `L`, `U` and `log_s` are trained. The initial `W`
  is a random rotation, decomposed once at construction. No determinant or
  general inverse is computed in a training step, and every op compiles with XLA.

  #### Examples

  ```python
  conv = glow_tf.bijectors.InvertibleConv1x1(num_channels=12, seed=(0, 1))
  y = conv.forward(x)                  # x: [batch, 16, 16, 12]
  conv.forward_log_det_jacobian(x)     # 16 * 16 * sum(log_s), 0 at initialisation
  ```

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
    name: str = 'invertible_conv1x1',
  ):
    """Builds the layer from a random rotation drawn with the stateless `seed`."""
    parameters = dict(locals())
    if num_channels < 1:
      raise ValueError(f'InvertibleConv1x1 needs num_channels >= 1; got {num_channels!r}.')
    self._num_channels = num_channels
    with tf.name_scope(name):
      lu, perm = tf.linalg.lu(random_rotation(num_channels, seed, tf.float64))
      diagonal = tf.linalg.diag_part(lu)
      self._permutation = tf.Variable(
        tf.cast(tf.transpose(tf.one_hot(perm, num_channels)), dtype),
        trainable=False,
        name='permutation',
      )
      self._lower = tf.Variable(tf.cast(lu, dtype), name='lower')  # Strict lower part used.
      self._upper = tf.Variable(tf.cast(lu, dtype), name='upper')  # Strict upper part used.
      self._log_s = tf.Variable(tf.cast(tf.math.log(tf.abs(diagonal)), dtype), name='log_s')
      self._sign = tf.Variable(tf.cast(tf.sign(diagonal), dtype), trainable=False, name='sign')
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def num_channels(self) -> int:
    return self._num_channels

  @property
  def log_s(self) -> tf.Variable:
    return self._log_s

  def factors(self):
    """Returns `(P, L, U + diag(s))`, the LU factors of `W`."""
    eye = np.eye(self._num_channels)
    strictly_lower = np.tril(np.ones_like(eye), -1)
    dtype = self._lower.dtype
    lower = nn.read(self._lower) * tf.constant(strictly_lower, dtype) + tf.constant(eye, dtype)
    upper = nn.read(self._upper) * tf.constant(strictly_lower.T, dtype) + tf.linalg.diag(
      nn.read(self._sign) * tf.exp(nn.read(self._log_s))
    )
    return tf.convert_to_tensor(nn.read(self._permutation)), lower, upper

  def weight(self) -> tf.Tensor:
    """The `[C, C]` matrix `W = P L (U + diag(s))`."""
    permutation, lower, upper = self.factors()
    return permutation @ (lower @ upper)

  def inverse_weight(self) -> tf.Tensor:
    """`W^-1 = (U + diag(s))^-1 L^-1 P^T`, by two triangular solves."""
    permutation, lower, upper = self.factors()
    inv_lower_pt = tf.linalg.triangular_solve(lower, tf.transpose(permutation), lower=True)
    return tf.linalg.triangular_solve(upper, inv_lower_pt, lower=False)

  def _log_det(self, x):
    height, width = ps.shape(x)[-3], ps.shape(x)[-2]
    return tf.cast(height * width, x.dtype) * tf.reduce_sum(nn.read(self._log_s))

  def _forward_and_log_det(self, x):
    return apply_channel_matrix(x, self.weight()), self._log_det(x)

  def _inverse_and_log_det(self, y):
    return apply_channel_matrix(y, self.inverse_weight()), -self._log_det(y)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
