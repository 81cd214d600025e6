"""Loading a finished (or running) training run: its model, rebuilt from config.json, with
the weights of its best checkpoint (those validation chose) or of its latest one."""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import logging

from glow_tf import nn
from glow_tf.errors import ConfigError, RunError
from glow_tf.model import pixels
from glow_tf.model.config import GlowConfig
from glow_tf.training import data, rundir
from glow_tf.training.config import TrainConfig
from glow_tf.training.state import TrainState

tfd = tfp.distributions

__all__ = ['Run', 'check_batch', 'load_run', 'test_images']

# A batch through the flow is refused up front when one activation of the first level's
# coupling networks (batch x H/2 x W/2 x width float32) would exceed this.
MAX_ACTIVATION_BYTES = 2**30


@dataclasses.dataclass
class Run:
  """A trained model, ready to use.

  Attributes:
    model_dir: the run directory.
    flow: the Glow distribution, holding the chosen weights.
    classifier: the classifier head of a class-conditional model, else None.
    config: the run's `TrainConfig`.
    model_config: the flow's `GlowConfig`.
    num_bins: levels per value of the data it was trained on.
    checkpoint: the checkpoint the weights come from.
    step: its training step.
    averaged: whether the flow holds the Polyak averages (else the raw weights).
  """

  model_dir: str
  flow: tfd.Distribution
  classifier: nn.ClassifierHead | None
  config: TrainConfig
  model_config: GlowConfig
  num_bins: int
  checkpoint: str
  step: int
  averaged: bool = True

  @property
  def num_classes(self) -> int | None:
    return self.model_config.num_classes


def load_run(model_dir: str, checkpoint: str = 'best', averaged: bool | None = None) -> Run:
  """Rebuilds the model of `model_dir` and restores its best or its latest checkpoint.

  The model is built at full precision (`GlowConfig.precision='float32'`) whatever
  the run trained in: checkpoints do not depend on it, and exports, samples and
  checks then invert exactly.

  Args:
    model_dir: a directory written by `glow_tf.train`.
    checkpoint: 'best': the checkpoint validation chose (the latest one, with a
      warning, for a run without validation or not yet evaluated); 'latest': the
      newest checkpoint.
    averaged: use the Polyak (EMA) averages (True) or the raw weights (False) of that
      checkpoint. None: the ones that won the validation if that checkpoint is the
      best one, else the averages (as evaluation uses).

  Raises:
    RunError: naming what is missing.
  """
  if not tf.io.gfile.isdir(model_dir):
    what = 'is not a directory' if tf.io.gfile.exists(model_dir) else 'does not exist'
    raise RunError(f'run directory {model_dir!r} {what}.')
  try:
    run_config = rundir.load_run_config(model_dir)
  except ConfigError as e:
    raise RunError(str(e)) from e
  if checkpoint not in rundir.CHECKPOINT_KINDS:
    raise RunError(f'checkpoint must be one of {rundir.CHECKPOINT_KINDS}; got {checkpoint!r}.')
  directory = rundir.checkpoint_dir(model_dir, 'latest')
  if not rundir.has_checkpoint_files(directory):
    raise RunError(f'run {model_dir!r} has no checkpoint yet (nothing in {directory}).')
  if checkpoint == 'best':
    best = rundir.checkpoint_dir(model_dir, 'best')
    if rundir.has_checkpoint_files(best):
      directory = best
    else:
      logging.warning(
        '%s has no best checkpoint (no validation split, or not evaluated yet): using the '
        'latest checkpoint',
        model_dir,
      )
  config = run_config.train
  # At full precision whatever the run trained in: the weights are the same, and only
  # full precision inverts exactly. bfloat16 rounding is discontinuous: a decode's
  # kept halves, equal to the encode's up to float32 rounding, can round to other
  # bfloat16 values (max round-trip error 8e-3 on a bfloat16-trained digits model).
  model_config = run_config.model.replace(precision='float32')
  state = TrainState.create(model_config, config.optimizer, config.ema_decay, restoring=True)
  try:
    restored = rundir.restore_newest_intact(
      directory,
      state.restore,
      advice=f'{model_dir!r} cannot be used until one of them is repaired.',
    )
  except ConfigError as e:
    raise RunError(str(e)) from e
  if state.awaiting_restore:  # Its checkpoint files were removed since the check above.
    raise RunError(f'run {model_dir!r} has no checkpoint any more (nothing in {directory}).')
  if averaged is None:
    record = state.best.to_dict()
    chose_this = record is not None and record['step'] == int(state.step.numpy())
    averaged = record['weights'] == 'averaged' if chose_this else True
  if averaged:
    state.use_averages()
  return Run(
    model_dir,
    state.flow,
    state.classifier,
    config,
    model_config,
    run_config.data['num_bins'],
    restored.path,
    int(state.step.numpy()),
    averaged,
  )


def check_batch(run: Run, what: str, batch: int) -> None:
  """Refuses a batch of `batch` images through `run`'s flow that would not fit in memory.

  Raises:
    RunError: naming `what` asked for it and the largest batch that fits.
  """
  height, width, channels = run.model_config.image_shape
  per_image = (height // 2) * (width // 2) * max(run.model_config.width, 4 * channels) * 4
  if batch * per_image > MAX_ACTIVATION_BYTES:
    raise RunError(
      f'{what} asks for a batch of {batch} images; at most {MAX_ACTIVATION_BYTES // per_image} '
      f'fit this model ({height}x{width} images, width {run.model_config.width}: '
      f'{per_image} bytes each per coupling activation, at most '
      f'{MAX_ACTIVATION_BYTES // 2**30} GiB).'
    )


def test_images(run: Run, count: int, label: int | None = None):
  """Up to `count` test images of the run's data (bin centres), optionally of one class.

  Returns `(x, labels)`: `x` float `[N, H, W, C]` in model space; `labels` int32 `[N]`
  for class-conditional models, else None.

  Raises:
    RunError: if the class is not in the data or no image matches.
  """
  config = run.config
  source = data.load_config(dataclasses.replace(config.data, download=False))
  split = source.test if source.num_test else source.train
  if label is not None:
    if source.num_classes is None or not 0 <= label < source.num_classes:
      classes = 'no labels' if source.num_classes is None else f'0..{source.num_classes - 1}'
      raise RunError(f'class {label} is not in the data of {run.model_dir!r} ({classes}).')
    split = split.filter(lambda _, y: tf.equal(y, label))
  bins, labels = [], []
  for image, y in split.take(count):
    bins.append(image.numpy())
    labels.append(int(y))
  if not bins:
    which = '' if label is None else f' of class {label}'
    raise RunError(f'no test images{which} in {config.data.dataset!r}.')
  x = pixels.centre(np.stack(bins), run.num_bins)
  return x, tf.constant(labels, tf.int32) if run.num_classes else None
