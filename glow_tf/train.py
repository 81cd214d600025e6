"""Trains Glow: `python -m glow_tf.train` (the embedded digits by default).

Flags left unset take their value from `--preset` (digits, tiny, cifar10_paper).
Rerunning the same command resumes from the newest intact checkpoint in --model_dir.
"""

import dataclasses
import os
import sys

from absl import flags, logging

from glow_tf import cli, data, optim, train_lib
from glow_tf import flow as flow_lib

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'preset', 'digits', sorted(train_lib.PRESETS), 'Named configuration; other flags override it.'
)
flags.DEFINE_string(
  'model_dir',
  None,
  'Run directory: checkpoints, TensorBoard logs, samples, '
  'config.json, results.json. Default: runs/<preset>.',
)
# Data.
flags.DEFINE_string(
  'dataset',
  None,
  '"digits" (embedded), a TFDS name (mnist, cifar10, '
  'celeb_a, ...), or "folder:PATH" with PATH/train/<label>/*.png.',
)
flags.DEFINE_string(
  'data_dir', None, 'TFDS data directory, or a prepared dataset version directory.'
)
flags.DEFINE_bool(
  'download',
  None,
  'Let TFDS download and prepare the dataset (needs '
  'internet). Off by default: an unprepared dataset fails at once.',
)
flags.DEFINE_integer(
  'image_size', None, 'Centre-crop to square and resize to this size.', lower_bound=1
)
flags.DEFINE_integer(
  'n_bits',
  None,
  "Bits per value for 8-bit datasets (5 for the paper's CelebA-HQ).",
  lower_bound=1,
  upper_bound=8,
)
flags.DEFINE_enum(
  'bad_files',
  None,
  list(data.BAD_FILE_POLICIES),
  'folder: datasets: skip unreadable, corrupt or wrong-mode files (counted and logged), '
  'or fail up front listing them.',
)
# Model.
flags.DEFINE_integer('levels', None, 'L: number of scales.', lower_bound=1)
flags.DEFINE_integer('depth', None, 'K: flow steps per level.', lower_bound=1)
flags.DEFINE_integer('width', None, 'Hidden channels of the coupling networks.', lower_bound=1)
flags.DEFINE_enum('coupling', None, list(flow_lib.COUPLINGS), 'Coupling layer.')
flags.DEFINE_enum(
  'permutation',
  None,
  list(flow_lib.PERMUTATIONS),
  'Channel mixing: learned 1x1 conv (LU or plain) or a fixed shuffle/reverse.',
)
flags.DEFINE_bool('learn_top', None, 'Learn the prior of the top latent.')
flags.DEFINE_bool('class_conditional', None, 'Class-conditional top prior and classifier loss.')
flags.DEFINE_float(
  'class_loss_weight', None, 'Weight of the classifier bits in the loss.', lower_bound=0.0
)
# Optimisation.
flags.DEFINE_integer('batch_size', None, 'Global batch size, split across replicas.', lower_bound=1)
flags.DEFINE_integer(
  'per_replica_batch_size', None, 'Batch per replica; replaces --batch_size.', lower_bound=1
)
flags.DEFINE_integer('train_steps', None, 'Total training steps.', lower_bound=0)
flags.DEFINE_float('learning_rate', None, 'Peak learning rate.', lower_bound=0.0)
flags.DEFINE_integer('warmup_steps', None, 'Linear learning-rate warmup.', lower_bound=0)
flags.DEFINE_enum('optimizer', None, list(optim.OPTIMIZERS), 'Optimizer.')
flags.DEFINE_float(
  'grad_clip_norm', None, 'Clip gradients to this global norm (0: off).', lower_bound=0.0
)
flags.DEFINE_float(
  'ema_decay',
  None,
  'Polyak averaging; evaluation, samples and exports use the averaged weights.',
  lower_bound=0.0,
  upper_bound=0.999999,
)
flags.DEFINE_integer(
  'init_batch_size', None, "Images for ActNorm's data-dependent init.", lower_bound=1
)
# Bookkeeping.
flags.DEFINE_integer(
  'eval_every', None, 'Steps between test evaluations and sample grids.', lower_bound=1
)
flags.DEFINE_integer('checkpoint_every', None, 'Steps between checkpoints.', lower_bound=1)
flags.DEFINE_integer(
  'seed',
  None,
  'Seeds weights, data order and dequantisation noise (an int32).',
  lower_bound=train_lib.SEED_RANGE[0],
  upper_bound=train_lib.SEED_RANGE[1],
)
flags.DEFINE_enum(
  'strategy',
  None,
  list(train_lib.STRATEGIES),
  'default: one device; mirrored: all GPUs (else all CPU devices); multi_worker: from TF_CONFIG.',
)
flags.DEFINE_integer(
  'cpu_devices',
  None,
  'Split the CPU into this many logical devices (for --strategy=mirrored without GPUs).',
  lower_bound=1,
)
flags.DEFINE_bool('jit_compile', None, 'Compile the forward/backward pass with XLA.')
flags.DEFINE_bool(
  'recompute',
  None,
  "Reversible backward pass: rebuild each flow step's input "
  'from its output instead of storing activations (memory flat in depth, '
  '~1.4x compute).',
)
flags.DEFINE_integer(
  'nonfinite_patience',
  None,
  'Halve the learning rate after this many consecutive non-finite steps.',
  lower_bound=1,
)
flags.DEFINE_integer(
  'max_nonfinite_steps',
  None,
  'Stop (keeping the last good checkpoint) after this many consecutive non-finite steps.',
  lower_bound=1,
)
flags.DEFINE_list('temperatures', None, 'Temperatures of the sample grids, e.g. 0,0.7,1.')

