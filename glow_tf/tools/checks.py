"""Proves a trained model is a bijection, layer by layer (`glow_tf.check` prints the report).

For a run's weights, on real test images, per level and per bijector:

  round_trip      max |inverse(forward(x)) - x| at each layer's own input; passes
                  when <= 1e-4 * (1 + max |x|) (float32 rounding through one layer)
  log_det         the analytic log-det against log|det| of the autodiff Jacobian,
                  in float64 on a small spatial crop of the layer's input; passes
                  when the relative error is <= 1e-6
  condition       condition number of every 1x1 convolution's weight; <= 1e4
  actnorm         every ActNorm (flow and networks) is initialised
  nonfinite       non-finite values in each layer's output: 0
  model           the whole encode/decode round trip in pixel units; <= 1e-3, and
                  no non-finite value in the latents or the reconstruction
"""

import contextlib
import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

import glow_tf
from glow_tf import bijectors as gb
from glow_tf import nn
from glow_tf.bijectors.flow_bijector import forward_and_log_det, inverse_and_log_det
from glow_tf.errors import UserError
from glow_tf.model import health
from glow_tf.tools import runs

__all__ = ['CheckReport', 'Figure', 'check_model_dir', 'check_run', 'crop_problem']

MIN_CROP, MAX_CROP = 2, 16


def crop_problem(crop: int) -> str | None:
  """Why `crop` cannot size the Jacobian crops, or None if it can."""
  if not isinstance(crop, int) or crop % 2 or not MIN_CROP <= crop <= MAX_CROP:
    return f'crop must be an even size in {MIN_CROP}..{MAX_CROP}; got {crop!r}.'
  return None


ROUND_TRIP_RTOL = 1e-4
LOG_DET_RTOL = 1e-6
CONDITION_MAX = 1e4
MODEL_ROUND_TRIP_MAX = 1e-3


@dataclasses.dataclass
class Figure:
  """One checked figure."""

  check: str
  layer: str
  level: int | None
  value: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return bool(self.value <= self.tolerance)  # NaN fails.


def _float64_copy(run: runs.Run):
  """The run's flow rebuilt in float64 with the same weights, for exact Jacobians.

  At full precision: a bfloat16 run's networks are checked as float64 too (the
  round trip checks the run's own precision).
  """
  flow = glow_tf.build_glow(
    dataclasses.replace(run.model_config, dtype='float64', precision='float32')
  )
  for target, source in zip(flow.variables, run.flow.variables):
    target.assign(tf.cast(source, target.dtype))
  return flow


def _not_pfor_retracing(record) -> bool:
  """False for TF's warning that the Jacobian's pfor function was traced again.

  `tape.jacobian` traces a function per call, and every layer's Jacobian has its own
  shape: from the sixth layer on TensorFlow warned 'N out of the last N calls to
  <function pfor.<locals>.f> triggered tf.function retracing', which the check
  cannot avoid and the user cannot act on.
  """
  message = record.getMessage()
  return not ('pfor.<locals>' in message and 'triggered tf.function retracing' in message)


@contextlib.contextmanager
def _expected_retracing():
  logger = tf.get_logger()
  logger.addFilter(_not_pfor_retracing)
  try:
    yield
  finally:
    logger.removeFilter(_not_pfor_retracing)


