"""Training Glow: `Trainer` (one run's steps) and `train_and_evaluate(config, model_dir)`.

No flags here: `glow_tf.train` (the CLI) turns flags into a `TrainConfig`, and
tests and notebooks call `train_and_evaluate` directly.
"""

import contextlib
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from glow_tf.bijectors import compiled_steps
from glow_tf.errors import ConfigError
from glow_tf.model import flow as flow_lib
from glow_tf.model import health, images, sampling
from glow_tf.training import data, distribute, optim, reversible, rundir
from glow_tf.training.config import TrainConfig
from glow_tf.training.loss import Loss
from glow_tf.training.state import BestRecord, TrainState

__all__ = ['Diverged', 'Interrupted', 'Trainer', 'TrainingStopped', 'train_and_evaluate']


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


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


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
    self.run_config = rundir.RunConfig(
      config,
      self.model_config,
      dict(
        num_bins=source.num_bins,
        image_shape=list(source.image_shape),
        num_classes=source.num_classes,
        num_train=source.num_train,
        num_test=source.num_test,
      ),
    )
    self.is_chief, self.task_id = distribute.is_chief(strategy)
    # With checkpoint files, `restore_or_initialize` restores one or raises: the state's
    # large variables need no initial values.
    resuming = rundir.has_checkpoint_files(rundir.checkpoint_dir(model_dir))
    with strategy.scope():
      self.state = TrainState.create(
        self.model_config, config.optimizer, config.ema_decay, restoring=resuming
      )
    # The parts of the state the steps use, by name.
    self.flow, self.classifier = self.state.flow, self.state.classifier
    self.optimizer, self.ema = self.state.optimizer, self.state.ema
    self.step, self.lr_scale = self.state.step, self.state.lr_scale
    self.nonfinite_total, self.nonfinite_streak = (
      self.state.nonfinite_total,
      self.state.nonfinite_streak,
    )
    self.variables = self.state.variables
    self.checkpoint = self.state.checkpoint()
    self.loss = Loss(source.num_bins, config.class_loss_weight)
    self._grappler = distribute.graph_optimizer_enabled(config.graph_optimizer)
    # float16 gradients underflow without a loss scale; other precisions never use it.
    self.loss_scaled = self.model_config.precision == 'float16'
    self.loss_scale = self.state.loss_scale
    self._managers = {}
    # autograph=False: glow_tf's code is graph-ready Python (static loops only), and
    # converting it would cost seconds of every trace for nothing.
    # Its own (XLA-compiled) function only with jit_compile: a nested function would
    # capture every variable a second time.
    self._compute_grads = (
      tf.function(self._grads_for_xla, jit_compile=True, autograph=False)
      if config.jit_compile
      else self._grads_and_metrics
    )
    self._train_step = tf.function(self._distributed_train_step, autograph=False)
    self._eval_step = tf.function(self._distributed_eval_step, autograph=False)

  # ---- state -----------------------------------------------------------------------------

  def _checkpoint_manager(self, kind: str) -> tf.train.CheckpointManager:
    """The manager of the 'latest' checkpoints (rotating) or of the 'best' one."""
    if kind not in self._managers:
      directory = rundir.checkpoint_dir(self.model_dir, kind)
      if not self.is_chief:  # Other workers write their (identical) copy aside and delete it.
        directory = os.path.join(self.model_dir, '.worker_tmp', f'worker_{self.task_id}_{kind}')
      keep = self.config.keep_checkpoints if kind == 'latest' else 1
      self._managers[kind] = tf.train.CheckpointManager(self.checkpoint, directory, keep)
    return self._managers[kind]

  @property
  def manager(self) -> tf.train.CheckpointManager:
    """Writes and rotates this run's checkpoints (created once the state file is sound)."""
    return self._checkpoint_manager('latest')

  @property
  def best_manager(self) -> tf.train.CheckpointManager:
    """Holds the run's best checkpoint (by validation bits/dim), replaced by a better one."""
    return self._checkpoint_manager('best')

  @property
  def validates(self) -> bool:
    """Whether evaluations score a validation split (and keep a best checkpoint)."""
    return self.source.num_validation > 0

  def restore_or_initialize(self) -> str:
    """Restores the newest intact checkpoint, or initialises ActNorm on a training batch.

    Incomplete or unrestorable checkpoints are skipped with a warning naming them (see
    `restore_newest_intact`); the chief then points the state file at the one restored.
    If checkpoint files exist but none restores, raises ConfigError: a run with
    checkpoints is never re-initialised.
    """
    directory = rundir.checkpoint_dir(self.model_dir)
    restored = rundir.restore_newest_intact(
      directory,
      self.state.restore,
      advice='If config.json was lost, rerun with the flags this run was started with; '
      'to start over, move the run directory away or use another --model_dir.',
    )
    if restored.path:
      if self.is_chief and not restored.state_ok:
        rundir.write_checkpoint_state(directory, restored.path, restored.kept)
      self._managers = {}  # They read the state files afresh.
      self._adopt_saved_best()
      return f'restored {restored.path} at step {int(self.step.numpy())}'
    if self.state.awaiting_restore:
      raise ConfigError(
        f'{directory!r} held checkpoint files when this run was set up, and holds none now '
        '(removed meanwhile?); the model was built to be restored and cannot be '
        'initialised. Rerun the command.'
      )
    init_batch = min(self.config.init_batch_size, self.source.num_train)
    x, _ = next(iter(data.train_dataset(self.source, init_batch, self.config.seed)))
    with self.strategy.scope():
      count = flow_lib.initialize(self.flow, x)
      self.ema.reset()
    return f'initialised {count} ActNorm layers on {init_batch} training images'

  def _adopt_saved_best(self) -> None:
    """Takes the best checkpoint's record if it beats the restored one: a run stopped
    after writing a new best checkpoint but before its next latest one."""
    saved = BestRecord()
    try:
      directory = rundir.checkpoint_dir(self.model_dir, 'best')
      best = rundir.restore_newest_intact(directory, saved.restore)
    except ConfigError as e:
      logging.warning('%s: no usable best checkpoint: %s', self.model_dir, e)
      return
    if saved.validation_bits_per_dim.numpy() < self.state.best.validation_bits_per_dim.numpy():
      self.state.best.take(saved)
      logging.info('%s: the best so far is %s', self.model_dir, best.path)

  def save(self, kind: str = 'latest') -> str | None:
    """Writes a checkpoint of the current step: one of the 'latest' or the 'best' one.

    Raises:
      ConfigError: if it cannot be written (disk full, permissions). The partial save
        is removed and the previous checkpoint is untouched; the message names it.
    """
    manager = self._checkpoint_manager(kind)
    step = int(self.step.numpy())
    try:
      path = manager.save(checkpoint_number=step)
    except rundir.WRITE_ERRORS as e:
      rundir.remove_partial_saves(manager.directory)
      kept = manager.latest_checkpoint
      raise ConfigError(
        f'cannot write checkpoint ckpt-{step} in {manager.directory!r} '
        f'({rundir.error_line(e)}); '
        + (f'{kept} is intact' if kept else 'no checkpoint was written before')
        + '. Free space or fix permissions, then rerun the same command to resume.'
      ) from e
    if not self.is_chief:
      tf.io.gfile.rmtree(manager.directory)
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
    """The rate of step `step` (0-based): linear warmup, then constant or cosine decay
    from the peak to `lr_floor` x peak at the last step; times the non-finite scale."""
    config = self.config
    step = tf.cast(step, tf.float32)
    warmup = tf.minimum(1.0, (step + 1.0) / max(config.warmup_steps, 1))
    if config.lr_schedule == 'cosine':
      decay_steps = max(config.train_steps - 1 - config.warmup_steps, 1)
      progress = tf.clip_by_value((step - config.warmup_steps) / decay_steps, 0.0, 1.0)
      warmup *= config.lr_floor + (1.0 - config.lr_floor) * 0.5 * (1.0 + tf.cos(np.pi * progress))
    return config.learning_rate * warmup * self.lr_scale

  def _label(self, label):
    """The label the loss takes: the batch's, for a class-conditional flow; else None."""
    return label if self.classifier is not None else None

  def _grads_and_metrics(self, x, label, scale):
    """Gradients of the mean loss times `scale` (float16's loss scale, else 1)."""
    if self.config.recompute:  # Reversible backward: memory does not grow with depth.
      loss, bpd, grads = reversible.loss_and_gradients(
        self.flow,
        x,
        self.loss,
        self.variables,
        label=self._label(label),
        classifier=self.classifier,
        loss_scale=scale / self.global_batch,
      )
      return grads, tf.reduce_sum(loss), tf.reduce_sum(bpd)
    with tf.GradientTape() as tape:
      loss, bpd = self.loss(self.flow, self.classifier, x, self._label(label))
      scaled = tf.reduce_sum(loss) * (scale / self.global_batch)
    grads = tape.gradient(scaled, self.variables)
    return grads, tf.reduce_sum(loss), tf.reduce_sum(bpd)

  def _grads_for_xla(self, x, label, scale):
    with compiled_steps.for_xla():
      return self._grads_and_metrics(x, label, scale)

  def _all_reduce(self, values):
    """Sums `values` over replicas (one replica: they are the sums already)."""
    if self.num_replicas == 1:
      return values
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)

  def _replica_train_step(self, x, label):
    scale = self.loss_scale.scale.read_value() if self.loss_scaled else tf.constant(1.0)
    grads, loss_sum, bpd_sum = self._compute_grads(x, label, scale)
    if self.loss_scaled:
      grads = [g / scale for g in grads]
    grads = self._all_reduce(grads)
    loss_sum, bpd_sum = self._all_reduce([loss_sum, bpd_sum])
    grad_norm = self.optimizer.global_norm(grads)
    finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(loss_sum)
    step = self.step.read_value()
    learning_rate = self.learning_rate(step)
    clip = self.optimizer.clip_scale(grad_norm, self.config.grad_clip_norm)
    self.optimizer.apply(grads, learning_rate, apply_if=finite, grad_scale=clip)
    self.ema.update(apply_if=finite, num_updates=step)
    # Counters: every replica computes the same values from the same all-reduced sums.
    optim.local_assign_add(self.step, 1)
    nonfinite = tf.cast(tf.logical_not(finite), tf.int64)
    optim.local_assign_add(self.nonfinite_total, nonfinite)
    if self.loss_scaled:
      self.loss_scale.update(finite)
      # An overflow the loss scale can still halve away is not the model diverging.
      nonfinite *= tf.cast(scale <= 1.0, tf.int64)
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
      loss_scale=scale,
    )

  def _distributed_train_step(self, iterator):
    x, label = next(iterator)
    metrics = self.strategy.run(self._replica_train_step, args=(x, label))
    return {k: self.strategy.experimental_local_results(v)[0] for k, v in metrics.items()}

  def train_step(self, iterator) -> dict[str, float]:
    """One step on the next batch of a distributed iterator; returns its metrics."""
    with distribute.graph_optimizer(self._grappler):
      return {k: v.numpy() for k, v in self._train_step(iterator).items()}

  def trace_train_step(self, iterator) -> None:
    """Traces the step `train_step(iterator)` runs, without running it (nothing is
    read or updated); the first `train_step` then runs that trace. For measuring
    start-up in its parts."""
    with distribute.graph_optimizer(self._grappler):
      self._train_step.get_concrete_function(iterator)

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
    with compiled_steps.untaped():  # Scored, not differentiated.
      _, bpd = self.loss(self.flow, self.classifier, x, self._label(label))
    return self._all_reduce([tf.reduce_sum(weight * bpd), tf.reduce_sum(weight)])

  def _distributed_eval_step(self, batch):
    sums = self.strategy.run(self._replica_eval_step, args=batch)
    return [self.strategy.experimental_local_results(s)[0] for s in sums]

  def evaluate(self, split: str = 'test', averaged: bool = True) -> float:
    """Bits/dim over the whole `split` ('test' or 'validation'), with the Polyak-averaged
    weights or (`averaged=False`) the raw ones."""
    dataset = self.distribute(
      lambda ctx: data.eval_dataset(
        self.source, self.global_batch, self.config.seed, ctx, split=split
      )
    )
    total, count = 0.0, 0.0
    with self.averaged_weights() if averaged else contextlib.nullcontext():
      for batch in dataset:
        with distribute.graph_optimizer(self._grappler):
          bpd_sum, weight_sum = self._eval_step(batch)
        total, count = total + float(bpd_sum), count + float(weight_sum)
    return total / count

  def evaluate_and_select(self) -> dict[str, float]:
    """Scores the current weights; keeps them as the best checkpoint if they beat it.

    Test bits/dim of the averaged weights always; with a validation split, the
    validation bits/dim of the raw and of the averaged weights: the lower one, if it
    beats the best so far, makes this step the best (its test bits/dim measured too,
    for the record; the test split never chooses) and writes the best checkpoint.
    """
    scores = dict(test=self.evaluate('test'))
    if not self.validates:
      return scores
    scores['validation_raw'] = self.evaluate('validation', averaged=False)
    scores['validation_averaged'] = self.evaluate('validation')
    averaged = scores['validation_averaged'] <= scores['validation_raw']
    validation = scores['validation_averaged' if averaged else 'validation_raw']
    if validation < float(self.state.best.validation_bits_per_dim.numpy()):
      test = scores['test'] if averaged else self.evaluate('test', averaged=False)
      step = int(self.step.numpy())
      self.state.best.record(step, validation, test, averaged)
      self.save('best')
      scores['new_best'] = 1.0
    return scores

  def sample_grid(self, temperature: float, seed: int = 0) -> np.ndarray:
    """A uint8 grid of samples at `temperature` with the averaged weights (labels cycle)."""
    num = self.config.samples_per_temperature
    label = tf.range(num) % self.model_config.num_classes if self.model_config.num_classes else None
    with self.averaged_weights():
      return sampling.sample_grid(
        self.flow, self.source.num_bins, temperature, num, self.config.seed + seed, label
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
  strategy = strategy or distribute.make_strategy(config.strategy)
  rundir.check_model_dir(model_dir)
  config = rundir.carried_over(model_dir, config)
  source = data.load_config(config.data)
  trainer = Trainer(config, model_dir, source, strategy)
  data.check_splits(source, trainer.global_batch)
  with rundir.run_lock(model_dir) if trainer.is_chief else contextlib.nullcontext():
    return _train_and_evaluate(trainer)


def _train_and_evaluate(trainer: Trainer) -> dict[str, Any]:
  """`train_and_evaluate` once the inputs are checked (and the chief holds the lock)."""
  config, model_dir, source = trainer.config, trainer.model_dir, trainer.source
  rundir.check_run_dir(model_dir, trainer.run_config)
  if trainer.is_chief:
    for kind in rundir.CHECKPOINT_KINDS:
      rundir.remove_partial_saves(rundir.checkpoint_dir(model_dir, kind))
  logging.info('%s: %s', model_dir, trainer.restore_or_initialize())
  if trainer.is_chief:  # Only now: the flags are known to fit the data and the checkpoints.
    rundir.write_json(os.path.join(model_dir, rundir.CONFIG_FILE), trainer.run_config.to_dict())
  writers = {
    k: tf.summary.create_file_writer(os.path.join(model_dir, k))
    if trainer.is_chief
    else tf.summary.create_noop_writer()
    for k in ('train', 'test')
  }

  start_step = int(trainer.step.numpy())
  if start_step < config.train_steps:
    logging.info(
      'training %s from step %d to %d: %d images %s (validation: %s), global batch %d on '
      '%d replica(s), %d parameters',
      source.name,
      start_step,
      config.train_steps,
      source.num_train,
      source.image_shape,
      source.validation_origin,
      trainer.global_batch,
      trainer.num_replicas,
      sum(int(np.prod(v.shape)) for v in trainer.variables),
    )
  started = time.time()
  with _stop_signals() as received:
    _train_loop(trainer, writers, start_step, received)
  final_step = int(trainer.step.numpy())
  scores = _evaluate_and_sample(trainer, writers['test'], final_step, final=True)
  latest = trainer.manager.latest_checkpoint
  if latest is None or not latest.endswith(f'-{final_step}'):
    trainer.save()  # After the evaluation: it holds the final best record.
  results = _results(trainer, scores['test'], final_step)
  results['train_seconds'] = round(time.time() - started, 1)
  if trainer.is_chief:
    rundir.write_json(os.path.join(model_dir, rundir.RESULTS_FILE), results)
  logging.info(
    'glow_tf %s: test bits/dim %.4f (%s; %d test images)',
    source.name,
    results['test_bits_per_dim'],
    results['selection'],
    source.num_test,
  )
  return results


def _results(trainer: Trainer, latest_test: float, final_step: int) -> dict[str, Any]:
  """What results.json says: the test bits/dim of the weights validation chose (the best
  checkpoint's), which weights those are, and the latest weights' for comparison."""
  best = trainer.state.best.to_dict() if trainer.validates else None
  latest = dict(
    step=final_step,
    weights='averaged',
    test_bits_per_dim=latest_test,
    checkpoint=trainer.manager.latest_checkpoint if trainer.is_chief else None,
  )
  if best is not None:
    best['checkpoint'] = trainer.best_manager.latest_checkpoint if trainer.is_chief else None
    chosen = best
    selection = (
      f'best by validation: {best["weights"]} weights of step {best["step"]}, validation '
      f'bits/dim {best["validation_bits_per_dim"]:.4f} on {trainer.source.num_validation} images'
    )
  else:
    chosen = latest
    selection = f'no validation split: Polyak-averaged weights of the last step, {final_step}'
  return dict(
    test_bits_per_dim=chosen['test_bits_per_dim'],
    selection=selection,
    checkpoint=chosen['checkpoint'],
    best=best,
    latest=latest,
    step=final_step,
    num_test=trainer.source.num_test,
    num_validation=trainer.source.num_validation,
    validation=trainer.source.validation_origin,
    nonfinite_steps=int(trainer.nonfinite_total.numpy()),
  )


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
    elif trainer.loss_scaled and float(metrics['loss_scale']) > 1.0:
      logging.info(
        'step %d: float16 gradients overflowed at loss scale %g; step skipped, scale halved',
        step,
        float(metrics['loss_scale']),
      )
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
    # Evaluation first: the checkpoint of this step then holds its best record.
    if step % config.eval_every == 0 and step < config.train_steps:
      _evaluate_and_sample(trainer, writers['test'], step, final=False)
    # No checkpoint in a non-finite streak: the last good one must not rotate out.
    if step % config.checkpoint_every == 0 and step < config.train_steps and metrics['finite']:
      trainer.save()


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
  if trainer.loss_scaled:
    logging.info('step %d: float16 loss scale %g', step, float(metrics['loss_scale']))
  with writer.as_default(step=step):
    if trainer.loss_scaled:
      tf.summary.scalar('loss_scale', float(metrics['loss_scale']))
    tf.summary.scalar('bits_per_dim', mean_bpd)
    tf.summary.scalar('learning_rate', float(metrics['learning_rate']))
    tf.summary.scalar('grad_norm', float(metrics['grad_norm']))
    tf.summary.scalar('nonfinite_steps', int(trainer.nonfinite_total.numpy()))
    tf.summary.scalar('steps_per_sec', rate)
    for name, value in health.weight_health(trainer.flow).items():
      tf.summary.scalar(f'health/{name}', value)


def _evaluate_and_sample(trainer: Trainer, writer, step: int, final: bool) -> dict[str, float]:
  scores = trainer.evaluate_and_select()
  test_bpd = scores['test']
  if trainer.validates:
    logging.info(
      'step %d: validation bits/dim %.4f (raw weights), %.4f (averaged)%s; test %.4f (averaged)',
      step,
      scores['validation_raw'],
      scores['validation_averaged'],
      ': the best so far' if 'new_best' in scores else '',
      test_bpd,
    )
  else:
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
    for name in ('validation_raw', 'validation_averaged'):
      if name in scores:
        tf.summary.scalar(f'{name}/bits_per_dim', scores[name])
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
      except rundir.WRITE_ERRORS as e:
        raise ConfigError(f'cannot write {path!r} ({rundir.error_line(e)}).') from e
  return scores
