"""Tests of CompiledSteps: a level's K flow steps traced once give the per-layer values."""

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf.bijectors import CompiledSteps
from tests import checks

TINY = dict(image_shape=(8, 8, 2), levels=2, depth=3, width=8)


def images(batch=5, dtype='float32', seed=0):
  rng = np.random.RandomState(seed)
  return tf.constant((rng.rand(batch, 8, 8, 2) - 0.5).astype(dtype))


def twin_flows(**overrides):
  """The same weights (initialised and perturbed) as a compiled and a per-layer flow."""
  config = glow_tf.GlowConfig(**{**TINY, **overrides})
  compiled = glow_tf.build_glow(config)
  per_layer = glow_tf.build_glow(config.replace(compile_steps=False))
  x = images(dtype=config.dtype)
  glow_tf.initialize(compiled, x)
  checks.perturb(compiled, 0.05, seed=3)
  assert [v.name for v in compiled.variables] == [v.name for v in per_layer.variables]
  for a, b in zip(compiled.variables, per_layer.variables):
    b.assign(a)
  return compiled, per_layer, x


def test_compiled_steps_are_used_and_per_layer_flow_has_none():
  compiled, per_layer, _ = twin_flows()
  for level in range(TINY['levels']):
    assert isinstance(compiled.multiscale.compiled_steps(level), CompiledSteps)
    assert per_layer.multiscale.compiled_steps(level) is None


def actnorm_values(flow):
  layers = [m for m in flow.submodules if isinstance(m, glow_tf.nn.ActNormLayer)]
  return [(v.name, v.numpy()) for layer in layers for v in (layer.log_scale, layer.shift)]


@pytest.mark.parametrize('dtype, rtol', [('float32', 1e-5), ('float64', 1e-12)])
def test_initialisation_traced_per_level_gives_the_per_layer_values(dtype, rtol):
  config = glow_tf.GlowConfig(**TINY, dtype=dtype)
  compiled = glow_tf.build_glow(config)
  per_layer = glow_tf.build_glow(config.replace(compile_steps=False))
  x = images(dtype=dtype)
  assert glow_tf.initialize(compiled, x) == glow_tf.initialize(per_layer, x)
  # One trace per level initialised every step; no step ran layer by layer.
  for level in range(TINY['levels']):
    assert compiled.multiscale.compiled_steps(level)._initialize.tracing_count() == 1
  a, b = actnorm_values(compiled), actnorm_values(per_layer)
  assert [name for name, _ in a] == [name for name, _ in b]
  for (name, value_a), (_, value_b) in zip(a, b):
    np.testing.assert_allclose(value_a, value_b, rtol=rtol, atol=rtol, err_msg=name)
  assert not np.allclose(a[-1][1], 0)  # The values were set, not left at zero.


