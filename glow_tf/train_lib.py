"""Training Glow: `TrainConfig`, presets, and `train_and_evaluate(config, model_dir)`.

No flags here: `glow_tf.train` (the CLI) turns flags into a `TrainConfig`, and
tests and notebooks call `train_and_evaluate` directly.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from glow_tf import data, health, images, optim, reversible, sample_lib
from glow_tf import flow as flow_lib

__all__ = [
  'PRESETS',
  'STRATEGIES',
  'ConfigError',
  'TrainConfig',
  'Trainer',
  'load_run_config',
  'make_strategy',
  'train_and_evaluate',
]

STRATEGIES = ('default', 'mirrored', 'multi_worker')
CONFIG_FILE = 'config.json'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
# tf.train.CheckpointManager's files in CHECKPOINT_DIR: the state file, `ckpt-N.index`,
# `ckpt-N.data-K-of-M`, and `ckpt-N_temp/` while a save is under way.
CHECKPOINT_STATE = 'checkpoint'
CHECKPOINT_FILE = re.compile(r'ckpt-(\d+)\.(?:index|data-(\d+)-of-(\d+))')
# Held (flock) by the process that trains in a run directory; the kernel releases it
# when that process ends, however it ends.
LOCK_FILE = 'train.lock'
SEED_RANGE = (-(2**31), 2**31 - 1)  # Seeds reach TF's stateless ops as int32.
# What a failed write raises: ENOSPC/EDQUOT are ResourceExhausted in TF, EACCES PermissionDenied.
WRITE_ERRORS = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)
# Fields that define the model and its data: a run directory keeps them forever.
IDENTITY_FIELDS = (
  'dataset',
  'image_size',
  'n_bits',
  'levels',
  'depth',
  'width',
  'coupling',
  'permutation',
  'learn_top',
  'class_conditional',
  'seed',
)


class TrainingStopped(Exception):
  """Training ended early on purpose; the message says why and what was kept."""

  exit_status = 1


class Diverged(TrainingStopped):
  """The loss stayed non-finite for `max_nonfinite_steps` consecutive steps."""

  exit_status = 3


class Interrupted(TrainingStopped):
  """SIGTERM or SIGINT: a checkpoint was saved, then training stopped."""

  def __init__(self, message, signal_number):
    super().__init__(message)
    self.exit_status = 128 + signal_number


class ConfigError(ValueError):
  """A configuration that cannot train: names the field, the value, and what is expected."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs besides its directory.

  Presets (see `PRESETS`) fill it for common cases; the `digits` preset's
  docstring-level result is recorded in the README with the command that made it.
  """

  # Data.
  dataset: str = 'digits'
  data_dir: str | None = None
  download: bool = False
  image_size: int | None = None
  n_bits: int | None = None
  # Model.
  levels: int = 2
  depth: int = 8
  width: int = 64
  coupling: str = 'affine'
  permutation: str = 'conv1x1'
  learn_top: bool = True
  class_conditional: bool = False
  class_loss_weight: float = 0.01
  # Optimisation. `batch_size` is global; `per_replica_batch_size`, if set, replaces it.
  batch_size: int | None = 64
  per_replica_batch_size: int | None = None
  train_steps: int = 2000
  learning_rate: float = 1e-3
  warmup_steps: int = 200
  optimizer: str = 'adamax'
  grad_clip_norm: float = 0.0
  ema_decay: float = 0.999
  init_batch_size: int = 256
  nonfinite_patience: int = 5
  max_nonfinite_steps: int = 100
  bad_files: str = 'skip'
  # Bookkeeping.
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every_secs: float = 15.0
  seed: int = 0
  strategy: str = 'default'
  jit_compile: bool = False
  recompute: bool = False
  temperatures: tuple[float, ...] = (0.0, 0.5, 0.7, 0.85, 1.0)
  samples_per_temperature: int = 64

  def __post_init__(self):
    object.__setattr__(self, 'temperatures', tuple(float(t) for t in self.temperatures))
    checks = [
      ('levels', self.levels >= 1, '>= 1'),
      ('depth', self.depth >= 1, '>= 1'),
      ('width', self.width >= 1, '>= 1'),
      ('train_steps', self.train_steps >= 0, '>= 0'),
      ('learning_rate', self.learning_rate > 0, '> 0'),
      ('warmup_steps', self.warmup_steps >= 0, '>= 0'),
      ('ema_decay', 0 <= self.ema_decay < 1, 'in [0, 1)'),
      ('init_batch_size', self.init_batch_size >= 1, '>= 1'),
      ('eval_every', self.eval_every >= 1, '>= 1'),
      ('checkpoint_every', self.checkpoint_every >= 1, '>= 1'),
      ('nonfinite_patience', self.nonfinite_patience >= 1, '>= 1'),
      ('max_nonfinite_steps', self.max_nonfinite_steps >= 1, '>= 1'),
      ('bad_files', self.bad_files in data.BAD_FILE_POLICIES, f'one of {data.BAD_FILE_POLICIES}'),
      ('samples_per_temperature', self.samples_per_temperature >= 1, '>= 1'),
      ('class_loss_weight', self.class_loss_weight >= 0, '>= 0'),
      ('grad_clip_norm', self.grad_clip_norm >= 0, '>= 0 (0: no clipping)'),
      ('n_bits', self.n_bits is None or 1 <= self.n_bits <= 8, 'in 1..8'),
      ('image_size', self.image_size is None or self.image_size >= 1, '>= 1'),
      ('temperatures', all(0 <= t < math.inf for t in self.temperatures), 'all finite and >= 0'),
      ('coupling', self.coupling in flow_lib.COUPLINGS, f'one of {flow_lib.COUPLINGS}'),
      ('permutation', self.permutation in flow_lib.PERMUTATIONS, f'one of {flow_lib.PERMUTATIONS}'),
      ('optimizer', self.optimizer in optim.OPTIMIZERS, f'one of {optim.OPTIMIZERS}'),
      ('strategy', self.strategy in STRATEGIES, f'one of {STRATEGIES}'),
      ('seed', SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], 'an int32 (-2**31 .. 2**31-1)'),
    ]
    for name, ok, expected in checks:
      if not ok:
        raise ConfigError(f'{name} must be {expected}; got {getattr(self, name)!r}.')
    if (self.batch_size is None) == (self.per_replica_batch_size is None):
      raise ConfigError(
        'set exactly one of batch_size (global) and per_replica_batch_size; got '
        f'batch_size={self.batch_size!r}, '
        f'per_replica_batch_size={self.per_replica_batch_size!r}.'
      )
    for name in ('batch_size', 'per_replica_batch_size'):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ConfigError(f'{name} must be >= 1; got {value!r}.')

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

  def model_config(self, source: data.DataSource) -> flow_lib.GlowConfig:
    """The flow's architecture for images of `source`; raises ConfigError if it cannot fit."""
    if self.class_conditional and source.num_classes is None:
      raise ConfigError(
        f'class_conditional needs a labelled dataset; {source.name!r} has no labels.'
      )
    try:
      return flow_lib.GlowConfig(
        image_shape=source.image_shape,
        levels=self.levels,
        depth=self.depth,
        width=self.width,
        coupling=self.coupling,
        permutation=self.permutation,
        learn_top=self.learn_top,
        num_classes=source.num_classes if self.class_conditional else None,
        seed=self.seed,
      )
    except ValueError as e:
      raise ConfigError(str(e)) from e

  def replace(self, **changes) -> 'TrainConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    values = dataclasses.asdict(self)
    values['temperatures'] = list(self.temperatures)
    return values

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'TrainConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ConfigError(f'unknown TrainConfig fields {sorted(unknown)}.')
    return cls(**values)


