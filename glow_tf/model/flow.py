"""The Glow model: `build_glow`, ActNorm initialisation, sampling, encode/decode, bits/dim."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import transformed_distribution

from glow_tf import bijectors as gb
from glow_tf import nn
from glow_tf.bijectors.call_cache import OneCallScope
from glow_tf.model.config import GlowConfig

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = [
  'GlowDistribution',
  'bits_per_dim',
  'build_classifier',
  'build_glow',
  'conditional_kwargs',
  'decode',
  'encode',
  'initialize',
  'multiscale_flow',
  'sample',
  'top_latent',
  'with_temperature',
]

TOP_PRIOR_NAME = 'top_prior'


class GlowDistribution(OneCallScope, transformed_distribution._TransformedDistribution):  # pylint: disable=protected-access
  """`tfd.TransformedDistribution` whose every public call shares bijector results once.

  TFP computes `log_prob(x)` as `inverse(x)` and then the log-det at the same
  tensors; each public method of this class (`log_prob`, `sample`,
  `experimental_sample_and_log_prob`, ...) runs in one `call_scope()`, so the
  two share one pass of every coupling network, and nothing is kept for the
  next call (see `glow_tf.bijectors.CallCache`). Everything else is TFP's
  (non-`CompositeTensor`) `TransformedDistribution`.

  Built by `build_glow`, its bijector is `tfb.Invert(encoder)` with the encoder
  a `MultiScaleFlow`, or `FlowChain([TopPrior, MultiScaleFlow])`; `multiscale`
  and `top_prior` name those parts.
  """

  @property
  def multiscale(self) -> gb.MultiScaleFlow:
    """The image -> latent `MultiScaleFlow` (levels, steps, split priors, latent shapes)."""
    return self._parts()[0]

  @property
  def top_prior(self) -> gb.TopPrior | None:
    """The top latent's learned (or class-conditional) prior, or None."""
    return self._parts()[1]

  @property
  def num_classes(self) -> int | None:
    """Classes of a class-conditional flow (its top prior's), else None."""
    return None if self.top_prior is None else self.top_prior.num_classes

  def _parts(self):
    encoder = getattr(self.bijector, 'bijector', None)  # tfb.Invert(encoder)
    parts = list(encoder.bijectors) if isinstance(encoder, gb.FlowChain) else [encoder]
    multiscale = [p for p in parts if isinstance(p, gb.MultiScaleFlow)]
    top = [p for p in parts if isinstance(p, gb.TopPrior)]
    if len(multiscale) != 1 or len(top) > 1:
      raise ValueError(
        f'GlowDistribution {self.name!r} needs the bijector build_glow makes, '
        'tfb.Invert(MultiScaleFlow or FlowChain([TopPrior, MultiScaleFlow])); '
        f'got {self.bijector.name!r}.'
      )
    return multiscale[0], (top[0] if top else None)


def _permutation(config: GlowConfig, channels: int, seed, dtype) -> tfb.Bijector:
  if config.permutation == 'conv1x1':
    return gb.InvertibleConv1x1(channels, seed=seed, dtype=dtype)
  if config.permutation == 'conv1x1_plain':
    return gb.PlainConv1x1(channels, seed=seed, dtype=dtype)
  if config.permutation == 'shuffle':
    return gb.ChannelPermutation.shuffle(channels, seed=list(seed), dtype=dtype, name='shuffle')
  return gb.ChannelPermutation.reverse(channels, dtype=dtype, name='reverse')


def _coupling(config: GlowConfig, channels: int, seed, dtype) -> tfb.Bijector:
  kept = channels // 2
  outputs = 2 * (channels - kept) if config.coupling == 'affine' else channels - kept
  network = nn.CouplingNetwork(
    kept, outputs, config.width, seed=seed, dtype=dtype, compute_dtype=config.compute_dtype
  )
  if config.coupling == 'affine':
    return gb.AffineCoupling(network, channels, dtype=dtype, name='coupling')
  return gb.AdditiveCoupling(network, channels, dtype=dtype, name='coupling')


def _flow_step(config: GlowConfig, channels: int, index: int, dtype) -> tfb.Bijector:
  """ActNorm -> permutation -> coupling (applied right to left by the chain)."""
  with tf.name_scope(f'step_{index}'):
    actnorm = gb.ActNorm(channels, dtype=dtype)
    permutation = _permutation(config, channels, (config.seed, 2 * index), dtype)
    coupling = _coupling(config, channels, (config.seed, 2 * index + 1), dtype)
  return gb.FlowChain([coupling, permutation, actnorm], name=f'step_{index}')