def test_initialisation_of_a_partly_initialised_level():
  """A step with only some ActNorms pending runs its own layers; the others keep theirs."""
  config = glow_tf.GlowConfig(**TINY, dtype='float64')
  compiled = glow_tf.build_glow(config)
  per_layer = glow_tf.build_glow(config.replace(compile_steps=False))
  x = images(dtype='float64')
  for flow in (compiled, per_layer):
    glow_tf.initialize(flow, x)
    checks.perturb(flow, 0.05, seed=3)
    # Undo the init of one ActNorm of the level's second step, and of all of its third's.
    steps = flow.multiscale.steps(0)
    layers = [
      [m for m in step.submodules if isinstance(m, glow_tf.nn.ActNormLayer)] for step in steps
    ]
    for layer in [layers[1][0], *layers[2]]:
      layer.initialized.assign(False)
  before = actnorm_values(compiled)
  assert glow_tf.initialize(compiled, x) == glow_tf.initialize(per_layer, x) == 4
  after, expected = actnorm_values(compiled), actnorm_values(per_layer)
  changed = [name for (name, old), (_, new) in zip(before, after) if not np.array_equal(old, new)]
  assert len(changed) == 8, changed  # Four layers' scale and shift.
  for (name, value_a), (_, value_b) in zip(after, expected):
    np.testing.assert_allclose(value_a, value_b, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
  'overrides, rtol',
  [
    ({}, 1e-5),
    ({'dtype': 'float64'}, 1e-12),
    ({'coupling': 'additive', 'permutation': 'shuffle', 'dtype': 'float64'}, 1e-12),
    ({'permutation': 'reverse', 'num_classes': 3, 'dtype': 'float64'}, 1e-12),
  ],
)
def test_same_values_as_per_layer(overrides, rtol):
  compiled, per_layer, x = twin_flows(**overrides)
  kwargs = glow_tf.conditional_kwargs(
    tf.constant([0, 1, 2, 0, 1]) if 'num_classes' in overrides else None
  )

  def log_prob_and_grads(flow):
    with tf.GradientTape() as tape:
      log_prob = flow.log_prob(x, bijector_kwargs=kwargs)
      loss = -tf.reduce_mean(log_prob)
    grads = tape.gradient(loss, flow.trainable_variables)
    return log_prob, [tf.convert_to_tensor(g) for g in grads]  # Per layer, rows are sparse.

  lp_c, grads_c = log_prob_and_grads(compiled)
  lp_p, grads_p = log_prob_and_grads(per_layer)
  np.testing.assert_allclose(lp_c, lp_p, rtol=rtol)
  assert len(grads_c) == len(grads_p)
  assert all(g is not None for g in grads_c)
  for v, a, b in zip(compiled.trainable_variables, grads_c, grads_p):
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, atol=rtol, err_msg=v.name)

  # Traced, with an unknown batch: the same again.
  spec = tf.TensorSpec([None, 8, 8, 2], x.dtype)
  traced = tf.function(
    lambda x: compiled.log_prob(x, bijector_kwargs=kwargs), input_signature=[spec]
  )
  np.testing.assert_allclose(traced(x), lp_p, rtol=rtol)

  # Samples from one seed (at 0.7: the perturbed weights' inverse overflows float32
  # on some draws at 1.0), and the round trip image -> latent -> image.
  label = tf.constant([1, 2]) if 'num_classes' in overrides else None
  s_c = glow_tf.sample(compiled, 2, temperature=0.7, seed=(7, 8), label=label)
  s_p = glow_tf.sample(per_layer, 2, temperature=0.7, seed=(7, 8), label=label)
  assert np.all(np.isfinite(s_p))
  np.testing.assert_allclose(s_c, s_p, rtol=rtol, atol=rtol)
  z = compiled.bijector.inverse(x, **kwargs)
  np.testing.assert_allclose(z, per_layer.bijector.inverse(x, **kwargs), rtol=rtol, atol=rtol)
  np.testing.assert_allclose(compiled.bijector.forward(z, **kwargs), x, atol=100 * rtol)
  np.testing.assert_allclose(
    compiled.bijector.inverse_log_det_jacobian(x, event_ndims=3, **kwargs),
    per_layer.bijector.inverse_log_det_jacobian(x, event_ndims=3, **kwargs),
    rtol=rtol,
  )


def outer_ops(depth: int, compile_steps: bool, backward='tape') -> tuple[int, int]:
  """Ops in the graph of a log_prob gradient at `depth` (the tape's, or the reversible
  backward's), and the steps' tracing count."""
  from glow_tf.training import reversible
  from glow_tf.training.loss import Loss

  config = glow_tf.GlowConfig(
    **{**TINY, 'depth': depth, 'width': 4, 'compile_steps': compile_steps}
  )
  flow = glow_tf.build_glow(config)
  glow_tf.initialize(flow, images())
  variables = flow.trainable_variables

  @tf.function(autograph=False)
  def grads(x):
    if backward == 'reversible':
      return reversible.loss_and_gradients(flow, x, Loss(256), variables)[2]
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(flow.log_prob(x))
    return tape.gradient(loss, variables)

  graph = grads.get_concrete_function(tf.TensorSpec([4, 8, 8, 2])).graph
  traced = [flow.multiscale.compiled_steps(level) for level in range(config.levels)]
  count = sum(steps.tracing_count() for steps in traced) if compile_steps else 0
  return len(graph.get_operations()), count


def test_trace_does_not_grow_with_depth():
  ops_2, traces_2 = outer_ops(2, compile_steps=True)
  ops_32, traces_32 = outer_ops(32, compile_steps=True)
  # One step per level traced for ActNorm's init and one for the forward pass (its
  # gradient is TensorFlow's, of the call), whatever the depth.
  assert traces_2 == traces_32 == 2 * TINY['levels']
  # Each further step adds its call and a few ops around it (its variables' captures,
  # the log-det sum, the gradient's call), not its layers.
  per_step = (ops_32 - ops_2) / (30 * TINY['levels'])
  assert per_step < 45, (ops_2, ops_32)  # 36 measured.
  # The per-layer path's graph holds every layer: many times more per step.
  layer_2, _ = outer_ops(2, compile_steps=False)
  layer_4, _ = outer_ops(4, compile_steps=False)
  assert (layer_4 - layer_2) / (2 * TINY['levels']) > 5 * per_step


def test_the_reversible_backward_trace_does_not_grow_with_depth():
  ops_2, traces_2 = outer_ops(2, True, 'reversible')
  ops_32, traces_32 = outer_ops(32, True, 'reversible')
  # Per level: the forward (no tape) and the backward step, traced once.
  assert traces_2 == traces_32 == 3 * TINY['levels']
  # Each level's steps run in a loop over their rows, forward and backward: the
  # graph is the same at any depth (the unrolled calls added 5 ops per step).
  assert ops_32 == ops_2, (ops_2, ops_32)


