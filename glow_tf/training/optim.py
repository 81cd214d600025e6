"""Optimisers and Polyak averaging for Glow, as plain tf.Modules that tf.distribute can run.

Under a strategy, every replica receives the same all-reduced gradients and
applies the same fused update to its own copy of each variable (through the
variable's local handle), so the copies stay identical without a merge or a
broadcast per variable. A step runs only when the caller says it is finite: the
update of each group of variables sits in a `tf.cond` inside its traced
function, so a skipped step leaves parameters, moments and averages exactly as
they were. (Without the cond — the same fused updates with zeroed gradients,
moment decays of 1 and a zero rate — the trace was ~0.2 s shorter at K=8, but
zeroing the gradients, NaN included, is one more pass over them: measured at
K=32 with --recompute, 20-40 MiB more step memory and ~5% fewer images/s.)
"""

from collections.abc import Sequence

import tensorflow as tf

from glow_tf import nn
from glow_tf.tracing import SharedTrace

__all__ = [
  'DynamicLossScale',
  'ExponentialMovingAverage',
  'Optimizer',
  'OPTIMIZERS',
  'local_assign',
  'local_assign_add',
]

OPTIMIZERS = ('adam', 'adamax')


def local_assign(variable: tf.Variable, value) -> None:
  """Assigns this replica's copy of `variable` (the variable itself outside a strategy)."""
  tf.raw_ops.AssignVariableOp(
    resource=variable.handle, value=tf.convert_to_tensor(value, variable.dtype)
  )


def local_assign_add(variable: tf.Variable, value) -> None:
  tf.raw_ops.AssignAddVariableOp(
    resource=variable.handle, value=tf.convert_to_tensor(value, variable.dtype)
  )


def _groups(groups, count: int) -> list[list[int]]:
  """Index groups covering `range(count)` once each (default: one group of all)."""
  if groups is None:
    return [list(range(count))]
  groups = [list(g) for g in groups if len(g)]
  indices = sorted(i for g in groups for i in g)
  if indices != list(range(count)):
    raise ValueError(
      f'variable groups must cover each of the {count} variables once; got {groups}.'
    )
  return groups


def _sum_of_squares(tensors) -> tf.Tensor:
  return tf.add_n([2.0 * tf.cast(tf.nn.l2_loss(t), tf.float32) for t in tensors])


