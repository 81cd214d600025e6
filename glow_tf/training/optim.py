"""Optimisers and Polyak averaging for Glow, as plain tf.Modules that tf.distribute can run.

Under a strategy, every replica receives the same all-reduced gradients and
applies the same fused update to its own copy of each variable (through the
variable's local handle), so the copies stay identical without a merge or a
broadcast per variable. A step runs only when the caller says it is finite: the
whole update sits in one `tf.cond`, so a skipped step leaves parameters,
moments and averages exactly as they were.
"""

from collections.abc import Sequence

import tensorflow as tf

__all__ = [
  'ExponentialMovingAverage',
  'Optimizer',
  'OPTIMIZERS',
  'global_norm_clip',
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


def global_norm_clip(grads: Sequence[tf.Tensor], clip_norm: float):
  """Returns `(grads scaled to global norm <= clip_norm, global norm)`; clip_norm <= 0: no clip."""
  norm = tf.linalg.global_norm(grads)
  if clip_norm <= 0:
    return list(grads), norm
  scale = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
  return [g * scale for g in grads], norm


class Optimizer(tf.Module):
  """Adam or Adamax (Kingma & Ba, 2015), TensorFlow's fused kernels.

  ```none
  m = b1 m + (1 - b1) g
  adam:    v = b2 v + (1 - b2) g^2;   p -= lr sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps)
  adamax:  v = max(b2 v, |g|);        p -= lr/(1 - b1^t) * m / (v + eps)
  ```

  Adamax is the official Glow code's default.
  """

  def __init__(
    self,
    variables: Sequence[tf.Variable],
    kind: str = 'adamax',
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    name: str = 'optimizer',
  ):
    super().__init__(name=name)
    if kind not in OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS}; got {kind!r}.')
    self.kind, self.beta_1, self.beta_2, self.epsilon = kind, beta_1, beta_2, epsilon
    self._variables = list(variables)
    with self.name_scope:
      self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name='iterations')
      self.first_moments = [
        tf.Variable(tf.zeros_like(v), trainable=False, name='m') for v in self._variables
      ]
      self.second_moments = [
        tf.Variable(tf.zeros_like(v), trainable=False, name='v') for v in self._variables
      ]

  @property
  def trained_variables(self) -> list[tf.Variable]:
    """The variables this optimiser updates, in the order `apply` takes their gradients."""
    return list(self._variables)

  def apply(self, grads: Sequence[tf.Tensor], learning_rate) -> None:
    """One step with `grads` at `learning_rate` (call it inside the caller's finite-check)."""
    t = tf.cast(self.iterations.read_value() + 1, tf.float32)
    scalars = {}  # Per dtype, computed once for every variable of the step.
    for var, grad, m, v in zip(self._variables, grads, self.first_moments, self.second_moments):
      if var.dtype not in scalars:
        cast = lambda value, dtype=var.dtype: tf.cast(value, dtype)
        scalars[var.dtype] = dict(
          beta1_power=cast(tf.pow(self.beta_1, t)),
          lr=cast(learning_rate),
          beta1=cast(self.beta_1),
          beta2=cast(self.beta_2),
          epsilon=cast(self.epsilon),
          **({'beta2_power': cast(tf.pow(self.beta_2, t))} if self.kind == 'adam' else {}),
        )
      apply_op = (
        tf.raw_ops.ResourceApplyAdam if self.kind == 'adam' else tf.raw_ops.ResourceApplyAdaMax
      )
      apply_op(var=var.handle, m=m.handle, v=v.handle, grad=grad, **scalars[var.dtype])
    local_assign_add(self.iterations, 1)


class ExponentialMovingAverage(tf.Module):
  """Polyak averages of variables; `swap()` puts them in place for evaluation and export."""

  def __init__(self, variables: Sequence[tf.Variable], decay: float, name: str = 'ema'):
    super().__init__(name=name)
    self.decay = decay  # In [0, 1); TrainConfig.ema_decay checks it.
    self._variables = list(variables)
    with self.name_scope:
      self.averages = [tf.Variable(v, trainable=False, name='average') for v in self._variables]

  def reset(self) -> None:
    """Sets every average to its variable's current value (after ActNorm's init)."""
    for average, var in zip(self.averages, self._variables):
      average.assign(var)

  def update(self) -> None:
    """`average -= (1 - decay) * (average - variable)` on this replica's copies."""
    for average, var in zip(self.averages, self._variables):
      delta = (1.0 - self.decay) * (average.read_value() - var.read_value())
      tf.raw_ops.AssignSubVariableOp(resource=average.handle, value=delta)

  def swap(self) -> None:
    """Exchanges variables and averages (call twice to undo); in cross-replica context."""
    for average, var in zip(self.averages, self._variables):
      value = tf.identity(var)
      var.assign(average)
      average.assign(value)
