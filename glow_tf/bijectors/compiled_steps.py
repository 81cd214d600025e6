"""CompiledSteps: a level's K flow steps, traced once and called K times.

Tracing a deep flow step by step makes a graph whose size, trace time and
start-up time grow with the depth K (3 x 32 steps in the paper's CIFAR-10
model). But the K steps of a level are one computation with K sets of weights:
every glow_tf layer reads its weights through `nn.read`, so one step traced
under `nn.stand_ins` serves them all, each call taking that step's variables'
values as arguments. The trace, and the graph optimisation before the first
run, are then those of one step per level, whatever K.

ActNorm's data-dependent initialisation goes the same way: under
`nn.data_dependent_init` the forward pass initialises each step through one
function traced per level (`nn.initializing_into`) and assigns what it returns,
instead of running the step's layers eagerly, op by op.

Steps built with their variables stacked (`nn.StepStack`, as `build_glow`
does) are read once per pass: each `[K, ...]` variable is read and unstacked.
The reversible backward's passes, which no tape records, run them in a
`tf.while_loop` over their rows instead, so that even the calls do not grow
with K, writing each step's gradients into its rows of one gradient per stacked
variable, in place; so do the passes traced within `untaped()` (scoring,
sampling, encoding: nothing differentiates them). Steps with variables of their
own (a user's layers) pass those, one call per step.

The traced functions are `SharedTrace`s: called as concrete functions and not
inlined into their caller.
"""

import weakref

import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import (
  forward_and_log_det,
  inverse_and_log_det,
  reversible_backward,
)
from glow_tf.tracing import SharedTrace, ThreadFlag

__all__ = ['CompiledSteps', 'for_xla', 'per_layer', 'untaped']


def _signature(step, variables) -> tuple:
  """What must match for two steps to share one trace: layer types and the specs of
  their variables (`variables`: `nn.parameters(step)`)."""
  parts = step.bijectors if hasattr(step, 'bijectors') else [step]
  return (
    tuple(type(p).__name__ for p in parts),
    tuple((tuple(v.shape.as_list()), v.dtype.name, v.trainable) for v in variables),
  )


def _stacks(step_variables) -> list | None:
  """The stacked variables behind every step's rows, in template order, if each step's
  i-th parameter is a row of the same i-th stacked variable; else None."""
  first = step_variables[0]
  if not first or not all(isinstance(p, nn.StackedRow) for p in first):
    return None
  for params in step_variables:
    if any(
      not isinstance(p, nn.StackedRow) or p.stack is not q.stack or p.index != params[0].index
      for p, q in zip(params, first)
    ):
      return None
  return [p.stack for p in first]


def row_buffer(shape, dtype, zeros: bool) -> tf.Tensor:
  """A fresh `[K, ...]` buffer for `write_row`: uninitialised, or `zeros`.

  `Empty` is a stateful op: never folded into a constant, nor shared between two
  buffers or two runs. XLA (within `for_xla()`) plans its own buffers: zeros.
  """
  if _for_xla:
    return tf.zeros(shape, dtype)
  return tf.raw_ops.Empty(shape=tf.constant(shape.as_list(), tf.int32), dtype=dtype, init=zeros)


