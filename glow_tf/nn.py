"""Glow's network pieces: convolutions, ActNorm, the coupling network, the classifier head.

Every weight is a plain named `tf.Variable` on a `tf.Module`, so a flow's
`trainable_variables` finds all of them (Keras 3 layers on a `tf.Module` are
invisible to it).
"""

import contextlib
import threading
from collections.abc import Callable

import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

__all__ = [
  'ActNormLayer',
  'ClassifierHead',
  'Conv2D',
  'CouplingNetwork',
  'ZeroConv2D',
  'apply_to_images',
  'data_dependent_init',
]

# Official Glow multiplies zero-initialised outputs by exp(3 * logs).
LOGSCALE_FACTOR = 3.0

_ddi = threading.local()


@contextlib.contextmanager
def data_dependent_init():
  """Within this context, each ActNorm not yet initialised initialises on its input.

  Initialisation is an explicit pass (see `glow_tf.initialize`), never a hidden
  `tf.cond` in the model: the flag is read in Python, so functions traced outside
  the context hold no initialisation logic. It must run eagerly.
  """
  if not tf.executing_eagerly():
    raise RuntimeError(
      'ActNorm data-dependent initialisation runs eagerly; got a call '
      'inside tf.function or a graph. Call glow_tf.initialize outside it.'
    )
  previous = getattr(_ddi, 'active', False)
  _ddi.active = True
  try:
    yield
  finally:
    _ddi.active = previous


def apply_to_images(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
  """Applies `fn`, defined on `[N, H, W, C]`, to `x` of shape `[..., H, W, C]`."""
  if x.shape.rank == 4:
    return fn(x)
  shape = ps.shape(x)
  y = fn(tf.reshape(x, ps.concat([[-1], shape[-3:]], axis=0)))
  return tf.reshape(y, ps.concat([shape[:-3], ps.shape(y)[-3:]], axis=0))


class ActNormLayer(tf.Module):
  """Per-channel affine map `y = exp(log_scale) * x + shift`, initialised from data.

  On its first input inside `data_dependent_init()`, it sets `log_scale` and
  `shift` so that the output has per-channel mean 0 and standard deviation 1 over
  the batch and spatial positions. A channel with zero variance keeps scale 1.
  The `initialized` flag is a variable, saved in checkpoints and exports, so a
  restored model is never initialised again.
  """

  def __init__(self, num_channels: int, dtype=tf.float32, name: str = 'actnorm'):
    super().__init__(name=name)
    with self.name_scope:
      self.log_scale = tf.Variable(tf.zeros([num_channels], dtype), name='log_scale')
      self.shift = tf.Variable(tf.zeros([num_channels], dtype), name='shift')
      self.initialized = tf.Variable(False, trainable=False, name='initialized')

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    if getattr(_ddi, 'active', False) and not self.is_initialized():
      self.initialize(x)
    return x * tf.exp(self.log_scale) + self.shift

  def is_initialized(self) -> bool:
    """The flag's value, read eagerly (`bool()` of a distributed variable is always True)."""
    return bool(self.initialized.read_value().numpy())

  def inverse(self, y: tf.Tensor) -> tf.Tensor:
    return (y - self.shift) * tf.exp(-self.log_scale)

  def initialize(self, x: tf.Tensor) -> None:
    """Sets scale and shift so that `self(x)` has per-channel mean 0 and std 1."""
    x = tf.convert_to_tensor(x, self.log_scale.dtype)
    mean, variance = tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
    tiny = tf.constant(1e-12, variance.dtype)
    log_scale = tf.where(
      variance > tiny, -0.5 * tf.math.log(tf.maximum(variance, tiny)), tf.zeros_like(variance)
    )
    self.log_scale.assign(log_scale)
    self.shift.assign(-mean * tf.exp(log_scale))
    self.initialized.assign(True)


class Conv2D(tf.Module):
  """'SAME' convolution without bias (an ActNorm follows it); weights ~ N(0, 0.05²)."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    seed=(0, 0),
    dtype=tf.float32,
    name: str = 'conv',
  ):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(
        0.05
        * tf.random.stateless_normal(
          [kernel_size, kernel_size, in_channels, out_channels], seed=seed, dtype=dtype
        ),
        name='kernel',
      )

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return tf.nn.conv2d(x, self.kernel, strides=1, padding='SAME')


class ZeroConv2D(tf.Module):
  """'SAME' convolution initialised to output zeros: `(conv(x, W) + b) * exp(3 logs)`.

  W, b and logs all start at zero, so the layer it ends computes the identity
  (a coupling) or a standard normal (a prior) at initialisation.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    dtype=tf.float32,
    name: str = 'zero_conv',
  ):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(
        tf.zeros([kernel_size, kernel_size, in_channels, out_channels], dtype), name='kernel'
      )
      self.bias = tf.Variable(tf.zeros([out_channels], dtype), name='bias')
      self.logs = tf.Variable(tf.zeros([out_channels], dtype), name='logs')

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    y = tf.nn.conv2d(x, self.kernel, strides=1, padding='SAME') + self.bias
    return y * tf.exp(LOGSCALE_FACTOR * self.logs)


class CouplingNetwork(tf.Module):
  """Glow's coupling network: conv3x3 → ActNorm → ReLU → conv1x1 → ActNorm → ReLU → zero conv3x3."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    width: int,
    seed=(0, 0),
    dtype=tf.float32,
    name: str = 'network',
  ):
    super().__init__(name=name)
    seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 2)
    with self.name_scope:
      self.conv_in = Conv2D(in_channels, width, 3, seed=seeds[0], dtype=dtype, name='conv_in')
      self.actnorm_in = ActNormLayer(width, dtype=dtype, name='actnorm_in')
      self.conv_hidden = Conv2D(width, width, 1, seed=seeds[1], dtype=dtype, name='conv_hidden')
      self.actnorm_hidden = ActNormLayer(width, dtype=dtype, name='actnorm_hidden')
      self.conv_out = ZeroConv2D(width, out_channels, 3, dtype=dtype, name='conv_out')

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return apply_to_images(self._call, x)

  def _call(self, x):
    h = tf.nn.relu(self.actnorm_in(self.conv_in(x)))
    h = tf.nn.relu(self.actnorm_hidden(self.conv_hidden(h)))
    return self.conv_out(h)


class ClassifierHead(tf.Module):
  """Class logits from the top latent: a zero-initialised linear map of its spatial mean.

  The official code trains it with a weighted cross-entropy beside the NLL of a
  class-conditional model, so that the top latent carries the label.
  """

  def __init__(
    self, num_channels: int, num_classes: int, dtype=tf.float32, name: str = 'classifier'
  ):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(tf.zeros([num_channels, num_classes], dtype), name='kernel')
      self.bias = tf.Variable(tf.zeros([num_classes], dtype), name='bias')

  def __call__(self, z_top: tf.Tensor) -> tf.Tensor:
    """Logits `[..., num_classes]` for a top latent `[..., h, w, c]`."""
    return tf.linalg.matmul(tf.reduce_mean(z_top, axis=[-3, -2]), self.kernel) + self.bias
