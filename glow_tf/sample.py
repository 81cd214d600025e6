"""Pictures from a trained Glow: `python -m glow_tf.sample --model_dir=RUN --mode=grid`.

Modes: grid (samples at several temperatures), reconstruct (test images next to
decode(encode(x))), interpolate (between pairs of test images, every level's
latent), class (one row per class, class-conditional models), manipulate (the
paper's attribute manipulation; on labelled data the attribute is a class pair,
--from_class -> --to_class). PNGs go to --output_dir (default RUN/figures).
"""

import os

import tensorflow as tf
from absl import flags, logging

from glow_tf import cli, images, runs, sample_lib
from glow_tf.sample_lib import SampleError

FLAGS = flags.FLAGS

MODES = ('grid', 'reconstruct', 'interpolate', 'class', 'manipulate')
# Requests are refused up front, not after minutes of work and a traceback, when a PNG
# would be wider or taller than MAX_PNG_SIDE pixels, or a batch too large (runs.check_batch).
MAX_PNG_SIDE = 16384
flags.DEFINE_string('model_dir', None, 'Run directory written by glow_tf.train.')
flags.DEFINE_enum('mode', 'grid', list(MODES), 'What to draw.')
flags.DEFINE_string('output_dir', None, 'Where PNGs go. Default: <model_dir>/figures.')
flags.DEFINE_list('temperatures', ['0', '0.5', '0.7', '0.85', '1.0'], 'grid: temperatures.')
flags.DEFINE_float('temperature', 0.7, 'class: sampling temperature.', lower_bound=0.0)
flags.DEFINE_integer(
  'grid_size',
  8,
  'grid: N for an N x N grid per temperature, sampled in one batch. Refused up front if '
  f'the PNG would exceed {MAX_PNG_SIDE} pixels a side (N <= 240 for the 8x8 digits) or one '
  f'coupling activation of the batch {runs.MAX_ACTIVATION_BYTES // 2**30} GiB.',
  lower_bound=1,
)
flags.DEFINE_integer(
  'num_images', 8, 'reconstruct, manipulate: test images; interpolate: pairs.', lower_bound=1
)
flags.DEFINE_integer('steps', 9, 'interpolate: frames per strip, ends included.', lower_bound=2)
flags.DEFINE_enum(
  'interpolation',
  'both',
  ['linear', 'spherical', 'both'],
  'interpolate: how latents are interpolated.',
)
flags.DEFINE_list('classes', None, 'class: classes to draw (default: all).')
flags.DEFINE_integer('per_class', 8, 'class: samples per class.', lower_bound=1)
flags.DEFINE_integer(
  'from_class', 3, 'manipulate: images of this class are edited, and the direction starts here.'
)
flags.DEFINE_integer('to_class', 8, 'manipulate: the direction points to this class.')
flags.DEFINE_list(
  'alphas',
  ['-1', '-0.5', '0', '0.5', '1', '1.5', '2'],
  "manipulate: multiples of the direction added to each image's latents.",
)
flags.DEFINE_integer(
  'seed', 0, 'Seed of the samples (an int32).', lower_bound=-(2**31), upper_bound=2**31 - 1
)
flags.DEFINE_bool('averaged', True, 'Use the Polyak-averaged weights (as evaluation does).')
flags.mark_flag_as_required('model_dir')


def _floats(name, values):
  try:
    return [float(v) for v in values]
  except ValueError as e:
    raise SampleError(f'--{name} must be numbers; got {",".join(values)!r}.') from e


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
  one, two = (sample_lib.sheet(blank[:n], run.num_bins, n).shape[1] for n in (1, 2))
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


