"""TrainState: what a checkpoint holds, built in one place for training and for loading."""

import contextlib
import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import nn
from glow_tf.model import flow as flow_lib
from glow_tf.model.config import GlowConfig
from glow_tf.training import optim

tfd = tfp.distributions

__all__ = ['BestRecord', 'TrainState']


def _step_groups(flow, variables) -> list[list[int]]:
  """Indices of `variables` by flow step (a level's, if its steps' variables are
  stacked), then the rest: the optimiser's and the averages' updates, traced once per
  group structure, then stay flat in depth."""
  index = {v.ref(): i for i, v in enumerate(variables)}
  multiscale = flow.multiscale
  groups = []
  for level in range(len(multiscale.levels)):
    for step in multiscale.steps(level):
      group = [index[v.ref()] for v in nn.trained(step)]
      if group not in groups:  # Stacked: every step of the level names the same.
        groups.append(group)
  grouped = {i for group in groups for i in group}
  return groups + [[i for i in range(len(variables)) if i not in grouped]]


class BestRecord(tf.Module):
  """Which evaluated weights of a run scored best on the validation split so far.

  Checkpointed with the rest of the state, so a resumed run keeps its best; the run's
  best checkpoint holds the record of itself.

  Attributes:
    step: the training step of the best weights (-1: none evaluated yet).
    validation_bits_per_dim: their validation score (inf: none yet).
    test_bits_per_dim: their test score, measured when they were found (never used
      to choose).
    averaged: the Polyak averages won (else the raw weights of that step).
  """

  def __init__(self):
    super().__init__(name='best')
    self.step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='step')
    self.validation_bits_per_dim = tf.Variable(
      float('inf'), dtype=tf.float64, trainable=False, name='validation_bits_per_dim'
    )
    self.test_bits_per_dim = tf.Variable(
      float('nan'), dtype=tf.float64, trainable=False, name='test_bits_per_dim'
    )
    self.averaged = tf.Variable(False, trainable=False, name='averaged')

  def record(self, step: int, validation: float, test: float, averaged: bool) -> None:
    self.step.assign(step)
    self.validation_bits_per_dim.assign(validation)
    self.test_bits_per_dim.assign(test)
    self.averaged.assign(averaged)

  def take(self, other: 'BestRecord') -> None:
    """Becomes a copy of `other`."""
    for mine, theirs in zip(self.variables, other.variables):
      mine.assign(theirs)

  def restore(self, prefix: str) -> None:
    """Reads the record of checkpoint `prefix` (and nothing else of it)."""
    tf.train.Checkpoint(best=self).restore(
      prefix
    ).assert_existing_objects_matched().expect_partial()

  def to_dict(self) -> dict | None:
    """The record as JSON-ready values, or None before the first evaluation."""
    if int(self.step.numpy()) < 0:
      return None
    return dict(
      step=int(self.step.numpy()),
      weights='averaged' if bool(self.averaged.numpy()) else 'raw',
      validation_bits_per_dim=float(self.validation_bits_per_dim.numpy()),
      test_bits_per_dim=float(self.test_bits_per_dim.numpy()),
    )


# Parts of a checkpoint that older checkpoints lack; they keep their initial values.
OPTIONAL_PARTS = ('loss_scale', 'best')

# In a checkpoint's keys, the path through `MultiScaleFlow._step_stacks`: a checkpoint
# holding it has stacked steps' variables (see `TrainState.restore`).
_STACKS_KEY = '/_step_stacks/'


def _slots(state: 'TrainState') -> list[tuple[tf.Variable, int | None]]:
  """Every model parameter as `(variable, row)`, in one order for either layout: each
  level's steps' parameters step by step (`row` the step's row of a stacked variable,
  else None), then the flow's other variables, then the classifier's."""
  slots, in_steps = [], set()
  multiscale = state.flow.multiscale
  for level in range(len(multiscale.levels)):
    for step in multiscale.steps(level):
      for p in nn.parameters(step):
        variable, row = (p.stack, p.index) if isinstance(p, nn.StackedRow) else (p, None)
        slots.append((variable, row))
        in_steps.add(variable.ref())
  rest = [v for v in state.flow.variables if v.ref() not in in_steps]
  if state.classifier is not None:
    rest += list(state.classifier.variables)
  return slots + [(v, None) for v in rest]


