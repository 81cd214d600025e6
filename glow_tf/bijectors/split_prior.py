"""SplitPrior: the learned prior of the channels Glow factors out at the end of a level."""

import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.affine_coupling import AffineCoupling

__all__ = ['SplitPrior']


class SplitPrior(AffineCoupling):
  """Standardises the half of the channels that leaves the flow, under a learned prior.

  At the end of every level but the last, Glow keeps `x1` (the first `C//2`
  channels) and factors out `x2` with the prior
  `p(x2 | x1) = N(x2; mu(x1), exp(log_sigma(x1))^2)`, where `mu` and
  `log_sigma` come from a zero-initialised 3x3 convolution of `x1`. As a
  bijector, that prior is the map to its standard-normal noise:

  ```none
  forward:  y1 = x1,  y2 = (x2 - mu(x1)) * exp(-log_sigma(x1))
  inverse:  x1 = y1,  x2 = mu(y1) + exp(log_sigma(y1)) * y2
  log|det J_forward| = -sum(log_sigma(x1))
  ```

  an affine coupling with `shift = -mu`, `log_scale = -log_sigma`. A standard
  normal on `y2` then gives `x2` exactly the prior above, and sampling `y2` with
  standard deviation `T` samples the official code's temperature `T`
  (`mu + T * sigma * eps`) at this level.

  #### References

  [1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
       Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  """

  def __init__(
    self,
    num_channels: int,
    dtype=tf.float32,
    compute_dtype=None,
    validate_args: bool = False,
    name: str = 'split_prior',
  ):
    """Builds the prior for images with `num_channels` channels; at first N(0, 1).

    `compute_dtype` (e.g. bfloat16): the type of its network's convolution; the
    mean, scale and log-det stay in `dtype`.
    """
    with tf.name_scope(name):
      network = nn.ZeroConv2D(
        num_channels // 2,
        2 * (num_channels - num_channels // 2),
        kernel_size=3,
        dtype=dtype,
        compute_dtype=compute_dtype,
        name='prior_conv',
      )
    super().__init__(network, num_channels, dtype=dtype, validate_args=validate_args, name=name)

  def _apply_network(self, x1):
    return nn.apply_to_images(self.network, x1)  # A ZeroConv2D takes [N, H, W, C] only.

  def _shift_and_log_scale(self, x1):
    mean, log_sigma = tf.split(self._network_output(x1), 2, axis=-1)
    return -mean, -log_sigma
