"""The paper's ablation, permutation x coupling over seeds: `python -m glow_tf.ablation`.

Every field of `glow_tf.tools.ablation.AblationConfig` is a flag; `--output` also
writes the markdown report (docs/ablation.md holds the digits one).
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()


from absl import flags

from glow_tf import cli
from glow_tf.tools import ablation

FLAGS = flags.FLAGS

for name in cli.define_config_flags(ablation.AblationConfig, defaults=ablation.AblationConfig()):
  flags.declare_key_flag(name)  # Listed by --help, under this command.
flags.DEFINE_string('output', None, 'Also write the report (markdown) to this file.')


def run_ablation() -> None:
  config = ablation.AblationConfig(**cli.config_overrides(ablation.AblationConfig))
  command, log = cli.report_command('glow_tf.ablation')
  cli.print_report(
    ablation.report(config, ablation.ablation(config, log=log), command), FLAGS.output
  )


def main(argv):
  cli.run_main('glow_tf.ablation', run_ablation, argv)


def run():
  cli.run_app('glow_tf.ablation', main)


if __name__ == '__main__':
  run()