def build_glow(config: GlowConfig, name: str = 'glow') -> tfd.TransformedDistribution:
  """Builds Glow as a `tfd.TransformedDistribution` over a standard normal.

  Its bijector maps latent -> image (TFP's direction): it is
  `tfb.Invert(FlowChain([TopPrior, MultiScaleFlow]))`, where the glow_tf layers
  inside map image -> latent as in the paper. The latent is flat, `[D]`, the
  concatenation of every level's latent (see `encode`).

  Before training, initialise ActNorm once on a batch: `initialize(flow, x)`.

  Args:
    config: the architecture.
    name: name of the distribution and scope of its variables.

  Returns:
    The flow: `log_prob(x)` of images `[..., H, W, C]`, `sample(n, seed=...)`, and
    every other TFP distribution method; class-conditional flows take
    `bijector_kwargs=conditional_kwargs(label)`.
  """
  dtype = tf.as_dtype(config.dtype)
  height, width, channels = config.image_shape
  levels, split_priors, stacks = [], [], []
  with tf.name_scope(name):
    for level in range(config.levels):
      with tf.name_scope(f'level_{level}'):
        squeeze = gb.Squeeze(dtype=dtype)
        height, width, channels = height // 2, width // 2, 4 * channels
        first = level * config.depth
        make_step = lambda k, c=channels, i=first: _flow_step(config, c, i + k, dtype)  # noqa: E731
        if config.stack_steps:
          steps, stack = nn.StepStack.build(make_step, config.depth)
          stacks.append(stack)
        else:
          steps = [make_step(k) for k in range(config.depth)]
        levels.append(gb.FlowChain(steps[::-1] + [squeeze], name=f'level_{level}'))
        if level < config.levels - 1:
          split_priors.append(
            gb.SplitPrior(channels, dtype=dtype, compute_dtype=config.compute_dtype)
          )
          channels //= 2
    encoder = gb.MultiScaleFlow(
      levels,
      split_priors,
      config.image_shape,
      dtype=dtype,
      compile_steps=config.compile_steps,
      step_stacks=stacks,
    )
    if config.learn_top or config.num_classes is not None:
      top_prior = gb.TopPrior(
        encoder.latent_size,
        encoder.latent_shapes[-1],
        learn_top=config.learn_top,
        num_classes=config.num_classes,
        dtype=dtype,
        name=TOP_PRIOR_NAME,
      )
      encoder = gb.FlowChain([top_prior, encoder], name='encoder')
  base = tfd.Sample(tfd.Normal(tf.zeros([], dtype), tf.ones([], dtype)), config.num_dims)
  return GlowDistribution(base, tfb.Invert(encoder), name=name)


def build_classifier(flow: GlowDistribution) -> nn.ClassifierHead:
  """The classifier head on the top latent of a class-conditional flow."""
  if flow.num_classes is None:
    raise ValueError(
      f'build_classifier needs a class-conditional flow; {flow.name!r} has no classes.'
    )
  top_channels = flow.multiscale.latent_shapes[-1][-1]
  return nn.ClassifierHead(top_channels, flow.num_classes, dtype=flow.dtype)


def multiscale_flow(flow: tfd.Distribution) -> gb.MultiScaleFlow:
  """The `MultiScaleFlow` inside a flow built by `build_glow` (`flow.multiscale`)."""
  if not isinstance(flow, GlowDistribution):
    raise ValueError(
      f'Expected a flow built by glow_tf.build_glow (a GlowDistribution); '
      f'got {type(flow).__name__} {flow.name!r}.'
    )
  return flow.multiscale


def conditional_kwargs(label=None) -> dict[str, Any]:
  """Bijector kwargs that pass `label` to the top prior; `{}` when `label` is None."""
  return {} if label is None else {TOP_PRIOR_NAME: {'label': label}}


