"""The run directory: its files, their checks, the lock, and checkpoint recovery.

A run directory holds `config.json` (what the run is), `checkpoints/` (written by
`tf.train.CheckpointManager`), `results.json`, `train.lock` while a training holds
it, TensorBoard logs and sample sheets. Nothing here destroys or rewinds a run:
checkpoints that cannot be used are skipped and named, and `config.json` is only
written by the caller once the run is known to be consistent.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from glow_tf.errors import ConfigError
from glow_tf.model.config import GlowConfig
from glow_tf.training.config import TrainConfig

__all__ = [
  'BEST_DIR',
  'CHECKPOINT_DIR',
  'CHECKPOINT_KINDS',
  'CONFIG_FILE',
  'CONFIG_VERSION',
  'LOCK_FILE',
  'RESULTS_FILE',
  'Restored',
  'RunConfig',
  'check_model_dir',
  'carried_over',
  'check_run_dir',
  'checkpoint_dir',
  'error_line',
  'has_checkpoint_files',
  'load_run_config',
  'remove_partial_saves',
  'restore_newest_intact',
  'run_lock',
  'write_checkpoint_state',
  'write_json',
]

CONFIG_FILE = 'config.json'
# 3: runs may carve a validation split (`validation_size`; earlier runs had none);
# 2: the train part nests `data` and `model` (glow_tf 0.2); 1 (no version key): flat.
CONFIG_VERSION = 3
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
# Under CHECKPOINT_DIR: the run's best checkpoint (by validation bits/dim), one at a time.
BEST_DIR = 'best'
CHECKPOINT_KINDS = ('best', 'latest')
# tf.train.CheckpointManager's files in CHECKPOINT_DIR: the state file, `ckpt-N.index`,
# `ckpt-N.data-K-of-M`, and `ckpt-N_temp/` while a save is under way.
CHECKPOINT_STATE = 'checkpoint'
CHECKPOINT_FILE = re.compile(r'ckpt-(\d+)\.(?:index|data-(\d+)-of-(\d+))')
# Held (flock) by the process that trains in a run directory; the kernel releases it
# when that process ends, however it ends.
LOCK_FILE = 'train.lock'
# What a failed write raises: ENOSPC/EDQUOT are ResourceExhausted in TF, EACCES PermissionDenied.
WRITE_ERRORS = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)


def checkpoint_dir(model_dir: str, kind: str = 'latest') -> str:
  """Where a run keeps its 'latest' checkpoints (rotating) or its 'best' one."""
  if kind not in CHECKPOINT_KINDS:
    raise ConfigError(f'checkpoint must be one of {CHECKPOINT_KINDS}; got {kind!r}.')
  directory = os.path.join(model_dir, CHECKPOINT_DIR)
  return os.path.join(directory, BEST_DIR) if kind == 'best' else directory


def error_line(error: BaseException, limit: int = 160) -> str:
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
    raise ConfigError(f'cannot write {path!r} ({error_line(e)}).') from e


def write_json(path: str, values: dict[str, Any]) -> None:
  """Writes `values` as JSON to `path` atomically; ConfigError if it cannot."""
  _write_atomically(path, json.dumps(values, indent=2, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What a run's `config.json` holds.

  Attributes:
    train: the `TrainConfig` the run was started with.
    model: the flow's `GlowConfig`, with the image shape and classes of the data.
    data: facts about the data (`num_bins`, `image_shape`, `num_classes`,
      `num_train`, `num_test`).
  """

  train: TrainConfig
  model: GlowConfig
  data: dict[str, Any]

  def to_dict(self) -> dict[str, Any]:
    return dict(
      version=CONFIG_VERSION, train=self.train.to_dict(), model=self.model.to_dict(), data=self.data
    )

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'RunConfig':
    """Reads every version: 3, 2 (nested train config) and 1 (no version key, flat)."""
    parts = ('train', 'model', 'data')
    if not isinstance(values, dict) or not all(isinstance(values.get(k), dict) for k in parts):
      found = sorted(values) if isinstance(values, dict) else type(values).__name__
      raise ConfigError(f'expected the objects {list(parts)}; got {found}')
    version = values.get('version', 1)
    if version not in (1, CONFIG_VERSION):
      raise ConfigError(
        f'config version {version!r} is not one this glow_tf reads (1..{CONFIG_VERSION})'
      )
    train = TrainConfig.from_dict(values['train'])
    if version < 3:  # Trained on the whole training split: no validation was carved.
      train = train.replace(validation_size=0)
    model = GlowConfig.from_dict(values['model'])
    try:
      num_bins = int(values['data']['num_bins'])
    except (KeyError, TypeError, ValueError) as e:
      raise ConfigError(f'data.num_bins must be an int; got {values["data"]!r}') from e
    return cls(train, model, {**values['data'], 'num_bins': num_bins})


def load_run_config(model_dir: str) -> RunConfig:
  """The `config.json` a training run wrote (any version).

  Raises:
    ConfigError: if it is missing, not JSON, or not the config glow_tf.train writes.
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
  try:
    return RunConfig.from_dict(values)
  except (ConfigError, TypeError) as e:
    raise ConfigError(
      f'{path!r} is not a glow_tf run config ({e}); expected the {CONFIG_FILE} '
      'glow_tf.train writes.'
    ) from e


def carried_over(model_dir: str, config: TrainConfig) -> TrainConfig:
  """`config` for resuming `model_dir`: a run from before validation splits (config
  version < 3) keeps training without one unless `validation_size` was set otherwise
  (then the identity check refuses the change)."""
  path = os.path.join(model_dir, CONFIG_FILE)
  default = TrainConfig().data.validation_size
  if config.data.validation_size != default or not tf.io.gfile.exists(path):
    return config
  try:
    with tf.io.gfile.GFile(path) as f:
      version = json.load(f).get('version', 1)
  except (ValueError, AttributeError, tf.errors.OpError):
    return config  # check_run_dir names what is wrong with it.
  if not isinstance(version, int) or version >= 3:
    return config
  logging.info('%s: a run from before validation splits: it resumes without one', model_dir)
  return config.replace(validation_size=0)


def check_run_dir(model_dir: str, run: RunConfig) -> None:
  """Refuses a model_dir whose checkpoints belong to another model or data.

  config.json binds a run once it has checkpoints. A run that stopped before its first
  checkpoint holds no model: its config.json is replaced (with a warning).
  """
  if not tf.io.gfile.exists(os.path.join(model_dir, CONFIG_FILE)):
    return
  has_checkpoints = has_checkpoint_files(os.path.join(model_dir, CHECKPOINT_DIR))
  try:
    previous = load_run_config(model_dir).train.identity()
  except ConfigError as e:
    if has_checkpoints:
      raise ConfigError(
        f'{e} The checkpoints of {model_dir!r} cannot be checked against the flags: restore '
        f'{CONFIG_FILE}, or delete it to have training write it again once the flags are '
        'known to fit the checkpoints.'
      ) from e
    logging.warning('%s: replacing an unusable %s of a run without checkpoints', model_dir, e)
    return
  now = run.train.identity()
  changed = {k: (previous.get(k), now[k]) for k in now if previous.get(k) != now[k]}
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
        problem = f'does not restore ({error_line(e)})'
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


def write_checkpoint_state(directory: str, latest: str, kept) -> None:
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


def remove_partial_saves(directory: str) -> None:
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


def check_model_dir(model_dir: str) -> None:
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
