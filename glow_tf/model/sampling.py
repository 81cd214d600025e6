"""Using a trained Glow: samples at temperatures, reconstruction, interpolation, classes,
attribute manipulation. Functions return arrays; `glow_tf.sample` writes them as PNGs.

Images are in model space, `[-0.5, 0.5)`; latents are lists with one
`[batch, h, w, c]` tensor per level (see `glow_tf.encode`).
"""

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf.bijectors import compiled_steps
from glow_tf.errors import SampleError
from glow_tf.model import flow as flow_lib
from glow_tf.model import images

__all__ = [
  'INTERPOLATIONS',
  'class_samples',
  'interpolate',
  'interpolate_latents',
  'manipulate',
  'manipulation_vector',
  'reconstruct',
  'sample_grid',
  'sheet',
]

INTERPOLATIONS = ('linear', 'spherical')


@tf.function
def _draw(flow, num, temperature, seed, label):
  """Compiled sampling; temperature and seed are tensors, so new values do not retrace."""
  with compiled_steps.untaped():  # Not differentiated: stacked steps in loops.
    return flow_lib.sample(flow, num, temperature=temperature, seed=seed, label=label)


def sheet(x, num_bins: int, columns: int) -> np.ndarray:
  """Model-space images `[N, H, W, C]` -> one uint8 grid, enlarged so that small images show."""
  scale = max(1, 64 // int(x.shape[1]))
  return images.grid(
    images.display_uint8(x, num_bins), columns, scale=scale, padding=max(1, scale // 2)
  )


def sample_grid(
  flow, num_bins: int, temperature: float, num: int, seed: int = 0, label=None
) -> np.ndarray:
  """`num` samples at `temperature` as a square-ish uint8 grid (labels, if any, per sample)."""
  x = _draw(
    flow, tf.constant(num), tf.constant(temperature, flow.dtype), tf.constant([seed, 1]), label
  )
  return sheet(x, num_bins, int(math.ceil(math.sqrt(num))))


def reconstruct(flow, x, label=None):
  """`(decode(encode(x)), max |x - decode(encode(x))|)`: invertibility made visible."""
  x = tf.convert_to_tensor(x, flow.dtype)
  x_back = flow_lib.decode(flow, flow_lib.encode(flow, x, label=label), label=label)
  return x_back, float(tf.reduce_max(tf.abs(x_back - x)))


def _slerp(a, b, t):
  """Spherical interpolation of each example's flattened latent, linear where a ∥ b."""
  flat_a = tf.reshape(a, [tf.shape(a)[0], -1])
  flat_b = tf.reshape(b, [tf.shape(b)[0], -1])
  cos = tf.reduce_sum(flat_a * flat_b, -1) / (tf.norm(flat_a, axis=-1) * tf.norm(flat_b, axis=-1))
  theta = tf.acos(tf.clip_by_value(cos, -1.0, 1.0))[:, None]
  sin = tf.sin(theta)
  safe = sin > 1e-6
  wa = tf.where(safe, tf.sin((1.0 - t) * theta) / tf.where(safe, sin, 1.0), 1.0 - t)
  wb = tf.where(safe, tf.sin(t * theta) / tf.where(safe, sin, 1.0), t)
  return tf.reshape(wa * flat_a + wb * flat_b, tf.shape(a))


def interpolate_latents(latents_a, latents_b, t: float, method: str = 'linear'):
  """Every level's latent at fraction `t` from `latents_a` to `latents_b`."""
  if method not in INTERPOLATIONS:
    raise SampleError(f'interpolation must be one of {INTERPOLATIONS}; got {method!r}.')
  if method == 'linear':
    return [(1.0 - t) * a + t * b for a, b in zip(latents_a, latents_b)]
  return [_slerp(a, b, t) for a, b in zip(latents_a, latents_b)]


def interpolate(flow, x_a, x_b, steps: int, method: str = 'linear', label_a=None, label_b=None):
  """Decoded interpolations between image batches: `[steps, N, H, W, C]`, t = 0 … 1.

  With a class-conditional flow the label is interpolated too (one-hot, mixed).
  """
  if steps < 2:
    raise SampleError(f'interpolation needs steps >= 2; got {steps}.')
  latents_a = flow_lib.encode(flow, x_a, label=label_a)
  latents_b = flow_lib.encode(flow, x_b, label=label_b)
  if label_a is not None:
    one_hot_a, one_hot_b = (tf.one_hot(label, _num_classes(flow)) for label in (label_a, label_b))
  frames = []
  for t in np.linspace(0.0, 1.0, steps):
    label = None if label_a is None else (1.0 - t) * one_hot_a + t * one_hot_b
    latents = interpolate_latents(latents_a, latents_b, float(t), method)
    frames.append(flow_lib.decode(flow, latents, label=label))
  return tf.stack(frames)


def _num_classes(flow) -> int:
  if flow.num_classes is None:
    raise SampleError('this flow is not class-conditional (no label in its top prior).')
  return flow.num_classes


def class_samples(flow, classes: Sequence[int], per_class: int, temperature: float, seed: int = 0):
  """`[len(classes), per_class, H, W, C]`: one row of samples per class."""
  num_classes = _num_classes(flow)
  unknown = [c for c in classes if not 0 <= c < num_classes]
  if unknown:
    raise SampleError(f'classes must be in 0..{num_classes - 1}; got {unknown}.')
  label = tf.repeat(tf.constant(list(classes), tf.int32), per_class)
  x = _draw(
    flow,
    tf.constant(len(classes) * per_class),
    tf.constant(temperature, flow.dtype),
    tf.constant([seed, 2]),
    label,
  )
  return tf.reshape(x, [len(classes), per_class, *x.shape[1:]])


def _mean_latents(flow, x, label=None, batch_size: int = 256):
  totals = None
  for start in range(0, int(x.shape[0]), batch_size):
    chunk_label = None if label is None else label[start : start + batch_size]
    latents = flow_lib.encode(flow, x[start : start + batch_size], label=chunk_label)
    sums = [tf.reduce_sum(z, axis=0) for z in latents]
    totals = sums if totals is None else [a + b for a, b in zip(totals, sums)]
  return [t / int(x.shape[0]) for t in totals]


def manipulation_vector(flow, x_with, x_without, label_with=None, label_without=None):
  """The paper's attribute direction: mean latent with it minus mean latent without it.

  One vector per level, each `[h, w, c]`.
  """
  for name, x in (('x_with', x_with), ('x_without', x_without)):
    if int(x.shape[0]) == 0:
      raise SampleError(
        f'manipulation_vector needs images with and without the attribute; {name} is empty.'
      )
  mean_with = _mean_latents(flow, tf.convert_to_tensor(x_with, flow.dtype), label_with)
  mean_without = _mean_latents(flow, tf.convert_to_tensor(x_without, flow.dtype), label_without)
  return [a - b for a, b in zip(mean_with, mean_without)]


def manipulate(flow, x, vector, alphas: Sequence[float], label=None):
  """`decode(encode(x) + alpha * vector)` for each alpha: `[len(alphas), N, H, W, C]`."""
  if len(alphas) == 0:
    raise SampleError('manipulate needs at least one alpha; got an empty list.')
  latents = flow_lib.encode(flow, x, label=label)
  frames = [
    flow_lib.decode(flow, [z + alpha * v for z, v in zip(latents, vector)], label=label)
    for alpha in alphas
  ]
  return tf.stack(frames)