class Optimizer(tf.Module):
  """Adam or Adamax (Kingma & Ba, 2015), TensorFlow's fused kernels.

  ```none
  m = b1 m + (1 - b1) g
  adam:    v = b2 v + (1 - b2) g^2;   p -= lr sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps)
  adamax:  v = max(b2 v, |g|);        p -= lr/(1 - b1^t) * m / (v + eps)
  ```

  Adamax is the official Glow code's default. `groups` (lists of indices into
  `variables`) are updated by one traced function each; groups of the same shapes
  (a deep flow's steps) share its trace, so the update's graph does not grow with
  the depth.
  """

  def __init__(
    self,
    variables: Sequence[tf.Variable],
    kind: str = 'adamax',
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    groups: Sequence[Sequence[int]] | None = None,
    name: str = 'optimizer',
  ):
    super().__init__(name=name)
    if kind not in OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS}; got {kind!r}.')
    self.kind, self.beta_1, self.beta_2, self.epsilon = kind, beta_1, beta_2, epsilon
    self._variables = list(variables)
    self._groups = _groups(groups, len(self._variables))
    self._apply_group = SharedTrace(self._apply_handles, 'apply_group', shapeless=True)
    self._group_sum_of_squares = SharedTrace(
      _sum_of_squares, 'group_sum_of_squares', shapeless=True
    )
    with self.name_scope:
      self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name='iterations')
      self.first_moments = [self._zeros_like(v, 'm') for v in self._variables]
      self.second_moments = [self._zeros_like(v, 'v') for v in self._variables]

  @staticmethod
  def _zeros_like(variable, name: str) -> tf.Variable:
    """A moment of `variable`, zero (uninitialised within `nn.to_be_restored`)."""
    value = nn.initial_value(lambda: tf.zeros_like(variable), variable.shape, variable.dtype)
    return tf.Variable(value, trainable=False, name=name)

  @property
  def trained_variables(self) -> list[tf.Variable]:
    """The variables this optimiser updates, in the order `apply` takes their gradients."""
    return list(self._variables)

  def _scalars(self, learning_rate, dtype) -> dict[str, tf.Tensor]:
    t = tf.cast(self.iterations.read_value() + 1, tf.float32)
    scalars = dict(
      beta1_power=tf.pow(self.beta_1, t),
      lr=learning_rate,
      beta1=self.beta_1,
      beta2=self.beta_2,
      epsilon=self.epsilon,
    )
    if self.kind == 'adam':
      scalars['beta2_power'] = tf.pow(self.beta_2, t)
    return {k: tf.cast(v, dtype) for k, v in scalars.items()}

  def _apply_handles(self, handles, ms, vs, grads, scalars, apply_if, grad_scale):
    apply_op = (
      tf.raw_ops.ResourceApplyAdam if self.kind == 'adam' else tf.raw_ops.ResourceApplyAdaMax
    )

    def apply():
      for var, m, v, grad in zip(handles, ms, vs, grads):
        if grad_scale is not None:
          grad *= tf.cast(grad_scale, grad.dtype)
        apply_op(var=var, m=m, v=v, grad=grad, **scalars)
      return tf.constant(True)

    return tf.cond(apply_if, apply, lambda: tf.constant(False))

  def global_norm(self, grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """The global norm of `grads` (one per trained variable), float32.

    Each group's sum of squares is one traced call (as its update), so the caller's
    graph holds no op per variable.
    """
    sums = [
      self._group_sum_of_squares([tf.convert_to_tensor(grads[i]) for i in group])
      for group in self._groups
    ]
    return tf.sqrt(tf.add_n(sums))

  def clip_scale(self, norm, clip_norm: float):
    """What scales gradients of global norm `norm` to at most `clip_norm`; None if
    `clip_norm <= 0` (no clipping)."""
    if clip_norm <= 0:
      return None
    return tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))

  def apply(
    self, grads: Sequence[tf.Tensor], learning_rate, apply_if=True, grad_scale=None
  ) -> None:
    """One step with `grads` (times `grad_scale`, if given) at `learning_rate`, if
    `apply_if` (a bool tensor) holds.

    A step not applied leaves variables, moments and the step count exactly as they
    were. The condition is decided inside each group's traced update, so the
    caller's graph holds no branch over every variable.
    """
    apply_if = tf.convert_to_tensor(apply_if, tf.bool)
    scalars = {}  # Per dtype, computed once for every variable of the step.
    for group in self._groups:
      dtype = self._variables[group[0]].dtype
      if dtype not in scalars:
        scalars[dtype] = self._scalars(learning_rate, dtype)
      self._apply_group(
        [self._variables[i].handle for i in group],
        [self.first_moments[i].handle for i in group],
        [self.second_moments[i].handle for i in group],
        [tf.convert_to_tensor(grads[i]) for i in group],
        scalars[dtype],
        apply_if,
        grad_scale,
      )
    local_assign_add(self.iterations, tf.cast(apply_if, tf.int64))


