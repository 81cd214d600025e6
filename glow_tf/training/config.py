"""TrainConfig: everything a training run needs besides its directory, and the presets.

A `TrainConfig` nests the model (`GlowConfig`) and the data (`DataConfig`); every
field is declared once, with its help text and rule (`glow_tf.configs.option`),
and the command-line flags are generated from those declarations. Field names are
unique across the sections, so `--width` or `TrainConfig.replace(width=...)` name
a field without saying which section holds it.
"""

import dataclasses
import math
from typing import Any

from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import ConfigError
from glow_tf.model.config import GlowConfig
from glow_tf.training import distribute, optim
from glow_tf.training.data import DataConfig, DataSource

__all__ = ['DERIVED_MODEL_FIELDS', 'NOT_FLAGS', 'PRESETS', 'DataConfig', 'TrainConfig', 'sections']

LR_SCHEDULES = ('constant', 'cosine')
# GlowConfig fields a training run does not take from flags: the data gives the image
# shape and the classes (with --class_conditional), --seed seeds everything.
DERIVED_MODEL_FIELDS = ('image_shape', 'num_classes', 'seed', 'dtype')
# The same, as paths in a TrainConfig: the fields that get no flag.
NOT_FLAGS = tuple(f'model.{name}' for name in DERIVED_MODEL_FIELDS)


