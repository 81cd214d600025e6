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

from glow_tf.bijectors import compiled_steps
from glow_tf.errors import ExportError
from glow_tf.model import flow as flow_lib
from glow_tf.model import pixels
from glow_tf.model.config import GlowConfig
from glow_tf.tools import runs
from glow_tf.training import rundir

__all__ = ['GlowServing', 'export_run', 'signature_names']


class GlowServing(tf.Module):
  """The tf.Module that is saved: a flow and the serving functions around it."""

  def __init__(self, flow, num_bins: int, model_config: GlowConfig):
    super().__init__(name='glow_serving')
    self.flow = flow
    self._num_bins = num_bins
    self._image_shape = tuple(model_config.image_shape)
    self._num_dims = model_config.num_dims
    self._conditional = model_config.num_classes is not None
    self._dtype = tf.as_dtype(model_config.dtype)
    self._latent_shapes = flow.multiscale.latent_shapes
    # Every image and latent input is declared [None, ...its shape], so a client
    # (saved_model_cli show, TF Serving's metadata) sees what to send.
    images = tf.TensorSpec([None, *self._image_shape], tf.uint8, name='images')
    floats = tf.TensorSpec([None, *self._image_shape], self._dtype, name='x')
    label = [tf.TensorSpec([None], tf.int32, name='label')] if self._conditional else []
    latents = [
      tf.TensorSpec([None, *shape], self._dtype, name=f'z_{i}')
      for i, shape in enumerate(self._latent_shapes)
    ]
    sample_spec = [
      tf.TensorSpec([], tf.int32, name='num_samples'),
      tf.TensorSpec([], tf.float32, name='temperature'),
      tf.TensorSpec([], tf.int64, name='seed'),
    ]
    self.log_prob = tf.function(self._log_prob, input_signature=[images, *label], autograph=False)
    self.log_prob_float = tf.function(
      self._log_prob_float, input_signature=[floats, *label], autograph=False
    )
    self.sample = tf.function(self._sample, input_signature=[*sample_spec, *label], autograph=False)
    self.encode = tf.function(self._encode, input_signature=[images, *label], autograph=False)
    self.decode = tf.function(self._decode, input_signature=[*latents, *label], autograph=False)

  def _checked(self, images, name):
    """`images` with its static shape set, or an InvalidArgumentError naming both shapes."""
    return tf.ensure_shape(images, [None, *self._image_shape], name=f'check_{name}_shape')

  def _checked_bins(self, images):
    """uint8 `images` once their shape fits and every value is a bin, `0 .. num_bins - 1`."""
    images = self._checked(images, 'images')
    if self._num_bins >= 256:  # Every uint8 is a bin.
      return images
    check = tf.debugging.assert_less(
      images,
      tf.constant(self._num_bins, tf.uint8),
      message=(
        f'images hold bins 0..{self._num_bins - 1} (this model has num_bins={self._num_bins}; '
        'reduce 8-bit pixels as floor(pixel * num_bins / 256)); got a larger value'
      ),
    )
    with tf.control_dependencies([check]):
      return tf.identity(images)

  def _finite(self, tensor, what: str):
    """`tensor`, or an InvalidArgumentError when it holds NaN or inf."""
    return tf.debugging.assert_all_finite(tensor, f'{what} must be finite; got NaN or inf')

  def _scores(self, x, label):
    with compiled_steps.untaped():  # No signature is differentiated: loops, flat in depth.
      log_prob = self.flow.log_prob(x, bijector_kwargs=flow_lib.conditional_kwargs(label))
    return {
      'log_prob': log_prob,
      'bits_per_dim': flow_lib.bits_per_dim(log_prob, self._num_dims, self._num_bins),
    }

  def _log_prob(self, images, label=None):
    return self._scores(pixels.centre(self._checked_bins(images), self._num_bins), label)

  def _log_prob_float(self, x, label=None):
    return self._scores(self._checked(x, 'x'), label)

  def _sample(self, num_samples, temperature, seed, label=None):
    check = tf.debugging.assert_non_negative(
      num_samples, message='num_samples must be >= 0; got a negative one'
    )
    with tf.control_dependencies([check]):
      num_samples = tf.identity(num_samples)
    # The int64 seed, bitcast losslessly to the stateless int32 pair TFP expects.
    seed = tf.bitcast(seed, tf.int32)
    with compiled_steps.untaped():
      x = flow_lib.sample(self.flow, num_samples, temperature=temperature, seed=seed, label=label)
    return {'images': tf.cast(pixels.to_pixels(x, self._num_bins), tf.uint8)}

  def _encode(self, images, label=None):
    x = pixels.centre(self._checked_bins(images), self._num_bins)
    with compiled_steps.untaped():
      latents = flow_lib.encode(self.flow, x, label=label)
    return {f'z_{i}': z for i, z in enumerate(latents)}

  def _decode(self, *latents_and_label):
    latents = list(latents_and_label[: len(self._latent_shapes)])
    label = latents_and_label[len(self._latent_shapes)] if self._conditional else None
    latents = [
      self._finite(tf.ensure_shape(z, [None, *shape], name=f'check_z_{i}_shape'), f'z_{i}')
      for i, (z, shape) in enumerate(zip(latents, self._latent_shapes))
    ]
    # Finite latents far outside N(0, I) can still overflow: no image is made of inf.
    with compiled_steps.untaped():
      x = self._finite(flow_lib.decode(self.flow, latents, label=label), 'the decoded x')
    return {'images': tf.cast(pixels.to_pixels(x, self._num_bins), tf.uint8), 'x': x}

  def tflite_log_prob(self) -> bytes:
    """The `log_prob` signature as a TFLite flatbuffer (builtin ops only).

    Traced with the static input shape `[None, H, W, C]`. TFLite has no EnsureShape
    and lets a caller resize the input to any shape, so the images are reshaped to
    `[batch, H, W, C]` with `batch` their first dimension: any other image size fails
    in that reshape instead of being read as a different number of images.
    """

    def scores(images):
      batch = tf.shape(images)[0]
      images = tf.reshape(images, tf.stack([batch, *self._image_shape]))
      return self._scores(pixels.centre(images, self._num_bins), None)

    scores = tf.function(scores, autograph=False)
    with compiled_steps.per_layer():  # TFLite needs every op inline.
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


