"""Glow's network pieces: convolutions, ActNorm, the coupling network, the classifier head.

Every weight is a plain named `tf.Variable` on a `tf.Module`, so a flow's
`trainable_variables` finds all of them (Keras 3 layers on a `tf.Module` are
invisible to it).
"""

import contextlib
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tensorflow_probability.python.internal import prefer_static as ps

from glow_tf.tracing import ThreadFlag

__all__ = [
  'ActNormLayer',
  'ClassifierHead',
  'Conv2D',
  'CouplingNetwork',
  'StackedRow',
  'StepStack',
  'ZeroConv2D',
  'apply_to_images',
  'assign_each',
  'channel_moments',
  'data_dependent_init',
  'initial_value',
  'initializing',
  'initializing_into',
  'not_initializing',
  'parameters',
  'read',
  'stand_ins',
  'to_be_restored',
  'trained',
  'values_of',
]

# Official Glow multiplies zero-initialised outputs by exp(3 * logs).
LOGSCALE_FACTOR = 3.0

_ddi = ThreadFlag()
_restoring = ThreadFlag()
_stand_ins = threading.local()
_init_record = threading.local()


@contextlib.contextmanager
def stand_ins(variables, values):
  """Within this context, layers compute with `values[i]` wherever they read `variables[i]`.

  Every layer of glow_tf reads its weights through `read`, so a computation traced
  once for one module serves any other module of the same structure: pass the
  other's variable values as arguments and trace the first under `stand_ins` (as
  Keras 3's `stateless_call`). `MultiScaleFlow` traces one flow step per level
  this way and calls it K times.
  """
  variables, values = list(variables), list(values)
  if len(variables) != len(values):
    raise ValueError(
      f'stand_ins needs one value per variable; got {len(values)} for {len(variables)}.'
    )
  previous = getattr(_stand_ins, 'values', None)
  _stand_ins.values = {**(previous or {}), **{v.ref(): t for v, t in zip(variables, values)}}
  try:
    yield
  finally:
    _stand_ins.values = previous


def read(variable):
  """The value a layer computes with for `variable`: itself (a `StackedRow`'s row), or its
  stand-in (`stand_ins`)."""
  values = getattr(_stand_ins, 'values', None)
  if values and variable.ref() in values:
    return values[variable.ref()]
  return variable.value() if isinstance(variable, StackedRow) else variable


def to_be_restored():
  """Within this context, large variables start as uninitialised memory instead of
  their random or zero initial values (`initial_value`): for a state that a checkpoint
  restore overwrites before anything reads it. A resume then skips drawing the
  kernels' normals, stacking them and zeroing the optimiser's moments, work the
  restore would throw away. The caller must restore every such variable or raise
  (`TrainState.create(..., restoring=True)` and `TrainState.restore` see to it).
  """
  return _restoring.on()


def initial_value(make: Callable[[], tf.Tensor], shape, dtype) -> tf.Tensor:
  """`make()`, the initial value of a variable of `shape` and `dtype`; within
  `to_be_restored`, an uninitialised tensor of that shape instead (no work, no
  memory touched)."""
  if _restoring:
    return tf.raw_ops.Empty(shape=tf.TensorShape(shape).as_list(), dtype=dtype, init=False)
  return make()


class StackedRow:
  """Row `index` of a `[K, ...]` variable, where a layer would hold a variable of its own.

  Built by `StepStack.build`: the K flow steps of a level create their variables
  as rows, and each of their layer's variables is held once, stacked over the K
  steps, by the `StepStack` (a `tf.Module`, so checkpoints, optimisers and
  `trainable_variables` see the stacked variables, not the rows). A deep flow then
  has ~50 variables per level instead of ~50 per step: tracing, the optimiser's
  update and start-up stop growing with K.

  Layers read it through `read` (or `tf.convert_to_tensor`): its row, a gather.
  It reads and assigns like a variable (`numpy`, `read_value`, `assign`), so a
  layer's code does not change; `ref()` is the row itself.
  """

  def __init__(self, initial_value, name: str, trainable: bool):
    self._initial = initial_value
    self.name, self.trainable = name, trainable
    self.stack, self.index = None, None

  def bind(self, stack: tf.Variable, index: int) -> None:
    self.stack, self.index = stack, index
    self._initial = None

  @property
  def shape(self) -> tf.TensorShape:
    return self._initial.shape if self.stack is None else self.stack.shape[1:]

  @property
  def dtype(self) -> tf.DType:
    return (self._initial if self.stack is None else self.stack).dtype

  def ref(self) -> 'StackedRow':
    return self

  def value(self) -> tf.Tensor:
    """The row: `tf.gather` of the stacked variable (its gradient is sparse, one row)."""
    if self.stack is None:
      return self._initial
    return tf.gather(self.stack, self.index)

  read_value = value

  def numpy(self):
    return self.value().numpy()

  def assign(self, value) -> None:
    """Sets the row (in cross-replica context under a strategy: every copy)."""
    assign_each([self], [value])

  def __repr__(self):
    return f'<StackedRow {self.name!r} row {self.index} of {getattr(self.stack, "name", None)}>'


