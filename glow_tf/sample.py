"""Pictures from a trained Glow: `python -m glow_tf.sample --model_dir=RUN --mode=grid`.

Modes: grid (samples at several temperatures), reconstruct (test images next to
decode(encode(x))), interpolate (between pairs of test images, every level's
latent), class (one row per class, class-conditional models), manipulate (the
paper's attribute manipulation; on labelled data the attribute is a class pair,
--from_class -> --to_class). PNGs go to --output_dir (default RUN/figures). Every
field of `glow_tf.tools.figures.FigureRequest` is a flag.
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()

from absl import flags, logging

from glow_tf import cli
from glow_tf.tools import figures

FLAGS = flags.FLAGS

flags.DEFINE_string('model_dir', None, 'Run directory written by glow_tf.train.')
flags.DEFINE_string('output_dir', None, 'Where PNGs go. Default: <model_dir>/figures.')
cli.define_weights_flags()
flags.mark_flag_as_required('model_dir')
for name in cli.define_config_flags(figures.FigureRequest, defaults=figures.FigureRequest()):
  flags.declare_key_flag(name)  # Listed by --help, under this command.


def sample() -> None:
  request = figures.FigureRequest(**cli.config_overrides(figures.FigureRequest))
  output_dir, paths, summary = figures.draw_model_dir(
    FLAGS.model_dir, request, FLAGS.output_dir, FLAGS.checkpoint, FLAGS.averaged
  )
  print(f'{request.mode}: {summary}; wrote {len(paths)} PNG(s) to {output_dir}')


def main(argv):
  cli.run_main('glow_tf.sample', sample, argv)


def run():
  logging.set_verbosity(logging.WARNING)
  cli.run_app('glow_tf.sample', main)


if __name__ == '__main__':
  run()
