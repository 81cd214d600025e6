"""Tests of glow_tf.data: sources (digits, mock TFDS, image folders) and the pipeline."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import errors
from glow_tf.model import pixels
from glow_tf.training import data


def take(dataset, n):
  return [tf.nest.map_structure(np.asarray, b) for b in dataset.take(n)]


def write_folder(root, splits=('train', 'test'), per_label=3, size=(8, 8), labels=('a', 'b')):
  rng = np.random.RandomState(0)
  for split in splits:
    for label in labels:
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      for i in range(per_label):
        image = rng.randint(0, 256, size=(*size, 3)).astype(np.uint8)
        tf.io.write_file(os.path.join(root, split, label, f'{i}.png'), tf.io.encode_png(image))
  return root


def test_digits_split_is_fixed_disjoint_and_complete():
  (train_x, train_y), (test_x, test_y) = data.digits_arrays()
  assert train_x.shape == (1497, 8, 8, 1) and test_x.shape == (300, 8, 8, 1)
  assert train_x.max() == 16 and train_x.min() == 0
  (again_x, _), _ = data.digits_arrays()
  np.testing.assert_array_equal(train_x, again_x)
  rows = {x.tobytes() for x in train_x}
  assert sum(x.tobytes() in rows for x in test_x) < 10  # a few digits are pixel-identical
  assert set(np.unique(test_y)) == set(range(10))


def test_load_digits_source():
  source = data.load('digits')
  assert (source.image_shape, source.num_bins, source.num_classes) == ((8, 8, 1), 17, 10)
  assert (source.num_train, source.num_test) == (1497, 300)


def test_dequantize_stays_in_bins_and_centre_inverts():
  bins = tf.constant(np.arange(17).reshape(1, 17, 1, 1), tf.int32)
  x = pixels.dequantize(bins, 17, seed=[1, 2])
  assert float(tf.reduce_min(x)) >= -0.5 and float(tf.reduce_max(x)) < 0.5
  np.testing.assert_array_equal(pixels.to_pixels(x, 17), bins)
  np.testing.assert_array_equal(pixels.to_pixels(pixels.centre(bins, 17), 17), bins)


def test_train_batches_depend_only_on_seed_and_step():
  source = data.load('digits')
  full = take(data.train_dataset(source, 64, seed=3), 30)
  resumed = take(data.train_dataset(source, 64, seed=3, start_step=25), 5)
  for a, b in zip(full[25:], resumed):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  other_seed = take(data.train_dataset(source, 64, seed=4), 1)
  assert not np.array_equal(full[0][0], other_seed[0][0])
  # An epoch (23 full batches of 64 from 1,497) covers the training set without repeats.
  labels = np.concatenate([b[1] for b in full[:23]])
  assert len(labels) == 1472
  assert full[0][0].shape == (64, 8, 8, 1) and full[0][0].dtype == np.float32


def test_per_replica_slices_reassemble_the_global_batch():
  source = data.load('digits')
  global_batches = take(data.train_dataset(source, 8, seed=1), 2)
  for pipelines in (1, 2):
    slices = []
    for pipeline in range(pipelines):
      context = tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline, num_replicas_in_sync=4
      )
      slices.append(
        take(data.train_dataset(source, 8, seed=1, input_context=context), 2 * 4 // pipelines)
      )
    for step in range(2):
      parts = [s[step * (4 // pipelines) + r][0] for s in slices for r in range(4 // pipelines)]
      np.testing.assert_array_equal(np.concatenate(parts), global_batches[step][0])


def test_eval_dataset_pads_with_zero_weights_and_fixed_noise():
  source = data.load('digits')
  batches = take(data.eval_dataset(source, 128, seed=0), 10)
  assert len(batches) == 3  # 300 images -> 384 slots
  weights = np.concatenate([b[2] for b in batches])
  assert weights.sum() == 300 and weights[:300].all() and not weights[300:].any()
  again = take(data.eval_dataset(source, 128, seed=0), 1)
  np.testing.assert_array_equal(batches[0][0], again[0][0])


def test_eval_dataset_is_the_test_split_in_order_then_its_first_images_as_padding():
  source = data.load('digits')
  (_, _), (images, labels) = data.digits_arrays()
  batches = take(data.eval_dataset(source, 128, seed=0), 10)
  x = np.concatenate([b[0] for b in batches])
  order = np.r_[np.arange(300), np.arange(84)]  # 300 test images, then 84 padding slots
  np.testing.assert_array_equal(np.floor((x + 0.5) * source.num_bins), images[order])
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[order])


def test_tfds_by_name_offline_with_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = data.load('mnist', n_bits=5)
    assert (source.image_shape, source.num_bins, source.num_classes) == ((28, 28, 1), 32, 10)
    assert source.num_train == 12
    image, label = next(iter(source.train))
    assert image.dtype == tf.int32 and 0 <= int(tf.reduce_min(image))
    assert int(tf.reduce_max(image)) < 32 and label.dtype == tf.int32
    resized = data.load('cifar10', image_size=16)
    assert resized.image_shape == (16, 16, 3)
    assert next(iter(resized.train))[0].shape == (16, 16, 3)


def test_unprepared_tfds_without_download_fails_at_once(tmp_path):
  started = time.time()
  with pytest.raises(errors.DataError, match=r"'mnist' is not prepared in .*--download"):
    data.load('mnist', data_dir=str(tmp_path))
  assert time.time() - started < 30


def test_unknown_dataset_is_named():
  with pytest.raises(errors.DataError, match=r"unknown dataset 'no_such_dataset_xyz'"):
    data.load('no_such_dataset_xyz')


def test_image_folder_with_real_pngs(tmp_path):
  root = write_folder(str(tmp_path / 'images'))
  source = data.load(f'folder:{root}', n_bits=4)
  assert (source.image_shape, source.num_bins, source.num_classes) == ((8, 8, 3), 16, 2)
  assert (source.num_train, source.num_test) == (6, 6)
  image, label = next(iter(source.train))
  assert image.shape == (8, 8, 3) and int(tf.reduce_max(image)) < 16
  assert int(label) in (0, 1)


def test_image_folder_without_train_split_is_refused(tmp_path):
  root = write_folder(str(tmp_path / 'images'), splits=('pictures',))
  with pytest.raises(errors.DataError, match=r'needs the layout .*/train/<label>/\*\.png'):
    data.load(f'folder:{root}')


def test_missing_folder_is_named(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    data.load(f'folder:{tmp_path / "nope"}')


def test_split_smaller_than_a_batch_is_refused(tmp_path):
  source = data.load(f'folder:{write_folder(str(tmp_path / "images"))}')
  with pytest.raises(errors.DataError, match=r'has 6 images, fewer than one global batch \(8\)'):
    data.check_splits(source, 8)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(n_bits=9), 'n_bits must be in 1..8 or None; got 9'),
    (dict(n_bits=4), '--n_bits applies to 8-bit image datasets; digits has 17 levels'),
    (dict(image_size=16), 'digits are 8x8'),
  ],
)
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(errors.UserError, match=match):
    data.load('digits', **kwargs)


def write_bad_files(root):
  """Next to the good images: a corrupt PNG, a text file, an RGBA and a 16-bit image."""
  label_dir = os.path.join(root, 'train', 'a')
  with open(os.path.join(label_dir, 'corrupt.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + os.urandom(64))
  with open(os.path.join(label_dir, 'notes.txt'), 'w') as f:
    f.write('not an image')
  rgba = np.zeros([8, 8, 4], np.uint8)
  tf.io.write_file(os.path.join(label_dir, 'rgba.png'), tf.io.encode_png(rgba))
  deep = np.zeros([8, 8, 3], np.uint16)
  tf.io.write_file(os.path.join(label_dir, 'deep.png'), tf.io.encode_png(deep))
  return ['corrupt.png', 'deep.png', 'notes.txt', 'rgba.png']


def test_bad_files_in_a_folder_are_skipped_counted_and_named(tmp_path, caplog):
  root = write_folder(str(tmp_path / 'images'))
  bad = write_bad_files(root)
  with caplog.at_level('WARNING'):
    source = data.load(f'folder:{root}')
  assert source.num_train == 6  # the good images only
  message = ' '.join(r.getMessage() for r in caplog.records)
  assert 'skipping 4 of 10 files' in message
  for name in bad:
    assert name in message
  assert 'rgba.png: 4 channels' in message
  labels = [int(y) for _, y in source.train]
  assert len(labels) == 6  # and every one decodes in the pipeline


def test_bad_files_can_be_refused_up_front_with_their_list(tmp_path):
  root = write_folder(str(tmp_path / 'images'))
  write_bad_files(root)
  with pytest.raises(errors.DataError, match=r'4 of 10 files .* cannot be used: .*corrupt\.png'):
    data.load(f'folder:{root}', bad_files='fail')


def test_a_folder_of_only_bad_files_is_an_empty_dataset_error(tmp_path):
  root = tmp_path / 'images'
  os.makedirs(root / 'train' / 'a')
  (root / 'train' / 'a' / 'x.png').write_bytes(b'not a png')
  with pytest.raises(errors.DataError, match='has no usable training images'):
    data.load(f'folder:{root}')


def test_folder_images_of_several_sizes_need_image_size(tmp_path):
  root = write_folder(str(tmp_path / 'images'), splits=('train',))
  write_folder(str(tmp_path / 'images'), splits=('train',), labels=('c',), size=(6, 10))
  with pytest.raises(errors.DataError, match=r'have sizes .* pass --image_size'):
    data.load(f'folder:{root}')
  assert data.load(f'folder:{root}', image_size=4).image_shape == (4, 4, 3)


def test_download_without_a_network_fails_in_seconds_in_one_line(tmp_path, monkeypatch):
  probed = []

  def retries_for_minutes(self, **kwargs):  # What TFDS does without a network: ~3.5 minutes.
    raise RuntimeError('download_and_prepare ran; the probe should have refused first')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', retries_for_minutes)
  monkeypatch.setattr(
    data,
    'unreachable',
    lambda url, *a, **k: probed.append(url) or 'Name or service not known',
    raising=False,
  )
  started = time.time()
  with pytest.raises(
    errors.DataError,
    match=r"--download of 'mnist' needs internet, and https://storage\.googleapis\.com/ .* does "
    r'not answer: Name or service not known\. Connect, or pass --data_dir',
  ):
    data.load('mnist', data_dir=str(tmp_path), download=True)
  assert time.time() - started < 30 and probed == ['https://storage.googleapis.com/']


def test_a_download_that_fails_midway_is_one_line(tmp_path, monkeypatch):
  import requests

  def refused(self, **kwargs):
    raise requests.exceptions.ConnectionError('Max retries exceeded with url: /mnist.gz\n(more)')

  monkeypatch.setattr(data, 'unreachable', lambda *a, **k: None, raising=False)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refused)
  with pytest.raises(
    errors.DataError,
    match=r"--download of 'mnist' failed \(ConnectionError: Max retries .* \(more\)\)",
  ):
    data.load('mnist', data_dir=str(tmp_path), download=True)


def test_the_reachability_probe_against_a_local_server(monkeypatch):
  import http.server
  import threading

  for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
    monkeypatch.delenv(name, raising=False)

  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
      self.send_response(404)  # An answer is an answer.
      self.end_headers()

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(('127.0.0.1', 0), NotFound)
  url = f'http://127.0.0.1:{server.server_port}/'
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    assert data.unreachable(url, timeout=5) is None
  finally:
    server.shutdown()
    server.server_close()
  started = time.time()
  assert 'refused' in data.unreachable(url, timeout=5).lower()
  assert time.time() - started < 5


@pytest.mark.parametrize('splits', [('train',), ('train', 'test')])
def test_check_splits_refuses_a_folder_without_usable_test_images(tmp_path, splits):
  root = write_folder(str(tmp_path / 'images'), splits=('train',))
  if 'test' in splits:  # A test folder whose only file is not an image.
    os.makedirs(os.path.join(root, 'test', 'a'))
    with open(os.path.join(root, 'test', 'a', 'x.png'), 'wb') as f:
      f.write(b'not a png')
  source = data.load(f'folder:{root}')
  assert source.num_test == 0
  with pytest.raises(
    errors.DataError,
    match=r"dataset 'folder:.*' has no test images; training evaluates on them every eval_every "
    r'steps and at the end, so it needs usable images in .*/images/test/<label>/\*\.png',
  ):
    data.check_splits(source, 4)
  with pytest.raises(errors.DataError, match=r'has 6 images, fewer than one global batch \(8\)'):
    data.check_splits(source, 8)
  data.check_splits(data.load(f'folder:{write_folder(str(tmp_path / "both"))}'), 4)


def test_folder_test_labels_are_numbered_by_the_training_classes(tmp_path):
  root = str(tmp_path / 'images')
  write_folder(root, splits=('train',), labels=('a', 'b', 'c'))
  write_folder(root, splits=('test',), labels=('b', 'c'))
  source = data.load(f'folder:{root}')
  train_ids = {int(y) for _, y in source.train}
  test_ids = {int(y) for _, y in source.test}
  assert train_ids == {0, 1, 2} and test_ids == {1, 2}  # b and c keep train's 1 and 2.


def test_a_folder_test_class_unknown_to_train_is_refused(tmp_path):
  root = str(tmp_path / 'images')
  write_folder(root, splits=('train',), labels=('a', 'b'))
  write_folder(root, splits=('test',), labels=('a', 'z'))
  with pytest.raises(errors.DataError, match=r"has classes \['z'\] that .*train' does not"):
    data.load(f'folder:{root}')