PRESETS: dict[str, TrainConfig] = {
  # The default: Glow on scikit-learn's embedded 8x8 digits, offline, on a CPU.
  # L=2, K=8, width 64 (154k parameters), 4,000 steps of 64: test bits/dim is
  # lowest near 4,000 steps (2.38 in a 6,000-step run evaluated every 1,000);
  # longer runs overfit the 1,497 training images. README has the measured run.
  'digits': TrainConfig(
    levels=2,
    depth=8,
    width=64,
    batch_size=64,
    train_steps=4000,
    warmup_steps=200,
    eval_every=1000,
    checkpoint_every=1000,
  ),
  # Seconds: for smoke tests.
  'tiny': TrainConfig(
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
  'cifar10_paper': TrainConfig(
    dataset='cifar10',
    n_bits=8,
    levels=3,
    depth=32,
    width=512,
    coupling='affine',
    permutation='conv1x1',
    learn_top=True,
    batch_size=None,
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


def _is_chief(strategy) -> tuple[bool, int]:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True, 0
  task_id = resolver.task_id or 0
  return resolver.task_type == 'chief' or (resolver.task_type == 'worker' and task_id == 0), task_id


def _error_line(error: BaseException, limit: int = 160) -> str:
  """`Type: first line of the message`, without TF's `{{function_node ...}}` prefix."""
  text = getattr(error, 'message', None) or str(error)
  text = re.sub(r'\{\{[^}]*\}\}\s*', '', text).strip()
  line = text.splitlines()[0] if text else ''
  if len(line) > limit:
    line = line[: limit - 3] + '...'
  return f'{type(error).__name__}: {line}' if line else type(error).__name__


def _write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: never half a file.

  Raises:
    ConfigError: if it cannot be written (disk full, permissions); nothing is left behind.
  """
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with tf.io.gfile.GFile(tmp, 'w') as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except WRITE_ERRORS as e:
    with contextlib.suppress(*WRITE_ERRORS, tf.errors.NotFoundError):
      tf.io.gfile.remove(tmp)
    raise ConfigError(f'cannot write {path!r} ({_error_line(e)}).') from e


def _write_json(path: str, values: dict[str, Any]) -> None:
  _write_atomically(path, json.dumps(values, indent=2, sort_keys=True))


def load_run_config(model_dir: str) -> dict[str, Any]:
  """The `config.json` a training run wrote: train config, model config and data facts.

  Raises:
    ConfigError: if it is missing, not JSON, or lacks its `train`, `model` and `data` parts.
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise ConfigError(f'{model_dir!r} is not a glow_tf run directory: no {CONFIG_FILE}.')
  if tf.io.gfile.isdir(path):
    raise ConfigError(f'{path!r} is a directory; expected the {CONFIG_FILE} glow_tf.train writes.')
  try:
    with tf.io.gfile.GFile(path) as f:
      values = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ConfigError(
      f'{path!r} is not valid JSON ({e}); expected the {CONFIG_FILE} glow_tf.train writes.'
    ) from e
  parts = ('train', 'model', 'data')
  if not isinstance(values, dict) or not all(isinstance(values.get(k), dict) for k in parts):
    found = sorted(values) if isinstance(values, dict) else type(values).__name__
    raise ConfigError(
      f'{path!r} is not a glow_tf run config: expected the objects {list(parts)}; got {found}.'
    )
  return values


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore_newest_intact` did.

  Attributes:
    path: the checkpoint restored (a prefix, `.../ckpt-N`), or None: no checkpoint files.
    skipped: one `ckpt-N: why` per newer checkpoint that could not be used.
    state_ok: the state file is readable and names `path` (nothing to repair).
    kept: the checkpoints up to `path` whose files are complete, oldest first.
  """

  path: str | None
  skipped: tuple[str, ...] = ()
  state_ok: bool = True
  kept: tuple[str, ...] = ()


def _checkpoint_files(directory: str) -> tuple[dict[int, str | None], str | None, int | None]:
  """The checkpoints in `directory` and what its state file says.

  Returns:
    `{step: None if its files are complete, else why not}`; why the state file cannot
    be used (None if it can, or if there is none); the step it names as the latest.
  """
  try:
    names = tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []
  except tf.errors.NotFoundError:
    names = []
  shards: dict[int, dict[str, Any]] = {}
  for name in names:
    match = CHECKPOINT_FILE.fullmatch(name)
    if match:
      files = shards.setdefault(int(match[1]), dict(index=False, data=set(), of=0))
      if match[2] is None:
        files['index'] = True
      else:
        files['data'].add(int(match[2]))
        files['of'] = max(files['of'], int(match[3]))
  state_problem, recorded = None, None
  if CHECKPOINT_STATE in names:
    try:
      state = tf.train.get_checkpoint_state(directory)  # None: not a CheckpointState.
    except ValueError:  # Empty, or no model_checkpoint_path.
      state = None
    match = state and CHECKPOINT_FILE.fullmatch(
      os.path.basename(state.model_checkpoint_path) + '.index'
    )
    if not match:
      state_problem = f'{CHECKPOINT_STATE!r} is unreadable or names no ckpt-N'
    else:
      recorded = int(match[1])
      if recorded not in shards:
        state_problem = f'{CHECKPOINT_STATE!r} names ckpt-{recorded}, whose files are missing'
  problems = {}
  for step, files in shards.items():
    missing = files['of'] - len(files['data'])
    if recorded is not None and step > recorded:
      problems[step] = (
        f'newer than ckpt-{recorded}, the latest recorded: a save that did not finish'
      )
    elif not files['index']:
      problems[step] = 'no .index file: a save that did not finish'
    elif not files['data']:
      problems[step] = 'no .data file'
    elif missing:
      problems[step] = f'{missing} of its {files["of"]} .data files are missing'
    else:
      problems[step] = None
  return problems, state_problem, recorded


def has_checkpoint_files(directory: str) -> bool:
  """Whether `directory` holds any checkpoint file (complete or not) or a state file."""
  problems, state_problem, recorded = _checkpoint_files(directory)
  return bool(problems) or state_problem is not None or recorded is not None


def restore_newest_intact(
  directory: str, restore: Callable[[str], Any], advice: str = ''
) -> Restored:
  """Restores the newest intact checkpoint of `directory` with `restore(prefix)`.

  A checkpoint is intact when its `.index` and all its `.data` files exist, it is not
  newer than the latest one the state file records (that is a save that did not
  finish), and `restore` succeeds. Newer checkpoints that are not intact are skipped,
  each named in a warning with the reason. An unreadable state file, or one that names
  a missing checkpoint, does not hide the intact checkpoints beside it.

  Raises:
    ConfigError: if checkpoint files exist but none is intact (then nothing was
      changed; `advice` ends the message). A run is never silently started over.
  """
  problems, state_problem, recorded = _checkpoint_files(directory)
  if not problems and state_problem is None:
    return Restored(None)
  skipped = [] if state_problem is None else [state_problem]
  for step in sorted(problems, reverse=True):
    prefix = os.path.join(directory, f'ckpt-{step}')
    problem = problems[step]
    if problem is None:
      try:
        restore(prefix)
      except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
        # IndexError: what TF raises for a truncated .data file.
        problem = f'does not restore ({_error_line(e)})'
    if problem is not None:
      skipped.append(f'ckpt-{step}: {problem}')
      logging.warning('%s: skipped ckpt-%d: %s', directory, step, problem)
      continue
    if state_problem:
      logging.warning('%s: %s; used the newest intact checkpoint', directory, state_problem)
    kept = tuple(
      os.path.join(directory, f'ckpt-{s}')
      for s in sorted(problems)
      if s <= step and not problems[s]
    )
    return Restored(prefix, tuple(skipped), state_problem is None and recorded == step, kept)
  raise ConfigError(
    f'{directory!r} holds checkpoint files but none can be restored: {"; ".join(skipped)}. '
    f'Nothing was changed. {advice}'.strip()
  )


def _write_checkpoint_state(directory: str, latest: str, kept) -> None:
  """Rewrites CheckpointManager's state file: `latest`, and `kept` (oldest first) to rotate.

  The timestamps (the files' mtimes) make the manager rotate `kept` as its own: the
  oldest is deleted only once `keep_checkpoints` newer ones exist.
  """
  times = [tf.io.gfile.stat(f'{p}.index').mtime_nsec / 1e9 for p in kept]
  lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
  lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"' for p in kept]
  lines += [f'all_model_checkpoint_timestamps: {t!r}' for t in times]
  lines.append(f'last_preserved_timestamp: {min(times, default=time.time()) - 1.0!r}')
  _write_atomically(os.path.join(directory, CHECKPOINT_STATE), '\n'.join(lines) + '\n')
  logging.warning('%s: %s now names %s as the latest', directory, CHECKPOINT_STATE, latest)


def _remove_partial_saves(directory: str) -> None:
  """Deletes `ckpt-N_temp/` directories: a save writes there first, so one left behind
  (killed, or failed on a full disk) never holds a complete checkpoint."""
  if not tf.io.gfile.isdir(directory):
    return
  for name in tf.io.gfile.listdir(directory):
    name = name.rstrip('/')
    if re.fullmatch(r'ckpt-\d+_temp', name):
      tf.io.gfile.rmtree(os.path.join(directory, name))


@contextlib.contextmanager
def run_lock(model_dir: str):
  """Holds `model_dir`'s training lock, or raises ConfigError naming the process holding it.

  An flock on `model_dir/train.lock`: the kernel drops it when the holder exits, even
  on kill -9, so it is never left stuck. The file says who holds it (pid, host, since).
  Paths that are not local files (gs://...) cannot be locked and are used unlocked.
  """
  if '://' in model_dir:
    logging.warning('%s is not a local path: two trainings into it cannot be prevented', model_dir)
    yield
    return
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
      raise ConfigError(
        f'{model_dir!r} is already being trained ({holder}); wait for that run to end, '
        'or use another --model_dir.'
      ) from None
    os.ftruncate(fd, 0)
    since = time.strftime('%Y-%m-%d %H:%M:%S')
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}, since {since}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.


class Trainer:
  """The state of one run (model, optimiser, EMA, counters, checkpoints) and its steps.

  `train_and_evaluate` drives it; tests use it directly, e.g. to feed chosen batches.
  """

  def __init__(
    self,
    config: TrainConfig,
    model_dir: str,
    source: data.DataSource,
    strategy: tf.distribute.Strategy,
  ):
    self.config, self.model_dir, self.source, self.strategy = config, model_dir, source, strategy
    self.num_replicas = strategy.num_replicas_in_sync
    self.global_batch = config.global_batch_size(self.num_replicas)
    self.model_config = config.model_config(source)
    self.is_chief, self.task_id = _is_chief(strategy)
    self.num_dims = self.model_config.num_dims
    with strategy.scope():
      self.flow = flow_lib.build_glow(self.model_config)
      self.classifier = (
        flow_lib.build_classifier(self.model_config) if self.model_config.num_classes else None
      )
      self.variables = list(self.flow.trainable_variables)
      if self.classifier is not None:
        self.variables += list(self.classifier.trainable_variables)
      self.optimizer = optim.Optimizer(self.variables, kind=config.optimizer)
      self.ema = optim.ExponentialMovingAverage(self.variables, config.ema_decay)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
      self.nonfinite_total = tf.Variable(0, dtype=tf.int64, trainable=False, name='nonfinite')
      self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name='streak')
      self.lr_scale = tf.Variable(1.0, trainable=False, name='lr_scale')
    self.checkpoint = tf.train.Checkpoint(
      flow=self.flow,
      optimizer=self.optimizer,
      ema=self.ema,
      step=self.step,
      nonfinite_total=self.nonfinite_total,
      nonfinite_streak=self.nonfinite_streak,
      lr_scale=self.lr_scale,
      **({'classifier': self.classifier} if self.classifier else {}),
    )
    self._manager = None
    self._compute_grads = tf.function(self._grads_and_metrics, jit_compile=config.jit_compile)
    self._train_step = tf.function(self._distributed_train_step)
    self._eval_step = tf.function(self._distributed_eval_step)

  # ---- state -----------------------------------------------------------------------------

  @property
  def manager(self) -> tf.train.CheckpointManager:
    """Writes and rotates this run's checkpoints (created once the state file is sound)."""
    if self._manager is None:
      directory = os.path.join(self.model_dir, CHECKPOINT_DIR)
      if not self.is_chief:  # Other workers write their (identical) copy aside and delete it.
        directory = os.path.join(self.model_dir, '.worker_tmp', f'worker_{self.task_id}')
      self._manager = tf.train.CheckpointManager(
        self.checkpoint, directory, max_to_keep=self.config.keep_checkpoints
      )
    return self._manager

  def restore_or_initialize(self) -> str:
    """Restores the newest intact checkpoint, or initialises ActNorm on a training batch.

    Incomplete or unrestorable checkpoints are skipped with a warning naming them (see
    `restore_newest_intact`); the chief then points the state file at the one restored.
    If checkpoint files exist but none restores, raises ConfigError: a run with
    checkpoints is never re-initialised.
    """
    directory = os.path.join(self.model_dir, CHECKPOINT_DIR)
    restored = restore_newest_intact(
      directory,
      lambda prefix: self.checkpoint.restore(prefix).assert_existing_objects_matched(),
      advice='If config.json was lost, rerun with the flags this run was started with; '
      'to start over, move the run directory away or use another --model_dir.',
    )
    if restored.path:
      if self.is_chief and not restored.state_ok:
        _write_checkpoint_state(directory, restored.path, restored.kept)
      self._manager = None  # Reads the state file afresh.
      return f'restored {restored.path} at step {int(self.step.numpy())}'
    init_batch = min(self.config.init_batch_size, self.source.num_train)
    x, _ = next(iter(data.train_dataset(self.source, init_batch, self.config.seed)))
    with self.strategy.scope():
      count = flow_lib.initialize(self.flow, x)
      self.ema.reset()
    return f'initialised {count} ActNorm layers on {init_batch} training images'

  def checkpoint_variables(self) -> list[tf.Variable]:
    """Every variable a checkpoint holds: model, optimiser, averages, counters."""
    modules = [self.flow, self.optimizer, self.ema] + ([self.classifier] if self.classifier else [])
    counters = [self.step, self.nonfinite_total, self.nonfinite_streak, self.lr_scale]
    return [v for m in modules for v in m.variables] + counters

  def save(self) -> str | None:
    """Writes a checkpoint of the current step.

    Raises:
      ConfigError: if it cannot be written (disk full, permissions). The partial save
        is removed and the previous checkpoint is untouched; the message names it.
    """
    step = int(self.step.numpy())
    try:
      path = self.manager.save(checkpoint_number=step)
    except WRITE_ERRORS as e:
      _remove_partial_saves(self.manager.directory)
      kept = self.manager.latest_checkpoint
      raise ConfigError(
        f'cannot write checkpoint ckpt-{step} in {self.manager.directory!r} '
        f'({_error_line(e)}); '
        + (f'{kept} is intact' if kept else 'no checkpoint was written before')
        + '. Free space or fix permissions, then rerun the same command to resume.'
      ) from e
    if not self.is_chief:
      tf.io.gfile.rmtree(self.manager.directory)
    return path

  @contextlib.contextmanager
  def averaged_weights(self):
    """Within this context the model holds its Polyak (EMA) averages."""
    self.ema.swap()
    try:
      yield
    finally:
      self.ema.swap()

  # ---- steps -----------------------------------------------------------------------------

  def learning_rate(self, step):
    warmup = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / max(self.config.warmup_steps, 1))
    return self.config.learning_rate * warmup * self.lr_scale

  def _per_example_losses(self, x, label):
    """(loss, bits/dim) per example: NLL in bits/dim plus the weighted class bits."""
    kwargs = flow_lib.conditional_kwargs(label if self.classifier is not None else None)
    bpd = flow_lib.bits_per_dim(
      self.flow.log_prob(x, bijector_kwargs=kwargs), self.num_dims, self.source.num_bins
    )
    loss = bpd
    if self.classifier is not None:
      logits = self.classifier(flow_lib.top_latent(self.flow, x))
      class_bits = tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits) / math.log(2.0)
      loss = loss + self.config.class_loss_weight * class_bits
    return loss, bpd

  def _grads_and_metrics(self, x, label):
    if self.config.recompute:  # Reversible backward: memory does not grow with depth.
      loss, bpd, grads = reversible.loss_and_gradients(
        self.flow,
        x,
        self.source.num_bins,
        self.variables,
        label=label if self.classifier is not None else None,
        classifier=self.classifier,
        class_loss_weight=self.config.class_loss_weight,
        loss_scale=1.0 / self.global_batch,
      )
      return grads, tf.reduce_sum(loss), tf.reduce_sum(bpd)
    with tf.GradientTape() as tape:
      loss, bpd = self._per_example_losses(x, label)
      scaled = tf.reduce_sum(loss) / self.global_batch
    grads = tape.gradient(scaled, self.variables)
    return grads, tf.reduce_sum(loss), tf.reduce_sum(bpd)

  def _replica_train_step(self, x, label):
    context = tf.distribute.get_replica_context()
    grads, loss_sum, bpd_sum = self._compute_grads(x, label)
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    loss_sum, bpd_sum = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss_sum, bpd_sum])
    grads, grad_norm = optim.global_norm_clip(grads, self.config.grad_clip_norm)
    finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(loss_sum)
    learning_rate = self.learning_rate(self.step.read_value())

    def apply():
      self.optimizer.apply(grads, learning_rate)
      self.ema.update()
      return tf.constant(True)

    tf.cond(finite, apply, lambda: tf.constant(False))
    # Counters: every replica computes the same values from the same all-reduced sums.
    optim.local_assign_add(self.step, 1)
    nonfinite = tf.cast(tf.logical_not(finite), tf.int64)
    optim.local_assign_add(self.nonfinite_total, nonfinite)
    # Consecutive non-finite steps; every `nonfinite_patience` of them halve the rate.
    streak = (self.nonfinite_streak.read_value() + 1) * nonfinite
    lower = (streak > 0) & (streak % self.config.nonfinite_patience == 0)
    optim.local_assign(self.lr_scale, tf.where(lower, 0.5, 1.0) * self.lr_scale.read_value())
    optim.local_assign(self.nonfinite_streak, streak)
    return dict(
      loss=loss_sum / self.global_batch,
      bpd=bpd_sum / self.global_batch,
      grad_norm=grad_norm,
      learning_rate=learning_rate,
      finite=finite,
    )

  def _distributed_train_step(self, iterator):
    x, label = next(iterator)
    metrics = self.strategy.run(self._replica_train_step, args=(x, label))
    return {k: self.strategy.experimental_local_results(v)[0] for k, v in metrics.items()}

  def train_step(self, iterator) -> dict[str, float]:
    """One step on the next batch of a distributed iterator; returns its metrics."""
    return {k: v.numpy() for k, v in self._train_step(iterator).items()}

  def distribute(self, dataset_fn):
    """`dataset_fn(input_context)` -> per-replica batches, distributed over the strategy."""
    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def train_iterator(self):
    return iter(
      self.distribute(
        lambda ctx: data.train_dataset(
          self.source, self.global_batch, self.config.seed, int(self.step.numpy()), ctx
        )
      )
    )

  def _replica_eval_step(self, x, label, weight):
    context = tf.distribute.get_replica_context()
    _, bpd = self._per_example_losses(x, label)
    sums = [tf.reduce_sum(weight * bpd), tf.reduce_sum(weight)]
    return context.all_reduce(tf.distribute.ReduceOp.SUM, sums)

  def _distributed_eval_step(self, batch):
    sums = self.strategy.run(self._replica_eval_step, args=batch)
    return [self.strategy.experimental_local_results(s)[0] for s in sums]

  def evaluate(self) -> float:
    """Test bits/dim with the Polyak-averaged weights, over the whole test split."""
    dataset = self.distribute(
      lambda ctx: data.eval_dataset(self.source, self.global_batch, self.config.seed, ctx)
    )
    total, count = 0.0, 0.0
    with self.averaged_weights():
      for batch in dataset:
        bpd_sum, weight_sum = self._eval_step(batch)
        total, count = total + float(bpd_sum), count + float(weight_sum)
    return total / count

  def sample_grid(self, temperature: float, seed: int = 0) -> np.ndarray:
    """A uint8 grid of samples at `temperature` with the averaged weights (labels cycle)."""
    num = self.config.samples_per_temperature
    label = tf.range(num) % self.model_config.num_classes if self.model_config.num_classes else None
    with self.averaged_weights():
      return sample_lib.sample_grid(
        self.flow, self.source.num_bins, temperature, num, self.config.seed + seed, label
      )


def _check_model_dir(model_dir: str) -> None:
  """Refuses a model_dir that is a file, or lies under one."""
  if '://' in model_dir:  # Remote (gs://...): only the path itself can be checked cheaply.
    blocker = model_dir if tf.io.gfile.exists(model_dir) else None
  else:
    blocker = os.path.abspath(model_dir)
    while not os.path.exists(blocker):
      blocker = os.path.dirname(blocker)
  if blocker and not tf.io.gfile.isdir(blocker):
    own = blocker in (model_dir, os.path.abspath(model_dir))
    where = 'is a file' if own else f'lies under {blocker!r}, which is a file'
    raise ConfigError(
      f'model_dir {model_dir!r} {where}; expected a run directory (existing or new).'
    )


def _check_run_dir(model_dir: str, run_values: dict[str, Any]) -> None:
  """Refuses a model_dir whose checkpoints belong to another model or data.

  config.json binds a run once it has checkpoints. A run that stopped before its first
  checkpoint holds no model: its config.json is replaced (with a warning).
  """
  if not tf.io.gfile.exists(os.path.join(model_dir, CONFIG_FILE)):
    return
  has_checkpoints = has_checkpoint_files(os.path.join(model_dir, CHECKPOINT_DIR))
  try:
    previous = load_run_config(model_dir)['train']
  except ConfigError as e:
    if has_checkpoints:
      raise ConfigError(
        f'{e} The checkpoints of {model_dir!r} cannot be checked against the flags: restore '
        f'{CONFIG_FILE}, or delete it to have training write it again once the flags are '
        'known to fit the checkpoints.'
      ) from e
    logging.warning('%s: replacing an unusable %s of a run without checkpoints', model_dir, e)
    return
  changed = {
    k: (previous.get(k), run_values['train'][k])
    for k in IDENTITY_FIELDS
    if previous.get(k) != run_values['train'][k]
  }
  differences = ', '.join(f'{k} was {a!r}, now {b!r}' for k, (a, b) in sorted(changed.items()))
  if changed and has_checkpoints:
    raise ConfigError(
      f'{model_dir!r} holds a run with a different model or data: {differences}. '
      'Use another --model_dir.'
    )
  if changed:
    logging.warning(
      '%s: replacing the %s of a run that has no checkpoint (%s)',
      model_dir,
      CONFIG_FILE,
      differences,
    )


def train_and_evaluate(
  config: TrainConfig, model_dir: str, strategy: tf.distribute.Strategy | None = None
) -> dict[str, Any]:
  """Trains (or resumes) a run in `model_dir`, evaluates it, and returns its results.

  Leaves in `model_dir`: `config.json`, `checkpoints/`, TensorBoard logs
  (`train/`, `test/`), sample grids (`samples/`), and `results.json` with the
  final test bits/dim of the Polyak-averaged weights.

  Before step 0 it checks every input: the data (a training split of at least one
  global batch, a non-empty test split), the model against the data, `model_dir`
  against its config.json and checkpoints; and it holds `model_dir`'s lock, so a
  second training into it is refused. config.json is written only once the run is
  known to be consistent (checkpoint restored, or a new run initialised).
  """
  strategy = strategy or make_strategy(config.strategy)
  _check_model_dir(model_dir)
  source = data.load(
    config.dataset,
    config.data_dir,
    config.download,
    config.n_bits,
    config.image_size,
    config.bad_files,
  )
  global_batch = config.global_batch_size(strategy.num_replicas_in_sync)
  data.check_splits(source, global_batch)
  model_config = config.model_config(source)
  run_values = dict(
    train=config.to_dict(),
    model=model_config.to_dict(),
    data=dict(
      num_bins=source.num_bins,
      image_shape=list(source.image_shape),
      num_classes=source.num_classes,
      num_train=source.num_train,
      num_test=source.num_test,
    ),
  )
  is_chief, _ = _is_chief(strategy)
  with run_lock(model_dir) if is_chief else contextlib.nullcontext():
    return _train_and_evaluate(config, model_dir, strategy, source, run_values)


def _train_and_evaluate(config, model_dir, strategy, source, run_values) -> dict[str, Any]:
  """`train_and_evaluate` once the inputs are checked (and the chief holds the lock)."""
  _check_run_dir(model_dir, run_values)
  trainer = Trainer(config, model_dir, source, strategy)
  if trainer.is_chief:
    _remove_partial_saves(os.path.join(model_dir, CHECKPOINT_DIR))
  logging.info('%s: %s', model_dir, trainer.restore_or_initialize())
  if trainer.is_chief:  # Only now: the flags are known to fit the data and the checkpoints.
    _write_json(os.path.join(model_dir, CONFIG_FILE), run_values)
  writers = {
    k: tf.summary.create_file_writer(os.path.join(model_dir, k))
    if trainer.is_chief
    else tf.summary.create_noop_writer()
    for k in ('train', 'test')
  }

  start_step = int(trainer.step.numpy())
  if start_step < config.train_steps:
    logging.info(
      'training %s from step %d to %d: %d images %s, global batch %d on %d '
      'replica(s), %d parameters',
      source.name,
      start_step,
      config.train_steps,
      source.num_train,
      source.image_shape,
      trainer.global_batch,
      trainer.num_replicas,
      sum(int(np.prod(v.shape)) for v in trainer.variables),
    )
  started = time.time()
  with _stop_signals() as received:
    _train_loop(trainer, writers, start_step, received)
  final_step = int(trainer.step.numpy())
  if trainer.manager.latest_checkpoint is None or not trainer.manager.latest_checkpoint.endswith(
    f'-{final_step}'
  ):
    trainer.save()
  test_bpd = _evaluate_and_sample(trainer, writers['test'], final_step, final=True)
  results = dict(
    test_bits_per_dim=test_bpd,
    step=final_step,
    num_test=source.num_test,
    train_seconds=round(time.time() - started, 1),
    nonfinite_steps=int(trainer.nonfinite_total.numpy()),
    checkpoint=trainer.manager.latest_checkpoint if trainer.is_chief else None,
  )
  if trainer.is_chief:
    _write_json(os.path.join(model_dir, RESULTS_FILE), results)
  logging.info(
    'glow_tf %s: test bits/dim %.4f (Polyak-averaged weights, %d test images, step %d)',
    source.name,
    test_bpd,
    source.num_test,
    final_step,
  )
  return results


@contextlib.contextmanager
def _stop_signals():
  """Records SIGTERM/SIGINT instead of dying at once, so the loop can save and stop."""
  received = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  handler = lambda number, frame: received.append(number)  # noqa: E731
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for number, old in previous.items():
      signal.signal(number, old)


def _train_loop(trainer: Trainer, writers, start_step: int, received) -> None:
  """Steps until `train_steps`, logging, checkpointing and evaluating on the way.

  Stops early, with a clear message, on a signal (after saving a checkpoint) or
  when the loss stays non-finite for `max_nonfinite_steps` steps (keeping the
  last checkpoint, whose weights no skipped step has touched).
  """
  config = trainer.config
  iterator = trainer.train_iterator()
  started = last_log = time.time()
  last_log_step, bpd_values = start_step, []
  while int(trainer.step.numpy()) < config.train_steps:
    metrics = trainer.train_step(iterator)
    step = int(trainer.step.numpy())
    if step == start_step + 1:  # Rates exclude the first step: tracing and compilation.
      logging.info('first step took %.1f s (tracing and compilation)', time.time() - started)
      last_log, last_log_step = time.time(), step
    if metrics['finite']:
      bpd_values.append(float(metrics['bpd']))
    else:
      streak = int(trainer.nonfinite_streak.numpy())
      logging.warning(
        'step %d: non-finite loss or gradient; step skipped (%d in a row, %d in '
        'all; learning-rate scale %.3g)',
        step,
        streak,
        int(trainer.nonfinite_total.numpy()),
        float(trainer.lr_scale.numpy()),
      )
      if streak >= config.max_nonfinite_steps:
        kept = trainer.manager.latest_checkpoint or 'none yet'
        raise Diverged(
          f'stopped at step {step}: the loss or its gradient was non-finite for '
          f'{streak} consecutive steps (max_nonfinite_steps); last good checkpoint '
          f'kept: {kept}.'
        )
    now = time.time()
    if now - last_log >= config.log_every_secs or step == config.train_steps:
      rate = (step - last_log_step) / max(now - last_log, 1e-9)
      _log_progress(trainer, writers['train'], metrics, bpd_values, rate)
      last_log, last_log_step, bpd_values = now, step, []
    if received:
      path = trainer.save()
      raise Interrupted(
        f'{signal.Signals(received[0]).name} at step {step}: saved {path}; '
        'rerun the same command to resume.',
        received[0],
      )
    # No checkpoint in a non-finite streak: the last good one must not rotate out.
    if step % config.checkpoint_every == 0 and step < config.train_steps and metrics['finite']:
      trainer.save()
    if step % config.eval_every == 0 and step < config.train_steps:
      _evaluate_and_sample(trainer, writers['test'], step, final=False)


def _log_progress(trainer: Trainer, writer, metrics, bpd_values, rate: float) -> None:
  config, step = trainer.config, int(trainer.step.numpy())
  mean_bpd = float(np.mean(bpd_values)) if bpd_values else float('nan')
  logging.info(
    'step %d/%d  train bits/dim %.3f  %.2f steps/s  ETA %s  (lr %.2e, grad norm '
    '%.3g, non-finite %d)',
    step,
    config.train_steps,
    mean_bpd,
    rate,
    _format_duration((config.train_steps - step) / max(rate, 1e-9)),
    float(metrics['learning_rate']),
    float(metrics['grad_norm']),
    int(trainer.nonfinite_total.numpy()),
  )
  with writer.as_default(step=step):
    tf.summary.scalar('bits_per_dim', mean_bpd)
    tf.summary.scalar('learning_rate', float(metrics['learning_rate']))
    tf.summary.scalar('grad_norm', float(metrics['grad_norm']))
    tf.summary.scalar('nonfinite_steps', int(trainer.nonfinite_total.numpy()))
    tf.summary.scalar('steps_per_sec', rate)
    for name, value in health.weight_health(trainer.flow).items():
      tf.summary.scalar(f'health/{name}', value)


def _evaluate_and_sample(trainer: Trainer, writer, step: int, final: bool) -> float:
  test_bpd = trainer.evaluate()
  logging.info('step %d: test bits/dim %.4f', step, test_bpd)
  grids = [trainer.sample_grid(t) for t in trainer.config.temperatures]
  x, label = next(
    iter(data.eval_dataset(trainer.source, trainer.global_batch, trainer.config.seed))
  )[:2]
  with trainer.averaged_weights():
    batch = health.batch_health(trainer.flow, x[:16], label[:16] if trainer.classifier else None)
  sheet = images.labelled_rows(grids, [f'T={t:g}' for t in trainer.config.temperatures])
  with writer.as_default(step=step):
    tf.summary.scalar('bits_per_dim', test_bpd)
    for name, value in batch.items():
      tf.summary.scalar(f'health/{name}', value)
    for temperature, grid in zip(trainer.config.temperatures, grids):
      tf.summary.image(f'samples/temperature_{temperature:g}', grid[np.newaxis], step=step)
    tf.summary.image('samples/all_temperatures', sheet[np.newaxis], step=step)
  if trainer.is_chief:
    paths = [os.path.join(trainer.model_dir, 'samples', f'step_{step:07d}.png')]
    if final:
      paths.append(os.path.join(trainer.model_dir, 'samples.png'))
    for path in paths:
      try:
        images.write_png(path, sheet)
      except WRITE_ERRORS as e:
        raise ConfigError(f'cannot write {path!r} ({_error_line(e)}).') from e
  return test_bpd
