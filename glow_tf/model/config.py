"""GlowConfig: the architecture of a Glow flow, each field declared once."""

import dataclasses
from typing import Any

import numpy as np

from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import ConfigError

__all__ = ['COUPLINGS', 'DTYPES', 'PERMUTATIONS', 'PRECISIONS', 'GlowConfig']

COUPLINGS = ('affine', 'additive')
PERMUTATIONS = ('conv1x1', 'conv1x1_plain', 'shuffle', 'reverse')
DTYPES = ('float32', 'float64')
PRECISIONS = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class GlowConfig:
  """Architecture of a Glow flow.

  Attributes:
    image_shape: `(H, W, C)`; H and W must be multiples of `2**levels`. None only
      inside a `TrainConfig`, which takes it from the dataset.
    levels: L, the number of scales (each ends with a squeeze, all but the last
      with a split).
    depth: K, flow steps per level (ActNorm -> permutation -> coupling).
    width: channels of the coupling networks' hidden layers.
    coupling: 'affine' or 'additive'.
    permutation: 'conv1x1' (LU-parameterised), 'conv1x1_plain' (dense W),
      'shuffle' or 'reverse' (the paper's fixed permutations).
    learn_top: learn the mean and log-scale of the top latent's prior.
    compile_steps: run each level's K flow steps as one step traced once and called
      K times (`bijectors.CompiledSteps`); False traces every layer. Same values,
      same variables and checkpoints either way.
    stack_steps: hold each level's K steps' variables stacked, one `[K, ...]`
      variable per layer variable (`nn.StepStack`): ~50 variables per level
      instead of ~50 per step, so tracing, the optimiser and start-up do not grow
      with K. A checkpoint of the other layout is converted on restore.
    num_classes: if set, the top prior is class-conditional (TFP conditional
      kwargs `{'top_prior': {'label': y}}`).
    dtype: 'float32' or 'float64'.
    precision: 'float32', or 'bfloat16'/'float16' for the coupling and split-prior
      networks' convolutions (mixed precision; everything else stays float32;
      training in float16 uses a dynamic loss scale).
    seed: seeds the random rotations, shuffles and network weights.
  """

  image_shape: tuple[int, int, int] | None = option(
    (32, 32, 3), 'Image shape (H, W, C); in training, taken from the dataset.'
  )
  levels: int = option(3, 'L: number of scales.', minimum=1, identity=True)
  depth: int = option(32, 'K: flow steps per level.', minimum=1, identity=True)
  width: int = option(512, 'Hidden channels of the coupling networks.', minimum=1, identity=True)
  coupling: str = option('affine', 'Coupling layer.', choices=COUPLINGS, identity=True)
  permutation: str = option(
    'conv1x1',
    'Channel mixing: learned 1x1 conv (LU or plain) or a fixed shuffle/reverse.',
    choices=PERMUTATIONS,
    identity=True,
  )
  learn_top: bool = option(True, 'Learn the prior of the top latent.', identity=True)
  compile_steps: bool = option(
    True,
    'Trace one flow step per level and call it K times: start-up and the reversible '
    "backward's memory stay flat in K. False traces every layer (same values).",
  )
  stack_steps: bool = option(
    True,
    "Hold each level's K steps' variables stacked, [K, ...] per layer variable "
    '(fewer variables: start-up flat in K); checkpoints of either layout restore.',
  )
  num_classes: int | None = option(
    None, 'Classes of a class-conditional top prior (None: unconditional).', minimum=2
  )
  dtype: str = option('float32', 'Float type of weights and computations.', choices=DTYPES)
  precision: str = option(
    'float32',
    "Compute type of the coupling and split-prior networks' convolutions and hidden "
    'activations; variables, log-dets, ActNorm, 1x1 convolutions, priors and the loss '
    'stay in float32. float16 trains with a dynamic loss scale (for GPUs without '
    'bfloat16). Both need dtype float32.',
    choices=PRECISIONS,
  )
  seed: int = option(
    0,
    'Seeds the random rotations, shuffles and network weights.',
    minimum=configs.INT32[0],
    maximum=configs.INT32[1],
  )

  def __post_init__(self):
    if self.image_shape is not None:
      try:
        shape = tuple(int(d) for d in self.image_shape)
      except (TypeError, ValueError):
        shape = ()
      if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
          f'image_shape must be (H, W, C) of positive ints; got {self.image_shape!r}.'
        )
      object.__setattr__(self, 'image_shape', shape)
    configs.validate(self)
    if self.precision != 'float32' and self.dtype != 'float32':
      raise ConfigError(
        f'precision {self.precision} computes beside float32 variables; got dtype={self.dtype!r}.'
      )
    multiple = 2**self.levels
    if self.image_shape is not None and (
      self.image_shape[0] % multiple or self.image_shape[1] % multiple
    ):
      raise ConfigError(
        f'image height and width must be multiples of 2**levels = {multiple} '
        f'(levels={self.levels}); got image_shape={self.image_shape!r}.'
      )

  @property
  def compute_dtype(self) -> str:
    """The networks' compute type: `precision`, or `dtype` itself at full precision."""
    return self.dtype if self.precision == 'float32' else self.precision

  @property
  def num_dims(self) -> int:
    """D = H * W * C."""
    if self.image_shape is None:
      raise ConfigError('num_dims needs image_shape; this GlowConfig has none yet.')
    return int(np.prod(self.image_shape))

  def replace(self, **changes) -> 'GlowConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return configs.to_dict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'GlowConfig':
    return configs.from_dict(cls, values)
