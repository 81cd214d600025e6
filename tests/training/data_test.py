"""Tests of glow_tf.data: sources (digits, mock TFDS, image folders) and the pipeline."""

import dataclasses
import functools
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import errors
from glow_tf.model import pixels
from glow_tf.tools import synthetic_data
from glow_tf.training import data

# The pipeline's tests read whole splits: no validation carved out of them (that is
# tests/training/selection_test.py's subject).
load = functools.partial(data.load, validation_size=0)


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
  # 10% of the 1,497 training images are carved out for validation by default.
  assert (source.num_train, source.num_validation, source.num_test) == (1347, 150, 300)


def test_dequantize_stays_in_bins_and_centre_inverts():
  bins = tf.constant(np.arange(17).reshape(1, 17, 1, 1), tf.int32)
  x = pixels.dequantize(bins, 17, seed=[1, 2])
  assert float(tf.reduce_min(x)) >= -0.5 and float(tf.reduce_max(x)) < 0.5
  np.testing.assert_array_equal(pixels.to_pixels(x, 17), bins)
  np.testing.assert_array_equal(pixels.to_pixels(pixels.centre(bins, 17), 17), bins)


def test_train_batches_depend_only_on_seed_and_step():
  source = load('digits')
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
  source = load('digits')
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
  source = load('digits')
  batches = take(data.eval_dataset(source, 128, seed=0), 10)
  assert len(batches) == 3  # 300 images -> 384 slots
  weights = np.concatenate([b[2] for b in batches])
  assert weights.sum() == 300 and weights[:300].all() and not weights[300:].any()
  again = take(data.eval_dataset(source, 128, seed=0), 1)
  np.testing.assert_array_equal(batches[0][0], again[0][0])


def test_eval_dataset_is_the_test_split_in_order_then_its_first_images_as_padding():
  source = load('digits')
  (_, _), (images, labels) = data.digits_arrays()
  batches = take(data.eval_dataset(source, 128, seed=0), 10)
  x = np.concatenate([b[0] for b in batches])
  order = np.r_[np.arange(300), np.arange(84)]  # 300 test images, then 84 padding slots
  np.testing.assert_array_equal(np.floor((x + 0.5) * source.num_bins), images[order])
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[order])


def test_tfds_by_name_offline_with_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = load('mnist', n_bits=5)
    assert (source.image_shape, source.num_bins, source.num_classes) == ((28, 28, 1), 32, 10)
    assert source.num_train == 12
    image, label = next(iter(source.train))
    assert image.dtype == tf.int32 and 0 <= int(tf.reduce_min(image))
    assert int(tf.reduce_max(image)) < 32 and label.dtype == tf.int32
    resized = load('cifar10', image_size=16)
    assert resized.image_shape == (16, 16, 3)
    assert next(iter(resized.train))[0].shape == (16, 16, 3)


def test_unprepared_tfds_without_download_fails_at_once(tmp_path):
  started = time.time()
  with pytest.raises(errors.DataError, match=r"'mnist' is not prepared in .*--download"):
    load('mnist', data_dir=str(tmp_path))
  assert time.time() - started < 30


def test_unknown_dataset_is_named():
  with pytest.raises(errors.DataError, match=r"unknown dataset 'no_such_dataset_xyz'"):
    load('no_such_dataset_xyz')


def test_image_folder_with_real_pngs(tmp_path):
  root = write_folder(str(tmp_path / 'images'))
  source = load(f'folder:{root}', n_bits=4)
  assert (source.image_shape, source.num_bins, source.num_classes) == ((8, 8, 3), 16, 2)
  assert (source.num_train, source.num_test) == (6, 6)
  image, label = next(iter(source.train))
  assert image.shape == (8, 8, 3) and int(tf.reduce_max(image)) < 16
  assert int(label) in (0, 1)


def test_image_folder_without_train_split_is_refused(tmp_path):
  root = write_folder(str(tmp_path / 'images'), splits=('pictures',))
  with pytest.raises(errors.DataError, match=r'needs the layout .*/train/<label>/\*\.png'):
    load(f'folder:{root}')


