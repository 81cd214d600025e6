"""ChannelPermutation: a fixed reordering of channels (the paper's reverse and shuffle)."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = ['ChannelPermutation']


class ChannelPermutation(FlowBijector):
  """Reorders the channels of images `[..., H, W, C]` by a fixed permutation.

  ```none
  forward:  y[..., i] = x[..., perm[i]]
  inverse:  x[..., perm[i]] = y[..., i]
  log|det J| = 0
  ```

  The paper's ablation compares the learned 1x1 convolution with two fixed
  permutations: `ChannelPermutation.reverse(C)` (as RealNVP) and
  `ChannelPermutation.shuffle(C, seed)` (random, fixed at construction). The
  permutation is a non-trainable variable, saved with the model.

  #### Examples

  ```python
  glow_tf.bijectors.ChannelPermutation.reverse(4).forward(x)   # x[..., ::-1]
  ```
  """

  def __init__(
    self,
    permutation: Sequence[int],
    validate_args: bool = False,
    dtype=tf.float32,
    name: str = 'channel_permutation',
  ):
    """Builds the layer from `permutation`, a reordering of `range(C)`."""
    parameters = dict(locals())
    permutation = np.asarray(permutation)
    if permutation.ndim != 1 or sorted(permutation.tolist()) != list(range(permutation.size)):
      raise ValueError(f'ChannelPermutation needs a permutation of range(C); got {permutation!r}.')
    self._num_channels = int(permutation.size)
    with tf.name_scope(name):
      self._permutation = tf.Variable(
        permutation.astype(np.int32), trainable=False, name='permutation'
      )
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @classmethod
  def reverse(cls, num_channels: int, **kwargs) -> 'ChannelPermutation':
    """The permutation `C-1, ..., 1, 0`."""
    return cls(np.arange(num_channels)[::-1], **kwargs)

  @classmethod
  def shuffle(cls, num_channels: int, seed, **kwargs) -> 'ChannelPermutation':
    """A random permutation, fixed by `seed` (int or ints; NumPy's frozen RandomState stream)."""
    return cls(np.random.RandomState(seed).permutation(num_channels), **kwargs)

  @property
  def permutation(self) -> tf.Variable:
    return self._permutation

  def _forward_and_log_det(self, x):
    return tf.gather(x, nn.read(self._permutation), axis=-1), tf.zeros([], x.dtype)

  def _inverse_and_log_det(self, y):
    inverse = tf.math.invert_permutation(nn.read(self._permutation))
    return tf.gather(y, inverse, axis=-1), tf.zeros([], y.dtype)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
