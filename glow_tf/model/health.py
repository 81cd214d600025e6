"""Health figures of a Glow flow: what shows trouble before it explodes.

`leaves` lists every elementary bijector in the order it applies (image ->
latent) and `walk` runs a batch through them one at a time, so a figure can be
attached to the layer that produces it. Training logs `weight_health` and
`batch_health` to TensorBoard; `glow_tf.check` builds its report on `walk`.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from glow_tf import bijectors as gb
from glow_tf.bijectors.affine_coupling import split_channels
from glow_tf.bijectors.flow_bijector import forward_and_log_det

__all__ = [
  'Leaf',
  'batch_health',
  'count_nonfinite',
  'leaf_kwargs',
  'leaves',
  'walk',
  'weight_health',
]


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One elementary bijector of the flow: where it sits and what it is."""

  name: str  # e.g. 'level_0/step_3/invertible_conv1x1'
  level: int  # L for the top prior, which acts on the whole flat latent
  bijector: object


def leaves(flow) -> list[Leaf]:
  """Every elementary bijector of a `GlowDistribution`, in the order it applies, image -> latent."""
  found = []
  for index, (parts, prior) in enumerate(flow.multiscale.stages()):
    for part in parts:
      if hasattr(part, 'bijectors'):  # A flow step: ActNorm, permutation, coupling.
        found += [
          Leaf(f'level_{index}/{part.name}/{b.name}', index, b) for b in reversed(part.bijectors)
        ]
      else:
        found.append(Leaf(f'level_{index}/{part.name}', index, part))
    if prior is not None:
      found.append(Leaf(f'level_{index}/{prior.name}', index, prior))
  if flow.top_prior is not None:
    found.append(Leaf(flow.top_prior.name, len(flow.multiscale.levels), flow.top_prior))
  return found


def count_nonfinite(t) -> int:
  """How many values of `t` are inf or NaN."""
  return int(tf.reduce_sum(tf.cast(~tf.math.is_finite(t), tf.int32)))


def leaf_kwargs(bijector, label=None) -> dict:
  """The conditional kwargs a leaf takes: the label, for a class-conditional top prior."""
  if isinstance(bijector, gb.TopPrior) and bijector.num_classes is not None:
    return {'label': label}
  return {}


def walk(flow, x, label=None):
  """Runs images `x` through every leaf: a list of `(leaf, input, output, log_det)`.

  Between levels the second half of the channels leaves the flow, as in
  `MultiScaleFlow`; the top prior sees the flat latent of every level.
  """
  records, factored, h = [], [], tf.convert_to_tensor(x, flow.dtype)
  for leaf in leaves(flow):
    if isinstance(leaf.bijector, gb.TopPrior):
      h = flow.multiscale.merge_latents(factored + [h])
    y, log_det = forward_and_log_det(leaf.bijector, h, **leaf_kwargs(leaf.bijector, label))
    records.append((leaf, h, y, log_det))
    h = y
    if isinstance(leaf.bijector, gb.SplitPrior):
      h, eps = split_channels(h)
      factored.append(eps)
  return records


def weight_health(flow) -> dict[str, float]:
  """Figures read off the weights alone (cheap, logged with every progress line).

  conv1x1_min_abs_s: the smallest |s| (singular value, for a plain 1x1 conv) of
  every invertible 1x1 convolution: near 0, the layer is close to singular and
  its inverse explodes. Also per layer, under conv1x1_min_abs_s/<name>.
  """
  figures = {}
  for leaf in leaves(flow):
    if isinstance(leaf.bijector, gb.InvertibleConv1x1):
      value = float(tf.reduce_min(tf.exp(leaf.bijector.log_s)))
    elif isinstance(leaf.bijector, gb.PlainConv1x1):
      value = float(np.linalg.svd(leaf.bijector.weight.numpy(), compute_uv=False).min())
    else:
      continue
    figures[f'conv1x1_min_abs_s/{leaf.name}'] = value
  if figures:
    figures['conv1x1_min_abs_s'] = min(figures.values())
  return figures


def batch_health(flow, x, label=None) -> dict[str, float]:
  """Figures of a batch's pass: the affine couplings' scale range, non-finite values.

  coupling_max_scale / coupling_min_scale: extremes of sigmoid(h + 2) over every
  affine coupling and position; a scale collapsing toward 0 is the usual first
  sign of a run about to produce NaN.
  """
  low, high, nonfinite = np.inf, -np.inf, 0
  for leaf, x_in, y, _ in walk(flow, x, label):
    nonfinite += count_nonfinite(y)
    if isinstance(leaf.bijector, gb.AffineCoupling) and not isinstance(
      leaf.bijector, gb.SplitPrior
    ):
      _, log_scale = leaf.bijector.shift_and_log_scale(split_channels(x_in)[0])
      low = min(low, float(tf.exp(tf.reduce_min(log_scale))))
      high = max(high, float(tf.exp(tf.reduce_max(log_scale))))
  figures = {'nonfinite_values': float(nonfinite)}
  if np.isfinite(high):
    figures.update(coupling_max_scale=high, coupling_min_scale=low)
  return figures
