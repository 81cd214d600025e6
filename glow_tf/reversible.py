"""Memory-efficient gradients of Glow's loss: a reversible backward pass.

Ordinary backprop keeps every layer's activations (the coupling networks'
width-512 hidden layers dominate), so memory grows with depth. Glow is
invertible, so the backward pass can rebuild each part's input from its output
instead:

    forward, no tape:   h_0 = x -> h_1 -> ... -> h_n  (keep only the factored-out
                        latents and the top latent)
    top, with a tape:   loss(latents) -> d loss / d latents, d loss / d prior weights
    backward, part k = n .. 1:
        h_{k-1} = part_k^-1(h_k)                            (rebuild the input)
        with a tape: h_k', ldj_k = part_k(h_{k-1})          (one part's activations)
        d h_{k-1}, d w_k = grad(h_k', ldj_k; seeds d h_k, d loss / d ldj_k)

Memory is then one part's activations whatever the depth, for roughly one more
forward pass of compute. The rebuilt inputs differ from the stored ones by
float rounding, so the gradients agree with ordinary backprop to ~1e-5 relative
in float32 (checked in tests/reversible_test.py).
"""

import math
from collections.abc import Sequence

import tensorflow as tf

from glow_tf import bijectors as gb
from glow_tf import flow as flow_lib
from glow_tf.bijectors.affine_coupling import split_channels
from glow_tf.bijectors.flow_bijector import forward_and_log_det, inverse_and_log_det

__all__ = ['loss_and_gradients']


def _parts(level):
  """The parts of a level in the order they are applied (a Chain applies right to left)."""
  return list(reversed(level.bijectors)) if hasattr(level, 'bijectors') else [level]


def _log_det_seed(log_det, per_example_seed, batch_size):
  """d loss / d log_det: per example, or summed over the batch for a shared (scalar) log-det."""
  if log_det.shape.rank == 0:
    return per_example_seed * tf.cast(batch_size, log_det.dtype)
  return tf.fill(tf.shape(log_det), per_example_seed)


def _backprop(part, y, dy, per_example_seed, batch_size, grads, after=()):
  """Rebuilds `part`'s input from `y`, backpropagates `dy`; adds weight grads to `grads`.

  The rebuild waits for `dy` and for `after` (the previous part's gradients):
  without those dependencies a graph executor may run every part's rebuild and
  recomputation at once, holding all their activations. Returns `(x, dx, done)`,
  `done` being this part's gradients for the next part to wait on.
  """
  with tf.control_dependencies([dy, *after]):
    y = tf.identity(y)
  x, _ = inverse_and_log_det(part, y)
  x = tf.stop_gradient(x)
  variables = list(part.trainable_variables)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    tape.watch(variables)
    y_again, log_det = forward_and_log_det(part, x)
  results = tape.gradient(
    [y_again, log_det],
    [x] + variables,
    output_gradients=[dy, _log_det_seed(log_det, per_example_seed, batch_size)],
  )
  for variable, grad in zip(variables, results[1:]):
    if grad is not None:
      key = variable.ref()
      grads[key] = grad if key not in grads else grads[key] + grad
  return x, results[0], [g for g in results if g is not None]


def loss_and_gradients(
  flow,
  x: tf.Tensor,
  num_bins: int,
  variables: Sequence[tf.Variable],
  label=None,
  classifier=None,
  class_loss_weight: float = 0.0,
  loss_scale=None,
):
  """Per-example loss and bits/dim of images `x`, and gradients without stored activations.

  The loss of an example is its bits/dim, plus `class_loss_weight` times the
  classifier's cross-entropy in bits for class-conditional flows; the gradients
  are those of `sum(loss) * loss_scale` (default `1 / batch`, the mean).

  Args:
    flow: a flow built by `glow_tf.build_glow`.
    x: images `[B, H, W, C]`, dequantised, in `[-0.5, 0.5)`.
    num_bins: levels per value of the data.
    variables: the variables to differentiate (e.g. the flow's and the
      classifier's trainable variables); the result follows their order.
    label: integer labels `[B]` for a class-conditional flow.
    classifier: the classifier head, or None.
    class_loss_weight: weight of the class bits in the loss.
    loss_scale: multiplies the summed loss before differentiating.

  Returns:
    `(loss [B], bits_per_dim [B], gradients)`, one gradient (never None) per variable.
  """
  multiscale = flow_lib.multiscale_flow(flow)
  top_priors = [m for m in flow.submodules if isinstance(m, gb.TopPrior)]
  top_prior = top_priors[0] if top_priors else None
  batch_size = tf.shape(x)[0]
  if loss_scale is None:
    loss_scale = 1.0 / tf.cast(batch_size, x.dtype)
  num_dims = multiscale.latent_size
  # d (loss_scale * sum(loss)) / d log p(x_b): bits/dim = (-log p + const) / (D log 2).
  per_example_seed = -loss_scale / (num_dims * math.log(2.0))

  # Forward, no tape: only the factored-out latents and the top latent are kept.
  h, log_det = x, tf.zeros([], x.dtype)
  factored = []
  for level, prior in multiscale._stages():  # pylint: disable=protected-access
    for part in _parts(level):
      h, part_log_det = forward_and_log_det(part, h)
      log_det += part_log_det
    if prior is not None:
      h, part_log_det = forward_and_log_det(prior, h)
      log_det += part_log_det
      h, eps = split_channels(h)
      factored.append(eps)

  # The top of the loss: base density, top prior, classifier.
  top_variables = list(top_prior.trainable_variables) if top_prior is not None else []
  if classifier is not None:
    top_variables += list(classifier.trainable_variables)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(factored + [h] + top_variables)
    flat = multiscale.merge_latents(factored + [h])
    z, top_log_det = flat, tf.zeros([], x.dtype)
    if top_prior is not None:
      kwargs = {} if label is None or top_prior.num_classes is None else {'label': label}
      z = top_prior.forward(flat, **kwargs)
      top_log_det = top_prior.forward_log_det_jacobian(flat, event_ndims=1, **kwargs)
    log_prob = flow.distribution.log_prob(z) + top_log_det + tf.stop_gradient(log_det)
    bpd = flow_lib.bits_per_dim(log_prob, num_dims, num_bins)
    loss = bpd
    if classifier is not None:
      logits = classifier(h)
      class_bits = tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits) / math.log(2.0)
      loss = loss + class_loss_weight * class_bits
    total = tf.reduce_sum(loss) * loss_scale
  top_grads = tape.gradient(total, factored + [h] + top_variables)
  d_factored, dh = top_grads[: len(factored)], top_grads[len(factored)]
  grads = {
    v.ref(): g for v, g in zip(top_variables, top_grads[len(factored) + 1 :]) if g is not None
  }

  # Backward: rebuild each part's input from its output, one part at a time.
  stages = multiscale._stages()  # pylint: disable=protected-access
  done = []
  for (level, prior), eps, d_eps in reversed(
    list(zip(stages, factored + [None], list(d_factored) + [None]))
  ):
    if prior is not None:
      y, dy = tf.concat([h, eps], axis=-1), tf.concat([dh, d_eps], axis=-1)
      h, dh, done = _backprop(prior, y, dy, per_example_seed, batch_size, grads, done)
    for part in reversed(_parts(level)):
      h, dh, done = _backprop(part, h, dh, per_example_seed, batch_size, grads, done)
  return loss, bpd, [grads.get(v.ref(), tf.zeros_like(v)) for v in variables]