@pytest.mark.parametrize('dtype, rtol', [('float32', 1e-5), ('float64', 1e-12)])
def test_untaped_passes_give_the_per_layer_values_and_gradients(dtype, rtol):
  """Within `untaped()` stacked steps run in while loops: the same log_prob, samples and
  round trip; and a gradient taken through the loops anyway is still the right one."""
  from glow_tf.bijectors import compiled_steps

  compiled, per_layer, x = twin_flows(dtype=dtype)
  variables = compiled.trainable_variables
  with tf.GradientTape() as tape:
    lp_p = per_layer.log_prob(x)
  grads_p = tape.gradient(lp_p, per_layer.trainable_variables)
  with compiled_steps.untaped():
    with tf.GradientTape() as tape:
      lp_c = compiled.log_prob(x)
    grads_c = tape.gradient(lp_c, variables)
    traced = tf.function(compiled.log_prob, autograph=False)(x)
    s_c = glow_tf.sample(compiled, 2, temperature=0.7, seed=(7, 8))
    z = compiled.bijector.inverse(x)
    x_again = compiled.bijector.forward(z)
  np.testing.assert_allclose(lp_c, lp_p, rtol=rtol)
  np.testing.assert_allclose(traced, lp_p, rtol=rtol)
  for v, a, b in zip(variables, grads_c, grads_p):
    a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, atol=rtol, err_msg=v.name)
  s_p = glow_tf.sample(per_layer, 2, temperature=0.7, seed=(7, 8))
  np.testing.assert_allclose(s_c, s_p, rtol=rtol, atol=rtol)
  np.testing.assert_allclose(z, per_layer.bijector.inverse(x), rtol=rtol, atol=rtol)
  np.testing.assert_allclose(x_again, x, atol=100 * rtol)


def untaped_ops(depth: int) -> list[int]:
  """Nodes in the graphs of log_prob and of sampling traced within `untaped()` at `depth`."""
  from glow_tf.bijectors import compiled_steps

  config = glow_tf.GlowConfig(**{**TINY, 'depth': depth, 'width': 4})
  flow = glow_tf.build_glow(config)
  glow_tf.initialize(flow, images())

  def untaped(fn):
    def run(*args):
      with compiled_steps.untaped():
        return fn(*args)

    return tf.function(run, autograph=False)

  log_prob = untaped(flow.log_prob).get_concrete_function(tf.TensorSpec([None, 8, 8, 2]))
  sample = untaped(lambda n: glow_tf.sample(flow, n, seed=(1, 2))).get_concrete_function(
    tf.TensorSpec([], tf.int32)
  )
  # Every node, in the graph and in the functions it calls (the flow's passes are one).
  return [
    len(d.node) + sum(len(f.node_def) for f in d.library.function)
    for d in (log_prob.graph.as_graph_def(), sample.graph.as_graph_def())
  ]


def test_untaped_scoring_and_sampling_graphs_do_not_grow_with_depth():
  ops_2, ops_32 = untaped_ops(2), untaped_ops(32)
  assert ops_2 == ops_32, (ops_2, ops_32)


def test_rows_are_written_in_place_into_buffers_of_their_own():
  from glow_tf.bijectors import compiled_steps
  from glow_tf.tracing import SharedTrace

  shape = tf.TensorShape([4, 3, 2])

  def stacked(scale, rows, zeros):
    # As the reversible backward writes: a function traced once, called once per row.
    write = SharedTrace(
      lambda buffer, row, scale: compiled_steps.write_row(
        buffer, row, tf.fill([3, 2], scale * tf.cast(row + 1, tf.float32))
      )
    )
    buffer = compiled_steps.row_buffer(shape, tf.float32, zeros)
    for r in rows:
      buffer = write(buffer, tf.constant(r), scale)
    return buffer

  expected = lambda scale, rows: np.stack(
    [np.full([3, 2], scale * (r + 1.0) if r in rows else 0.0) for r in range(4)]
  )

  # Two buffers in one graph, alive together: a buffer shared or folded between
  # them would leave both holding the second's rows.
  @tf.function
  def two(a, b):
    return stacked(a, [3, 2, 1, 0], False), stacked(b, [2, 0], True)

  # Each run's buffers are fresh: the first run's results outlive the second run.
  pairs = ((1.0, 10.0), (2.0, -3.0))
  results = [two(tf.constant(a), tf.constant(b)) for a, b in pairs]
  for (a, b), (first, second) in zip(pairs, results):
    np.testing.assert_array_equal(first, expected(a, range(4)))
    np.testing.assert_array_equal(second, expected(b, [0, 2]))

  def for_xla(a):
    with compiled_steps.for_xla():
      return stacked(a, [3, 1], True)

  compiled = tf.function(for_xla, jit_compile=True)
  np.testing.assert_array_equal(compiled(tf.constant(5.0)), expected(5.0, [1, 3]))
