"""MultiScaleFlow: Glow's multi-scale architecture, image -> one flat latent."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import chain as chain_lib
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf.bijectors import compiled_steps as compiled_lib
from glow_tf.bijectors.affine_coupling import split_channels
from glow_tf.bijectors.flow_bijector import (
  FlowBijector,
  check_flat_shape,
  check_image_shape,
  forward_and_log_det,
  inverse_and_log_det,
)
from glow_tf.bijectors.squeeze import Squeeze

tfb = tfp.bijectors

__all__ = ['MultiScaleFlow']


def _forward(bijector, x, log_det):
  y, part = forward_and_log_det(bijector, x)
  return y, log_det + part


def _inverse(bijector, y, log_det):
  x, part = inverse_and_log_det(bijector, y)
  return x, log_det + part


class MultiScaleFlow(FlowBijector):
  """Glow's multi-scale architecture (Glow, figure 2b; RealNVP, section 3.6).

  ```none
  forward (image x -> flat latent):
    h = x
    for l in 0 .. L-1:
      h = levels[l](h)                       # squeeze, then K flow steps
      if l < L-1:
        h = split_priors[l](h)               # standardise the second half under its prior
        h, eps_l = h[..., :c/2], h[..., c/2:]
    y = concat(flatten(eps_0), ..., flatten(eps_{L-2}), flatten(h))
  inverse: the same in reverse order, through each part's inverse
  log|det J_forward| = sum of the parts' log-dets
  ```

  Parts are computed through `forward_and_log_det` / `inverse_and_log_det`:
  each network runs once per pass, without per-layer TFP bookkeeping (the
  composite's own result is cached). The event is `[H, W, C]` forward and
  `[D] = [H * W * C]` inverse; `latent_shapes` lists each level's piece of it.
  """

  def __init__(
    self,
    levels: Sequence[tfb.Bijector],
    split_priors: Sequence[tfb.Bijector],
    image_shape: Sequence[int],
    dtype=tf.float32,
    compile_steps: bool = True,
    step_stacks: Sequence[tf.Module] = (),
    validate_args: bool = False,
    name: str = 'multiscale_flow',
  ):
    """Builds the composite.

    Args:
      levels: L bijectors on images; level l maps the kept channels of level l-1
        (the image for l = 0) to the input of `split_priors[l]`.
      split_priors: L - 1 same-shape bijectors; each standardises the second half
        of its input's channels (e.g. `SplitPrior`).
      image_shape: `(H, W, C)`.
      dtype: float dtype.
      compile_steps: run each level's flow steps as one step traced once and called
        K times (`CompiledSteps`) where they share one structure; False: every
        layer traced on its own (the same values, a graph that grows with K).
      step_stacks: the `nn.StepStack`s holding the levels' steps' variables, if
        they were built stacked (`build_glow` with `stack_steps`): the flow owns
        them, so its `variables` and checkpoints hold them.
      validate_args: TFP's flag.
      name: name of the bijector.
    """
    parameters = dict(locals())
    if len(levels) < 1 or len(split_priors) != len(levels) - 1:
      raise ValueError(
        f'MultiScaleFlow needs L >= 1 levels and L - 1 split priors; got '
        f'{len(levels)} levels and {len(split_priors)} split priors.'
      )
    self._levels = list(levels)
    self._split_priors = list(split_priors)
    self._compile_steps = compile_steps
    self._step_stacks = list(step_stacks)
    self._image_shape = tuple(int(d) for d in image_shape)
    self._latent_shapes = []
    shape = tf.TensorShape(self._image_shape)
    for level, prior in zip(self._levels, self._split_priors + [None]):
      shape = level.forward_event_shape(shape)
      if prior is not None:
        height, width, channels = prior.forward_event_shape(shape).as_list()
        self._latent_shapes.append((height, width, channels - channels // 2))
        shape = tf.TensorShape([height, width, channels // 2])
    self._latent_shapes.append(tuple(shape.as_list()))
    self._latent_sizes = [int(np.prod(s)) for s in self._latent_shapes]
    super().__init__(
      forward_min_event_ndims=3,
      inverse_min_event_ndims=1,
      validate_args=validate_args,
      dtype=dtype,
      parameters=parameters,
      name=name,
    )

  @property
  def levels(self) -> list[tfb.Bijector]:
    """The L level bijectors (for Glow's: a chain of the squeeze and K flow steps)."""
    return list(self._levels)

  @property
  def split_priors(self) -> list[tfb.Bijector]:
    """The L - 1 priors of the channels factored out after each level but the last."""
    return list(self._split_priors)

  @property
  def step_stacks(self) -> list[tf.Module]:
    """The `nn.StepStack`s holding the levels' steps' variables (empty if none)."""
    return list(self._step_stacks)

  @property
  def image_shape(self):
    return self._image_shape

  @property
  def latent_shapes(self):
    """Shapes `(h, w, c)` of each level's latent: the factored-out levels, then the top."""
    return list(self._latent_shapes)

  @property
  def latent_size(self) -> int:
    return sum(self._latent_sizes)

  def level_parts(self, index: int) -> list[tfb.Bijector]:
    """The bijectors of level `index` in the order they apply, image -> latent.

    For a chain (Glow's levels: the squeeze, then the K flow steps) its parts, last
    first, as the chain applies them; any other level bijector is its own one part.
    """
    level = self._levels[index]
    return list(reversed(level.bijectors)) if isinstance(level, chain_lib._Chain) else [level]  # pylint: disable=protected-access

  def steps(self, index: int) -> list[tfb.Bijector]:
    """The flow steps of level `index`, in the order they apply: its parts but the squeeze."""
    return [part for part in self.level_parts(index) if not isinstance(part, Squeeze)]

  def compiled_steps(self, index: int) -> compiled_lib.CompiledSteps | None:
    """Level `index`'s flow steps traced once and called K times, or None (per layer).

    None when `compile_steps` is off, when the steps differ in structure or are
    not the trailing parts of the level, and inside `compiled_steps.per_layer()`.
    """
    if not self._compile_steps or compiled_lib.per_layer_active():
      return None
    steps, parts = self.steps(index), self.level_parts(index)
    if not steps or any(a is not b for a, b in zip(parts[-len(steps) :], steps)):
      return None  # Not the level's trailing parts.
    return compiled_lib.compiled_steps(self, index, steps)

  def run_plan(self, index: int) -> tuple[list[tfb.Bijector], compiled_lib.CompiledSteps | None]:
    """How level `index` runs, image -> latent: `(parts run one by one, then the
    compiled steps or None)`. Its inverse runs the compiled steps first, then the
    parts in reverse."""
    parts, compiled = self.level_parts(index), self.compiled_steps(index)
    return (parts[: len(parts) - len(compiled.steps)] if compiled else parts), compiled

  def stages(self) -> list[tuple[list[tfb.Bijector], tfb.Bijector | None]]:
    """Per level, image -> latent: `(its parts in order, the split prior after it or None)`."""
    priors = self._split_priors + [None]
    return [(self.level_parts(i), priors[i]) for i in range(len(self._levels))]

  def split_latents(self, y: tf.Tensor) -> list[tf.Tensor]:
    """Flat latents `[..., D]` -> list of `[..., h, w, c]`, one per level."""
    batch_shape = ps.shape(y)[:-1]
    pieces = tf.split(y, self._latent_sizes, axis=-1)
    return [
      tf.reshape(p, ps.concat([batch_shape, s], axis=0))
      for p, s in zip(pieces, self._latent_shapes)
    ]

  def merge_latents(self, latents: Sequence[tf.Tensor]) -> tf.Tensor:
    """The inverse of `split_latents`."""
    if len(latents) != len(self._latent_shapes):
      raise ValueError(
        f'MultiScaleFlow ({self.name!r}) expects {len(self._latent_shapes)} '
        f'latents of shapes {self._latent_shapes}; got {len(latents)}.'
      )
    flat = []
    for z, shape, size in zip(latents, self._latent_shapes, self._latent_sizes):
      z = tf.convert_to_tensor(z, self.dtype)
      check_image_shape(
        self, z.shape[-3:] if z.shape.rank else z.shape, spatial=shape[:2], channels=shape[2]
      )
      flat.append(tf.reshape(z, ps.concat([ps.shape(z)[:-3], [size]], axis=0)))
    return tf.concat(flat, axis=-1)

  def _forward_and_log_det(self, x):
    return self._unless_empty(x, 3, [self.latent_size], self._forward_pass)

  def _inverse_and_log_det(self, y):
    return self._unless_empty(y, 1, self._image_shape, self._inverse_pass)

  def _forward_pass(self, x):
    h, log_det = x, tf.zeros([], x.dtype)
    latents = []
    for index, (_, prior) in enumerate(self.stages()):
      parts, compiled = self.run_plan(index)
      for part in parts:
        h, log_det = _forward(part, h, log_det)
      if compiled:
        h, steps_log_det = compiled.forward(h)
        log_det += steps_log_det
      if prior is not None:
        h, log_det = _forward(prior, h, log_det)
        h, eps = split_channels(h)
        latents.append(eps)
    return self.merge_latents(latents + [h]), log_det

  def _inverse_pass(self, y):
    *factored, h = self.split_latents(y)
    log_det = tf.zeros([], y.dtype)
    for index, ((_, prior), eps) in reversed(
      list(enumerate(zip(self.stages(), factored + [None])))
    ):
      if prior is not None:
        h, log_det = _inverse(prior, tf.concat([h, eps], axis=-1), log_det)
      parts, compiled = self.run_plan(index)
      if compiled:
        h, steps_log_det = compiled.inverse(h)
        log_det += steps_log_det
      for part in reversed(parts):
        h, log_det = _inverse(part, h, log_det)
    return h, log_det

  def _unless_empty(self, t, event_ndims: int, output_event_shape, compute):
    """`compute(t)` with its log-det per example, or empty outputs when `t` holds no example.

    TF's CPU convolutions (plain and grappler's fused ones) give an empty batch the
    input's channel count instead of the output's, so an empty batch must not reach
    them: it gets zeros of the right shapes, at once when the batch size is known
    and through a `tf.cond` when it is not.
    """
    batch_shape = ps.shape(t)[: t.shape.rank - event_ndims]

    def empty():
      shape = ps.concat([batch_shape, output_event_shape], axis=0)
      return tf.zeros(shape, t.dtype), tf.zeros(batch_shape, t.dtype)

    def full():
      output, log_det = compute(t)
      return output, log_det + tf.zeros(batch_shape, t.dtype)

    size = t.shape[: t.shape.rank - event_ndims].num_elements()
    if size is not None:
      return full() if size else empty()
    return tf.cond(tf.size(t) > 0, full, empty)

  def _forward_event_shape(self, input_shape):
    check_image_shape(
      self, input_shape, spatial=self._image_shape[:2], channels=self._image_shape[2]
    )
    return tf.TensorShape([self.latent_size])

  def _inverse_event_shape(self, output_shape):
    check_flat_shape(self, output_shape, self.latent_size)
    return tf.TensorShape(self._image_shape)

  def _forward_event_shape_tensor(self, input_shape):
    return tf.constant([self.latent_size], tf.int32)

  def _inverse_event_shape_tensor(self, output_shape):
    return tf.constant(self._image_shape, tf.int32)