tf.register_tensor_conversion_function(
  StackedRow, lambda row, dtype=None, name=None, as_ref=False: row.value()
)


def parameters(module: tf.Module) -> list:
  """`module`'s variables and `StackedRow`s, in `tf.Module` order (its rows stand for
  variables it does not own)."""
  found = module._flatten(predicate=lambda v: isinstance(v, (tf.Variable, StackedRow)))  # pylint: disable=protected-access
  return list(found)


def _held_by(param) -> tf.Variable:
  """The variable holding `param`'s value: its stacked variable for a row, else itself."""
  return param.stack if isinstance(param, StackedRow) else param


def trained(module: tf.Module) -> list[tf.Variable]:
  """The variables training updates for `module`: its own trainable ones, and the
  stacked variables behind its trainable rows (each once)."""
  seen, found = set(), []
  for p in parameters(module):
    if not p.trainable:
      continue
    variable = _held_by(p)
    if variable.ref() not in seen:
      seen.add(variable.ref())
      found.append(variable)
  return found


def values_of(params) -> list[np.ndarray]:
  """Each of `params`' values (variables or `StackedRow`s) as a NumPy copy, eagerly:
  one read per variable, however many of its rows are asked for (a deep flow's
  ActNorm flags are hundreds of rows of a few stacked variables)."""
  read, found = {}, []
  for p in params:
    key = _held_by(p).ref()
    if key not in read:
      read[key] = np.array(_held_by(p).numpy(), copy=True)
    found.append(read[key][p.index] if isinstance(p, StackedRow) else read[key])
  return found


def assign_each(params, values) -> None:
  """Assigns each of `params` its value, eagerly: a variable's rows in one scatter
  (under a strategy, in cross-replica context: every copy)."""
  rows = {}
  for p, value in zip(params, values):
    if isinstance(p, StackedRow):
      rows.setdefault(p.stack.ref(), {})[p.index] = tf.convert_to_tensor(value, p.dtype)
    else:
      p.assign(value)
  for ref, by_index in rows.items():
    indices = sorted(by_index)
    ref.deref().scatter_update(
      tf.IndexedSlices(tf.stack([by_index[i] for i in indices]), tf.constant(indices))
    )


def _stacked_name(names: list[str], scope: str) -> str:
  """The name of the variable stacking variables `names` (one per step), under `scope`:
  their path below it, without the first part if that differs by step (the step's own
  scope): `glow/level_0/step_3/coupling/kernel` -> `coupling/kernel`."""
  prefix = f'{scope}/' if scope else ''
  parts = [n[len(prefix) :].split('/') if n.startswith(prefix) else n.split('/') for n in names]
  if len(parts[0]) > 1 and len({p[0] for p in parts}) == len(parts) > 1:
    return '/'.join(parts[0][1:])
  return '/'.join(parts[0])


