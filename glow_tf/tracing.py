"""SharedTrace: one computation traced once and called many times inside a graph.

A deep flow repeats the same computation with different weights: K flow steps
per level, and the optimiser's and the Polyak average's update of each step's
variables. Traced inline, the graph (and its trace, and the optimisation before
its first run) grows with K. A `SharedTrace` is traced once per argument
signature and each use is one call op; the called functions are not inlined into
their caller (`_noinline`), or the graph handed to TensorFlow would again hold K
copies.
"""

import contextlib
import threading
from collections.abc import Callable

import tensorflow as tf

__all__ = ['SharedTrace', 'ThreadFlag']


class ThreadFlag:
  """A flag that is on within `with flag.on():` on this thread, and off elsewhere
  (or within `with flag.set(False):` inside it)."""

  def __init__(self):
    self._local = threading.local()

  def __bool__(self) -> bool:
    return getattr(self._local, 'on', False)

  def on(self):
    return self.set(True)

  @contextlib.contextmanager
  def set(self, value: bool):
    """Within `with flag.set(value):` on this thread, the flag is `value`."""
    previous = bool(self)
    self._local.on = value
    try:
      yield
    finally:
      self._local.on = previous


_NOT_INLINED = {'_noinline': True}


def _key(value, shapeless=False):
  """What a traced function's signature depends on, for one argument (of a tensor, its
  rank and dtype only when `shapeless`)."""
  if isinstance(value, (list, tuple)):
    return tuple(_key(v, shapeless) for v in value)
  if isinstance(value, dict):
    return tuple((k, _key(v, shapeless)) for k, v in sorted(value.items()))
  if isinstance(value, tf.Variable):
    return ('variable', tuple(value.shape.as_list()), value.dtype.name)
  if tf.is_tensor(value):
    shape = value.shape
    if shape.rank is not None:
      shape = (None,) * shape.rank if shapeless else tuple(shape.as_list())
    return ('tensor', shape, value.dtype.name)
  return ('python', value)


def _spec(value):
  """A tensor's spec with every dimension unknown (and a resource handle's without the
  variable's shape), so that one trace serves tensors and variables of any shape."""
  if not tf.is_tensor(value) or isinstance(value, tf.Variable):
    return value
  if value.dtype == tf.resource:
    return tf.TensorSpec([], tf.resource)
  return tf.TensorSpec(tf.TensorShape([None] * value.shape.rank), value.dtype)


class SharedTrace:
  """`fn` as a `tf.function`, each signature's concrete function kept and called directly.

  Calling the concrete function skips the polymorphic dispatch, a few
  milliseconds per call when the caller is itself being traced.
  """

  def __init__(self, fn: Callable, name: str | None = None, shapeless: bool = False):
    self._function = tf.function(fn, autograph=False, experimental_attributes=_NOT_INLINED)
    self._concrete = {}
    self._shapeless = shapeless
    self.__name__ = name or getattr(fn, '__name__', 'shared_trace')

  def __call__(self, *args):
    key = _key(args, self._shapeless)
    if key not in self._concrete:
      traced_with = tf.nest.map_structure(_spec, args) if self._shapeless else args
      self._concrete[key] = self._function.get_concrete_function(*traced_with)
    return self._concrete[key](*args)

  def tracing_count(self) -> int:
    """How many times `fn` was traced (one per distinct signature)."""
    return self._function.experimental_get_tracing_count()
