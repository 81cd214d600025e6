"""Tests of the whole flow: glow_tf.build_glow and its helpers."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import glow_tf
from glow_tf import bijectors as gb
from glow_tf import nn
from tests import checks

tfb = tfp.bijectors
tfd = tfp.distributions

TINY = dict(image_shape=(8, 8, 2), levels=2, depth=2, width=8)


def images(shape=(6, 8, 8, 2), seed=0, dtype=np.float32):
  """Dequantised-looking data in [-0.5, 0.5] with some structure across channels."""
  rng = np.random.RandomState(seed)
  base = rng.rand(shape[0], *shape[1:3], 1) - 0.5
  return np.clip(base + 0.1 * rng.randn(*shape), -0.5, 0.5).astype(dtype)


def ready_flow(dtype='float32', batch=None, perturb_scale=0.03, **overrides):
  """A tiny flow, ActNorm-initialised on a batch, every variable then perturbed.

  Perturbing every weight (zero convolutions included) by much more than 0.03
  makes activations grow level by level until the split priors overflow, as in a
  broken model; 0.03 keeps every latent O(1-10) and every layer non-trivial.
  """
  config = glow_tf.GlowConfig(**{**TINY, 'dtype': dtype, **overrides})
  flow = glow_tf.build_glow(config)
  shape = (16, *config.image_shape)
  x = images(shape, dtype=np.dtype(dtype)) if batch is None else batch
  assert glow_tf.initialize(flow, x) > 0
  checks.perturb(flow, perturb_scale, seed=11)
  return flow, config


def expected_num_trainable(config):
  per_step = (
    2 + {'conv1x1': 3, 'conv1x1_plain': 1, 'shuffle': 0, 'reverse': 0}[config.permutation] + 9
  )
  steps = config.levels * (1 if config.stack_steps else config.depth)  # Stacked: one per level.
  count = steps * per_step + 3 * (config.levels - 1)
  count += 2 * config.learn_top + 2 * (config.num_classes is not None)
  return count


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'permutation': 'conv1x1_plain'},
    {'permutation': 'shuffle', 'coupling': 'additive'},
    {'permutation': 'reverse', 'learn_top': False},
    {'num_classes': 3},
    {'levels': 3},
    {'stack_steps': False},
    {'stack_steps': False, 'permutation': 'shuffle'},
  ],
)
def test_trainable_variables_are_all_found_and_uniquely_named(overrides):
  config = glow_tf.GlowConfig(**{**TINY, **overrides})
  flow = glow_tf.build_glow(config)
  names = [v.name for v in flow.trainable_variables]
  assert len(names) == expected_num_trainable(config)
  assert len(set(names)) == len(names)


@pytest.mark.parametrize(
  'overrides', [{}, {'permutation': 'reverse', 'coupling': 'additive'}, {'num_classes': 3}]
)
def test_every_variable_gets_a_gradient_and_moves(overrides):
  config = glow_tf.GlowConfig(**{**TINY, **overrides})
  flow = glow_tf.build_glow(config)
  x = tf.constant(images((16, 8, 8, 2)))
  label = tf.range(16) % 3 if config.num_classes else None
  glow_tf.initialize(flow, x)
  variables = flow.trainable_variables
  initial = [v.numpy().copy() for v in variables]
  optimizer = tf.keras.optimizers.Adam(1e-3)

  def nll():
    return -tf.reduce_mean(
      flow.log_prob(tf.identity(x), bijector_kwargs=glow_tf.conditional_kwargs(label))
    )

  def grads():
    with tf.GradientTape() as tape:
      loss = nll()
    return tape.gradient(loss, variables)

  first = grads()
  assert all(g is not None for g in first)
  # At initialisation the zero convolutions hide the layers before them (exactly
  # zero gradient there, as in the official code); one step opens the path.
  optimizer.apply_gradients(zip(first, variables))
  second = grads()
  zero = [v.name for v, g in zip(variables, second) if not np.any(g.numpy() != 0)]
  assert zero == []
  optimizer.apply_gradients(zip(second, variables))
  unchanged = [v.name for v, x0 in zip(variables, initial) if np.array_equal(v.numpy(), x0)]
  assert unchanged == []


def test_round_trip_at_every_level_float32():
  flow, _ = ready_flow(levels=3, image_shape=(16, 16, 3))
  x = tf.constant(images((5, 16, 16, 3)))
  latents = glow_tf.encode(flow, x)
  assert 1.0 < max(float(tf.reduce_max(tf.abs(z))) for z in latents) < 50.0
  assert [z.shape.as_list() for z in latents] == [[5, 8, 8, 6], [5, 4, 4, 12], [5, 2, 2, 48]]
  fresh = [tf.identity(z) for z in latents]
  x_back = glow_tf.decode(flow, fresh)
  assert np.max(np.abs(x_back - x)) <= 1e-4
  # And from the latent side: decode then encode every level.
  z = [tf.random.normal(z.shape, seed=i) for i, z in enumerate(latents)]
  z_back = glow_tf.encode(flow, tf.identity(glow_tf.decode(flow, z)))
  for a, b in zip(z, z_back):
    assert np.max(np.abs(a - b)) <= 1e-3


def test_log_prob_equals_change_of_variables_with_autodiff_jacobian():
  flow, config = ready_flow(dtype='float64', image_shape=(4, 4, 2), num_classes=3)
  x = tf.constant(images((2, 4, 4, 2), dtype=np.float64))
  kwargs = glow_tf.conditional_kwargs(tf.constant([0, 2]))
  encoder = flow.bijector.bijector  # image -> flat latent, every level and the top prior
  log_det = checks.log_abs_det_jacobian(lambda t: encoder.forward(t, **kwargs), x)
  z = encoder.forward(tf.identity(x), **kwargs)
  base = tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), config.num_dims)
  expected = base.log_prob(z).numpy() + log_det
  np.testing.assert_allclose(flow.log_prob(x, bijector_kwargs=kwargs), expected, rtol=1e-6)
  analytic = encoder.forward_log_det_jacobian(tf.identity(x), event_ndims=3, **kwargs)
  np.testing.assert_allclose(analytic, log_det, rtol=1e-6)
  assert np.all(np.abs(log_det) > 1e-3)


def test_none_batch_tf_function_and_xla_agree_with_eager():
  flow, config = ready_flow()
  x = images((3, 8, 8, 2), seed=4)
  spec = tf.TensorSpec([None, *config.image_shape], tf.float32)
  eager = flow.log_prob(x).numpy()
  shapes = [s for s in glow_tf.multiscale_flow(flow).latent_shapes]

  def all_methods(x):
    latents = glow_tf.encode(flow, x)
    return dict(
      log_prob=flow.log_prob(x),
      decoded=glow_tf.decode(flow, latents),
      samples=glow_tf.sample(flow, tf.shape(x)[0], temperature=0.7, seed=(1, 2)),
    )

  for jit in (False, True):
    fn = tf.function(all_methods, input_signature=[spec], jit_compile=jit)
    for batch in (1, 3):
      out = fn(x[:batch])
      np.testing.assert_allclose(out['log_prob'], eager[:batch], rtol=1e-4, atol=1e-3)
      np.testing.assert_allclose(out['decoded'], x[:batch], atol=1e-4)
      assert out['samples'].shape == [batch, *config.image_shape]
  assert len(shapes) == config.levels


def test_samples_are_deterministic_per_seed_and_temperature_scales_the_base():
  flow, _ = ready_flow()
  a = glow_tf.sample(flow, 4, temperature=0.7, seed=(3, 4))
  b = glow_tf.sample(flow, 4, temperature=0.7, seed=(3, 4))
  np.testing.assert_array_equal(a, b)
  latents = glow_tf.encode(flow, a)
  flat = tf.concat([tf.reshape(z, [4, -1]) for z in latents], -1)
  base = tfd.Sample(tfd.Normal(0.0, 1.0), flat.shape[-1]).sample(4, seed=(3, 4))
  np.testing.assert_allclose(flat, 0.7 * base, atol=1e-3)
  cold = [glow_tf.sample(flow, 2, temperature=0.0, seed=(s, 0)) for s in range(2)]
  np.testing.assert_allclose(cold[0], cold[1], atol=1e-6)
  np.testing.assert_allclose(cold[0][0], cold[0][1], atol=1e-6)


def test_log_prob_of_samples_uses_no_stale_cache():
  flow, _ = ready_flow()
  x = flow.sample(3, seed=(5, 6))
  np.testing.assert_allclose(flow.log_prob(x), flow.log_prob(tf.identity(x)), rtol=1e-4, atol=1e-3)


def test_log_prob_graph_runs_each_network_once():
  # Per layer: every read in one graph (the compiled steps' test is in
  # tests/bijectors/compiled_steps_test.py), each step's variables its own.
  config = glow_tf.GlowConfig(**TINY, compile_steps=False, stack_steps=False)
  flow = glow_tf.build_glow(config)
  # A known batch size: with an unknown one the flow runs inside a tf.cond (see
  # MultiScaleFlow._unless_empty), whose branch graph holds the reads.
  log_prob = tf.function(flow.log_prob, input_signature=[tf.TensorSpec([3, 8, 8, 2])])
  graph = log_prob.get_concrete_function().graph
  networks = [m for m in flow.submodules if isinstance(m, (nn.CouplingNetwork, nn.ZeroConv2D))]
  assert len(networks) == 2 * config.levels * config.depth + (config.levels - 1)
  for network in networks:
    kernel = network.conv_in.kernel if isinstance(network, nn.CouplingNetwork) else network.kernel
    assert checks.variable_reads(graph, kernel) == 1


@pytest.mark.parametrize('trained', [False, True])
def test_actnorm_init_normalises_every_flow_actnorm_input(trained):
  """`trained`: every weight moved first, so no layer's last convolution is zero (the
  init skips only zero ones)."""
  config = glow_tf.GlowConfig(**TINY)
  flow = glow_tf.build_glow(config)
  if trained:
    checks.perturb(flow, 0.05, seed=4)
  x = tf.constant(images((32, 8, 8, 2)))
  assert glow_tf.initialize(flow, x) == 3 * config.levels * config.depth
  multiscale = glow_tf.multiscale_flow(flow)
  h = x
  checked = 0
  for level, prior in zip(multiscale.levels, multiscale.split_priors + [None]):
    *steps, squeeze = level.bijectors
    h = squeeze.forward(h)
    for step in reversed(steps):
      coupling, permutation, actnorm = step.bijectors
      y = actnorm.forward(h)
      np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]), 0.0, atol=1e-4)
      np.testing.assert_allclose(tf.math.reduce_std(y, [0, 1, 2]), 1.0, rtol=1e-3)
      h = step.forward(h)
      checked += 1
    if prior is not None:
      h = prior.forward(h)[..., : h.shape[-1] // 2]
  assert checked == config.levels * config.depth
  assert glow_tf.initialize(flow, 3.0 * x) == 0


def test_restored_checkpoint_is_not_reinitialised(tmp_path):
  config = glow_tf.GlowConfig(**TINY)
  flow = glow_tf.build_glow(config)
  glow_tf.initialize(flow, images((16, 8, 8, 2), seed=1))
  path = tf.train.Checkpoint(flow=flow).save(str(tmp_path / 'ckpt'))
  saved = [v.numpy() for v in flow.variables]

  restored = glow_tf.build_glow(config)
  tf.train.Checkpoint(flow=restored).restore(path).assert_consumed()
  assert glow_tf.initialize(restored, images((16, 8, 8, 2), seed=2) * 3.0) == 0
  for a, b in zip(saved, restored.variables):
    np.testing.assert_array_equal(a, b)


def test_class_conditional_flow_depends_on_label():
  flow, _ = ready_flow(num_classes=3)
  x = tf.constant(images((3, 8, 8, 2)))
  by_label = [
    flow.log_prob(
      tf.identity(x), bijector_kwargs=glow_tf.conditional_kwargs(tf.fill([3], c))
    ).numpy()
    for c in range(3)
  ]
  assert not np.allclose(by_label[0], by_label[1])
  samples = glow_tf.sample(flow, 3, seed=(1, 1), label=[0, 1, 2])
  assert samples.shape == [3, 8, 8, 2]
  with pytest.raises(ValueError, match='needs a label'):
    flow.log_prob(x)


def test_classifier_head_reads_the_top_latent():
  config = glow_tf.GlowConfig(**TINY, num_classes=3)
  flow = glow_tf.build_glow(config)
  head = glow_tf.build_classifier(flow)
  z_top = glow_tf.top_latent(flow, images((4, 8, 8, 2)))
  assert z_top.shape == [4, *glow_tf.multiscale_flow(flow).latent_shapes[-1]]
  checks.perturb(head)
  assert head(z_top).shape == [4, 3]
  with pytest.raises(ValueError, match="needs a class-conditional flow; 'glow' has no classes"):
    glow_tf.build_classifier(glow_tf.build_glow(glow_tf.GlowConfig(**TINY)))


def test_bits_per_dim_is_the_papers_formula():
  # Uniform density on [-0.5, 0.5]^D is log p = 0: 8 bits for 256 levels.
  assert glow_tf.bits_per_dim(0.0, num_dims=3072, num_bins=256) == pytest.approx(8.0)
  log_prob = -5000.0
  expected = (5000.0 + 64 * math.log(17)) / (64 * math.log(2))
  assert glow_tf.bits_per_dim(log_prob, num_dims=64, num_bins=17) == pytest.approx(expected)


@pytest.mark.parametrize(
  'bad, match',
  [
    (np.zeros([8, 8], np.float32), r'rank >= 3.*got shape \(8, 8\)'),
    (np.zeros([2, 8, 8, 3], np.float32), r'\[\.\.\., 8, 8, 2\]; got event shape \[8, 8, 3\]'),
    (np.zeros([2, 6, 8, 2], np.float32), r'\[\.\.\., 8, 8, 2\]; got event shape \[6, 8, 2\]'),
  ],
)
def test_bad_images_raise_naming_shapes(bad, match):
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  with pytest.raises(ValueError, match=match):
    flow.log_prob(bad)


def test_non_float_images_raise_naming_dtypes():
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  with pytest.raises((TypeError, ValueError), match='float32.*uint8|uint8.*float32'):
    flow.log_prob(tf.zeros([1, 8, 8, 2], tf.uint8))


def test_decode_with_wrong_latents_raises():
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  with pytest.raises(ValueError, match='expects 2 latents'):
    glow_tf.decode(flow, [tf.zeros([1, 4, 4, 4])])


@pytest.mark.parametrize(
  'overrides, match',
  [
    ({'image_shape': (6, 8, 1)}, r'multiples of 2\*\*levels = 4.*\(6, 8, 1\)'),
    ({'coupling': 'spline'}, r"coupling must be one of \('affine', 'additive'\); got 'spline'"),
    ({'permutation': 2}, r'permutation must be one of .*; got 2'),
    ({'depth': 0}, 'depth must be >= 1; got 0'),
    ({'num_classes': 1}, 'num_classes must be >= 2 or None; got 1'),
    ({'dtype': 'float16'}, "dtype must be one of .*; got 'float16'"),
  ],
)
def test_bad_config_raises(overrides, match):
  with pytest.raises(ValueError, match=match):
    glow_tf.GlowConfig(**{**TINY, **overrides})


def test_config_round_trips_through_dict():
  config = glow_tf.GlowConfig(**TINY, num_classes=4)
  assert glow_tf.GlowConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match=r"unknown GlowConfig fields \['hidden'\]"):
    glow_tf.GlowConfig.from_dict({**config.to_dict(), 'hidden': 1})


def test_parts_are_glow_tf_bijectors_in_tfp_containers():
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  # For bijectors that own variables TFP returns its non-CompositeTensor classes
  # (_TransformedDistribution, _Invert, _Chain), whose public names are not bases;
  # glow_tf's subclasses of them differ only in their cache.
  assert isinstance(flow, glow_tf.GlowDistribution)
  assert type(flow).__mro__[2].__name__ == '_TransformedDistribution'
  assert isinstance(flow.distribution, tfd.Sample)
  assert type(flow.bijector).__name__.lstrip('_') == 'Invert'
  assert isinstance(flow.bijector.bijector, gb.FlowChain)
  assert type(flow.bijector.bijector).__mro__[2].__name__ == '_Chain'
  multiscale = glow_tf.multiscale_flow(flow)
  step = multiscale.levels[0].bijectors[0]
  assert [type(b) for b in step.bijectors] == [gb.AffineCoupling, gb.InvertibleConv1x1, gb.ActNorm]
  assert isinstance(multiscale.levels[0].bijectors[-1], gb.Squeeze)
  assert isinstance(step.bijectors[2]._layer, nn.ActNormLayer)


def test_initialize_under_mirrored_strategy_gives_identical_replicas():
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
    assert glow_tf.initialize(flow, images((16, 8, 8, 2))) == 12
  actnorms = [m for m in flow.submodules if isinstance(m, nn.ActNormLayer)]
  for layer in actnorms:
    for variable in (layer.log_scale, layer.shift, layer.initialized):
      first, second = strategy.experimental_local_results(checks.held(variable))
      np.testing.assert_array_equal(first, second)
  assert all(layer.is_initialized() for layer in actnorms)
  assert not np.allclose(actnorms[0].log_scale.numpy(), 0.0)


@pytest.mark.parametrize(
  'batch, match',
  [
    (np.zeros((0, 8, 8, 2), np.float32), r'non-empty batch.*got shape \(0, 8, 8, 2\)'),
    (np.full((4, 8, 8, 2), np.nan, np.float32), r'finite images; got 512 NaN'),
    (images((4, 8, 8, 2)) * 1e30, r'non-finite statistics in \d+ ActNorm'),  # Overflows inside.
  ],
)
def test_initialize_is_all_or_nothing(batch, match):
  flow = glow_tf.build_glow(glow_tf.GlowConfig(**TINY))
  layers = [m for m in flow.submodules if isinstance(m, nn.ActNormLayer)]
  with pytest.raises(ValueError, match=match):
    glow_tf.initialize(flow, batch)
  assert not any(layer.is_initialized() for layer in layers)
  assert all(np.all(layer.log_scale.numpy() == 0) for layer in layers)
  assert glow_tf.initialize(flow, images((16, 8, 8, 2))) == len(layers)  # Still possible.
  assert np.all(np.isfinite(flow.log_prob(images((4, 8, 8, 2)))))


@pytest.mark.parametrize('temperature', [float('nan'), float('inf'), -0.1])
def test_sampling_refuses_a_temperature_that_is_not_a_standard_deviation(temperature):
  flow, _ = ready_flow()
  with pytest.raises(ValueError, match='temperature must be a finite number >= 0'):
    glow_tf.sample(flow, 2, temperature=temperature, seed=(1, 2))
  in_graph = tf.function(lambda t: glow_tf.sample(flow, 2, temperature=t, seed=(1, 2)))
  with pytest.raises(tf.errors.InvalidArgumentError, match='temperature must be a finite number'):
    in_graph(tf.constant(temperature))


@pytest.mark.parametrize('regime', ['eager', 'function'])
def test_an_empty_batch_gives_empty_results(regime):
  flow, config = ready_flow(num_classes=3)
  spec = tf.TensorSpec([None, 8, 8, 2])
  run = (
    (lambda f, *specs: f)
    if regime == 'eager'
    else (lambda f, *specs: tf.function(f, input_signature=list(specs)))
  )
  no_label = tf.zeros([0], tf.int32)
  log_prob = run(
    lambda x, y: flow.log_prob(x, bijector_kwargs=glow_tf.conditional_kwargs(y)),
    spec,
    tf.TensorSpec([None], tf.int32),
  )
  assert log_prob(tf.zeros([0, 8, 8, 2]), no_label).shape == (0,)
  encode = run(lambda x, y: glow_tf.encode(flow, x, label=y), spec, tf.TensorSpec([None], tf.int32))
  latents = encode(tf.zeros([0, 8, 8, 2]), no_label)
  assert [z.shape for z in latents] == [
    (0, *s) for s in glow_tf.multiscale_flow(flow).latent_shapes
  ]
  assert glow_tf.decode(flow, latents, label=no_label).shape == (0, 8, 8, 2)
  sample = run(
    lambda n, y: glow_tf.sample(flow, n, 0.7, seed=(1, 2), label=y),
    tf.TensorSpec([], tf.int32),
    tf.TensorSpec([None], tf.int32),
  )
  assert sample(tf.constant(0), no_label).shape == (0, 8, 8, 2)