class ExponentialMovingAverage(tf.Module):
  """Polyak averages of variables; `swap()` puts them in place for evaluation and export.

  The decay at update `n` (0-based) is `min(decay, (1 + n) / (10 + n))`, as
  `tf.train.ExponentialMovingAverage(num_updates=n)`: early averages forget the
  initial weights quickly instead of holding `decay**n` of them (at decay 0.999,
  37% after 1,000 steps).

  `groups` as for `Optimizer`: each is updated by one traced function.
  """

  def __init__(
    self,
    variables: Sequence[tf.Variable],
    decay: float,
    groups: Sequence[Sequence[int]] | None = None,
    name: str = 'ema',
  ):
    super().__init__(name=name)
    self.decay = decay  # In [0, 1); TrainConfig.ema_decay checks it.
    self._variables = list(variables)
    self._groups = _groups(groups, len(self._variables))
    self._update_group = SharedTrace(self._update_handles, 'update_group', shapeless=True)
    with self.name_scope:
      self.averages = [tf.Variable(v, trainable=False, name='average') for v in self._variables]

  def reset(self) -> None:
    """Sets every average to its variable's current value (after ActNorm's init)."""
    for average, var in zip(self.averages, self._variables):
      average.assign(var)

  def _update_handles(self, averages, variables, dtype, apply_if, decay):

    def update():
      for average, var in zip(averages, variables):
        delta = tf.cast(1.0 - decay, dtype) * (
          tf.raw_ops.ReadVariableOp(resource=average, dtype=dtype)
          - tf.raw_ops.ReadVariableOp(resource=var, dtype=dtype)
        )
        tf.raw_ops.AssignSubVariableOp(resource=average, value=delta)
      return tf.constant(True)

    return tf.cond(apply_if, update, lambda: tf.constant(False))

  def decay_at(self, num_updates):
    """The decay of update `num_updates` (0-based), a float32 tensor."""
    n = tf.cast(num_updates, tf.float32)
    return tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))

  def update(self, apply_if=True, num_updates=None) -> None:
    """`average -= (1 - d) * (average - variable)` on this replica's copies, if `apply_if`;
    `d` is `decay_at(num_updates)`, or `decay` when `num_updates` is None."""
    apply_if = tf.convert_to_tensor(apply_if, tf.bool)
    decay = (
      tf.constant(self.decay, tf.float32) if num_updates is None else self.decay_at(num_updates)
    )
    for group in self._groups:
      self._update_group(
        [self.averages[i].handle for i in group],
        [self._variables[i].handle for i in group],
        self._variables[group[0]].dtype,
        apply_if,
        decay,
      )

  def swap(self) -> None:
    """Exchanges variables and averages (call twice to undo); in cross-replica context."""
    for average, var in zip(self.averages, self._variables):
      value = tf.identity(var)
      var.assign(average)
      average.assign(value)


class DynamicLossScale(tf.Module):
  """float16's dynamic loss scale: grow after a run of finite steps, halve on overflow.

  The loss is multiplied by `scale` before its gradient is taken, so that small
  float16 gradients do not flush to zero, and the gradients are divided by it
  after. A step whose gradients overflow is skipped (by the caller's finite
  check) and halves the scale; `growth_interval` finite steps in a row double it.
  Its state is part of every checkpoint, whatever the precision (it is then
  unused), so a run resumes across precisions.
  """

  INITIAL = 2.0**15
  MAXIMUM = 2.0**24

  def __init__(self, growth_interval: int = 2000, name: str = 'loss_scale'):
    super().__init__(name=name)
    self.growth_interval = growth_interval
    with self.name_scope:
      self.scale = tf.Variable(self.INITIAL, trainable=False, name='scale')
      self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name='good_steps')

  def update(self, finite) -> None:
    """After a step: halve on overflow (not below 1), double after a run of finite steps."""
    scale = self.scale.read_value()
    good = tf.where(finite, self.good_steps.read_value() + 1, tf.zeros([], tf.int64))
    grow = good >= self.growth_interval
    grown = tf.where(grow, tf.minimum(2.0 * scale, self.MAXIMUM), scale)
    local_assign(self.scale, tf.where(finite, grown, tf.maximum(0.5 * scale, 1.0)))
    local_assign(self.good_steps, tf.where(grow, tf.zeros([], tf.int64), good))