def initialize(flow: tfd.Distribution, images) -> int:
  """Data-dependent initialisation of every ActNorm in `flow`, once, eagerly.

  Runs `images` (a batch `[N, H, W, C]`, already preprocessed) through the flow
  with each ActNorm setting its scale and shift so that its output has
  per-channel mean 0 and std 1. ActNorms already initialised (for example
  restored from a checkpoint) are left alone.

  All or nothing: an empty batch, a batch with non-finite values, or statistics
  that come out non-finite deeper in the flow raise ValueError, and every ActNorm
  is then left exactly as it was.

  Under `tf.distribute`, call it in cross-replica context with the global batch:
  each replica's variables get the same values.

  Returns:
    How many ActNorm layers were initialised.
  """
  layers = [m for m in flow.submodules if isinstance(m, nn.ActNormLayer)]
  flags = nn.values_of([layer.initialized for layer in layers])
  pending = [layer for layer, done in zip(layers, flags) if not done]
  if not pending:
    return 0
  images = tf.convert_to_tensor(images, flow.dtype)
  if images.shape.num_elements() == 0:
    raise ValueError(
      f'initialize needs a non-empty batch of images to take statistics from; got shape '
      f'{images.shape}.'
    )
  nonfinite = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(images), tf.int32)))
  if nonfinite:
    raise ValueError(
      f'initialize needs finite images; got {nonfinite} NaN or infinite values in a batch of '
      f'shape {images.shape}. No ActNorm was changed.'
    )
  variables = [v for layer in pending for v in (layer.log_scale, layer.shift, layer.initialized)]
  before = nn.values_of(variables)
  try:
    with nn.data_dependent_init():
      multiscale_flow(flow).forward(images)
    after = nn.values_of(variables)
    bad = [
      layer.name
      for layer, log_scale, shift in zip(pending, after[0::3], after[1::3])
      if not (np.all(np.isfinite(log_scale)) and np.all(np.isfinite(shift)))
    ]
    if bad:
      raise ValueError(
        f'initialize took non-finite statistics in {len(bad)} ActNorm layer(s) '
        f'({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}): the activations overflow '
        'on this batch. No ActNorm was changed.'
      )
  except BaseException:
    nn.assign_each(variables, before)
    raise
  return len(pending)


def with_temperature(
  flow: tfd.TransformedDistribution, temperature: float
) -> tfd.TransformedDistribution:
  """The same flow with base standard deviation `temperature` (it applies at every level).

  Raises:
    ValueError (or, for a value known only when a graph runs, InvalidArgumentError):
      unless `temperature` is finite and >= 0.
  """
  base = tfd.Sample(
    tfd.Normal(tf.zeros([], flow.dtype), _checked_temperature(temperature, flow.dtype)),
    multiscale_flow(flow).latent_size,
  )
  return GlowDistribution(base, flow.bijector, name=flow.name)


def _checked_temperature(temperature, dtype) -> tf.Tensor:
  """`temperature` as a tensor, once it is finite and >= 0 (a normal's standard deviation)."""
  temperature = tf.cast(temperature, dtype)
  expected = 'temperature must be a finite number >= 0 (the base standard deviation)'
  value = tf.get_static_value(temperature)
  if value is not None:
    if not (np.all(np.isfinite(value)) and np.all(value >= 0)):
      raise ValueError(f'{expected}; got {value}.')
    return temperature
  checks = [
    tf.debugging.assert_all_finite(temperature, f'{expected}; got NaN or inf'),
    tf.debugging.assert_non_negative(temperature, message=f'{expected}; got a negative one'),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(temperature)


def sample(
  flow: tfd.TransformedDistribution, num_samples, temperature: float = 1.0, seed=None, label=None
) -> tf.Tensor:
  """`num_samples` images at `temperature`; `seed` as in TFP (int or stateless pair)."""
  return with_temperature(flow, temperature).sample(
    num_samples, seed=seed, bijector_kwargs=conditional_kwargs(label)
  )


def encode(flow: tfd.TransformedDistribution, images, label=None) -> list[tf.Tensor]:
  """Images `[..., H, W, C]` -> every level's latent `[..., h, w, c]`, the top one last.

  Each latent is the standard-normal noise of its level (the factored-out half
  standardised under its learned prior; the top standardised under the top
  prior), so under the model all are N(0, I).
  """
  return multiscale_flow(flow).split_latents(
    flow.bijector.inverse(images, **conditional_kwargs(label))
  )


def decode(
  flow: tfd.TransformedDistribution, latents: Sequence[tf.Tensor], label=None
) -> tf.Tensor:
  """The inverse of `encode`: every level's latent -> images."""
  return flow.bijector.forward(
    multiscale_flow(flow).merge_latents(latents), **conditional_kwargs(label)
  )


def top_latent(flow: tfd.TransformedDistribution, images) -> tf.Tensor:
  """The top latent before its prior, `[..., h, w, c]`: the classifier head's input."""
  return multiscale_flow(flow).split_latents(multiscale_flow(flow).forward(images))[-1]


def bits_per_dim(log_prob, num_dims: int, num_bins: int):
  """Bits per dimension of discrete data from the density of its dequantised version.

  For images with `num_bins` levels per value scaled to spacing `1/num_bins` and
  dequantised with uniform noise (the paper's setup), `log_prob` is the
  continuous log-density of `x` (nats); the discrete data's negative
  log-likelihood is bounded by `-log_prob + D log(num_bins)`, so

      bpd = (-log_prob + D * log(num_bins)) / (D * log(2)).
  """
  return (-log_prob + num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))
