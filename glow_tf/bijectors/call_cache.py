"""CallCache: bijector results shared within one public call, never across calls.

TFP's bijector cache keys results by the identity of the input tensor and keeps
them while the output tensor lives. That is how `log_prob` avoids running a
layer twice (`inverse`, then the log-det of the same tensor), but it also hands
back a result from an *earlier* call: keep `z = bijector.inverse(x)` alive, and
a later `log_prob(x)` under a `GradientTape`, or after an optimiser step, gets
the old `z` (no gradient, stale values; tfp#1190).

glow_tf keeps the sharing and drops the staleness. Every public method of a
glow_tf bijector, `FlowChain` or `GlowDistribution` runs inside `call_scope()`;
the outermost scope owns a fresh table of results, and the table is dropped
when that call returns. So within `flow.log_prob(x)` each coupling network runs
once, and nothing computed there is ever seen by another call, in eager mode or
inside one `tf.function`.
"""

import contextlib
import dataclasses
import threading
from typing import Any

import tensorflow as tf

__all__ = ['CallCache', 'OneCallScope', 'call_scope']

_state = threading.local()


def _results() -> dict | None:
  """The open scope's table of results, or None outside every scope."""
  return getattr(_state, 'results', None)


@contextlib.contextmanager
def call_scope():
  """Bijector results computed inside are shared inside, and forgotten on exit.

  Scopes nest: an inner scope joins the outermost one, whose table is dropped
  when it exits. glow_tf opens one around every public call of its bijectors
  and distributions; open one yourself to share results between several calls
  of a TFP composite you built around glow_tf bijectors, e.g.
  `with call_scope(): my_distribution.log_prob(x)`. Do not change weights
  inside it: results computed before the change would be reused after it.
  """
  outermost = _results() is None
  if outermost:
    _state.results = {}
  try:
    yield
  finally:
    if outermost:
      _state.results = None


def _key(tensor, direction: str, kwargs: dict[str, Any], bijector) -> tuple:
  """Identity of one evaluation: which bijector, which way, which input objects."""
  kwarg_ids = repr(tf.nest.map_structure(id, kwargs))  # The structure and its objects.
  return (id(bijector), direction, tuple(id(t) for t in tf.nest.flatten(tensor)), kwarg_ids)


@dataclasses.dataclass
class _Result:
  """An evaluation: its output (None until computed) and attributes (e.g. the log-det).

  It holds its input and kwargs, so the ids in its key cannot be reused while
  the scope lives.
  """

  input: Any
  kwargs: dict[str, Any]
  attributes: dict[str, Any]
  output: Any = None


class CallCache:
  """The interface TFP's `Bijector` calls (`forward`, `inverse`, `*_attributes`), one call long.

  A class attribute of a bijector (`_cache = CallCache(...)`); TFP binds it to
  the instance. Inside `call_scope()` an evaluation `x -> y` is stored both
  ways (`forward(x)` and `inverse(y)` then return the stored tensors) with one
  attribute dict shared by the two directions; outside every scope each call
  computes afresh.

  Args:
    forward_name, inverse_name: the bijector methods that compute each direction.
    greedy: those methods return `(output, attributes)` (glow_tf's log-det with
      the value, as `BijectorCacheWithGreedyAttrs` expects) instead of `output`.
  """

  def __init__(
    self,
    forward_name: str = '_forward',
    inverse_name: str = '_inverse',
    greedy: bool = False,
    bijector=None,
  ):
    self._names = {'forward': forward_name, 'inverse': inverse_name}
    self._greedy = greedy
    self._bijector = bijector

  def __get__(self, bijector, owner=None):
    if bijector is None:
      return self
    return CallCache(self._names['forward'], self._names['inverse'], self._greedy, bijector)

  def forward(self, x, **kwargs):
    return self._output(x, 'forward', kwargs)

  def inverse(self, y, **kwargs):
    return self._output(y, 'inverse', kwargs)

  def forward_attributes(self, x, **kwargs) -> dict[str, Any]:
    return self._result(x, 'forward', kwargs).attributes

  def inverse_attributes(self, y, **kwargs) -> dict[str, Any]:
    return self._result(y, 'inverse', kwargs).attributes

  def _result(self, tensor, direction: str, kwargs) -> _Result:
    results = _results()
    if results is None:
      return _Result(tensor, kwargs, {})
    return results.setdefault(
      _key(tensor, direction, kwargs, self._bijector), _Result(tensor, kwargs, {})
    )

  def _output(self, tensor, direction: str, kwargs):
    result = self._result(tensor, direction, kwargs)
    if result.output is None:
      output = getattr(self._bijector, self._names[direction])(tensor, **kwargs)
      if self._greedy:
        output, attributes = output
        result.attributes.update(attributes)
      result.output = output
      results = _results()
      if results is not None:  # The other direction maps the output back to the input.
        other = 'inverse' if direction == 'forward' else 'forward'
        results[_key(output, other, kwargs, self._bijector)] = _Result(
          output, kwargs, result.attributes, tensor
        )
    return result.output


class OneCallScope:
  """Mixin: every public method of a TFP bijector or distribution runs in `call_scope()`.

  TFP enters `_name_and_control_scope` at the start of every public method
  (`forward`, `inverse`, their log-dets, `log_prob`, `sample`, ...); entering
  `call_scope()` there makes the call the lifetime of every result it shares.
  """

  @contextlib.contextmanager
  def _name_and_control_scope(self, *args, **kwargs):
    with call_scope(), super()._name_and_control_scope(*args, **kwargs) as scope:
      yield scope
