"""Tests of glow_tf.nn."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import nn


def test_coupling_network_layers_and_zero_output_at_init():
  network = nn.CouplingNetwork(in_channels=3, out_channels=6, width=16)
  shapes = {v.name.split('/', 1)[-1]: v.shape.as_list() for v in network.trainable_variables}
  assert shapes['conv_in/kernel:0'] == [3, 3, 3, 16]
  assert shapes['conv_hidden/kernel:0'] == [1, 1, 16, 16]
  assert shapes['conv_out/kernel:0'] == [3, 3, 16, 6]
  assert shapes['actnorm_in/log_scale:0'] == shapes['actnorm_hidden/shift:0'] == [16]
  out = network(tf.random.normal([2, 5, 5, 3]))
  assert out.shape == [2, 5, 5, 6]
  np.testing.assert_array_equal(out, 0.0)


def test_zero_conv_output_scale_is_exp_3_logs():
  conv = nn.ZeroConv2D(2, 3, kernel_size=1)
  conv.bias.assign([1.0, 2.0, 3.0])
  conv.logs.assign([0.0, 1.0, -1.0])
  out = conv(tf.zeros([1, 2, 2, 2]))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 2.0 * np.exp(3.0), 3.0 * np.exp(-3.0)], rtol=1e-6)


def test_zero_conv_skips_its_zero_kernel_only_in_actnorm_init():
  """In the init pass a zero kernel's convolution is skipped (a NaN input, which the
  convolution would spread, shows it); a non-zero one is computed as outside it."""
  conv = nn.ZeroConv2D(2, 3)
  conv.bias.assign([1.0, 2.0, 3.0])
  conv.logs.assign([0.0, 0.1, -0.1])
  x = np.random.RandomState(0).randn(2, 4, 4, 2).astype('float32')
  x[0, 1, 2, 1] = np.nan
  assert np.isnan(conv(x).numpy()).any()
  with nn.data_dependent_init():
    skipped = conv(x).numpy()
    compiled = tf.function(conv)(x).numpy()  # As a traced init (CompiledSteps) runs it.
  expected = np.broadcast_to(conv.bias.numpy() * np.exp(3.0 * conv.logs.numpy()), skipped.shape)
  np.testing.assert_allclose(skipped, expected, rtol=1e-6)
  np.testing.assert_allclose(compiled, expected, rtol=1e-6)
  conv.kernel.assign(tf.random.stateless_normal(conv.kernel.shape, seed=[1, 2]))
  x = np.nan_to_num(x)
  with nn.data_dependent_init():
    computed = conv(x).numpy()
  np.testing.assert_array_equal(computed, conv(x).numpy())
  assert np.abs(computed - expected).max() > 0.1


@pytest.mark.parametrize('shape', [(64, 16, 16, 32), (2, 3, 5, 4, 6), (7, 6), (3, 1, 1, 4)])
def test_channel_moments_are_the_moments_over_all_but_the_channels(shape):
  rng = np.random.RandomState(0)
  x = (3.0 * rng.randn(*shape) + rng.randn(shape[-1])).astype('float32')
  axes = tuple(range(len(shape) - 1))
  mean, variance = nn.channel_moments(tf.constant(x))
  np.testing.assert_allclose(mean, x.astype('float64').mean(axes), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variance, x.astype('float64').var(axes), rtol=1e-5)


def test_channel_moments_round_less_than_tf_moments():
  """Two-stage sums on a first-level hidden activation's shape: their error against
  float64 is below tf.nn.moments' (which is why they replace it)."""
  x = tf.random.stateless_normal([64, 16, 16, 64], seed=[5, 6]) * 3.0 + 1.0
  exact = [v.numpy() for v in tf.nn.moments(tf.cast(x, tf.float64), [0, 1, 2])]

  def error(moments):
    return max(np.abs(m.numpy() / e - 1).max() for m, e in zip(moments, exact))

  assert error(nn.channel_moments(x)) < 0.5 * error(tf.nn.moments(x, [0, 1, 2]))


def test_network_accepts_extra_batch_dims():
  network = nn.CouplingNetwork(in_channels=2, out_channels=2, width=4)
  for v in network.trainable_variables:
    v.assign_add(0.1 * tf.ones_like(v))
  x = tf.random.normal([2, 3, 4, 4, 2])
  np.testing.assert_allclose(network(x)[1, 2], network(x[1, 2][tf.newaxis])[0], rtol=1e-5)


def test_classifier_head_uses_spatial_mean():
  head = nn.ClassifierHead(num_channels=4, num_classes=3)
  head.kernel.assign(tf.reshape(tf.range(12, dtype=tf.float32), [4, 3]))
  z = tf.random.normal([2, 2, 2, 4])
  expected = tf.reduce_mean(z, [1, 2]) @ head.kernel
  np.testing.assert_allclose(head(z), expected, rtol=1e-5)


