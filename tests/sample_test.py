"""Tests of glow_tf.sample_lib and the `python -m glow_tf.sample` CLI on tiny trained models."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import errors
from glow_tf.model import pixels, sampling
from glow_tf.tools import runs
from glow_tf.training import data, trainer
from glow_tf.training.config import PRESETS

# 8x8 digits drawn 8x larger with 4-pixel separators: N cells take N * 68 + 4 pixels.
CELL = 68


def cells(n):
  return n * CELL + 4


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny class-conditional run and a tiny unconditional one."""
  root = tmp_path_factory.mktemp('runs')
  out = {}
  for name, conditional in (('conditional', True), ('unconditional', False)):
    config = PRESETS['tiny'].replace(train_steps=10, eval_every=100, class_conditional=conditional)
    trainer.train_and_evaluate(config, str(root / name))
    out[name] = str(root / name)
  return out


def digit_images(run, count):
  (_, _), (bins, labels) = data.digits_arrays()
  return pixels.centre(bins[:count], run.num_bins), tf.constant(labels[:count])


@pytest.mark.parametrize('name', ['conditional', 'unconditional'])
def test_reconstruction_error_is_below_1e_3(trained, name):
  run = runs.load_run(trained[name])
  x, label = digit_images(run, 16)
  x_back, error = sampling.reconstruct(run.flow, x, label if run.num_classes else None)
  assert error <= 1e-3
  assert np.max(np.abs(x_back - x)) == pytest.approx(error)


@pytest.mark.parametrize('method', sampling.INTERPOLATIONS)
def test_interpolation_ends_decode_to_the_end_images(trained, method):
  run = runs.load_run(trained['unconditional'])
  x, _ = digit_images(run, 6)
  frames = sampling.interpolate(run.flow, x[:3], x[3:], steps=5, method=method)
  assert frames.shape == [5, 3, 8, 8, 1]
  np.testing.assert_allclose(frames[0], x[:3], atol=1e-3)
  np.testing.assert_allclose(frames[-1], x[3:], atol=1e-3)
  assert not np.allclose(frames[2], frames[0], atol=1e-2)


def test_spherical_and_linear_differ_in_the_middle():
  a = [tf.constant([[1.0, 0.0]])]
  b = [tf.constant([[0.0, 1.0]])]
  linear = sampling.interpolate_latents(a, b, 0.5, 'linear')[0].numpy()
  spherical = sampling.interpolate_latents(a, b, 0.5, 'spherical')[0].numpy()
  np.testing.assert_allclose(linear, [[0.5, 0.5]])
  np.testing.assert_allclose(spherical, [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)


def test_temperature_zero_is_deterministic_across_seeds(trained):
  run = runs.load_run(trained['unconditional'])
  grids = [sampling.sample_grid(run.flow, run.num_bins, 0.0, 4, seed=s) for s in (0, 1)]
  np.testing.assert_array_equal(grids[0], grids[1])
  warm = [sampling.sample_grid(run.flow, run.num_bins, 0.7, 4, seed=s) for s in (0, 1)]
  assert not np.array_equal(warm[0], warm[1])


def test_manipulation_with_alpha_zero_is_the_reconstruction(trained):
  run = runs.load_run(trained['conditional'])
  (_, _), (bins, labels) = data.digits_arrays()
  x = pixels.centre(bins, run.num_bins)
  labels = tf.constant(labels)
  threes, eights = labels == 3, labels == 8
  vector = sampling.manipulation_vector(
    run.flow, x[eights], x[threes], labels[eights], labels[threes]
  )
  assert [tuple(v.shape) for v in vector] == glow_tf.multiscale_flow(run.flow).latent_shapes
  frames = sampling.manipulate(run.flow, x[threes][:2], vector, [0.0, 1.0], labels[threes][:2])
  reconstruction, _ = sampling.reconstruct(run.flow, x[threes][:2], labels[threes][:2])
  np.testing.assert_allclose(frames[0], reconstruction, atol=1e-5)
  assert not np.allclose(frames[1], frames[0], atol=1e-3)
  with pytest.raises(errors.SampleError, match='empty list'):
    sampling.manipulate(run.flow, x[:1], vector, [], labels[:1])
  with pytest.raises(errors.SampleError, match='x_with is empty'):
    sampling.manipulation_vector(run.flow, x[:0], x[:2])


def test_class_samples_rows_and_unknown_class(trained):
  run = runs.load_run(trained['conditional'])
  rows = sampling.class_samples(run.flow, [0, 5], per_class=3, temperature=0.7)
  assert rows.shape == [2, 3, 8, 8, 1]
  with pytest.raises(errors.SampleError, match=r'classes must be in 0\.\.9; got \[12\]'):
    sampling.class_samples(run.flow, [12], per_class=1, temperature=0.7)
  unconditional = runs.load_run(trained['unconditional'])
  with pytest.raises(errors.SampleError, match='not class-conditional'):
    sampling.class_samples(unconditional.flow, [0], per_class=1, temperature=0.7)


def run_cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'glow_tf.sample', *args], capture_output=True, text=True, timeout=300
  )