def write_row(buffer: tf.Tensor, row: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
  """`buffer` with row `row` (a scalar) set to `value`, written in place.

  `InplaceUpdate` writes into its input: use each buffer (from `row_buffer`) and
  each result once, as the input of the next write, and no other op sees it
  change. XLA has no `InplaceUpdate`; within `for_xla()` this is a scatter, which
  XLA updates in place.
  """
  if _for_xla:
    return tf.tensor_scatter_nd_update(buffer, tf.reshape(row, [1, 1]), value[tf.newaxis])
  return tf.raw_ops.InplaceUpdate(x=buffer, i=tf.reshape(row, [1]), v=value[tf.newaxis])


class CompiledSteps:
  """The flow steps of one level as three functions traced once: forward, inverse, backward.

  ```none
  forward(x):  for k in 0 .. K-1:  x, ld_k = step(x; weights_k)      -> (x, sum ld_k)
  inverse(y):  for k in K-1 .. 0:  y, ld_k = step^-1(y; weights_k)   -> (y, sum ld_k)
  backward(y, dy, d_log_det): the reversible backward pass through the K steps,
      each step's input rebuilt from its output, then its gradients taken
  ```

  Log-dets are per example, `[...]` (the batch shape). Use `CompiledSteps.of(steps)`,
  which returns None for steps that do not share one structure.
  """

  def __init__(self, steps, step_variables=None):
    self._steps = list(steps)
    self._template = self._steps[0]
    # Walked once (`of` passes the walk it made).
    self._step_variables = step_variables or [nn.parameters(step) for step in self._steps]
    self._variables = self._step_variables[0]
    self._stacks = _stacks(self._step_variables)  # Or None: variables of their own.
    self._rows = [params[0].index for params in self._step_variables] if self._stacks else None
    self._trainable = [i for i, v in enumerate(self._variables) if v.trainable]
    self._forward = SharedTrace(self._forward_one)
    self._inverse = SharedTrace(self._inverse_one)
    self._backward = SharedTrace(self._backward_one)
    self._initialize = SharedTrace(self._initialize_one)
    self._flags = None  # Indices of the ActNorms' `initialized` flags: found on first use.

  @classmethod
  def of(cls, steps) -> 'CompiledSteps | None':
    """Steps sharing one structure as `CompiledSteps`, or None if they do not."""
    steps = list(steps)
    step_variables = [nn.parameters(step) for step in steps]
    if not steps or len({_signature(s, v) for s, v in zip(steps, step_variables)}) != 1:
      return None
    return cls(steps, step_variables)

  @property
  def steps(self) -> list:
    return list(self._steps)

  def _read_stacks(self) -> tuple[list, tf.Tensor]:
    """For stacked steps, each stacked variable read once (`[K, ...]` values), and the
    steps' rows in it (`[K]` indices).

    A strategy's distributed variables are read here, in the replica's context, so
    that the read (and the caller's tape) sees this replica's copy.
    """
    return [tf.convert_to_tensor(s) for s in self._stacks], tf.constant(self._rows, tf.int32)

  def _read(self) -> list | None:
    """For stacked steps, each stacked variable read once and unstacked (one pass's
    values of every step); None for steps with variables of their own."""
    if self._stacks is None:
      return None
    return [tf.unstack(stack) for stack in self._read_stacks()[0]]

  def _values(self, k: int, rows: list | None) -> list:
    """Step `k`'s variables: the arguments of its call (`rows`: what `_read` returned).

    Plain variables are passed as variables, not values: the call then reads them
    itself, and the caller's graph holds one call per step instead of a read per
    variable per step.
    """
    if rows is not None:
      return [unstacked[self._rows[k]] for unstacked in rows]
    return [
      tf.convert_to_tensor(v) if isinstance(v, tf.distribute.DistributedValues) else v
      for v in self._step_variables[k]
    ]

  def _per_example(self, log_det, x, event_ndims=3):
    return log_det + tf.zeros(tf.shape(x)[: x.shape.rank - event_ndims], x.dtype)

  def _forward_one(self, x, values):
    with nn.stand_ins(self._variables, values), nn.not_initializing():
      y, log_det = forward_and_log_det(self._template, x)
    return y, self._per_example(log_det, x)

  def _inverse_one(self, y, values):
    with nn.stand_ins(self._variables, values), nn.not_initializing():
      x, log_det = inverse_and_log_det(self._template, y)
    return x, self._per_example(log_det, y)

  def _initialize_one(self, x, values):
    """The step's forward pass with every ActNorm initialising on its input; returns
    `(y, log_det, {variable index: initialised value})`."""
    record = {}
    with nn.stand_ins(self._variables, values), nn.initializing_into(record):
      y, log_det = forward_and_log_det(self._template, x)
    indices = [i for i, v in enumerate(self._variables) if v.ref() in record]
    return y, self._per_example(log_det, x), {i: record[self._variables[i].ref()] for i in indices}

  def _backward_one(self, y, dy, d_log_det, values, row=None, buffers=None, xla=False):
    """Rebuilds the step's input from `y`; returns it, its gradient and the weights' (for
    stacked steps, `buffers` with the weights' gradients written into row `row`; `xla`,
    whether that is traced `for_xla()`, keys the trace). Layer by layer
    (`reversible_backward`): a coupling's network runs once."""
    position = {id(p): i for i, p in enumerate(self._variables)}

    def weights_of(part):
      return [values[position[id(p)]] for p in nn.parameters(part) if p.trainable]

    with nn.stand_ins(self._variables, values), nn.not_initializing():
      x, dx, pairs = reversible_backward(self._template, y, dy, d_log_det, weights_of)
    grads = {value.ref(): grad for value, grad in pairs}
    weights = [values[i] for i in self._trainable]
    weights = [tf.zeros_like(v) if grads.get(v.ref()) is None else grads[v.ref()] for v in weights]
    if buffers is not None:
      weights = [write_row(buffer, row, g) for buffer, g in zip(buffers, weights)]
    return x, dx, weights

  def _chain(self, step_fn, t, order):
    """`step_fn` through the steps in `order`, summing their log-dets."""
    log_det, rows = tf.zeros([], t.dtype), self._read()
    for k in order:
      t, step_log_det = step_fn(t, self._values(k, rows))
      log_det += step_log_det
    return t, log_det

  def forward(self, x, untaped=False):
    """`(y, log_det)` of every step in order, log-det per example.

    `untaped`: no tape records this pass (the reversible backward's forward). Stacked
    steps then run in one `tf.while_loop` over their rows: the graph holds one call
    whatever K. (Under a tape, a loop would keep every iteration's activations in
    accumulators; the steps are called one by one instead.)

    Inside `nn.data_dependent_init`, ActNorms not yet initialised initialise on
    their inputs, as the steps' own layers would: a step whose ActNorms all wait
    for it through the level's traced initialisation, a step with only some
    through its own layers, eagerly.
    """
    if nn.initializing():
      return self._initializing_forward(x)
    if (untaped or _untaped) and self._stacks is not None:
      return self._loop_forward(x)
    return self._chain(self._forward, x, range(len(self._steps)))

  def _over_rows(self, step_fn, state, reverse=False):
    """`state = step_fn(values, row, *state)` for each stacked step, first to last (last to
    first if `reverse`), in one `tf.while_loop`: one step's weights (gathered from the
    stacked values, read once) and activations at a time."""
    stacks, rows = self._read_stacks()
    count = len(self._rows)

    def body(i, *state):
      row = rows[count - 1 - i] if reverse else rows[i]
      return (i + 1, *step_fn([tf.gather(s, row) for s in stacks], row, *state))

    return tf.while_loop(
      lambda i, *_: i < count,
      body,
      (tf.constant(0), *state),
      maximum_iterations=count,
      parallel_iterations=1,  # Later iterations' gathers would run ahead, held at once.
    )[1:]

  def _loop_forward(self, x):
    """`forward` of stacked steps, in one loop over their rows."""
    return self._loop(self._forward, x, reverse=False)

  def _loop(self, step_fn, t, reverse):
    """`step_fn` through stacked steps in one loop over their rows, summing the log-dets."""

    def step(values, _, t, log_det):
      t, step_log_det = step_fn(t, values)
      return t, log_det + step_log_det

    return tuple(self._over_rows(step, (t, self._per_example(tf.zeros([], t.dtype), t)), reverse))

  def _flag_indices(self) -> list[int]:
    """Where the template's ActNorms' `initialized` flags are among its variables (each
    step's flags at the same places: the steps share one structure)."""
    if self._flags is None:
      index = {v.ref(): i for i, v in enumerate(self._variables)}
      layers = [m for m in self._template.submodules if isinstance(m, nn.ActNormLayer)]
      self._flags = [index[layer.initialized.ref()] for layer in layers]
    return self._flags

  def _initializing_forward(self, x):
    """The forward pass under `nn.data_dependent_init`. The flags are read once, and
    what the traced initialisation returns is assigned once the level is through: a
    stacked variable's K rows in one update (the steps never read each other's
    variables, so nothing waits on it)."""
    flags = self._flag_indices()
    done = nn.values_of([params[i] for params in self._step_variables for i in flags])
    log_det, rows = tf.zeros([], x.dtype), self._read()
    targets, values = [], []
    for k, step in enumerate(self._steps):
      pending = [not d for d in done[k * len(flags) : (k + 1) * len(flags)]]
      if pending and all(pending):
        x, step_log_det, initialised = self._initialize(x, self._values(k, rows))
        for i, value in [*initialised.items(), *((i, True) for i in flags)]:
          targets.append(self._step_variables[k][i])
          values.append(value)
      elif any(pending):
        x, step_log_det = forward_and_log_det(step, x)
        step_log_det = self._per_example(step_log_det, x)
      else:
        x, step_log_det = self._forward(x, self._values(k, rows))
      log_det += step_log_det
    nn.assign_each(targets, values)
    return x, log_det

  def inverse(self, y):
    """`(x, log_det)` of every step's inverse, last step first (within `untaped()`, stacked
    steps in one `tf.while_loop`, as `forward`)."""
    if _untaped and self._stacks is not None:
      return self._loop(self._inverse, y, reverse=True)
    return self._chain(self._inverse, y, reversed(range(len(self._steps))))

  def backward(self, y, dy, d_log_det, grads: dict, after=()):
    """Backpropagates `dy` (and `d_log_det` per example) from the last step to the first.

    Each step's input is rebuilt from its output, so no step's activations are
    kept beyond its own call. Adds every trained variable's gradient to `grads`
    (keyed by `variable.ref()`; a stacked variable's is its K steps' stacked);
    returns `(x, dx, done)`, `done` being tensors the next part's rebuild waits on.
    """
    if self._stacks is not None:
      return self._loop_backward(y, dy, d_log_det, grads, after)
    for k in reversed(range(len(self._steps))):
      with tf.control_dependencies([dy, *after]):
        y = tf.identity(y)
      values = self._values(k, None)
      y, dy, step_grads = self._backward(y, dy, d_log_det, values, None, None, False)
      for i, grad in zip(self._trainable, step_grads):
        key = self._step_variables[k][i].ref()
        grads[key] = grad if key not in grads else grads[key] + grad
      after = [dy, *step_grads]
    return y, dy, list(after)

  def _loop_backward(self, y, dy, d_log_det, grads: dict, after):
    """`backward` of stacked steps: one `tf.while_loop` over the rows, last first, each
    iteration writing its step's gradients into its rows of one buffer per trained
    stacked variable (no tape records the loop: nothing accumulates)."""
    unused = len(set(self._rows)) < self._stacks[0].shape[0]  # Rows no step here uses.
    with tf.control_dependencies([dy, *after]):  # Allocated as the backward gets here.
      y = tf.identity(y)
      buffers = [
        row_buffer(self._stacks[i].shape, self._stacks[i].dtype, zeros=unused)
        for i in self._trainable
      ]
    xla = bool(_for_xla)

    def step(values, row, y, dy, buffers):
      return self._backward(y, dy, d_log_det, values, row, buffers, xla)

    y, dy, buffers = self._over_rows(step, (y, dy, buffers), reverse=True)
    for i, grad in zip(self._trainable, buffers):
      key = self._stacks[i].ref()
      grads[key] = grad if key not in grads else grads[key] + grad
    return y, dy, [dy, *buffers]

  def tracing_count(self) -> int:
    """How many times its functions were traced (one step each, whatever K)."""
    functions = (self._forward, self._inverse, self._backward, self._initialize)
    return sum(fn.tracing_count() for fn in functions)


_CACHE = weakref.WeakKeyDictionary()
_per_layer = ThreadFlag()
_for_xla = ThreadFlag()
_untaped = ThreadFlag()


def untaped():
  """Within this context, the flow passes traced on this thread are not differentiated
  (scoring, sampling, encoding): stacked steps then run in one `tf.while_loop` per
  level, forward and inverse, so the graph holds one call per level whatever K.

  Gradients taken through them anyway are still right, only dearer: a tape keeps a
  loop's every iteration in accumulators.
  """
  return _untaped.on()


def for_xla():
  """Within this context, what is traced on this thread is for XLA (`jit_compile`):
  the reversible backward writes its stacked gradients with ops XLA compiles."""
  return _for_xla.on()


def per_layer():
  """Within this context, flows trace layer by layer: one graph with no function calls.

  For converters that need every op inline (TFLite has no call to a function
  kept out of line); the values are the same.
  """
  return _per_layer.on()


def per_layer_active() -> bool:
  """Whether a `per_layer()` context is open on this thread."""
  return bool(_per_layer)


def compiled_steps(owner, index: int, steps) -> CompiledSteps | None:
  """The `CompiledSteps` of `owner`'s level `index` (built once), or None if not compilable."""
  per_owner = _CACHE.setdefault(owner, {})
  if index not in per_owner:
    per_owner[index] = CompiledSteps.of(steps)
  return per_owner[index]
