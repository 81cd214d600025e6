"""Glow on the 8x8 digits with a plain TensorFlow training loop: `flow.log_prob` is the loss.

    python examples/custom_training_loop.py --steps=2000

No glow_tf trainer: a tf_keras optimiser, a GradientTape and bits/dim, as in any TFP model.
"""

import argparse

import numpy as np
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

import glow_tf

parser = argparse.ArgumentParser()
parser.add_argument('--steps', type=int, default=2000)
parser.add_argument('--batch_size', type=int, default=64)
args = parser.parse_args()

pixels = load_digits().images[..., np.newaxis].astype(np.float32)  # [1797, 8, 8, 1] in 0..16
num_bins = 17
config = glow_tf.GlowConfig(image_shape=(8, 8, 1), levels=2, depth=4, width=32)
flow = glow_tf.build_glow(config)
optimizer = tf_keras.optimizers.Adam(1e-3)


def dequantize(batch):
  """Integer pixels -> [-0.5, 0.5) with uniform noise inside each bin (the paper's setup)."""
  return (batch + tf.random.uniform(tf.shape(batch))) / num_bins - 0.5


@tf.function
def train_step(x):
  with tf.GradientTape() as tape:
    bpd = tf.reduce_mean(glow_tf.bits_per_dim(flow.log_prob(x), config.num_dims, num_bins))
  grads = tape.gradient(bpd, flow.trainable_variables)
  optimizer.apply_gradients(zip(grads, flow.trainable_variables))
  return bpd


glow_tf.initialize(flow, dequantize(pixels[:256]))  # ActNorm's data-dependent init, once.
batches = tf.data.Dataset.from_tensor_slices(pixels).repeat().shuffle(2048).batch(args.batch_size)
for step, batch in enumerate(batches.take(args.steps), start=1):
  bpd = train_step(dequantize(batch))
  if step % 500 == 0 or step == args.steps:
    print(f'step {step}: {float(bpd):.3f} bits/dim')