def sections() -> dict[str, str | None]:
  """Every field a user sets, by its flat name -> the section holding it (None: the top).

  The model's derived fields are not among them: the data and `seed` set those.
  """
  names = {}
  for f in dataclasses.fields(TrainConfig):
    kind = configs.field_type(TrainConfig, f.name)
    if dataclasses.is_dataclass(kind):
      for inner in dataclasses.fields(kind):
        if inner.name not in DERIVED_MODEL_FIELDS:
          names[inner.name] = f.name
    else:
      names[f.name] = None
  return names


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs besides its directory.

  Presets (see `PRESETS`) fill it for common cases; the `digits` preset's result is
  recorded in the README with the command that made it. `batch_size` is global;
  `per_replica_batch_size`, if set instead, is multiplied by the number of replicas.
  """

  data: DataConfig = option(DataConfig(), 'The dataset.')
  model: GlowConfig = option(
    GlowConfig(image_shape=None, levels=2, depth=8, width=64),
    'The architecture; its image shape and classes come from the dataset.',
  )
  class_conditional: bool = option(
    False, 'Class-conditional top prior and classifier loss.', identity=True
  )
  class_loss_weight: float = option(0.01, 'Weight of the classifier bits in the loss.', minimum=0.0)
  batch_size: int | None = option(64, 'Global batch size, split across replicas.', minimum=1)
  per_replica_batch_size: int | None = option(
    None, 'Batch per replica; replaces --batch_size.', minimum=1
  )
  train_steps: int = option(2000, 'Total training steps.', minimum=0)
  learning_rate: float = option(1e-3, 'Peak learning rate.', above=0.0)
  warmup_steps: int = option(200, 'Linear learning-rate warmup.', minimum=0)
  lr_schedule: str = option(
    'constant',
    'After the warmup: constant, or cosine decay to --lr_floor at the last step.',
    choices=LR_SCHEDULES,
  )
  lr_floor: float = option(
    0.0,
    'cosine: the learning rate at the last step, as a fraction of the peak.',
    minimum=0.0,
    maximum=1.0,
  )
  optimizer: str = option('adamax', 'Optimizer.', choices=optim.OPTIMIZERS)
  grad_clip_norm: float = option(0.0, 'Clip gradients to this global norm (0: off).', minimum=0.0)
  ema_decay: float = option(
    0.999,
    'Polyak averaging (decay min(ema_decay, (1 + n) / (10 + n)) at step n); evaluation '
    'scores the averaged and the raw weights, and the best on validation is kept.',
    minimum=0.0,
    below=1.0,
  )
  init_batch_size: int = option(256, "Images for ActNorm's data-dependent init.", minimum=1)
  nonfinite_patience: int = option(
    5, 'Halve the learning rate after this many consecutive non-finite steps.', minimum=1
  )
  max_nonfinite_steps: int = option(
    100,
    'Stop (keeping the last good checkpoint) after this many consecutive non-finite steps.',
    minimum=1,
  )
  eval_every: int = option(
    500,
    'Steps between evaluations (validation and test bits/dim, best checkpoint) and sample grids.',
    minimum=1,
  )
  checkpoint_every: int = option(500, 'Steps between checkpoints.', minimum=1)
  keep_checkpoints: int = option(3, 'Checkpoints kept (the newest ones).', minimum=1)
  log_every_secs: float = option(15.0, 'Seconds between progress lines.', above=0.0)
  seed: int = option(
    0,
    'Seeds weights, data order and dequantisation noise.',
    minimum=configs.INT32[0],
    maximum=configs.INT32[1],
    identity=True,
  )
  strategy: str = option(
    'default',
    'default: one device; mirrored: all GPUs (else all CPU devices); multi_worker: from TF_CONFIG.',
    choices=distribute.STRATEGIES,
  )
  jit_compile: bool = option(False, 'Compile the forward/backward pass with XLA.')
  graph_optimizer: str = option(
    'auto',
    "TensorFlow's graph optimiser (grappler) on training's functions. auto: off when no GPU "
    'is visible (on 2 CPU cores it adds ~5 s to the first step at K=32 and nothing '
    "measurable to a step's speed), TensorFlow's default otherwise.",
    choices=('auto', 'on', 'off'),
  )
  recompute: bool = option(
    False,
    "Reversible backward pass: rebuild each flow step's input from its output instead of "
    'storing activations (step memory flat in depth, ~1.5x compute).',
  )
  temperatures: tuple[float, ...] = option(
    (0.0, 0.5, 0.7, 0.85, 1.0),
    'Temperatures of the sample grids, e.g. 0,0.7,1.',
    check=lambda ts: len(ts) > 0 and all(0 <= t < math.inf for t in ts),
    expected='one or more, all finite and >= 0',
  )
  samples_per_temperature: int = option(64, 'Samples in the grid of each temperature.', minimum=1)

  def __post_init__(self):
    try:
      object.__setattr__(self, 'temperatures', tuple(float(t) for t in self.temperatures))
    except (TypeError, ValueError) as e:
      raise ConfigError(f'temperatures must be numbers; got {self.temperatures!r}.') from e
    configs.validate(self)
    derived = [
      name
      for name in DERIVED_MODEL_FIELDS
      if getattr(self.model, name) != getattr(GlowConfig(image_shape=None), name)
    ]
    if derived:
      raise ConfigError(
        f'model fields {derived} of a TrainConfig come from the data and --seed; '
        f'got {[getattr(self.model, n) for n in derived]}.'
      )
    if (self.batch_size is None) == (self.per_replica_batch_size is None):
      raise ConfigError(
        'set exactly one of batch_size (global) and per_replica_batch_size; got '
        f'batch_size={self.batch_size!r}, '
        f'per_replica_batch_size={self.per_replica_batch_size!r}.'
      )

  def global_batch_size(self, num_replicas: int) -> int:
    """The global batch for `num_replicas`; raises ConfigError if it does not split evenly."""
    if self.per_replica_batch_size is not None:
      return self.per_replica_batch_size * num_replicas
    if self.batch_size % num_replicas:
      raise ConfigError(
        f'batch_size (global) must be divisible by the number of replicas '
        f'({num_replicas}); got {self.batch_size}.'
      )
    return self.batch_size

  def model_config(self, source: DataSource) -> GlowConfig:
    """The flow's architecture for images of `source`; raises ConfigError if it cannot fit."""
    if self.class_conditional and source.num_classes is None:
      raise ConfigError(
        f'class_conditional needs a labelled dataset; {source.name!r} has no labels.'
      )
    return self.model.replace(
      image_shape=source.image_shape,
      num_classes=source.num_classes if self.class_conditional else None,
      seed=self.seed,
    )

  def replace(self, **changes) -> 'TrainConfig':
    """A copy with `changes`, each named by its field name whichever section holds it.

    Setting one of `batch_size` and `per_replica_batch_size` unsets the other.
    """
    names = sections()
    unknown = sorted(set(changes) - set(names) - {'data', 'model'})
    if unknown:
      raise ConfigError(f'unknown TrainConfig fields {unknown}; expected some of {sorted(names)}.')
    if changes.get('batch_size') is not None and 'per_replica_batch_size' not in changes:
      changes['per_replica_batch_size'] = None
    if changes.get('per_replica_batch_size') is not None and 'batch_size' not in changes:
      changes['batch_size'] = None
    top = {k: v for k, v in changes.items() if k in ('data', 'model') or names[k] is None}
    for section in ('data', 'model'):
      inner = {k: v for k, v in changes.items() if names.get(k) == section}
      if inner:
        top[section] = dataclasses.replace(top.get(section, getattr(self, section)), **inner)
    return dataclasses.replace(self, **top)

  def identity(self) -> dict[str, Any]:
    """The fields that define the model and its data: a run directory keeps them for ever."""
    return configs.identity(self)

  def to_dict(self) -> dict[str, Any]:
    return configs.to_dict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'TrainConfig':
    """The inverse of `to_dict`; also reads the flat form of glow_tf 0.1's config.json."""
    if isinstance(values, dict) and not {'data', 'model'} & set(values):
      return cls().replace(**values)  # Flat (version 1): every field by its own name.
    return configs.from_dict(cls, values)