def _copy_across_layouts(source: 'TrainState', target: 'TrainState') -> None:
  """Sets `target` to `source`'s values, the two of one model in different layouts
  (steps' variables stacked in one, their own in the other): parameters, the
  optimiser's moments and the averages slot by slot, everything else as is."""
  source_slots, target_slots = _slots(source), _slots(target)
  pairs = list(zip(source_slots, target_slots, strict=True))

  def holders(state, slots):
    """Per value kept of a variable (itself, m, v, average): variable -> its holder."""
    trained = [v.ref() for v in state.variables]
    kept = (state.optimizer.first_moments, state.optimizer.second_moments, state.ema.averages)
    return [{v.ref(): v for v, _ in slots}] + [dict(zip(trained, k, strict=True)) for k in kept]

  for source_of, target_of in zip(holders(source, source_slots), holders(target, target_slots)):
    rows = {}  # Stacked target: its rows, assigned at once.
    for (s_var, s_row), (t_var, t_row) in pairs:
      if s_var.ref() not in source_of:
        continue  # Not trained: no moments nor average.
      value = tf.convert_to_tensor(source_of[s_var.ref()])
      value = value if s_row is None else value[s_row]
      held = target_of[t_var.ref()]
      if t_row is None:
        held.assign(value)
      else:
        rows.setdefault(held.ref(), (held, {}))[1][t_row] = value
    for held, values in rows.values():
      held.assign(tf.stack([values[k] for k in range(held.shape[0])]))
  for mine, theirs in zip(target.counters(), source.counters(), strict=True):
    mine.assign(theirs)