def test_missing_folder_is_named(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    load(f'folder:{tmp_path / "nope"}')


def test_split_smaller_than_a_batch_is_refused(tmp_path):
  source = load(f'folder:{write_folder(str(tmp_path / "images"))}')
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
    load('digits', **kwargs)


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
    source = load(f'folder:{root}')
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
    load(f'folder:{root}', bad_files='fail')


def test_a_folder_of_only_bad_files_is_an_empty_dataset_error(tmp_path):
  root = tmp_path / 'images'
  os.makedirs(root / 'train' / 'a')
  (root / 'train' / 'a' / 'x.png').write_bytes(b'not a png')
  with pytest.raises(errors.DataError, match='has no usable training images'):
    load(f'folder:{root}')


def test_folder_images_of_several_sizes_need_image_size(tmp_path):
  root = write_folder(str(tmp_path / 'images'), splits=('train',))
  write_folder(str(tmp_path / 'images'), splits=('train',), labels=('c',), size=(6, 10))
  with pytest.raises(errors.DataError, match=r'have sizes .* pass --image_size'):
    load(f'folder:{root}')
  assert load(f'folder:{root}', image_size=4).image_shape == (4, 4, 3)


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
    load('mnist', data_dir=str(tmp_path), download=True)
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
    load('mnist', data_dir=str(tmp_path), download=True)


def test_the_reachability_probe_against_a_local_server(monkeypatch):
  import http.server

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
  source = load(f'folder:{root}')
  assert source.num_test == 0
  with pytest.raises(
    errors.DataError,
    match=r"dataset 'folder:.*' has no test images; training evaluates on them every eval_every "
    r'steps and at the end, so it needs usable images in .*/images/test/<label>/\*\.png',
  ):
    data.check_splits(source, 4)
  with pytest.raises(errors.DataError, match=r'has 6 images, fewer than one global batch \(8\)'):
    data.check_splits(source, 8)
  data.check_splits(load(f'folder:{write_folder(str(tmp_path / "both"))}'), 4)


def test_folder_test_labels_are_numbered_by_the_training_classes(tmp_path):
  root = str(tmp_path / 'images')
  write_folder(root, splits=('train',), labels=('a', 'b', 'c'))
  write_folder(root, splits=('test',), labels=('b', 'c'))
  source = load(f'folder:{root}')
  train_ids = {int(y) for _, y in source.train}
  test_ids = {int(y) for _, y in source.test}
  assert train_ids == {0, 1, 2} and test_ids == {1, 2}  # b and c keep train's 1 and 2.


def test_a_folder_test_class_unknown_to_train_is_refused(tmp_path):
  root = str(tmp_path / 'images')
  write_folder(root, splits=('train',), labels=('a', 'b'))
  write_folder(root, splits=('test',), labels=('a', 'z'))
  with pytest.raises(errors.DataError, match=r"has classes \['z'\] that .*train' does not"):
    load(f'folder:{root}')


# ---- Datasets at scale: random access by index, each worker its share, resume in O(1) ----

NUM_PREPARED = 100  # Training images of the prepared datasets below.


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Version directories of one synthetic dataset prepared in both TFDS file formats."""
  root = tmp_path_factory.mktemp('prepared')
  return {
    file_format: synthetic_data.prepare_tfds(
      str(root / file_format), NUM_PREPARED, 30, size=8, file_format=file_format
    )
    for file_format in synthetic_data.FILE_FORMATS
  }


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return synthetic_data.write_folder(str(tmp_path_factory.mktemp('folder')), NUM_PREPARED, 30, 8)


def streamed(prepared, folder):
  """The same 100 images as streamed ArrayRecord and TFRecord sources, and 100 in a folder."""
  sources = {
    k: load('synthetic_images', data_dir=v, in_memory='never') for k, v in prepared.items()
  }
  sources['folder'] = load(f'folder:{folder}', in_memory='never')
  return sources


def logged(split):
  """`split` whose fetches log the indices asked for (every read goes through a fetch)."""
  log = []

  def record(indices):
    log.append(indices.copy())
    return indices

  def fetch(indices):
    indices = tf.ensure_shape(tf.numpy_function(record, [indices], tf.int64), indices.shape)
    return split.fetch(indices)

  return dataclasses.replace(split, fetch=fetch), log


def test_an_epoch_is_a_permutation_found_per_position():
  n = 1497
  first = data.epoch_indices(np.arange(n), n, seed=3).numpy()
  np.testing.assert_array_equal(np.sort(first), np.arange(n))
  second = data.epoch_indices(np.arange(n, 2 * n), n, seed=3).numpy()
  np.testing.assert_array_equal(np.sort(second), np.arange(n))
  assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(n))
  late = data.epoch_indices([5 * n + 7], n, seed=3).numpy()
  np.testing.assert_array_equal(late, data.epoch_indices(np.arange(5 * n, 6 * n), n, 3)[7:8])
  assert not np.array_equal(first, data.epoch_indices(np.arange(n), n, seed=4).numpy())


def test_a_training_epoch_holds_every_example_once():
  source = load('digits')
  (images, _), _ = data.digits_arrays()
  batches = take(data.train_dataset(source, 1497 // 3, seed=3), 3)
  seen = np.concatenate([pixels.to_pixels(b[0], 17) for b in batches])
  rows = sorted(x.tobytes() for x in seen)
  assert rows == sorted(x.tobytes() for x in images)


def test_streamed_sources_give_the_same_batches_as_memory(prepared, folder):
  sources = streamed(prepared, folder)
  for name, source in sources.items():
    assert source.train_split.storage != 'memory', name
    assert (source.num_train, source.num_test, source.image_shape) == (100, 30, (8, 8, 3))
  memory = {
    name: load('synthetic_images', data_dir=prepared['tfrecord'], in_memory='always')
    for name in prepared
  }
  memory['folder'] = load(f'folder:{folder}', in_memory='always')
  for name, source in sources.items():
    assert memory[name].train_split.storage == 'memory'
    expected = take(data.train_dataset(memory[name], 16, seed=5, start_step=3), 8)  # 2 epochs
    for a, b in zip(expected, take(data.train_dataset(source, 16, seed=5, start_step=3), 8)):
      np.testing.assert_array_equal(a[0], b[0], err_msg=name)
      np.testing.assert_array_equal(a[1], b[1], err_msg=name)
    expected = take(data.eval_dataset(memory[name], 16, seed=5), 10)
    for a, b in zip(expected, take(data.eval_dataset(source, 16, seed=5), 10)):
      for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=name)
  # And they hold the images written (TFDS stores them in an order of its own).
  written = {(i.tobytes(), y) for _, i, y in synthetic_data.synthetic_images('train', 100, 8)}
  for name, source in sources.items():
    assert {(np.asarray(i, np.uint8).tobytes(), int(y)) for i, y in source.train} == written, name


def test_split_sizes_come_from_metadata_without_reading(prepared, monkeypatch):
  reads = []
  real = data.TFRecordReader.__getitems__
  monkeypatch.setattr(
    data.TFRecordReader, '__getitems__', lambda self, i: reads.append(len(i)) or real(self, i)
  )
  source = load('synthetic_images', data_dir=prepared['tfrecord'], in_memory='never')
  assert (source.num_train, source.num_test) == (100, 30) and reads == []
  take(data.train_dataset(source, 10, seed=0), 1)
  assert reads and set(reads) == {10}  # whole batches: the first, and those read ahead


def batch_indices(step, batch, seed, rows=None):
  rows = np.arange(batch) if rows is None else rows
  return tuple(data.epoch_indices(step * batch + rows, NUM_PREPARED, seed).numpy())


@pytest.mark.parametrize('kind', ['array_record', 'tfrecord', 'folder'])
def test_resuming_late_reads_no_example_before_the_first_batch(prepared, folder, kind):
  """Every read is a whole batch of the resumed stream: the first, or one read ahead."""
  source = streamed(prepared, folder)[kind]
  step, batch = 123, 8  # position 984: epoch 9, offset 84 of 100
  split, log = logged(source.train_split)
  resumed = iter(data.train_dataset(dataclasses.replace(source, train_split=split), 8, 2, step))
  started = time.time()
  x, _ = next(resumed)
  assert time.time() - started < 10
  del resumed
  time.sleep(0.5)  # Reads ahead in flight end.
  later = {batch_indices(step + j, batch, seed=2): j for j in range(64)}
  fetched = [later.get(tuple(indices), f'not a batch from step {step} on') for indices in log]
  assert fetched[: fetched.index(0) + 1].count(0) == 1 and all(isinstance(j, int) for j in fetched)
  assert len(set(fetched)) == len(fetched)  # each batch read once
  straight = take(data.train_dataset(source, batch, seed=2), step + 1)[step]
  np.testing.assert_array_equal(x, straight[0])


def test_each_worker_reads_only_its_replicas_examples(prepared):
  source = load('synthetic_images', data_dir=prepared['array_record'], in_memory='never')
  steps, batch = 3, 8
  global_batches = take(data.train_dataset(source, batch, seed=1), steps)
  for pipeline in range(2):
    context = tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=4
    )
    split, log = logged(source.train_split)
    worker = dataclasses.replace(source, train_split=split)
    slices = take(data.train_dataset(worker, batch, seed=1, input_context=context), 2 * steps)
    for s in range(steps):  # Its two replicas' rows of each global batch.
      got = np.concatenate([slices[2 * s][0], slices[2 * s + 1][0]])
      np.testing.assert_array_equal(got, global_batches[s][0][pipeline * 4 : pipeline * 4 + 4])
    own = {batch_indices(s, batch, 1, pipeline * 4 + np.arange(4)) for s in range(64)}
    assert {tuple(indices) for indices in log} <= own  # read ahead too, but only its rows
    assert len(log) >= steps and all(len(indices) == 4 for indices in log)


def test_small_splits_are_held_in_memory_automatically_and_it_is_logged(prepared, caplog):
  # The absl logger's own level too: a CLI run earlier in this process (absl's app.run)
  # leaves it at WARNING.
  with caplog.at_level('INFO', logger='absl'):
    small = load('synthetic_images', data_dir=prepared['array_record'])
  assert small.train_split.storage == 'memory'
  assert 'synthetic_images train: 100 examples (0 MiB decoded) held in memory' in caplog.text
  caplog.clear()
  with caplog.at_level('INFO', logger='absl'):
    large = load('synthetic_images', data_dir=prepared['array_record'], in_memory='never')
  assert large.train_split.storage == '1 array_record file(s)'
  assert 'read on demand from 1 array_record file(s) (in_memory=never)' in caplog.text


def test_the_in_memory_limit_decides_auto(prepared, monkeypatch):
  monkeypatch.setattr(data, 'IN_MEMORY_BYTES', 100 * 8 * 8 * 3 - 1)  # one byte too few
  source = load('synthetic_images', data_dir=prepared['tfrecord'])
  assert source.train_split.storage == '1 tfrecord file(s)'
  assert source.test_split.storage == 'memory'  # 30 images fit


def test_in_memory_never_without_prepared_files_is_refused():
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(
      errors.DataError,
      match=r'mnist train has no prepared files to read examples from \(got in_memory="never"\)',
    ):
      load('mnist', in_memory='never')


def test_a_bad_in_memory_value_is_named():
  with pytest.raises(
    errors.ConfigError, match=r"in_memory must be one of \('auto', 'always', 'never'\); got 'yes'"
  ):
    load('digits', in_memory='yes')


def test_a_tfrecord_index_out_of_range_is_named(prepared):
  (path,) = [f for f in os.listdir(prepared['tfrecord']) if '-train.tfrecord' in f]
  reader = data.TFRecordReader([(os.path.join(prepared['tfrecord'], path), 0, NUM_PREPARED)])
  assert len(reader.__getitems__([99, 0, 99])) == 3
  with pytest.raises(IndexError, match=r'record indices must be in \[0, 100\); got \[3, 100\]'):
    reader.__getitems__([3, 100])


def test_a_batch_not_divisible_over_replicas_is_named():
  context = tf.distribute.InputContext(
    num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=4
  )
  with pytest.raises(errors.DataError, match=r'a global batch of 10 over 4 replicas and 2 input'):
    data.train_dataset(load('digits'), 10, seed=0, input_context=context)


def test_a_share_of_a_batch_gets_the_global_batch_noise():
  bins = tf.zeros([8, 2, 2, 1], tf.int32)
  whole = pixels.dequantize(bins, 4, seed=[1, 2])
  np.testing.assert_array_equal(pixels.dequantize(bins[4:6], 4, [1, 2], rows=(4, 8)), whole[4:6])


def test_a_truncated_tfrecord_file_is_named(prepared, tmp_path):
  (name,) = [f for f in os.listdir(prepared['tfrecord']) if '-train.tfrecord' in f]
  with open(os.path.join(prepared['tfrecord'], name), 'rb') as f:
    contents = f.read()
  path = str(tmp_path / name)
  with open(path, 'wb') as f:
    f.write(contents[:-100])
  reader = data.TFRecordReader([(path, 0, NUM_PREPARED)])
  with pytest.raises(errors.DataError, match=r'ends inside a record at byte \d+ \(size \d+\)'):
    reader.__getitems__([0])


def test_a_folder_loaded_again_opens_only_changed_files(tmp_path, monkeypatch, caplog):
  root = write_folder(str(tmp_path / 'images'))
  inspected = []
  real = data._inspect
  monkeypatch.setattr(data, '_inspect', lambda f: inspected.append(f) or real(f))
  first = load(f'folder:{root}')
  assert len(inspected) == 12
  inspected.clear()
  again = load(f'folder:{root}')
  assert inspected == [] and (again.num_train, again.num_test) == (6, 6)
  np.testing.assert_array_equal(
    take(data.train_dataset(first, 4, seed=0), 1)[0][0],
    take(data.train_dataset(again, 4, seed=0), 1)[0][0],
  )
  changed = os.path.join(root, 'train', 'a', '1.png')
  with open(changed, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + b'broken')
  with caplog.at_level('WARNING'):
    after = load(f'folder:{root}')
  assert inspected == [changed] and after.num_train == 5
  assert 'skipping 1 of 6 files' in caplog.text


def test_an_unwritable_cache_is_a_warning(tmp_path, monkeypatch, caplog):
  root = write_folder(str(tmp_path / 'images'))
  (tmp_path / 'file').write_text('not a directory')
  monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / 'file' / 'cache'))
  with caplog.at_level('WARNING'):
    source = load(f'folder:{root}')
  assert source.num_train == 6
  assert 'cannot keep the inspection of' in caplog.text