def png_shape(path):
  return tuple(tf.io.decode_png(tf.io.read_file(path)).shape)


@pytest.mark.slow
@pytest.mark.parametrize(
  'mode, args, expected',
  [
    (
      'grid',
      ['--temperatures=0,0.7', '--grid_size=3'],
      {'grid_t0.png': (cells(3), cells(3), 1), 'grid_t0.7.png': (cells(3), cells(3), 1)},
    ),
    ('reconstruct', ['--num_images=4'], {'reconstruct.png': (cells(2), cells(4), 1)}),
    (
      'interpolate',
      ['--num_images=1', '--steps=5'],
      {
        'interpolate_linear_0.png': (cells(1), cells(5), 1),
        'interpolate_spherical_0.png': (cells(1), cells(5), 1),
      },
    ),
    ('class', ['--classes=1,7', '--per_class=4'], {'classes.png': (cells(2), cells(4), 1)}),
    (
      'manipulate',
      ['--num_images=2', '--alphas=0,1,2'],
      {'manipulate_0.png': (cells(1), cells(3), 1), 'manipulate_1.png': (cells(1), cells(3), 1)},
    ),
  ],
)
def test_each_mode_writes_pngs_of_the_expected_size(trained, tmp_path, mode, args, expected):
  result = run_cli(
    f'--model_dir={trained["conditional"]}', f'--mode={mode}', f'--output_dir={tmp_path}', *args
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == sorted(expected)
  for name, shape in expected.items():
    assert png_shape(str(tmp_path / name)) == shape
  if mode == 'reconstruct':
    error = float(result.stdout.split('max |x - decode(encode(x))| = ')[1].split()[0])
    assert error <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
  'which, args, message',
  [
    ('empty', ['--mode=grid'], 'has no checkpoint yet'),
    ('conditional', ['--mode=class', '--classes=12'], 'classes must be in 0..9; got [12]'),
    ('unconditional', ['--mode=class'], '--mode=class needs a class-conditional model'),
    ('conditional', ['--mode=manipulate', '--alphas='], '--alphas is empty'),
    ('conditional', ['--mode=manipulate', '--from_class=11'], 'class 11 is not in the data'),
  ],
)
def test_bad_input_exits_nonzero_with_one_line(trained, tmp_path, which, args, message):
  if which == 'empty':
    model_dir = tmp_path / 'empty'
    model_dir.mkdir()
    with open(os.path.join(trained['unconditional'], 'config.json')) as f:
      (model_dir / 'config.json').write_text(f.read())
  else:
    model_dir = trained[which]
  result = run_cli(f'--model_dir={model_dir}', f'--output_dir={tmp_path / "out"}', *args)
  assert result.returncode == 2
  lines = [
    line
    for line in result.stderr.splitlines()
    if line and not line.startswith(('WARNING: All log', 'I0000', 'E0000', 'W0000'))
  ]
  assert len(lines) == 1 and message in lines[0], lines
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['--grid_size=1000'],
      '--grid_size=1000 asks for 1000 x 1000 images of 8x8 in one PNG, 68004 pixels a side; '
      'at most 240 a side fit in 16384 pixels.',
    ),
    (['--mode=interpolate', '--steps=300'], 'at most 240 a side fit in 16384 pixels.'),
    (['--mode=class', '--per_class=500'], 'at most 240 a side fit in 16384 pixels.'),
    (['--output_dir={file}'], 'is a file; expected a directory for the PNGs.'),
    (['--output_dir={file}/figures'], "lies under '{file}', a file; expected a directory"),
  ],
)
def test_a_request_that_cannot_be_written_is_refused_up_front(trained, tmp_path, args, message):
  file = tmp_path / 'file.png'
  file.write_text('x')
  args = [a.format(file=file) for a in args]
  message = message.format(file=file)
  if not any(a.startswith('--output_dir') for a in args):
    args.append(f'--output_dir={tmp_path / "out"}')
  result = run_cli(f'--model_dir={trained["conditional"]}', *args)
  lines = [line for line in result.stderr.splitlines() if line.startswith('glow_tf.sample: error:')]
  assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists() and file.read_text() == 'x'