@dataclasses.dataclass
class TrainState:
  """The model and everything training keeps about it, as one checkpoint.

  Attributes:
    flow: the Glow distribution.
    classifier: the classifier head of a class-conditional flow, else None.
    optimizer: its moments, over `variables`.
    ema: the Polyak averages of `variables`.
    step: training steps taken.
    nonfinite_total, nonfinite_streak: non-finite steps in all, and in a row now.
    lr_scale: the learning-rate multiplier non-finite streaks have lowered.
    loss_scale: float16's dynamic loss scale (kept, unused, in other precisions).
    best: which evaluated weights scored best on the validation split so far.
  """

  flow: tfd.Distribution
  classifier: nn.ClassifierHead | None
  optimizer: optim.Optimizer
  ema: optim.ExponentialMovingAverage
  step: tf.Variable
  nonfinite_total: tf.Variable
  nonfinite_streak: tf.Variable
  lr_scale: tf.Variable
  loss_scale: optim.DynamicLossScale
  best: BestRecord

  _recipe = None  # (model config, optimizer, EMA decay), set by `create`: not a field.
  awaiting_restore = False  # Created to be restored, and not restored yet (see `create`).

  @classmethod
  def create(
    cls,
    model_config: GlowConfig,
    optimizer: str = 'adamax',
    ema_decay: float = 0.999,
    restoring: bool = False,
  ) -> 'TrainState':
    """A fresh state for `model_config` (call it inside `strategy.scope()` to distribute it).

    `restoring`: the caller restores a checkpoint into it before any other use. Its
    large variables then start uninitialised (`nn.to_be_restored`): a resume skips
    drawing and zeroing what the checkpoint overwrites. Until `restore` succeeds,
    `awaiting_restore` is True.
    """
    with nn.to_be_restored() if restoring else contextlib.nullcontext():
      flow = flow_lib.build_glow(model_config)
      classifier = flow_lib.build_classifier(flow) if model_config.num_classes else None
      variables = list(flow.trainable_variables)
      if classifier is not None:
        variables += list(classifier.trainable_variables)
      groups = _step_groups(flow, variables)
      optimizer_module = optim.Optimizer(variables, kind=optimizer, groups=groups)
    state = cls(
      flow=flow,
      classifier=classifier,
      optimizer=optimizer_module,
      ema=optim.ExponentialMovingAverage(variables, ema_decay, groups=groups),
      step=tf.Variable(0, dtype=tf.int64, trainable=False, name='step'),
      nonfinite_total=tf.Variable(0, dtype=tf.int64, trainable=False, name='nonfinite'),
      nonfinite_streak=tf.Variable(0, dtype=tf.int64, trainable=False, name='streak'),
      lr_scale=tf.Variable(1.0, trainable=False, name='lr_scale'),
      loss_scale=optim.DynamicLossScale(),
      best=BestRecord(),
    )
    state._recipe = (model_config, optimizer, ema_decay)  # For a twin in the other layout.
    state.awaiting_restore = restoring
    return state

  @property
  def variables(self) -> list[tf.Variable]:
    """The trained variables: the flow's, then the classifier's."""
    return self.optimizer.trained_variables

  def checkpointed_variables(self) -> list[tf.Variable]:
    """Every variable the checkpoint holds: model, optimiser, averages, counters."""
    modules = [self.flow, self.optimizer, self.ema] + ([self.classifier] if self.classifier else [])
    held = [v for m in modules for v in m.variables]
    known = {v.ref() for v in held}  # The optimiser's step count is among its variables.
    return held + [v for v in self.counters() if v.ref() not in known]

  def counters(self) -> list[tf.Variable]:
    """What the checkpoint holds besides the model, its moments and averages: the
    optimiser's step count, the run's counters, the loss scale and the best record."""
    counters = [self.optimizer.iterations, self.step, self.nonfinite_total]
    counters += [self.nonfinite_streak, self.lr_scale]
    return counters + list(self.loss_scale.variables) + list(self.best.variables)

  def checkpoint(self, without: tuple[str, ...] = ()) -> tf.train.Checkpoint:
    """The checkpoint layout of a run: every field, by its name (the classifier if any).

    `without`: `OPTIONAL_PARTS` left out, the layout of older checkpoints (to read
    them; `restore` chooses).
    """
    parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if parts['classifier'] is None:
      del parts['classifier']
    for name in without:
      del parts[name]
    return tf.train.Checkpoint(**parts)

  def restore(self, prefix: str) -> None:
    """Restores checkpoint `prefix`; raises if any of this state's objects is not in it.

    A checkpoint written before the loss scale or the best record was kept restores
    everything else; those keep their initial values. A checkpoint of the other
    variable layout (flow steps' variables stacked or not, `GlowConfig.stack_steps`;
    every checkpoint before stacking has each step's own) is read into a twin of
    this state in its layout, then converted.
    """
    names = [name for name, _ in tf.train.list_variables(prefix)]
    stacked = any(_STACKS_KEY in name for name in names)
    if stacked != bool(self.flow.multiscale.step_stacks):
      model_config, optimizer, ema_decay = self._recipe
      twin = TrainState.create(
        model_config.replace(stack_steps=stacked), optimizer, ema_decay, restoring=True
      )
      twin.restore(prefix)
      _copy_across_layouts(twin, self)  # Every variable of the flow, the moments and averages.
    else:
      tops = {name.split('/')[0] for name in names}
      checkpoint = self.checkpoint(without=tuple(p for p in OPTIONAL_PARTS if p not in tops))
      # Raises unless every variable the checkpoint object reaches was given a value.
      checkpoint.restore(prefix).assert_existing_objects_matched()
    self.awaiting_restore = False

  def use_averages(self) -> None:
    """Puts the Polyak averages in place of the trained values (for a finished run)."""
    for average, variable in zip(self.ema.averages, self.variables):
      variable.assign(average)