class StepStack(tf.Module):
  """The variables of K flow steps of one structure, each held once as `[K, ...]`.

  `StepStack.build(make_step, K)` builds the K steps with their variables as
  `StackedRow`s (a `tf.variable_creator_scope`: layers are built as usual), then
  stacks each variable's K initial values into one variable (created in the
  caller's scope, so under a strategy it is mirrored). `stacked` lists them in
  the layers' creation order.
  """

  def __init__(self, rows: list[list[StackedRow]], name: str = 'steps'):
    scope = tf.get_current_name_scope()
    super().__init__(name=name)
    first = rows[0]
    for k, step in enumerate(rows):
      if [(r.shape, r.dtype, r.trainable) for r in step] != [
        (r.shape, r.dtype, r.trainable) for r in first
      ]:
        raise ValueError(
          f'StepStack needs steps of one structure; step {k} has variables '
          f'{[(r.name, r.shape.as_list()) for r in step]}, step 0 '
          f'{[(r.name, r.shape.as_list()) for r in first]}.'
        )
    with self.name_scope:
      self.stacked = [
        tf.Variable(
          initial_value(
            lambda i=i: tf.stack([step[i].value() for step in rows]),
            [len(rows)] + first[i].shape.as_list(),
            first[i].dtype,
          ),
          trainable=first[i].trainable,
          name=_stacked_name([step[i].name for step in rows], scope),
        )
        for i in range(len(first))
      ]
    for k, step in enumerate(rows):
      for row, stack in zip(step, self.stacked):
        row.bind(stack, k)

  @classmethod
  def build(cls, make_step: Callable[[int], tf.Module], count: int, name: str = 'steps'):
    """`(steps, stack)`: `make_step(k)` for k < `count`, their variables held by `stack`."""
    rows, steps = [], []
    for k in range(count):
      rows.append([])

      def creator(next_creator, **kwargs):
        del next_creator
        initial = kwargs['initial_value']
        initial = initial() if callable(initial) else initial
        initial = tf.convert_to_tensor(initial, kwargs.get('dtype'))
        trainable = kwargs.get('trainable')
        scope = tf.get_current_name_scope()
        row = StackedRow(
          initial,
          f'{scope}/{kwargs.get("name") or "Variable"}',
          True if trainable is None else bool(trainable),
        )
        rows[-1].append(row)
        return row

      with tf.variable_creator_scope(creator):
        steps.append(make_step(k))
    return steps, cls(rows, name=name)


@contextlib.contextmanager
def data_dependent_init():
  """Within this context, each ActNorm not yet initialised initialises on its input.

  Initialisation is an explicit pass (see `glow_tf.initialize`), never a hidden
  `tf.cond` in the model: the flag is read in Python, so functions traced outside
  the context hold no initialisation logic. It must run eagerly.
  """
  if not tf.executing_eagerly():
    raise RuntimeError(
      'ActNorm data-dependent initialisation runs eagerly; got a call '
      'inside tf.function or a graph. Call glow_tf.initialize outside it.'
    )
  with _ddi.on():
    yield


def not_initializing():
  """Within this context, no ActNorm initialises, even inside `data_dependent_init`
  (for functions traced in it that compute with initialised weights)."""
  return _ddi.set(False)


def initializing() -> bool:
  """Whether ActNorms initialise on their inputs now (inside `data_dependent_init`)."""
  return bool(_ddi)


@contextlib.contextmanager
def initializing_into(record: dict):
  """Within this context, each ActNorm initialises on its input without assigning anything.

  For a function traced under `stand_ins`: every ActNorm read through it is taken
  as pending; its new `log_scale` and `shift` (the values `data_dependent_init`
  would assign) go to `record`, keyed by `variable.ref()`, and stand in for its
  variables for the rest of the context, so the layers after it see its
  initialised output. The caller assigns `record` to whichever module's variables
  the trace stood for: `CompiledSteps` initialises a level's K steps with one
  trace this way.
  """
  if getattr(_stand_ins, 'values', None) is None:
    raise RuntimeError('initializing_into needs an enclosing stand_ins context.')
  previous = getattr(_init_record, 'record', None)
  _init_record.record = record
  try:
    yield
  finally:
    _init_record.record = previous


