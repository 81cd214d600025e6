"""Proves a trained model is a bijection: `python -m glow_tf.check --model_dir=RUN [--json]`.

For the run's best weights (by validation; `--checkpoint=latest` for the newest), on
real test images, per level and per bijector: round trip, log-det against the
autodiff Jacobian, condition of the 1x1 convolutions, ActNorm initialised,
non-finite values (see glow_tf.tools.checks).

Exit status 1 when any figure is outside its tolerance (the failing checks are
listed), 0 otherwise; 2 for a user error. `--json` prints every figure for scripts.
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()

import json

from absl import flags, logging

from glow_tf import cli
from glow_tf.tools import checks

FLAGS = flags.FLAGS

flags.DEFINE_string('model_dir', None, 'Run directory written by glow_tf.train.')
flags.DEFINE_integer('num_images', 8, 'Test images to check with.', lower_bound=1)
flags.DEFINE_integer(
  'crop',
  4,
  f'Spatial size of the crops for Jacobians: even (a squeeze halves it), '
  f'{checks.MIN_CROP}..{checks.MAX_CROP} (the Jacobian has (crop*crop*channels)**2 entries).',
)
flags.DEFINE_bool('json', False, 'Print the figures as JSON instead of a table.')
cli.define_weights_flags()
flags.mark_flag_as_required('model_dir')
flags.register_validator(
  'crop',
  lambda crop: checks.crop_problem(crop) is None,
  message=f'expected even, in {checks.MIN_CROP}..{checks.MAX_CROP}',
)


def check() -> int:
  report = checks.check_model_dir(
    FLAGS.model_dir, FLAGS.num_images, FLAGS.crop, FLAGS.checkpoint, FLAGS.averaged
  )
  print(json.dumps(report.to_dict(), indent=1) if FLAGS.json else report.summary())
  return 1 if report.failed else 0


def main(argv):
  cli.run_main('glow_tf.check', check, argv)


def run():
  logging.set_verbosity(logging.WARNING)
  cli.run_app('glow_tf.check', main)


if __name__ == '__main__':
  run()