@pytest.mark.parametrize('size, cin, cout', [(1, 16, 8), (3, 40, 4), (3, 4, 40), (3, 9, 1)])
def test_conv2d_same_equals_tf_conv2d_in_every_formulation(size, cin, cout):
  x = tf.random.normal([2, 5, 6, cin], seed=1)
  kernel = tf.random.normal([size, size, cin, cout], seed=2)
  expected = tf.nn.conv2d(x, kernel, strides=1, padding='SAME')
  np.testing.assert_allclose(nn.conv2d_same(x, kernel), expected, rtol=1e-4, atol=1e-4)
  dynamic = tf.function(
    nn.conv2d_same,
    input_signature=[
      tf.TensorSpec([None, None, None, cin]),
      tf.TensorSpec([size, size, cin, cout]),
    ],
  )
  np.testing.assert_allclose(dynamic(x, kernel), expected, rtol=1e-4, atol=1e-4)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    ours = tf.reduce_sum(nn.conv2d_same(x, kernel) ** 2)
    theirs = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, 'SAME') ** 2)
  for a, b in zip(tape.gradient(ours, [x, kernel]), tape.gradient(theirs, [x, kernel])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_shift_add_gradient_is_one_tensor_the_size_of_the_taps():
  """The narrow 3x3 conv's backward builds no zero-padded copy of all taps per tap.

  Autodiff of its nine tap slices gives nine StridedSliceGrad ops, each the size of
  the whole 9-tap product, and an AddN of them; the written-out gradient is pads
  of the output's gradient concatenated. Values are checked against tf.nn.conv2d
  above, in float32, and here in float64 at both orders (the second order, taken
  through the written-out gradient, may use slices' gradients: only the first is
  training's).
  """
  x = tf.random.normal([2, 5, 6, 40], seed=1, dtype=tf.float64)
  kernel = tf.random.normal([3, 3, 40, 4], seed=2, dtype=tf.float64)

  @tf.function(autograph=False)
  def grads(x, kernel):
    with tf.GradientTape() as outer:
      outer.watch(kernel)
      with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        loss = tf.reduce_sum(nn.conv2d_same(x, kernel) ** 2)
      dx, dk = tape.gradient(loss, [x, kernel])
      second = tf.reduce_sum(dx**2)
    return dx, dk, outer.gradient(second, kernel)

  def reference(x, kernel):
    with tf.GradientTape() as outer:
      outer.watch(kernel)
      with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        loss = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, 'SAME') ** 2)
      dx, dk = tape.gradient(loss, [x, kernel])
      second = tf.reduce_sum(dx**2)
    return dx, dk, outer.gradient(second, kernel)

  for ours, theirs in zip(grads(x, kernel), reference(x, kernel)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)

  @tf.function(autograph=False)
  def first_order(x, kernel):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      loss = tf.reduce_sum(nn.conv2d_same(x, kernel) ** 2)
    return tape.gradient(loss, [x, kernel])

  ops = [op.type for op in first_order.get_concrete_function(x, kernel).graph.get_operations()]
  assert 'Conv2D' not in ops  # The taps' path.
  assert 'StridedSliceGrad' not in ops


def test_rows_and_variables_are_read_and_assigned_together():
  """values_of / assign_each on rows of one stacked variable and a plain variable: each
  row gets its own value, rows not named keep theirs, the order of the rows is free."""
  steps, stack = nn.StepStack.build(
    lambda k: nn.ActNormLayer(3, name=f'actnorm_{k}'), 4, name='stacked'
  )
  plain = tf.Variable([1.0, 2.0])
  rows = [steps[2].log_scale, steps[0].log_scale, steps[3].initialized, steps[1].initialized]
  nn.assign_each([*rows, plain], [[2.0] * 3, [0.5] * 3, True, True, [7.0, 8.0]])
  by_name = {v.name.split('/')[-1].split(':')[0]: v.numpy() for v in stack.stacked}
  np.testing.assert_array_equal(by_name['log_scale'], [[0.5] * 3, [0] * 3, [2.0] * 3, [0] * 3])
  np.testing.assert_array_equal(by_name['initialized'], [False, True, False, True])
  np.testing.assert_array_equal(by_name['shift'], np.zeros([4, 3]))
  got = nn.values_of([*rows, plain, steps[1].shift])
  for value, expected in zip(got, [[2.0] * 3, [0.5] * 3, True, True, [7.0, 8.0], [0.0] * 3]):
    np.testing.assert_array_equal(value, expected)


def test_initial_values_are_made_except_for_a_state_to_be_restored():
  made = nn.initial_value(lambda: tf.ones([2, 3]), [2, 3], tf.float32)
  np.testing.assert_array_equal(made, np.ones([2, 3]))

  def must_not_run():
    raise AssertionError('the initial value was made for a variable to be restored')

  with nn.to_be_restored():
    placeholder = nn.initial_value(must_not_run, [2, 3], tf.float64)
    kernel = nn.Conv2D(4, 5, 3).kernel  # Its random normals are not drawn.
  assert placeholder.shape == [2, 3] and placeholder.dtype == tf.float64
  assert kernel.shape == [3, 3, 4, 5]
  with nn.to_be_restored():
    steps, stack = nn.StepStack.build(lambda k: nn.Conv2D(4, 5, 1, seed=(k, 0)), 3)
  assert [v.shape for v in stack.stacked] == [[3, 1, 1, 4, 5]]
  # Outside the context, the kernels are drawn again.
  np.testing.assert_array_equal(nn.Conv2D(4, 5, 3).kernel, nn.Conv2D(4, 5, 3).kernel)
  assert np.abs(nn.Conv2D(4, 5, 3).kernel.numpy()).max() > 0
