"""ActNorm: per-channel scale and shift with data-dependent initialisation."""

import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = ['ActNorm']


class ActNorm(FlowBijector):
  """Activation normalisation (Glow, section 3.1) on images `[..., H, W, C]`.

  ```none
  forward:  y = s * x + b,          s = exp(log_scale), per channel
  inverse:  x = (y - b) / s
  log|det J_forward| = H * W * sum(log s)
  ```

  `log_scale` and `b` start at 0 (identity) and are set from data by one explicit
  pass, `glow_tf.initialize(flow, images)`, so that every channel of the output
  has mean 0 and standard deviation 1 on that batch. Whether that happened is the
  variable `initialized`, saved with the model.

  #### Examples

  ```python
  actnorm = glow_tf.bijectors.ActNorm(num_channels=3)
  with glow_tf.nn.data_dependent_init():
    y = actnorm.forward(images)      # y has per-channel mean 0, std 1
  actnorm.inverse(y)                 # == images
  ```

  #### References

  [1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
       Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  """

  def __init__(
    self, num_channels: int, dtype=tf.float32, validate_args: bool = False, name: str = 'actnorm'
  ):
    """Builds an ActNorm over `num_channels` channels, initially the identity."""
    parameters = dict(locals())
    if num_channels < 1:
      raise ValueError(f'ActNorm needs num_channels >= 1; got {num_channels!r}.')
    self._num_channels = num_channels
    self._layer = nn.ActNormLayer(num_channels, dtype=dtype, name=name)
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
  def log_scale(self) -> tf.Variable:
    return self._layer.log_scale

  @property
  def shift(self) -> tf.Variable:
    return self._layer.shift

  @property
  def initialized(self) -> tf.Variable:
    return self._layer.initialized

  def _log_det(self, x):
    height, width = ps.shape(x)[-3], ps.shape(x)[-2]
    return tf.cast(height * width, x.dtype) * tf.reduce_sum(nn.read(self._layer.log_scale))

  def _forward_and_log_det(self, x):
    return self._layer(x), self._log_det(x)

  def _inverse_and_log_det(self, y):
    return self._layer.inverse(y), -self._log_det(y)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
