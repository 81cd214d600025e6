"""Export for serving: a SavedModel whose signatures score, sample, encode and decode.

Every uint8 tensor in the export holds *bins*: integers in `[0, num_bins)` at the
model's precision (`num_bins = 2**n_bits`, or 17 for the digits), the values
`sample` returns. Scoring a uint8 image uses the centre of each bin,

    x = (bins + 0.5) / num_bins - 0.5
    log_prob = log p(x)                         (nats, continuous density)
    bits_per_dim = (-log_prob + D log(num_bins)) / (D log 2)

which is the training-time formula at the bin centre instead of uniform noise.
`log_prob_float` scores images already in model space `[-0.5, 0.5)`.

The exported functions hold no training-time logic (ActNorm is initialised and
frozen into the weights) and load with TensorFlow alone.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from glow_tf import data, runs
from glow_tf import flow as flow_lib

__all__ = ['ExportError', 'GlowServing', 'export_run', 'signature_names']


class ExportError(ValueError):
  """An export that cannot be written: names the path and what is wrong with it."""


class GlowServing(tf.Module):
  """The tf.Module that is saved: a flow and the serving functions around it."""

  def __init__(self, flow, num_bins: int, model_config: flow_lib.GlowConfig):
    super().__init__(name='glow_serving')
    self.flow = flow
    self._num_bins = num_bins
    self._image_shape = tuple(model_config.image_shape)
    self._num_dims = model_config.num_dims
    self._conditional = model_config.num_classes is not None
    self._latent_shapes = flow_lib.multiscale_flow(flow).latent_shapes
    images = tf.TensorSpec([None, None, None, None], tf.uint8, name='images')
    floats = tf.TensorSpec([None, None, None, None], tf.float32, name='x')
    label = [tf.TensorSpec([None], tf.int32, name='label')] if self._conditional else []
    latents = [
      tf.TensorSpec([None, None, None, None], tf.float32, name=f'z_{i}')
      for i in range(len(self._latent_shapes))
    ]
    sample_spec = [
      tf.TensorSpec([], tf.int32, name='num_samples'),
      tf.TensorSpec([], tf.float32, name='temperature'),
      tf.TensorSpec([], tf.int64, name='seed'),
    ]
    self.log_prob = tf.function(self._log_prob, input_signature=[images, *label])
    self.log_prob_float = tf.function(self._log_prob_float, input_signature=[floats, *label])
    self.sample = tf.function(self._sample, input_signature=[*sample_spec, *label])
    self.encode = tf.function(self._encode, input_signature=[images, *label])
    self.decode = tf.function(self._decode, input_signature=[*latents, *label])

  def _checked(self, images, name):
    """`images` with its static shape set, or an InvalidArgumentError naming both shapes."""
    return tf.ensure_shape(images, [None, *self._image_shape], name=f'check_{name}_shape')

  def _scores(self, x, label):
    log_prob = self.flow.log_prob(x, bijector_kwargs=flow_lib.conditional_kwargs(label))
    return {
      'log_prob': log_prob,
      'bits_per_dim': flow_lib.bits_per_dim(log_prob, self._num_dims, self._num_bins),
    }

  def _log_prob(self, images, label=None):
    return self._scores(data.centre(self._checked(images, 'images'), self._num_bins), label)

  def _log_prob_float(self, x, label=None):
    return self._scores(self._checked(x, 'x'), label)

  def _sample(self, num_samples, temperature, seed, label=None):
    # The int64 seed, bitcast losslessly to the stateless int32 pair TFP expects.
    x = flow_lib.sample(
      self.flow, num_samples, temperature=temperature, seed=tf.bitcast(seed, tf.int32), label=label
    )
    return {'images': tf.cast(data.to_pixels(x, self._num_bins), tf.uint8)}

  def _encode(self, images, label=None):
    x = data.centre(self._checked(images, 'images'), self._num_bins)
    latents = flow_lib.encode(self.flow, x, label=label)
    return {f'z_{i}': z for i, z in enumerate(latents)}

  def _decode(self, *latents_and_label):
    latents = list(latents_and_label[: len(self._latent_shapes)])
    label = latents_and_label[len(self._latent_shapes)] if self._conditional else None
    latents = [
      tf.ensure_shape(z, [None, *shape], name=f'check_z_{i}_shape')
      for i, (z, shape) in enumerate(zip(latents, self._latent_shapes))
    ]
    x = flow_lib.decode(self.flow, latents, label=label)
    return {'images': tf.cast(data.to_pixels(x, self._num_bins), tf.uint8), 'x': x}

  def tflite_log_prob(self) -> bytes:
    """The `log_prob` signature as a TFLite flatbuffer (builtin ops only).

    Traced with the static input shape `[None, H, W, C]`, so it needs no runtime
    shape check (TFLite has no EnsureShape); a wrong shape fails at resize.
    """
    scores = tf.function(lambda images: self._scores(data.centre(images, self._num_bins), None))
    concrete = scores.get_concrete_function(
      tf.TensorSpec([None, *self._image_shape], tf.uint8, name='images')
    )
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], self).convert()

  def signatures(self):
    return {
      'serving_default': self.log_prob,
      'log_prob': self.log_prob,
      'log_prob_float': self.log_prob_float,
      'sample': self.sample,
      'encode': self.encode,
      'decode': self.decode,
    }


def signature_names():
  return ('serving_default', 'log_prob', 'log_prob_float', 'sample', 'encode', 'decode')


def _check_export_dir(export_dir: str, overwrite: bool) -> None:
  if os.path.exists(export_dir):
    if not os.path.isdir(export_dir):
      raise ExportError(f'export_dir {export_dir!r} exists and is not a directory.')
    if os.listdir(export_dir) and not overwrite:
      raise ExportError(
        f'export_dir {export_dir!r} exists and is not empty; pass --overwrite to replace it.'
      )
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  if not os.access(parent, os.W_OK):
    raise ExportError(f'cannot write to {parent!r} (permission denied).')


def export_run(
  model_dir: str, export_dir: str, overwrite: bool = False, tflite: bool = False
) -> dict:
  """Writes a SavedModel of `model_dir`'s latest Polyak-averaged weights to `export_dir`.

  The export is written to a temporary directory beside `export_dir` and moved
  into place only when complete; an existing export is replaced only with
  `overwrite` and only after the new one is written.

  Returns:
    Facts about the export (path, checkpoint, step, signatures).

  Raises:
    runs.RunError, ExportError: naming the problem; nothing is written then.
  """
  _check_export_dir(export_dir, overwrite)
  run = runs.load_run(model_dir)
  if tflite and run.num_classes is not None:
    raise ExportError(
      '--tflite converts the log_prob of unconditional models only; '
      f'{model_dir!r} is class-conditional.'
    )
  module = GlowServing(run.flow, run.num_bins, run.model_config)
  parent = os.path.dirname(os.path.abspath(export_dir))
  staging = tempfile.mkdtemp(prefix='.glow_export-', dir=parent)
  try:
    tf.saved_model.save(module, staging, signatures=module.signatures())
    facts = dict(
      checkpoint=run.checkpoint,
      step=run.step,
      num_bins=run.num_bins,
      image_shape=list(run.model_config.image_shape),
      num_classes=run.model_config.num_classes,
      latent_shapes=[list(s) for s in module._latent_shapes],
      signatures=list(signature_names()),
      model=run.model_config.to_dict(),
    )
    if tflite:
      with open(os.path.join(staging, 'log_prob.tflite'), 'wb') as f:
        f.write(module.tflite_log_prob())
      facts['tflite'] = 'log_prob.tflite'
    os.makedirs(os.path.join(staging, 'assets.extra'), exist_ok=True)
    with open(os.path.join(staging, 'assets.extra', 'glow_tf.json'), 'w') as f:
      json.dump(facts, f, indent=2, sort_keys=True)
    if os.path.exists(export_dir):
      previous = f'{staging}.previous'
      os.rename(export_dir, previous)
      os.rename(staging, export_dir)
      shutil.rmtree(previous)
    else:
      os.rename(staging, export_dir)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)
  return dict(export_dir=export_dir, **facts)
