"""Model space and bins: images as the flow sees them, and as integers per level.

Data with `num_bins` levels per value (256 for 8-bit images, `2**n_bits`, 17 for
the digits) live in model space as `[-0.5, 0.5)`: bin `b` covers
`[b, b + 1) / num_bins - 0.5`.
"""

import tensorflow as tf

__all__ = ['centre', 'dequantize', 'to_pixels']


def dequantize(pixels: tf.Tensor, num_bins: int, seed, rows: tuple[int, int] | None = None):
  """Integer pixels in `[0, num_bins)` -> `(pixels + u) / num_bins - 0.5`, u ~ U[0, 1).

  The paper's uniform dequantisation; the result lies in `[-0.5, 0.5)`. With
  `rows=(first, total)`, `pixels` are rows `first, first + 1, ...` of a batch of
  `total` rows and get the noise they get there: a worker's share of a global batch
  is dequantised as the global batch is.
  """
  shape = tf.shape(pixels)
  if rows is None:
    noise = tf.random.stateless_uniform(shape, seed=seed)
  else:
    first, total = rows
    noise = tf.random.stateless_uniform(tf.concat([[total], shape[1:]], 0), seed=seed)
    noise = tf.ensure_shape(noise[first : first + shape[0]], pixels.shape)
  return (tf.cast(pixels, tf.float32) + noise) / num_bins - 0.5


def centre(pixels: tf.Tensor, num_bins: int) -> tf.Tensor:
  """Integer pixels -> the centres of their bins, `(pixels + 0.5) / num_bins - 0.5`."""
  return (tf.cast(pixels, tf.float32) + 0.5) / num_bins - 0.5


def to_pixels(x: tf.Tensor, num_bins: int) -> tf.Tensor:
  """Model space `[-0.5, 0.5)` -> integer pixels in `[0, num_bins)` (int32)."""
  return tf.cast(tf.clip_by_value(tf.floor((x + 0.5) * num_bins), 0, num_bins - 1), tf.int32)
