"""The pictures of `glow_tf.sample`: what a `FigureRequest` asks of a run, as PNG files.

Modes: grid (samples at several temperatures), reconstruct (test images next to
decode(encode(x))), interpolate (between pairs of test images, every level's
latent), class (one row per class, class-conditional models), manipulate (the
paper's attribute manipulation; on labelled data the attribute is a class pair,
from_class -> to_class).
"""

import dataclasses
import math
import os

import tensorflow as tf

from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import SampleError
from glow_tf.model import images, sampling
from glow_tf.tools import runs

__all__ = ['MODES', 'FigureRequest', 'check_output_dir', 'draw', 'draw_model_dir']

MODES = ('grid', 'reconstruct', 'interpolate', 'class', 'manipulate')
# Requests are refused up front, not after minutes of work and a traceback, when a PNG
# would be wider or taller than MAX_PNG_SIDE pixels, or a batch too large (runs.check_batch).
MAX_PNG_SIDE = 16384


@dataclasses.dataclass(frozen=True)
class FigureRequest:
  """What to draw, each option declared once (the flags of `glow_tf.sample` are these)."""

  mode: str = option('grid', 'What to draw.', choices=MODES)
  temperatures: tuple[float, ...] = option(
    (0.0, 0.5, 0.7, 0.85, 1.0),
    'grid: temperatures.',
    check=lambda ts: len(ts) > 0 and all(0 <= t < math.inf for t in ts),
    expected='one or more, all finite and >= 0',
  )
  temperature: float = option(
    0.7, 'class: sampling temperature.', minimum=0.0, check=math.isfinite, expected='finite, >= 0'
  )
  grid_size: int = option(
    8,
    'grid: N for an N x N grid per temperature, sampled in one batch. Refused up front if '
    f'the PNG would exceed {MAX_PNG_SIDE} pixels a side (N <= 240 for the 8x8 digits) or one '
    f'coupling activation of the batch {runs.MAX_ACTIVATION_BYTES // 2**30} GiB.',
    minimum=1,
  )
  num_images: int = option(
    8, 'reconstruct, manipulate: test images; interpolate: pairs.', minimum=1
  )
  steps: int = option(9, 'interpolate: frames per strip, ends included.', minimum=2)
  interpolation: str = option(
    'both', 'interpolate: how latents are interpolated.', choices=('linear', 'spherical', 'both')
  )
  classes: tuple[int, ...] | None = option(None, 'class: classes to draw (default: all).')
  per_class: int = option(8, 'class: samples per class.', minimum=1)
  from_class: int = option(
    3, 'manipulate: images of this class are edited, and the direction starts here.'
  )
  to_class: int = option(8, 'manipulate: the direction points to this class.')
  alphas: tuple[float, ...] = option(
    (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
    "manipulate: multiples of the direction added to each image's latents.",
    check=lambda alphas: len(alphas) > 0,
    expected='one or more multiples, e.g. 0,1 (got none: --alphas is empty)',
  )
  seed: int = option(
    0, 'Seed of the samples (an int32).', minimum=configs.INT32[0], maximum=configs.INT32[1]
  )

  def __post_init__(self):
    configs.validate(self)


def _write(output_dir, name, picture):
  return images.write_png(os.path.join(output_dir, name), picture)


def check_request(run: runs.Run, what: str, batch: int, rows: int, columns: int) -> None:
  """Refuses a drawing of `rows x columns` images, sampled or decoded `batch` at a time,
  whose PNG or batch would not fit (see MAX_PNG_SIDE, runs.check_batch).

  Raises:
    SampleError, runs.RunError: naming `what` asked for it and the largest size that fits.
  """
  height, width, channels = run.model_config.image_shape
  blank = tf.zeros([2, height, width, channels])
  one, two = (sampling.sheet(blank[:n], run.num_bins, n).shape[1] for n in (1, 2))
  cell, border = two - one, 2 * one - two  # A sheet of n columns is n * cell + border wide.
  side = max(rows, columns) * cell + border
  if side > MAX_PNG_SIDE:
    most = (MAX_PNG_SIDE - border) // cell
    raise SampleError(
      f'{what} asks for {rows} x {columns} images of {height}x{width} in one PNG, '
      f'{side} pixels a side; at most {most} a side fit in {MAX_PNG_SIDE} pixels.'
    )
  runs.check_batch(run, what, batch)


def check_output_dir(output_dir: str) -> None:
  """Refuses an --output_dir that is a file, or lies under one."""
  blocker = os.path.abspath(output_dir)
  while not os.path.exists(blocker):
    blocker = os.path.dirname(blocker)
  if not os.path.isdir(blocker):
    where = 'is' if blocker == os.path.abspath(output_dir) else f'lies under {blocker!r},'
    raise SampleError(
      f'--output_dir {output_dir!r} {where} a file; expected a directory for the PNGs.'
    )


def draw(run: runs.Run, request: FigureRequest, output_dir: str):
  """Writes the PNGs `request` asks for; returns (paths, one line of figures for the user)."""
  flow, num_bins, mode = run.flow, run.num_bins, request.mode
  if mode == 'grid':
    temperatures = request.temperatures
    num = request.grid_size**2
    check_request(
      run, f'--grid_size={request.grid_size}', num, request.grid_size, request.grid_size
    )
    label = tf.range(num) % run.num_classes if run.num_classes else None
    paths = [
      _write(
        output_dir,
        f'grid_t{t:g}.png',
        sampling.sample_grid(flow, num_bins, t, num, request.seed, label),
      )
      for t in temperatures
    ]
    return paths, f'{len(paths)} grids of {num} samples'
  if mode == 'reconstruct':
    count = request.num_images
    check_request(run, f'--num_images={count}', count, 2, count)
    x, label = runs.test_images(run, count)
    x_back, error = sampling.reconstruct(flow, x, label)
    picture = sampling.sheet(tf.concat([x, x_back], 0), num_bins, int(x.shape[0]))
    return (
      [_write(output_dir, 'reconstruct.png', picture)],
      f'max |x - decode(encode(x))| = {error:.3g} (pixel units [0, 1])',
    )
  if mode == 'interpolate':
    check_request(
      run,
      f'--num_images={request.num_images} --steps={request.steps}',
      request.num_images,
      1,
      request.steps,
    )
    x, label = runs.test_images(run, 2 * request.num_images)
    if int(x.shape[0]) < 2:
      raise SampleError('interpolate needs at least two test images.')
    pairs = int(x.shape[0]) // 2
    methods = (
      ['linear', 'spherical'] if request.interpolation == 'both' else [request.interpolation]
    )
    paths = []
    for method in methods:
      frames = sampling.interpolate(
        flow,
        x[:pairs],
        x[pairs : 2 * pairs],
        request.steps,
        method,
        None if label is None else label[:pairs],
        None if label is None else label[pairs:],
      )
      for i in range(pairs):
        paths.append(
          _write(
            output_dir,
            f'interpolate_{method}_{i}.png',
            sampling.sheet(frames[:, i], num_bins, request.steps),
          )
        )
    return paths, f'{pairs} pairs x {len(methods)} interpolation(s), {request.steps} frames'
  if mode == 'class':
    if not run.num_classes:
      raise SampleError(
        f'--mode=class needs a class-conditional model; {run.model_dir!r} was '
        'trained without --class_conditional.'
      )
    classes = list(request.classes) if request.classes else list(range(run.num_classes))
    check_request(
      run,
      f'{len(classes)} classes x --per_class={request.per_class}',
      len(classes) * request.per_class,
      len(classes),
      request.per_class,
    )
    rows = sampling.class_samples(
      flow, classes, request.per_class, request.temperature, request.seed
    )
    picture = sampling.sheet(tf.reshape(rows, [-1, *rows.shape[2:]]), num_bins, request.per_class)
    return [_write(output_dir, 'classes.png', picture)], f'{len(classes)} classes'
  alphas = list(request.alphas)
  check_request(
    run,
    f'--num_images={request.num_images} x {len(alphas)} alphas',
    request.num_images,
    1,
    len(alphas),
  )
  x_from, label_from = runs.test_images(run, 10_000, request.from_class)
  x_to, label_to = runs.test_images(run, 10_000, request.to_class)
  vector = sampling.manipulation_vector(flow, x_to, x_from, label_to, label_from)
  count = min(request.num_images, int(x_from.shape[0]))
  frames = sampling.manipulate(
    flow, x_from[:count], vector, alphas, None if label_from is None else label_from[:count]
  )
  paths = [
    _write(output_dir, f'manipulate_{i}.png', sampling.sheet(frames[:, i], num_bins, len(alphas)))
    for i in range(count)
  ]
  return paths, (
    f'direction class {request.from_class} -> {request.to_class} from '
    f'{int(x_from.shape[0])} and {int(x_to.shape[0])} test images; alphas {alphas}'
  )


def draw_model_dir(
  model_dir: str,
  request: FigureRequest,
  output_dir: str | None = None,
  checkpoint: str = 'best',
  averaged: bool | None = None,
):
  """Draws `request` for the run in `model_dir` into `output_dir` (default RUN/figures),
  with the weights `checkpoint` and `averaged` choose (see `runs.load_run`).

  Returns:
    `(output_dir, paths, one line of figures for the user)`.

  Raises:
    UserError: an output directory, run or request that cannot be used; nothing is
      written then.
  """
  output_dir = output_dir or os.path.join(model_dir, 'figures')
  check_output_dir(output_dir)
  run = runs.load_run(model_dir, checkpoint, averaged)
  paths, summary = draw(run, request, output_dir)
  return output_dir, paths, summary
