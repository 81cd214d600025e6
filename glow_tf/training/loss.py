"""Glow's training loss, per example: the paper's bits/dim, plus weighted class bits."""

import dataclasses
import math

import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import nn
from glow_tf.bijectors.flow_bijector import forward_and_log_det
from glow_tf.model import flow as flow_lib

tfd = tfp.distributions

__all__ = ['Loss']


@dataclasses.dataclass(frozen=True)
class Loss:
  """The loss of each example, `bits_per_dim(log p(x)) + class_loss_weight * class bits`.

  ```none
  latent, log_det = MultiScaleFlow(x)              one pass of every coupling network
  log p(x) = log N(top_prior(latent)) + log_det + top prior's log-det
  bpd      = (-log p(x) + D log(num_bins)) / (D log 2)            (the paper's figure)
  loss     = bpd + class_loss_weight * cross_entropy(classifier(top latent), label) / log 2
  ```

  The classifier term is there for class-conditional flows (the official code's
  `ycond` objective). Training, the reversible backward pass and the benchmark
  all compute their loss here.

  Attributes:
    num_bins: levels per value of the data.
    class_loss_weight: weight of the classifier's cross-entropy, in bits.
  """

  num_bins: int
  class_loss_weight: float = 0.0

  @tf.autograph.experimental.do_not_convert
  def __call__(self, flow, classifier: nn.ClassifierHead | None, x, label=None):
    """`(loss, bits/dim)`, each `[B]`, of images `x` `[B, H, W, C]`."""
    latent, log_det = forward_and_log_det(flow.multiscale, x)
    return self.from_latent(flow, classifier, latent, log_det, label)

  def bits_per_dim(self, log_prob, num_dims: int):
    """The paper's bits/dim of data whose dequantised density is `log_prob` (nats)."""
    return flow_lib.bits_per_dim(log_prob, num_dims, self.num_bins)

  @tf.autograph.experimental.do_not_convert
  def from_latent(self, flow, classifier, latent, log_det, label=None):
    """`(loss, bits/dim)` from the flat output of `flow.multiscale` and its log-det `[B]`."""
    z, top_log_det = latent, tf.zeros([], latent.dtype)
    if flow.top_prior is not None:
      kwargs = {} if flow.num_classes is None else {'label': label}
      z, top_log_det = forward_and_log_det(flow.top_prior, latent, 1, **kwargs)
    log_prob = flow.distribution.log_prob(z) + top_log_det + log_det
    bpd = self.bits_per_dim(log_prob, flow.multiscale.latent_size)
    if classifier is None:
      return bpd, bpd
    logits = classifier(flow.multiscale.split_latents(latent)[-1])
    class_bits = tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits) / math.log(2.0)
    return bpd + self.class_loss_weight * class_bits, bpd
