"""Trains Glow: `python -m glow_tf.train` (the embedded digits by default).

Every field of `TrainConfig` is a flag (`--help` lists them with their help);
flags left unset take their value from `--preset` (digits, tiny, cifar10_paper).
Rerunning the same command resumes from the latest checkpoint in --model_dir.
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()

import logging as std_logging
import os
import sys

import tensorflow as tf
from absl import flags, logging

from glow_tf import cli
from glow_tf.training import distribute, trainer
from glow_tf.training.config import NOT_FLAGS, PRESETS, TrainConfig

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'preset', 'digits', sorted(PRESETS), 'Named configuration; other flags override it.'
)
flags.DEFINE_string(
  'model_dir',
  None,
  'Run directory: checkpoints, TensorBoard logs, samples, config.json, results.json. '
  'Default: runs/<preset>.',
)
flags.DEFINE_integer(
  'cpu_devices',
  None,
  'Split the CPU into this many logical devices (for --strategy=mirrored without GPUs).',
  lower_bound=1,
)
for name in cli.define_config_flags(TrainConfig, skip=NOT_FLAGS):
  flags.declare_key_flag(name)  # Listed by --help, under this command.


def train() -> int:
  """Trains from the flags; returns the exit status."""
  model_dir = FLAGS.model_dir or os.path.join('runs', FLAGS.preset)
  config = PRESETS[FLAGS.preset].replace(**cli.config_overrides(TrainConfig, skip=NOT_FLAGS))
  if FLAGS.cpu_devices:
    distribute.configure_cpu_devices(FLAGS.cpu_devices)
  try:
    results = trainer.train_and_evaluate(config, model_dir)
  except trainer.TrainingStopped as e:
    print(f'glow_tf.train: {e}', file=sys.stderr)
    return e.exit_status
  print(
    f'{model_dir}: test bits/dim {results["test_bits_per_dim"]:.4f} ({results["selection"]}; '
    f'{results["num_test"]} test images); checkpoint {results["checkpoint"]}; '
    f'samples: {os.path.join(model_dir, "samples.png")}'
  )
  return 0


def main(argv):
  cli.run_main('glow_tf.train', train, argv)


def _not_tensorflow_info(record) -> bool:
  """False for INFO lines logged by TensorFlow's Python code (absl or its own logger).

  Such as 'Sharding callback duration: 117 microseconds' at every checkpoint: not for
  the user. TensorFlow's warnings and errors, and every glow_tf line, stay.
  """
  return record.levelno >= std_logging.WARNING or not record.pathname.startswith(_TF_DIR)


_TF_DIR = os.path.dirname(tf.__file__) + os.sep


def run():
  logging.set_verbosity(logging.INFO)  # glow_tf's progress lines.
  logging.get_absl_handler().addFilter(_not_tensorflow_info)
  cli.run_app('glow_tf.train', main)


if __name__ == '__main__':
  run()
