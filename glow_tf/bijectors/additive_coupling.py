"""AdditiveCoupling: Glow's additive (volume-preserving) coupling layer."""

from collections.abc import Callable

import tensorflow as tf

from glow_tf.bijectors.affine_coupling import (
  check_network_output,
  couple,
  coupling_backward,
  split_channels,
  uncouple,
)
from glow_tf.bijectors.flow_bijector import FlowBijector, check_image_shape

__all__ = ['AdditiveCoupling']


class AdditiveCoupling(FlowBijector):
  """Additive coupling (NICE; Glow's `--coupling=additive`) on images `[..., H, W, C]`.

  With `x = [x1, x2]` split along channels (`x1`: the first `C//2`):

  ```none
  forward:  y1 = x1,  y2 = x2 + network(x1)
  inverse:  x1 = y1,  x2 = y2 - network(y1)
  log|det J| = 0
  ```

  With `nn.CouplingNetwork` (zero-initialised last convolution) the layer starts
  as the identity.

  #### References

  [1]: Laurent Dinh, David Krueger, Yoshua Bengio. NICE: Non-linear Independent
       Components Estimation. ICLR 2015 workshop. https://arxiv.org/abs/1410.8516
  """

  def __init__(
    self,
    network: Callable[[tf.Tensor], tf.Tensor],
    num_channels: int,
    dtype=tf.float32,
    validate_args: bool = False,
    name: str = 'additive_coupling',
  ):
    """Builds the layer; `network` maps `[..., H, W, C//2]` to `[..., H, W, C - C//2]`."""
    parameters = dict(locals())
    if num_channels < 2:
      raise ValueError(f'AdditiveCoupling needs num_channels >= 2 to split; got {num_channels!r}.')
    self._num_channels = num_channels
    self._network = network
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def network(self):
    return self._network

  def _shift(self, x1):
    transformed = self._num_channels - self._num_channels // 2
    return check_network_output(
      self,
      self._network(x1),
      transformed,
      f'a shift for each of the {transformed} transformed channels',
    )

  def _shift_only(self, x1):
    return self._shift(x1), None

  def _forward_and_log_det(self, x):
    x1, x2 = split_channels(x)
    return tf.concat([x1, couple(x2, *self._shift_only(x1))], axis=-1), tf.zeros([], x.dtype)

  def _inverse_and_log_det(self, y):
    y1, y2 = split_channels(y)
    return tf.concat([y1, uncouple(y2, *self._shift_only(y1))], axis=-1), tf.zeros([], y.dtype)

  def reversible_backward(self, y, dy, d_log_det, weights):
    """See `FlowBijector.reversible_backward`: the network runs once (`coupling_backward`)."""
    return coupling_backward(self._shift_only, y, dy, d_log_det, weights)

  def _forward_event_shape(self, input_shape):
    return check_image_shape(self, input_shape, channels=self._num_channels)

  _inverse_event_shape = _forward_event_shape