PRESETS: dict[str, TrainConfig] = {
  # The default: Glow on scikit-learn's embedded 8x8 digits, offline, on a CPU.
  # L=2, K=8, width 64 (154k parameters), batch 64; 150 of the 1,497 training images
  # are the validation split. Schedule, steps and rate chosen by validation bits/dim
  # (best checkpoint of each run; 2026-12-02, all with the decay warm-up of the
  # averages), over runs of lr (constant 1e-3 | cosine 5e-4, 1e-3, 2e-3, 3e-3, 4e-3)
  # x steps (1,000-8,000) x width (32, 64, 128):
  #   constant 1e-3, 8,000 steps: 2.3519 (raw, step 1,000; overfits after)
  #   cosine 1e-3, 2,500: 2.3075 | width 32, 3,000: 2.3258 | width 128, 2,000: 2.2941
  #   cosine 5e-4, 2,500: 2.3684 | 2e-3, 2,000: 2.2658 | 3e-3, 1,500: 2.2516
  #   cosine 3e-3, 1,000: 2.2693 | 4e-3, 1,000: 2.2505 (averaged, step 600) <- chosen
  # A higher rate and a short cosine schedule regularise: every run over-fits the
  # 1,347 images once its rate stays high for long. README has the measured run.
  'digits': TrainConfig().replace(
    levels=2,
    depth=8,
    width=64,
    batch_size=64,
    train_steps=1000,
    learning_rate=4e-3,
    warmup_steps=200,
    lr_schedule='cosine',
    eval_every=100,
    checkpoint_every=500,
  ),
  # Seconds: for smoke tests.
  'tiny': TrainConfig().replace(
    levels=2,
    depth=2,
    width=16,
    batch_size=32,
    train_steps=20,
    warmup_steps=5,
    ema_decay=0.9,
    eval_every=10,
    checkpoint_every=10,
    init_batch_size=64,
    samples_per_temperature=16,
    log_every_secs=1.0,
  ),
  # The paper's CIFAR-10 setup (Kingma & Dhariwal 2018, table 2 / the official
  # code's README): 3 levels, K=32, width 512, affine coupling, LU 1x1 conv,
  # learned top prior, Adamax lr 1e-3 with warmup, 8 bits, 64 images per device.
  # The paper reports 3.35 bits/dim on the test set.
  'cifar10_paper': TrainConfig().replace(
    dataset='cifar10',
    n_bits=8,
    levels=3,
    depth=32,
    width=512,
    coupling='affine',
    permutation='conv1x1',
    learn_top=True,
    per_replica_batch_size=64,
    train_steps=400_000,
    learning_rate=1e-3,
    warmup_steps=8_000,
    optimizer='adamax',
    ema_decay=0.999,
    init_batch_size=256,
    eval_every=5_000,
    checkpoint_every=5_000,
    log_every_secs=60.0,
    samples_per_temperature=36,
  ),
}