def apply_to_images(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
  """Applies `fn`, defined on `[N, H, W, C]`, to `x` of shape `[..., H, W, C]`."""
  if x.shape.rank == 4:
    return fn(x)
  shape = ps.shape(x)
  y = fn(tf.reshape(x, ps.concat([[-1], shape[-3:]], axis=0)))
  return tf.reshape(y, ps.concat([shape[:-3], ps.shape(y)[-3:]], axis=0))


class ActNormLayer(tf.Module):
  """Per-channel affine map `y = exp(log_scale) * x + shift`, initialised from data.

  On its first input inside `data_dependent_init()`, it sets `log_scale` and
  `shift` so that the output has per-channel mean 0 and standard deviation 1 over
  the batch and spatial positions. A channel with zero variance keeps scale 1.
  The `initialized` flag is a variable, saved in checkpoints and exports, so a
  restored model is never initialised again.
  """

  def __init__(self, num_channels: int, dtype=tf.float32, name: str = 'actnorm'):
    super().__init__(name=name)
    with self.name_scope:
      self.log_scale = tf.Variable(tf.zeros([num_channels], dtype), name='log_scale')
      self.shift = tf.Variable(tf.zeros([num_channels], dtype), name='shift')
      self.initialized = tf.Variable(False, trainable=False, name='initialized')

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    if self.pending():
      self.initialize(x)
    return x * tf.exp(read(self.log_scale)) + read(self.shift)

  def pending(self) -> bool:
    """Whether this layer initialises on its next input (see `initializing_into`)."""
    if getattr(_init_record, 'record', None) is not None:
      return True
    return initializing() and not self.is_initialized()

  def is_initialized(self) -> bool:
    """The flag's value, read eagerly (`bool()` of a distributed variable is always True)."""
    return bool(values_of([self.initialized])[0])

  def inverse(self, y: tf.Tensor) -> tf.Tensor:
    return (y - read(self.shift)) * tf.exp(-read(self.log_scale))

  def initialize(self, x: tf.Tensor) -> None:
    """Sets scale and shift so that `self(x)` has per-channel mean 0 and std 1
    (inside `initializing_into`: records them instead)."""
    x = tf.convert_to_tensor(x, self.log_scale.dtype)
    mean, variance = channel_moments(x)
    tiny = tf.constant(1e-12, variance.dtype)
    log_scale = tf.where(
      variance > tiny, -0.5 * tf.math.log(tf.maximum(variance, tiny)), tf.zeros_like(variance)
    )
    record = getattr(_init_record, 'record', None)
    for variable, value in ((self.log_scale, log_scale), (self.shift, -mean * tf.exp(log_scale))):
      if record is None:
        variable.assign(value)
      else:
        record[variable.ref()] = _stand_ins.values[variable.ref()] = value
    if record is None:
      self.initialized.assign(True)


def channel_moments(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-channel mean and variance of `x` `[..., C]` over all its other axes.

  Summed in two stages, each image's positions and then across images: the same
  values as `tf.nn.moments`, with ~10x less rounding error (1.5e-7 against 1.4e-6
  on a `[64, 16, 16, 512]` activation, against float64) and ~1.5x faster here
  (10-11 against 15-17 ms), for TensorFlow's CPU reduction over a tensor's
  leading axis is slow. Activations with fewer than 3 axes, or unknown
  inner sizes, use `tf.nn.moments`.
  """
  inner = x.shape[1:-1].as_list()
  if x.shape.rank < 3 or None in inner:
    return tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
  grouped = tf.reshape(x, [-1, int(np.prod(inner)), x.shape[-1]])
  mean = tf.reduce_mean(tf.reduce_mean(grouped, 1), 0)
  variance = tf.reduce_mean(tf.reduce_mean(tf.math.squared_difference(grouped, mean), 1), 0)
  return mean, variance


def dims(x: tf.Tensor):
  """The dims of `x`: Python ints where static, scalar tensors where not (no shape ops
  are created for what is known)."""
  return [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape.as_list())]


def _conv_by_taps(x, kernel):
  """3x3 'SAME' conv as one matrix product to all 9 taps, then a shift-and-add of the taps."""
  size, _, in_channels, out_channels = kernel.shape
  taps = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [in_channels, size * size * out_channels])
  products = tf.reshape(
    tf.reshape(x, [-1, in_channels]) @ taps,
    tf.concat([tf.shape(x)[:3], [size * size * out_channels]], 0),
  )
  return _sum_of_shifted_taps(products, size)


def _sum_of_shifted_taps(products, size):
  """`out[n, i, j] = sum over taps (dy, dx) of products[n, i + dy - h, j + dx - h, tap]`.

  `products` holds the taps side by side on its last axis, `h = size // 2`, and
  positions outside the image count as zero. The gradient is written out: each
  tap's is the output's gradient shifted back, padded, and the taps' are
  concatenated, so it is one tensor the size of `products` (autodiff of the
  slices would build a zero-padded copy of all of `products` per tap and add
  the nine).
  """
  half = size // 2
  _, height, width, taps_channels = dims(products)
  out_channels = taps_channels // (size * size)
  offsets = [(dy, dx) for dy in range(size) for dx in range(size)]

  def windows(t, at, channels):
    """`t` zero-padded by `half` on each side, then its image-sized window at each of
    the offsets `at`, with the channels `channels(k)` of the k-th."""
    t = tf.pad(t, [[0, 0], [half, half], [half, half], [0, 0]])
    return [t[:, dy : dy + height, dx : dx + width, channels(k)] for k, (dy, dx) in enumerate(at)]

  @tf.custom_gradient
  def shift_add(products):
    tap = lambda k: slice(k * out_channels, (k + 1) * out_channels)
    out = tf.add_n(windows(products, offsets, tap))

    def grad(d_out):  # Tap (dy, dx) moved its products by (dy - h, dx - h): move them back.
      back = [(size - 1 - dy, size - 1 - dx) for dy, dx in offsets]
      return tf.concat(windows(d_out, back, lambda k: slice(None)), axis=-1)

    return out, grad

  return shift_add(products)


def conv2d_same(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """Stride-1 'SAME' convolution of `[N, H, W, C]` images, in its fastest CPU formulation.

  The same function three ways, chosen by shape (measured on 2 CPU cores, forward
  + backward, with glow_tf's shapes): a 1x1 kernel is a matrix product over
  channels (MatMul's gradients beat Conv2D's at small spatial sizes); a 3x3
  kernel whose output is narrow (9 * C_out <= C_in, e.g. Glow's last coupling
  layer, 400 -> 12) is one wide matrix product to the 9 taps and a shift-add
  (2x faster than Conv2D there); anything else is Conv2D.
  """
  size, _, in_channels, out_channels = kernel.shape
  if x.shape[0] == 0:  # TF's CPU Conv2D would give it the input's channel count.
    return tf.zeros([*dims(x)[:3], out_channels], x.dtype)
  if size == 1:
    flat = tf.reshape(x, [-1, in_channels]) @ tf.reshape(kernel, [in_channels, out_channels])
    batch, height, width, _ = dims(x)
    return tf.reshape(flat, [batch, height, width, out_channels])
  if size * size * out_channels <= in_channels:
    return _conv_by_taps(x, kernel)
  return tf.nn.conv2d(x, kernel, strides=1, padding='SAME')


class Conv2D(tf.Module):
  """'SAME' convolution without bias (an ActNorm follows it); weights ~ N(0, 0.05²)."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    seed=(0, 0),
    dtype=tf.float32,
    name: str = 'conv',
  ):
    super().__init__(name=name)
    with self.name_scope:
      shape = [kernel_size, kernel_size, in_channels, out_channels]
      self.kernel = tf.Variable(
        initial_value(
          lambda: 0.05 * tf.random.stateless_normal(shape, seed=seed, dtype=dtype), shape, dtype
        ),
        name='kernel',
      )

  def __call__(self, x: tf.Tensor, scale=None) -> tf.Tensor:
    """conv(x); with `scale` (per output channel), conv(x) * scale, folded into the kernel.

    Computes in `x`'s dtype: the kernel (and its scale) are cast to it.
    """
    kernel = read(self.kernel) if scale is None else read(self.kernel) * scale
    return conv2d_same(x, tf.cast(kernel, x.dtype))


class ZeroConv2D(tf.Module):
  """'SAME' convolution initialised to output zeros: `(conv(x, W) + b) * exp(3 logs)`.

  W, b and logs all start at zero, so the layer it ends computes the identity
  (a coupling) or a standard normal (a prior) at initialisation.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    dtype=tf.float32,
    compute_dtype=None,
    name: str = 'zero_conv',
  ):
    super().__init__(name=name)
    self.compute_dtype = tf.as_dtype(compute_dtype or dtype)
    with self.name_scope:
      self.kernel = tf.Variable(
        tf.zeros([kernel_size, kernel_size, in_channels, out_channels], dtype), name='kernel'
      )
      self.bias = tf.Variable(tf.zeros([out_channels], dtype), name='bias')
      self.logs = tf.Variable(tf.zeros([out_channels], dtype), name='logs')

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    """The convolution in `compute_dtype`; its output, bias and scale in the variables' dtype.

    In ActNorm's data-dependent init (`initializing()`), a kernel still all zeros
    (a new model's) skips the convolution: its output is exactly zero for finite
    inputs, and a coupling network's last layer is ~20% of a Glow step's FLOPs.
    """
    scale = tf.exp(LOGSCALE_FACTOR * read(self.logs))  # Folded: conv(x, W * s) + b * s.
    x = tf.cast(x, self.compute_dtype)
    kernel = tf.cast(read(self.kernel) * scale, self.compute_dtype)
    if initializing():
      y = tf.cond(
        tf.reduce_any(tf.not_equal(kernel, 0)),
        lambda: conv2d_same(x, kernel),
        lambda: tf.zeros([*dims(x)[:3], kernel.shape[-1]], kernel.dtype),
      )
    else:
      y = conv2d_same(x, kernel)
    return tf.nn.bias_add(tf.cast(y, scale.dtype), read(self.bias) * scale)


class CouplingNetwork(tf.Module):
  """Glow's coupling network: conv3x3 → ActNorm → ReLU → conv1x1 → ActNorm → ReLU → zero conv3x3.

  With `compute_dtype` (e.g. bfloat16) its convolutions and hidden activations are
  computed in that type; its variables, ActNorms' statistics and output stay in
  `dtype`. The output is a function of the input alone, so a coupling's inverse
  recomputes it exactly.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    width: int,
    seed=(0, 0),
    dtype=tf.float32,
    compute_dtype=None,
    name: str = 'network',
  ):
    super().__init__(name=name)
    self.compute_dtype = tf.as_dtype(compute_dtype or dtype)
    seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 2)
    with self.name_scope:
      self.conv_in = Conv2D(in_channels, width, 3, seed=seeds[0], dtype=dtype, name='conv_in')
      self.actnorm_in = ActNormLayer(width, dtype=dtype, name='actnorm_in')
      self.conv_hidden = Conv2D(width, width, 1, seed=seeds[1], dtype=dtype, name='conv_hidden')
      self.actnorm_hidden = ActNormLayer(width, dtype=dtype, name='actnorm_hidden')
      self.conv_out = ZeroConv2D(
        width, out_channels, 3, dtype=dtype, compute_dtype=compute_dtype, name='conv_out'
      )

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return apply_to_images(self._call, x)

  def _call(self, x):
    h = _conv_actnorm_relu(tf.cast(x, self.compute_dtype), self.conv_in, self.actnorm_in)
    h = _conv_actnorm_relu(h, self.conv_hidden, self.actnorm_hidden)
    return self.conv_out(h)


def _conv_actnorm_relu(x, conv: Conv2D, actnorm: ActNormLayer):
  """relu(actnorm(conv(x))), with ActNorm's scale folded into the kernel:
  relu(conv(x, W * s) + b), one pass over the wide activation instead of three."""
  if actnorm.pending():  # The convolution once: its output gives the statistics.
    h = conv(x)
    actnorm.initialize(tf.cast(h, actnorm.shift.dtype))  # Statistics in full precision.
    scale, shift = tf.exp(read(actnorm.log_scale)), read(actnorm.shift)
    return tf.nn.relu(h * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype))
  scale, shift = tf.exp(read(actnorm.log_scale)), read(actnorm.shift)
  return tf.nn.relu(tf.nn.bias_add(conv(x, scale=scale), tf.cast(shift, x.dtype)))


class ClassifierHead(tf.Module):
  """Class logits from the top latent: a zero-initialised linear map of its spatial mean.

  The official code trains it with a weighted cross-entropy beside the NLL of a
  class-conditional model, so that the top latent carries the label.
  """

  def __init__(
    self, num_channels: int, num_classes: int, dtype=tf.float32, name: str = 'classifier'
  ):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(tf.zeros([num_channels, num_classes], dtype), name='kernel')
      self.bias = tf.Variable(tf.zeros([num_classes], dtype), name='bias')

  def __call__(self, z_top: tf.Tensor) -> tf.Tensor:
    """Logits `[..., num_classes]` for a top latent `[..., h, w, c]`."""
    return tf.linalg.matmul(tf.reduce_mean(z_top, axis=[-3, -2]), read(self.kernel)) + read(
      self.bias
    )