CONFIG_FLAGS = [f.name for f in dataclasses.fields(train_lib.TrainConfig)]


def config_from_flags() -> train_lib.TrainConfig:
  """The preset, with every flag the user set applied over it."""
  overrides = {}
  for name in CONFIG_FLAGS:
    if name in FLAGS and FLAGS[name].value is not None:
      overrides[name] = FLAGS[name].value
  if 'temperatures' in overrides:
    try:
      overrides['temperatures'] = tuple(float(t) for t in overrides['temperatures'])
    except ValueError as e:
      raise train_lib.ConfigError(
        f'temperatures must be numbers; got {",".join(FLAGS.temperatures)!r}.'
      ) from e
  if 'per_replica_batch_size' in overrides and 'batch_size' not in overrides:
    overrides['batch_size'] = None
  if 'batch_size' in overrides and 'per_replica_batch_size' not in overrides:
    overrides['per_replica_batch_size'] = None
  return train_lib.PRESETS[FLAGS.preset].replace(**overrides)


def configure_cpu_devices(count: int) -> None:
  import tensorflow as tf

  tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * count
  )


def main(argv):
  cli.run_main('glow_tf.train', train, argv)


def train() -> int:
  """Trains from the flags; returns the exit status."""
  model_dir = FLAGS.model_dir or os.path.join('runs', FLAGS.preset)
  config = config_from_flags()
  if FLAGS.cpu_devices:
    configure_cpu_devices(FLAGS.cpu_devices)
  strategy = train_lib.make_strategy(config.strategy)
  try:
    results = train_lib.train_and_evaluate(config, model_dir, strategy)
  except train_lib.TrainingStopped as e:
    print(f'glow_tf.train: {e}', file=sys.stderr)
    return e.exit_status
  print(
    f'{model_dir}: test bits/dim {results["test_bits_per_dim"]:.4f} at step '
    f'{results["step"]} (Polyak-averaged weights, {results["num_test"]} test images); '
    f'samples: {os.path.join(model_dir, "samples.png")}'
  )
  return 0


def run():
  logging.set_verbosity(logging.INFO)
  cli.run_app('glow_tf.train', main)


if __name__ == '__main__':
  run()
