"""Benchmarks glow_tf against tfp.bijectors.Glow: `python -m glow_tf.benchmark`.

Every measurement runs in a fresh process; the table of figures and ratios is
printed (and written to --output). Every field of
`glow_tf.tools.benchmark.BenchmarkConfig` is a flag.
"""

from glow_tf import startup

if __name__ == '__main__':  # Before anything imports TensorFlow: see glow_tf/startup.py.
  startup.quiet_tensorflow()

import json

from absl import flags

from glow_tf import cli
from glow_tf.tools import benchmark

FLAGS = flags.FLAGS

for name in cli.define_config_flags(
  benchmark.BenchmarkConfig, defaults=benchmark.BenchmarkConfig()
):
  flags.declare_key_flag(name)  # Listed by --help, under this command.
flags.DEFINE_string('output', None, 'Also write the report (markdown) to this file.')
flags.DEFINE_string('worker', None, 'Internal: run one measurement (JSON spec) and print JSON.')


def run_benchmark() -> None:
  """Runs one worker measurement (--worker), or every measurement and prints the report."""
  if FLAGS.worker:
    print(json.dumps(benchmark.run_worker(json.loads(FLAGS.worker))))
    return
  config = benchmark.BenchmarkConfig(**cli.config_overrides(benchmark.BenchmarkConfig))
  command, log = cli.report_command('glow_tf.benchmark')
  cli.print_report(benchmark.benchmark(config, command, log=log), FLAGS.output)


def main(argv):
  cli.run_main('glow_tf.benchmark', run_benchmark, argv)


def run():
  cli.run_app('glow_tf.benchmark', main)


if __name__ == '__main__':
  run()
