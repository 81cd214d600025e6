"""TopPrior: the learned, optionally class-conditional, prior of Glow's top latent."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import FlowBijector, check_flat_shape

__all__ = ['TopPrior']


class TopPrior(FlowBijector):
  """Standardises the top-level latent under a learned Gaussian prior.

  Acts on the flat latent of `MultiScaleFlow` (event `[D]`), whose last
  `h * w * c` entries are the top latent `z` (shape `[h, w, c]`, row-major);
  the entries before it (the factored-out levels, already standard) pass through.

  ```none
  mu, log_sigma   per channel: learned vectors ("learntop"), plus, with num_classes,
                  onehot(label) @ (class_loc, class_log_scale)
  forward:  eps = (z - mu) * exp(-log_sigma)
  inverse:  z = mu + exp(log_sigma) * eps
  log|det J_forward| = -h * w * sum(log_sigma)
  ```

  Everything starts at zero (a standard normal prior). A class-conditional prior
  needs `label` through TFP's conditional kwargs: integer classes `[...]` or
  one-hot/soft labels `[..., num_classes]`, e.g.
  `flow.log_prob(x, bijector_kwargs={'top_prior': {'label': y}})`.
  """

  def __init__(
    self,
    latent_size: int,
    top_shape: Sequence[int],
    learn_top: bool = True,
    num_classes: int | None = None,
    dtype=tf.float32,
    validate_args: bool = False,
    name: str = 'top_prior',
  ):
    """Builds the prior.

    Args:
      latent_size: D, the size of the flat latent.
      top_shape: `(h, w, c)` of the top latent, the last `h * w * c` entries.
      learn_top: learn an unconditional per-channel mean and log-scale.
      num_classes: if set, add a per-class mean and log-scale selected by `label`.
      dtype: float dtype.
      validate_args: TFP's flag.
      name: name of the bijector; conditional kwargs are routed by it.
    """
    parameters = dict(locals())
    top_shape = tuple(int(d) for d in top_shape)
    if len(top_shape) != 3 or int(np.prod(top_shape)) > latent_size:
      raise ValueError(
        f'TopPrior needs top_shape (h, w, c) with h*w*c <= latent_size='
        f'{latent_size}; got {top_shape!r}.'
      )
    if num_classes is not None and num_classes < 2:
      raise ValueError(f'TopPrior needs num_classes >= 2 or None; got {num_classes!r}.')
    if not learn_top and num_classes is None:
      raise ValueError(
        'TopPrior with learn_top=False and num_classes=None is the identity; '
        'leave it out of the flow instead.'
      )
    self._latent_size = latent_size
    self._top_shape = top_shape
    self._num_classes = num_classes
    channels = top_shape[-1]
    with tf.name_scope(name):
      self._loc = self._log_scale = self._class_loc = self._class_log_scale = None
      if learn_top:
        self._loc = tf.Variable(tf.zeros([channels], dtype), name='loc')
        self._log_scale = tf.Variable(tf.zeros([channels], dtype), name='log_scale')
      if num_classes is not None:
        self._class_loc = tf.Variable(tf.zeros([num_classes, channels], dtype), name='class_loc')
        self._class_log_scale = tf.Variable(
          tf.zeros([num_classes, channels], dtype), name='class_log_scale'
        )
    super().__init__(
      forward_min_event_ndims=1,
      is_constant_jacobian=True,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def top_shape(self):
    return self._top_shape

  @property
  def num_classes(self) -> int | None:
    return self._num_classes

  def _one_hot(self, label):
    if self._num_classes is None:
      if label is not None:
        raise ValueError(
          f'TopPrior ({self.name!r}) is unconditional (num_classes=None); got a label.'
        )
      return None
    if label is None:
      raise ValueError(
        f'TopPrior ({self.name!r}) is class-conditional (num_classes={self._num_classes}) '
        f"and needs a label: bijector_kwargs={{'{self.name}': {{'label': y}}}}."
      )
    label = tf.convert_to_tensor(label)
    if label.dtype.is_integer:
      return tf.one_hot(self._checked_classes(label), self._num_classes, dtype=self.dtype)
    if label.shape.rank is not None and label.shape[-1] != self._num_classes:
      raise ValueError(
        f'TopPrior ({self.name!r}) needs integer labels or one-hot labels '
        f'[..., {self._num_classes}]; got a {label.dtype.name} tensor of '
        f'shape {label.shape}.'
      )
    return tf.cast(label, self.dtype)

  def _checked_classes(self, label):
    """`label`, once every class in it is in `0 .. num_classes - 1` (one_hot would make
    any other value "no class" without a word)."""
    expected = f'TopPrior ({self.name!r}) needs class labels in 0..{self._num_classes - 1}'
    value = tf.get_static_value(label)
    if value is not None:
      bad = np.unique(value[(value < 0) | (value >= self._num_classes)])
      if bad.size:
        raise ValueError(f'{expected}; got {bad.tolist()[:10]}.')
      return label
    checks = [
      tf.debugging.assert_non_negative(label, message=f'{expected}; got a negative one'),
      tf.debugging.assert_less(
        label,
        tf.constant(self._num_classes, label.dtype),
        message=f'{expected}; got one >= {self._num_classes}',
      ),
    ]
    with tf.control_dependencies(checks):
      return tf.identity(label)

  def loc_and_log_scale(self, label=None):
    """Per-channel prior mean and log-scale of the top latent, `[..., c]`."""
    one_hot = self._one_hot(label)
    loc = log_scale = tf.zeros([self._top_shape[-1]], self.dtype)
    if self._loc is not None:
      loc, log_scale = loc + nn.read(self._loc), log_scale + nn.read(self._log_scale)
    if one_hot is not None:
      loc = loc + tf.tensordot(one_hot, nn.read(self._class_loc), axes=1)
      log_scale = log_scale + tf.tensordot(one_hot, nn.read(self._class_log_scale), axes=1)
    return loc, log_scale

  def _flat(self, per_channel):
    """`[..., c]` -> `[..., D]`: zeros for the factored-out levels, then tiled over h*w."""
    height, width, channels = self._top_shape
    # Broadcast rather than tf.tile: the same values, and a gradient without Tile's
    # int32 transpose, which TF 2.21's oneDNN logs as an error line on AVX-512 CPUs.
    batch_shape = tf.shape(per_channel)[:-1]
    hw_c = tf.broadcast_to(
      per_channel[..., tf.newaxis, :], tf.concat([batch_shape, [height * width, channels]], 0)
    )
    tiled = tf.reshape(hw_c, tf.concat([batch_shape, [height * width * channels]], 0))
    leading = self._latent_size - int(np.prod(self._top_shape))
    padding = [[0, 0]] * (per_channel.shape.rank - 1) + [[leading, 0]]
    return tf.pad(tiled, padding)

  def _log_det(self, log_scale):
    height, width, _ = self._top_shape
    return -float(height * width) * tf.reduce_sum(log_scale, axis=-1)

  def _forward_and_log_det(self, x, label=None):
    loc, log_scale = self.loc_and_log_scale(label)
    return (x - self._flat(loc)) * tf.exp(-self._flat(log_scale)), self._log_det(log_scale)

  def _inverse_and_log_det(self, y, label=None):
    loc, log_scale = self.loc_and_log_scale(label)
    return self._flat(loc) + tf.exp(self._flat(log_scale)) * y, -self._log_det(log_scale)

  def _forward_event_shape(self, input_shape):
    return check_flat_shape(self, input_shape, self._latent_size)

  _inverse_event_shape = _forward_event_shape