# What export_run writes: a SavedModel, its facts, and optionally the TFLite file.
FACTS_FILE = os.path.join('assets.extra', 'glow_tf.json')
EXPORT_ENTRIES = frozenset(
  {'saved_model.pb', 'fingerprint.pb', 'variables', 'assets', 'assets.extra', 'log_prob.tflite'}
)
SEARCH_LIMIT = 10_000  # Entries looked at below a directory --overwrite would replace.


def _is_run(path: str) -> bool:
  """Whether `path` is (or was) a training run directory."""
  return any(
    os.path.exists(os.path.join(path, name))
    for name in (rundir.CONFIG_FILE, rundir.CHECKPOINT_DIR, rundir.LOCK_FILE)
  )


def _run_at_or_below(path: str) -> str | None:
  """A run directory at or below `path`, or None; ExportError if there is too much to search."""
  seen = 0
  for root, dirs, files in os.walk(path):
    if _is_run(root):
      return root
    seen += len(dirs) + len(files)
    if seen > SEARCH_LIMIT:
      raise ExportError(
        f'export_dir {path!r} holds more than {SEARCH_LIMIT} entries; an export holds a few. '
        'It is not replaced; choose another --export_dir.'
      )
  return None


def _ancestors(path: str):
  """The directories above `path`, nearest first."""
  while os.path.dirname(path) != path:
    path = os.path.dirname(path)
    yield path


