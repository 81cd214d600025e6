"""A glow_tf flow as one part of your own TFP model.

    python examples/tfp_composition.py

The flow is a `tfd.TransformedDistribution` and its layers are `tfb.Bijector`s, so
it composes like any TFP piece. Three common shapes of that, with a
class-conditional flow whose label reaches its top prior through TFP's kwargs.
"""

import tensorflow as tf
import tensorflow_probability as tfp

import glow_tf

tfb, tfd = tfp.bijectors, tfp.distributions

config = glow_tf.GlowConfig(image_shape=(8, 8, 1), levels=2, depth=2, width=16, num_classes=10)
flow = glow_tf.build_glow(config)  # Images in [-0.5, 0.5) <- a standard-normal latent.
x = tf.random.stateless_uniform([4, 8, 8, 1], seed=(1, 2), minval=-0.5, maxval=0.5)
label = tf.constant([3, 1, 4, 1])
glow_tf.initialize(flow, x)  # Stand-in images; use real data.

# 1. The flow as the base distribution of yours: here images in [0, 1) instead.
# The outer distribution passes `distribution_kwargs` on to the flow, which hands
# its `bijector_kwargs` to the top prior (glow_tf.conditional_kwargs spells them).
in_unit_range = tfd.TransformedDistribution(flow, tfb.Shift(0.5))
kwargs = dict(distribution_kwargs=dict(bijector_kwargs=glow_tf.conditional_kwargs(label)))
print('log p(u | y), u in [0, 1):', in_unit_range.log_prob(x + 0.5, **kwargs).numpy())
print('samples:', in_unit_range.sample(4, seed=(3, 4), **kwargs).shape)

# 2. The flow's bijector inside a chain with TFP's own bijectors. A chain routes
# kwargs by part name; glow_tf.bijectors.FlowChain is tfb.Chain with glow_tf's cache
# (results shared within one call, never across calls).
latent_to_unit = glow_tf.bijectors.FlowChain([tfb.Shift(0.5), flow.bijector])
route = {flow.bijector.name: glow_tf.conditional_kwargs(label)}
z = tf.random.stateless_normal([4, config.num_dims], seed=(5, 6))
u = latent_to_unit.forward(z, **route)
print('round trip error:', float(tf.reduce_max(tf.abs(latent_to_unit.inverse(u, **route) - z))))

# 3. A conditional density in a larger model: a generative classifier,
# p(x) = sum_y p(y) p(x | y) and p(y | x) = p(y) p(x | y) / p(x).
class_prior = tfd.Categorical(logits=tf.zeros([config.num_classes]))
log_joint = tf.stack(
  [
    class_prior.log_prob(c)
    + flow.log_prob(x, bijector_kwargs=glow_tf.conditional_kwargs(tf.fill([4], c)))
    for c in range(config.num_classes)
  ],
  axis=-1,
)
print('log p(x):', tf.reduce_logsumexp(log_joint, axis=-1).numpy())
print('p(y | x) argmax:', tf.argmax(log_joint, axis=-1).numpy())
