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

layer by layer (`flow_bijector.reversible_backward`). A coupling layer, whose
network holds nearly all the compute, does better than invert-then-recompute:
it passes its kept half through unchanged, so one forward of its network on that
half, under the tape, both rebuilds the transformed half and is differentiated
(`affine_coupling.coupling_backward`).

Memory is then one layer's activations whatever the depth, for one more forward
pass of the networks' compute (four network passes per step, not three). A
level's flow steps go through `CompiledSteps.forward` and
`CompiledSteps.backward` (one step traced once; stacked steps run in a
`tf.while_loop` over their rows), so the trace too stays flat in depth.
The rebuilt inputs differ from the stored ones by float rounding, so the
gradients agree with ordinary backprop to ~1e-5 relative in float32 (checked in
tests/training/reversible_test.py).
"""

from collections.abc import Sequence

import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.affine_coupling import split_channels
from glow_tf.bijectors.flow_bijector import forward_and_log_det, reversible_backward
from glow_tf.training.loss import Loss

__all__ = ['loss_and_gradients']


def _backprop(part, y, dy, d_log_det, grads, after=()):
  """Rebuilds `part`'s input from `y`, backpropagates `dy`; adds weight grads to `grads`.

  The rebuild waits for `dy` and for `after` (the previous part's gradients):
  without those dependencies a graph executor may run every part's rebuild and
  recomputation at once, holding all their activations. Returns `(x, dx, done)`,
  `done` being this part's gradients for the next part to wait on.
  """
  with tf.control_dependencies([dy, *after]):
    y = tf.identity(y)
  # A step's own variables, or the stacked ones behind its rows.
  x, dx, pairs = reversible_backward(part, y, dy, d_log_det, nn.trained)
  done = []
  for variable, grad in pairs:
    if grad is not None:
      grad = tf.convert_to_tensor(grad)  # A stacked variable's row gradient is sparse.
      key = variable.ref()
      grads[key] = grad if key not in grads else grads[key] + grad
      done.append(grad)
  return x, dx, [dx, *done]


@tf.autograph.experimental.do_not_convert
def loss_and_gradients(
  flow,
  x: tf.Tensor,
  loss: Loss,
  variables: Sequence[tf.Variable],
  label=None,
  classifier=None,
  loss_scale=None,
):
  """Per-example loss and bits/dim of images `x`, and gradients without stored activations.

  The loss is `loss` (bits/dim, plus the weighted class bits of a class-conditional
  flow); the gradients are those of `sum(loss) * loss_scale` (default `1 / batch`,
  the mean).

  Args:
    flow: a flow built by `glow_tf.build_glow`.
    x: images `[B, H, W, C]`, dequantised, in `[-0.5, 0.5)`.
    loss: the training loss.
    variables: the variables to differentiate (e.g. the flow's and the
      classifier's trainable variables); the result follows their order.
    label: integer labels `[B]` for a class-conditional flow.
    classifier: the classifier head, or None.
    loss_scale: multiplies the summed loss before differentiating.

  Returns:
    `(loss [B], bits_per_dim [B], gradients)`, one gradient (never None) per variable.

  Traced for XLA (`tf.function(jit_compile=True)`), call it within
  `glow_tf.bijectors.compiled_steps.for_xla()`.
  """
  multiscale = flow.multiscale
  batch_size = tf.shape(x)[0]
  if loss_scale is None:
    loss_scale = 1.0 / tf.cast(batch_size, x.dtype)

  # Forward, no tape: only the factored-out latents and the top latent are kept.
  h, log_det = x, tf.zeros([batch_size], x.dtype)
  factored = []
  for index, (_, prior) in enumerate(multiscale.stages()):
    parts, compiled = multiscale.run_plan(index)
    for part in parts:
      h, part_log_det = forward_and_log_det(part, h)
      log_det += part_log_det
    if compiled:
      h, steps_log_det = compiled.forward(h, untaped=True)
      log_det += steps_log_det
    if prior is not None:
      h, part_log_det = forward_and_log_det(prior, h)
      log_det += part_log_det
      h, eps = split_channels(h)
      factored.append(eps)

  # The top of the loss, with a tape: base density, top prior, classifier, and the
  # seed d loss / d log_det that every part's log-det passes on.
  top_variables = list(flow.top_prior.trainable_variables) if flow.top_prior is not None else []
  if classifier is not None:
    top_variables += list(classifier.trainable_variables)
  watched = factored + [h, log_det]
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(watched + top_variables)
    flat = multiscale.merge_latents(factored + [h])
    losses, bpd = loss.from_latent(flow, classifier, flat, log_det, label)
    total = tf.reduce_sum(losses) * loss_scale
  top_grads = tape.gradient(total, watched + top_variables)
  d_factored, dh, d_log_det = (
    top_grads[: len(factored)],
    top_grads[len(factored)],
    top_grads[len(factored) + 1],
  )
  grads = {v.ref(): g for v, g in zip(top_variables, top_grads[len(watched) :]) if g is not None}

  # Backward: rebuild each part's input from its output, one part at a time.
  done = []
  for index, ((_, prior), eps, d_eps) in reversed(
    list(enumerate(zip(multiscale.stages(), factored + [None], list(d_factored) + [None])))
  ):
    if prior is not None:
      y, dy = tf.concat([h, eps], axis=-1), tf.concat([dh, d_eps], axis=-1)
      h, dh, done = _backprop(prior, y, dy, d_log_det, grads, done)
    parts, compiled = multiscale.run_plan(index)
    if compiled:  # The K steps, one traced step's activations at a time.
      h, dh, done = compiled.backward(h, dh, d_log_det, grads, done)
    for part in reversed(parts):
      h, dh, done = _backprop(part, h, dh, d_log_det, grads, done)
  return losses, bpd, [grads[v.ref()] if v.ref() in grads else tf.zeros_like(v) for v in variables]