def _jacobian_log_det(bijector, x, kwargs):
  """(analytic, autodiff) log|det J| of `bijector` at `x` (one example)."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y, log_det = forward_and_log_det(bijector, x, **kwargs)
  if isinstance(bijector, gb.TopPrior):  # Elementwise: log|det| sums its diagonal's logs.
    autodiff = float(tf.reduce_sum(tf.math.log(tf.abs(tape.gradient(y, x)))))
  else:
    size = int(np.prod(x.shape))
    jacobian = tf.reshape(tape.jacobian(y, x), [size, size]).numpy()
    sign, log_abs_det = np.linalg.slogdet(jacobian)
    autodiff = float(log_abs_det) if sign != 0 else -math.inf
  return float(tf.reduce_sum(log_det)), autodiff


def _crop(x, size):
  """The first example, cropped to `size x size` pixels (an even size keeps squeezes valid)."""
  if x.shape.rank == 2:
    return x[:1]
  return x[:1, : min(size, x.shape[1]), : min(size, x.shape[2])]


def _condition(bijector):
  weight = (
    (bijector.weight() if isinstance(bijector, gb.InvertibleConv1x1) else bijector.weight)
    .numpy()
    .astype(np.float64)
  )
  return float(np.linalg.cond(weight))


def check_run(run: runs.Run, x, label=None, crop: int = 4) -> list[Figure]:
  """Every figure of the checks above, for images `x` (model space) of `run`."""
  problem = crop_problem(crop)
  if problem:
    raise UserError(problem)
  layers = [m for m in run.flow.submodules if isinstance(m, nn.ActNormLayer)]
  flags = nn.values_of([layer.initialized for layer in layers])
  missing = [layer.name for layer, done in zip(layers, flags) if not done]
  figures = [Figure('actnorm', ', '.join(missing) or f'all {len(layers)}', None, len(missing), 0.0)]
  for leaf, x_in, y, _ in health.walk(run.flow, x, label):
    name, level, bijector = leaf.name, leaf.level, leaf.bijector
    figures.append(Figure('nonfinite', name, level, health.count_nonfinite(y), 0.0))
    x_back, _ = inverse_and_log_det(bijector, y, **health.leaf_kwargs(bijector, label))
    error = float(tf.reduce_max(tf.abs(x_back - x_in)))
    scale = 1.0 + float(tf.reduce_max(tf.abs(x_in)))
    figures.append(Figure('round_trip', name, level, error, ROUND_TRIP_RTOL * scale))
    if isinstance(bijector, (gb.InvertibleConv1x1, gb.PlainConv1x1)):
      figures.append(Figure('condition', name, level, _condition(bijector), CONDITION_MAX))
  label64 = None if label is None else label[:1]
  for leaf, x_in, _, _ in health.walk(_float64_copy(run), tf.cast(x, tf.float64), label):
    with _expected_retracing():
      analytic, autodiff = _jacobian_log_det(
        leaf.bijector, _crop(x_in, crop), health.leaf_kwargs(leaf.bijector, label64)
      )
    error = abs(analytic - autodiff) / max(1.0, abs(autodiff))
    figures.append(Figure('log_det', leaf.name, leaf.level, error, LOG_DET_RTOL))
  latents = glow_tf.encode(run.flow, x, label=label)
  x_back = glow_tf.decode(run.flow, [tf.identity(z) for z in latents], label=label)
  error = float(tf.reduce_max(tf.abs(x_back - x)))
  figures.append(Figure('model_round_trip', 'encode/decode', None, error, MODEL_ROUND_TRIP_MAX))
  nonfinite = sum(health.count_nonfinite(t) for t in latents + [x_back])
  figures.append(Figure('model_nonfinite', 'latents and reconstruction', None, nonfinite, 0.0))
  return figures


def table(figures: list[Figure]) -> str:
  """The figures as a fixed-width table, one line each."""
  lines = [f'{"check":17s} {"layer":52s} {"value":>11s} {"tolerance":>10s}  ok']
  for f in figures:
    lines.append(
      f'{f.check:17s} {f.layer[:52]:52s} {f.value:11.3g} {f.tolerance:10.3g}  '
      f'{"yes" if f.ok else "NO"}'
    )
  return '\n'.join(lines)


@dataclasses.dataclass
class CheckReport:
  """The checks of one run: which weights, and every figure."""

  model_dir: str
  checkpoint: str
  step: int
  figures: list[Figure]

  @property
  def failed(self) -> list[Figure]:
    return [f for f in self.figures if not f.ok]

  def to_dict(self) -> dict[str, Any]:
    return dict(
      model_dir=self.model_dir,
      checkpoint=self.checkpoint,
      step=self.step,
      ok=not self.failed,
      figures=[dict(dataclasses.asdict(f), ok=f.ok) for f in self.figures],
    )

  def summary(self) -> str:
    """The table, then one line per failed figure."""
    return (
      table(self.figures) + f'\n{self.checkpoint} (step {self.step}): {len(self.figures)} figures, '
      f'{len(self.failed)} outside tolerance'
      + ''.join(
        f'\n  FAILED {f.check} {f.layer}: {f.value:.3g} (tolerance {f.tolerance:.3g})'
        for f in self.failed
      )
    )


def check_model_dir(
  model_dir: str,
  num_images: int = 8,
  crop: int = 4,
  checkpoint: str = 'best',
  averaged: bool | None = None,
) -> CheckReport:
  """Checks the run in `model_dir` on `num_images` of its test images.

  Raises:
    UserError: for a run that cannot be loaded, or a request that cannot be met.
  """
  run = runs.load_run(model_dir, checkpoint, averaged)
  runs.check_batch(run, f'--num_images={num_images}', num_images)
  x, label = runs.test_images(run, num_images)
  return CheckReport(model_dir, run.checkpoint, run.step, check_run(run, x, label, crop))
