"""FlowChain: `tfb.Chain` whose results are shared within one call only."""

from tensorflow_probability.python.bijectors import chain as chain_lib

from glow_tf.bijectors.call_cache import CallCache, OneCallScope

__all__ = ['FlowChain']


class FlowChain(OneCallScope, chain_lib._Chain):  # pylint: disable=protected-access
  """`tfb.Chain` of glow_tf bijectors, with glow_tf's one-call cache.

  ```none
  forward:  y = b_0(b_1(... b_{n-1}(x)))     (the last bijector applies first)
  inverse:  x = b_{n-1}^-1(... b_0^-1(y))
  log|det J_forward| = sum of the parts' log-dets
  ```

  Everything is TFP's `tfb.Chain` (kwargs routed by part name, event-shape and
  event-ndims bookkeeping) except the cache: TFP's keeps a chain's result while
  its output tensor lives and hands it to later calls on the same input; this
  one shares results within one public call and forgets them after (see
  `CallCache`). `tfb.Chain` of glow_tf bijectors is the non-`CompositeTensor`
  `_Chain`, which this subclasses.
  """

  _cache = CallCache()
