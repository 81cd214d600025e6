"""Exports a training run as a SavedModel: `python -m glow_tf.export --model_dir=RUN ...`.

The SavedModel holds the run's best weights (those validation chose, as results.json
reports; `--checkpoint=latest` for the newest checkpoint's) and the signatures
serving_default/log_prob, log_prob_float, sample, encode and decode; it loads with
TensorFlow alone (see glow_tf/tools/serving.py for the exact preprocessing).
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()

from absl import flags, logging

from glow_tf import cli
from glow_tf.tools import serving

FLAGS = flags.FLAGS

flags.DEFINE_string('model_dir', None, 'Run directory written by glow_tf.train.')
flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel.')
flags.DEFINE_bool(
  'overwrite', False, 'Replace a non-empty export_dir (only once the new export is complete).'
)
flags.DEFINE_bool('tflite', False, 'Also write log_prob.tflite (unconditional models).')
cli.define_weights_flags()
flags.mark_flags_as_required(['model_dir', 'export_dir'])


def main(argv):
  cli.run_main('glow_tf.export', export, argv)


def export() -> None:
  facts = serving.export_run(
    FLAGS.model_dir,
    FLAGS.export_dir,
    FLAGS.overwrite,
    FLAGS.tflite,
    checkpoint=FLAGS.checkpoint,
    averaged=FLAGS.averaged,
  )
  weights = 'averaged' if facts['averaged'] else 'raw'
  print(
    f'{facts["export_dir"]}: SavedModel of {facts["checkpoint"]} (step {facts["step"]}, '
    f'{weights} weights), signatures {", ".join(facts["signatures"])}'
  )


def run():
  logging.set_verbosity(logging.WARNING)
  cli.run_app('glow_tf.export', main)


if __name__ == '__main__':
  run()