def _check_export_dir(export_dir: str, overwrite: bool, model_dir: str) -> str:
  """Returns `export_dir` resolved, or raises ExportError if it must not be written.

  An export never replaces a run or anything holding one: `export_dir` may not be
  `model_dir`, lie above it, lie inside a run's checkpoints, or be a run itself.
  `overwrite` replaces only a previous glow_tf export (its SavedModel files and
  `assets.extra/glow_tf.json`, nothing else, and no run below it).
  """
  target, run = os.path.realpath(export_dir), os.path.realpath(model_dir)
  if target == run or run.startswith(target + os.sep):
    where = 'is' if target == run else 'contains'
    raise ExportError(
      f'export_dir {export_dir!r} {where} the run directory {model_dir!r}; an export goes '
      f'in a directory of its own, e.g. {os.path.join(model_dir, "export")!r}.'
    )
  for parent in [target, *_ancestors(target)]:
    if os.path.basename(parent) == rundir.CHECKPOINT_DIR and _is_run(os.path.dirname(parent)):
      raise ExportError(
        f'export_dir {export_dir!r} is inside the checkpoints of the run '
        f'{os.path.dirname(parent)!r}; an export goes in a directory of its own.'
      )
  if os.path.exists(target):
    if not os.path.isdir(target):
      raise ExportError(f'export_dir {export_dir!r} exists and is not a directory.')
    if _is_run(target):
      raise ExportError(
        f'export_dir {export_dir!r} is a training run directory; it is never replaced.'
      )
    entries = set(os.listdir(target))
    if entries and not overwrite:
      raise ExportError(
        f'export_dir {export_dir!r} exists and is not empty; pass --overwrite to replace it.'
      )
    if entries:
      if not os.path.isfile(os.path.join(target, 'saved_model.pb')) or not os.path.isfile(
        os.path.join(target, FACTS_FILE)
      ):
        raise ExportError(
          f'export_dir {export_dir!r} is not a glow_tf export (expected saved_model.pb and '
          f'{FACTS_FILE}); --overwrite only replaces a previous export.'
        )
      others = sorted(entries - EXPORT_ENTRIES)
      if others:
        raise ExportError(
          f'export_dir {export_dir!r} holds files an export does not write: {others[:5]}; '
          '--overwrite only replaces a previous export, and would delete them.'
        )
      below = _run_at_or_below(target)
      if below:
        raise ExportError(
          f'export_dir {export_dir!r} holds the training run {below!r}; it is never replaced.'
        )
  parent = os.path.dirname(target)
  blocker = parent
  while not os.path.exists(blocker):
    blocker = os.path.dirname(blocker)
  if not os.path.isdir(blocker):
    raise ExportError(f'export_dir {export_dir!r} lies under {blocker!r}, which is a file.')
  os.makedirs(parent, exist_ok=True)
  if not os.access(parent, os.W_OK):
    raise ExportError(f'cannot write to {parent!r} (permission denied).')
  return target


def export_run(
  model_dir: str,
  export_dir: str,
  overwrite: bool = False,
  tflite: bool = False,
  checkpoint: str = 'best',
  averaged: bool | None = None,
) -> dict:
  """Writes a SavedModel of `model_dir`'s best weights (or those `checkpoint` and
  `averaged` choose: see `runs.load_run`) to `export_dir`.

  The export is written to a temporary directory beside `export_dir` and moved
  into place only when complete; an existing export is replaced only with
  `overwrite` and only after the new one is written.

  Returns:
    Facts about the export (path, checkpoint, step, signatures).

  Raises:
    RunError, ExportError: naming the problem; nothing is written then.
  """
  target = _check_export_dir(export_dir, overwrite, model_dir)
  run = runs.load_run(model_dir, checkpoint, averaged)
  if tflite and run.num_classes is not None:
    raise ExportError(
      '--tflite converts the log_prob of unconditional models only; '
      f'{model_dir!r} is class-conditional.'
    )
  module = GlowServing(run.flow, run.num_bins, run.model_config)
  parent = os.path.dirname(target)
  staging = tempfile.mkdtemp(prefix='.glow_export-', dir=parent)
  try:
    tf.saved_model.save(module, staging, signatures=module.signatures())
    facts = dict(
      checkpoint=run.checkpoint,
      step=run.step,
      averaged=run.averaged,
      num_bins=run.num_bins,
      image_shape=list(run.model_config.image_shape),
      num_classes=run.model_config.num_classes,
      latent_shapes=[list(s) for s in run.flow.multiscale.latent_shapes],
      signatures=list(signature_names()),
      model=run.model_config.to_dict(),
    )
    if tflite:
      with open(os.path.join(staging, 'log_prob.tflite'), 'wb') as f:
        f.write(module.tflite_log_prob())
      facts['tflite'] = 'log_prob.tflite'
    os.makedirs(os.path.join(staging, 'assets.extra'), exist_ok=True)
    with open(os.path.join(staging, FACTS_FILE), 'w') as f:
      json.dump(facts, f, indent=2, sort_keys=True)
    if os.path.exists(target):  # Empty, or a previous export (_check_export_dir).
      previous = f'{staging}.previous'
      os.rename(target, previous)
      os.rename(staging, target)
      shutil.rmtree(previous)
    else:
      os.rename(staging, target)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)
  return dict(export_dir=export_dir, **facts)