def draw(run: runs.Run, mode: str, output_dir: str):
  """Writes the PNGs of `mode`; returns (paths, one line of figures for the user)."""
  flow, num_bins = run.flow, run.num_bins
  if mode == 'grid':
    temperatures = _floats('temperatures', FLAGS.temperatures)
    if not temperatures or min(temperatures) < 0:
      raise SampleError(f'--temperatures must be >= 0 and not empty; got {temperatures}.')
    num = FLAGS.grid_size**2
    check_request(run, f'--grid_size={FLAGS.grid_size}', num, FLAGS.grid_size, FLAGS.grid_size)
    label = tf.range(num) % run.num_classes if run.num_classes else None
    paths = [
      _write(
        output_dir,
        f'grid_t{t:g}.png',
        sample_lib.sample_grid(flow, num_bins, t, num, FLAGS.seed, label),
      )
      for t in temperatures
    ]
    return paths, f'{len(paths)} grids of {num} samples'
  if mode == 'reconstruct':
    count = FLAGS.num_images
    check_request(run, f'--num_images={count}', count, 2, count)
    x, label = runs.test_images(run, count)
    x_back, error = sample_lib.reconstruct(flow, x, label)
    picture = sample_lib.sheet(tf.concat([x, x_back], 0), num_bins, int(x.shape[0]))
    return (
      [_write(output_dir, 'reconstruct.png', picture)],
      f'max |x - decode(encode(x))| = {error:.3g} (pixel units [0, 1])',
    )
  if mode == 'interpolate':
    check_request(
      run,
      f'--num_images={FLAGS.num_images} --steps={FLAGS.steps}',
      FLAGS.num_images,
      1,
      FLAGS.steps,
    )
    x, label = runs.test_images(run, 2 * FLAGS.num_images)
    if int(x.shape[0]) < 2:
      raise SampleError('interpolate needs at least two test images.')
    pairs = int(x.shape[0]) // 2
    methods = ['linear', 'spherical'] if FLAGS.interpolation == 'both' else [FLAGS.interpolation]
    paths = []
    for method in methods:
      frames = sample_lib.interpolate(
        flow,
        x[:pairs],
        x[pairs : 2 * pairs],
        FLAGS.steps,
        method,
        None if label is None else label[:pairs],
        None if label is None else label[pairs:],
      )
      for i in range(pairs):
        paths.append(
          _write(
            output_dir,
            f'interpolate_{method}_{i}.png',
            sample_lib.sheet(frames[:, i], num_bins, FLAGS.steps),
          )
        )
    return paths, f'{pairs} pairs x {len(methods)} interpolation(s), {FLAGS.steps} frames'
  if mode == 'class':
    if not run.num_classes:
      raise SampleError(
        f'--mode=class needs a class-conditional model; {run.model_dir!r} was '
        'trained without --class_conditional.'
      )
    try:
      classes = [int(c) for c in FLAGS.classes] if FLAGS.classes else list(range(run.num_classes))
    except ValueError as e:
      raise SampleError(f'--classes must be integers; got {",".join(FLAGS.classes)!r}.') from e
    check_request(
      run,
      f'{len(classes)} classes x --per_class={FLAGS.per_class}',
      len(classes) * FLAGS.per_class,
      len(classes),
      FLAGS.per_class,
    )
    rows = sample_lib.class_samples(flow, classes, FLAGS.per_class, FLAGS.temperature, FLAGS.seed)
    picture = sample_lib.sheet(tf.reshape(rows, [-1, *rows.shape[2:]]), num_bins, FLAGS.per_class)
    return [_write(output_dir, 'classes.png', picture)], f'{len(classes)} classes'
  alphas = _floats('alphas', FLAGS.alphas)
  if not alphas:
    raise SampleError('--alphas is empty; give at least one multiple, e.g. 0,1.')
  check_request(
    run, f'--num_images={FLAGS.num_images} x {len(alphas)} alphas', FLAGS.num_images, 1, len(alphas)
  )
  x_from, label_from = runs.test_images(run, 10_000, FLAGS.from_class)
  x_to, label_to = runs.test_images(run, 10_000, FLAGS.to_class)
  vector = sample_lib.manipulation_vector(flow, x_to, x_from, label_to, label_from)
  count = min(FLAGS.num_images, int(x_from.shape[0]))
  frames = sample_lib.manipulate(
    flow, x_from[:count], vector, alphas, None if label_from is None else label_from[:count]
  )
  paths = [
    _write(output_dir, f'manipulate_{i}.png', sample_lib.sheet(frames[:, i], num_bins, len(alphas)))
    for i in range(count)
  ]
  return paths, (
    f'direction class {FLAGS.from_class} -> {FLAGS.to_class} from '
    f'{int(x_from.shape[0])} and {int(x_to.shape[0])} test images; alphas {alphas}'
  )


def main(argv):
  cli.run_main('glow_tf.sample', sample, argv)


def sample() -> None:
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir, 'figures')
  check_output_dir(output_dir)
  run = runs.load_run(FLAGS.model_dir, averaged=FLAGS.averaged)
  paths, summary = draw(run, FLAGS.mode, output_dir)
  print(f'{FLAGS.mode}: {summary}; wrote {len(paths)} PNG(s) to {output_dir}')


def run():
  logging.set_verbosity(logging.WARNING)
  cli.run_app('glow_tf.sample', main)


if __name__ == '__main__':
  run()
