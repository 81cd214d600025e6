"""Where training runs: one device, MirroredStrategy, or MultiWorkerMirroredStrategy."""

import contextlib
import json
import os

import tensorflow as tf

from glow_tf.errors import ConfigError

__all__ = [
  'STRATEGIES',
  'check_tf_config',
  'configure_cpu_devices',
  'graph_optimizer',
  'graph_optimizer_enabled',
  'is_chief',
  'make_strategy',
]

STRATEGIES = ('default', 'mirrored', 'multi_worker')


def make_strategy(name: str) -> tf.distribute.Strategy:
  """'default': one device; 'mirrored': all GPUs, else all (logical) CPUs; 'multi_worker':
  MultiWorkerMirroredStrategy from TF_CONFIG."""
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    devices = [d.name for d in gpus or tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi_worker':
    if 'TF_CONFIG' not in os.environ:
      raise ConfigError(
        'strategy multi_worker needs the TF_CONFIG environment variable '
        '(cluster and this task); it is not set.'
      )
    check_tf_config(os.environ['TF_CONFIG'])
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ConfigError(f'strategy must be one of {STRATEGIES}; got {name!r}.')


_TF_CONFIG_EXAMPLE = (
  '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
)


def check_tf_config(text: str) -> None:
  """Raises ConfigError, naming what is wrong, unless `text` is a usable TF_CONFIG."""
  try:
    values = json.loads(text)
  except ValueError as e:
    raise ConfigError(f'TF_CONFIG is not JSON ({e}); expected e.g. {_TF_CONFIG_EXAMPLE}.') from e
  cluster = values.get('cluster') if isinstance(values, dict) else None
  task = values.get('task') if isinstance(values, dict) else None
  problem = None
  if not isinstance(cluster, dict) or not cluster:
    problem = f'"cluster" must map job names to lists of "host:port"; got {cluster!r}'
  elif not all(
    isinstance(hosts, list) and hosts and all(isinstance(h, str) and ':' in h for h in hosts)
    for hosts in cluster.values()
  ):
    problem = f'every job of "cluster" must be a non-empty list of "host:port"; got {cluster!r}'
  elif not isinstance(task, dict) or not isinstance(task.get('type'), str):
    problem = f'"task" must be {{"type": <job>, "index": <int>}}; got {task!r}'
  elif task['type'] != 'evaluator' and task['type'] not in cluster:
    problem = f'task type {task["type"]!r} is not a job of the cluster {sorted(cluster)}'
  elif task['type'] != 'evaluator' and not (
    isinstance(task.get('index'), int)
    and not isinstance(task.get('index'), bool)
    and 0 <= task['index'] < len(cluster[task['type']])
  ):
    count = len(cluster[task['type']])
    problem = f'task index must be an int in 0..{count - 1}; got {task.get("index")!r}'
  if problem:
    raise ConfigError(f'TF_CONFIG: {problem}; expected e.g. {_TF_CONFIG_EXAMPLE}.')


def is_chief(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
  """`(whether this process writes the run's files, its task id)`."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True, 0
  task_id = resolver.task_id or 0
  return resolver.task_type == 'chief' or (resolver.task_type == 'worker' and task_id == 0), task_id


def configure_cpu_devices(count: int) -> None:
  """Splits the CPU into `count` logical devices (MirroredStrategy without GPUs).

  Must run before anything touches TensorFlow's runtime.
  """
  tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * count
  )


def graph_optimizer_enabled(setting: str) -> bool:
  """'on', 'off', or 'auto': on where a GPU is visible (TensorFlow's default), off on CPUs."""
  if setting == 'auto':
    return bool(tf.config.list_physical_devices('GPU'))
  return setting == 'on'


@contextlib.contextmanager
def graph_optimizer(enabled: bool):
  """Within this context, functions run with grappler on or off; then as they were.

  Grappler's options are process-wide; setting them only around training's own
  calls leaves every other function of the process as the user configured it. The
  same setting at every call keeps each function's one instantiation.
  """
  previous = tf.config.optimizer.get_experimental_options().get('disable_meta_optimizer', False)
  tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': not enabled})
  try:
    yield
  finally:
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': previous})
