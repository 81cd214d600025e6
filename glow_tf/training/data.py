"""Datasets for Glow: the embedded digits, TFDS by name, image folders; one input pipeline.

Every source becomes a `DataSource`: `Split`s (train, validation, test) giving
random access to their examples by index (integer images in `[0, num_bins)` with
labels), held in memory when a split is small and read on demand from the prepared files otherwise.
`train_dataset` and `eval_dataset` then build the one pipeline

    global batch i -> its example indices (epoch permutation) -> this worker's share
      -> read and decode those examples only -> uniform dequantisation -> per replica

in which global batch `i` holds the examples at positions `[i B, (i + 1) B)` of
the stream of epochs, epoch `e` being the permutation `index_shuffle(., (seed, e))`
of the split: batch `i` depends only on `(seed, i)`, a resumed run computes its
first batch directly (no example before it is read), and every strategy (one
device, mirrored, multi-worker) sees the same global batches, each worker reading
only its replicas' examples.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import DataError
from glow_tf.model.pixels import dequantize

__all__ = [
  'BAD_FILE_POLICIES',
  'DataConfig',
  'DataSource',
  'IN_MEMORY_CHOICES',
  'Split',
  'check_splits',
  'eval_dataset',
  'load',
  'load_config',
  'train_dataset',
]

DIGITS = 'digits'
BAD_FILE_POLICIES = ('skip', 'fail')
FOLDER_PREFIX = 'folder:'
# The embedded dataset: scikit-learn's 1,797 8x8 digits, values 0..16 (17 levels).
# Fixed split: a RandomState(0) permutation; the first 1,497 train, the last 300 test.
DIGITS_NUM_BINS = 17
DIGITS_NUM_TEST = 300
# TFDS downloads from here (its own mirror, and many datasets' files); `--download` checks
# it answers before TFDS's retries, which take ~3.5 minutes to give up without a network.
TFDS_DOWNLOAD_URL = 'https://storage.googleapis.com/'
PROBE_SECONDS = 10.0
# A split is held in memory when its decoded images take at most this much (in_memory=auto):
# MNIST (47 MB) and CIFAR-10 (150 MB) are; ImageNet 32x32 (3.9 GB) is read from its files.
IN_MEMORY_BYTES = 256 * 2**20
IN_MEMORY_CHOICES = ('auto', 'always', 'never')
CACHE_ENV = 'GLOW_TF_CACHE_DIR'


def _as_written(fn: Callable) -> Callable:
  """`fn` for `Dataset.map`, traced as written: autograph's conversion of the
  pipeline's functions made a process's first pipeline take 1.0 s to its first
  batch against 0.2-0.4 s without (measured on the 2-core machine), and none of
  them branches or loops on a tensor in Python."""
  return tf.autograph.experimental.do_not_convert(fn)


@dataclasses.dataclass(frozen=True)
class Split:
  """Random access to the examples of one split, by index in `[0, num_examples)`.

  `fetch(indices)` maps an int64 vector of indices to the stored form of those
  examples (a nest of tensors with a leading dimension of the same length: encoded
  records, file names, or the decoded images themselves); `decode` maps one
  stored example to `(image, label)`, image int32 `[H, W, C]` in `[0, num_bins)`,
  label int32. Both are TensorFlow functions, used inside `tf.data` and traced as
  written (no autograph): Python `if`/`for` only on Python values, `tf.cond` on tensors.

  Attributes:
    num_examples: the split's size, from the dataset's metadata.
    fetch, decode: as above.
    storage: how the examples are held, for the log ('memory', 'ArrayRecord files', ...).
  """

  num_examples: int
  fetch: Callable
  decode: Callable
  storage: str

  def subset(self, count: int, parent_index: Callable, storage: str) -> 'Split':
    """`count` of this split's examples: example `i` of the subset is `parent_index(i)`."""
    return Split(count, lambda indices: self.fetch(parent_index(indices)), self.decode, storage)

  def dataset(self) -> tf.data.Dataset:
    """Every example once, in index order, as `(image, label)`."""
    return (
      tf.data.Dataset.range(self.num_examples)
      .batch(256)
      .map(_as_written(self.fetch), num_parallel_calls=tf.data.AUTOTUNE)
      .unbatch()
      .map(_as_written(self.decode), num_parallel_calls=tf.data.AUTOTUNE)
    )


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A dataset ready for the pipeline.

  Attributes:
    name: as given to `load`.
    train_split, test_split: random access to the examples (`Split`).
    image_shape: `(H, W, C)`.
    num_bins: levels per value (`2**n_bits`, or 17 for the digits).
    num_classes: number of labels, or None.
    validation_split: examples to choose weights and settings by, never trained on
      and never the test split: the dataset's own validation split, or one carved
      from its training split (`with_validation`); None: no validation.
    validation_origin: where `validation_split` comes from, in words.
  """

  name: str
  train_split: Split
  test_split: Split
  image_shape: tuple[int, int, int]
  num_bins: int
  num_classes: int | None
  validation_split: Split | None = None
  validation_origin: str = 'none'

  @property
  def train(self) -> tf.data.Dataset:
    """The training split once, in index order: `(image, label)` as described in `Split`."""
    return self.train_split.dataset()

  @property
  def test(self) -> tf.data.Dataset:
    """The test split once, in index order."""
    return self.test_split.dataset()

  @property
  def num_train(self) -> int:
    return self.train_split.num_examples

  @property
  def num_test(self) -> int:
    return self.test_split.num_examples

  @property
  def num_validation(self) -> int:
    return self.validation_split.num_examples if self.validation_split else 0


def memory_split(images: np.ndarray, labels: np.ndarray) -> Split:
  """A split held in memory: `images` uint8 `[N, H, W, C]` already in bins, `labels` `[N]`."""
  images, labels = tf.constant(images, tf.uint8), tf.constant(labels, tf.int32)
  return Split(
    int(labels.shape[0]),
    lambda indices: (tf.gather(images, indices), tf.gather(labels, indices)),
    lambda image, label: (tf.cast(image, tf.int32), label),
    'memory',
  )


def _to_memory(split: Split, image_shape) -> Split:
  """`split` decoded once into memory."""
  images, labels = [np.zeros([0, *image_shape], np.uint8)], [np.zeros([0], np.int32)]
  for image, label in split.dataset().batch(1024).as_numpy_iterator():
    images.append(image.astype(np.uint8))
    labels.append(label)
  return memory_split(np.concatenate(images), np.concatenate(labels))


def _held(split: Split, image_shape, in_memory: str, what: str) -> Split:
  """`split`, in memory if `in_memory` says so ('auto': at most IN_MEMORY_BYTES decoded)."""
  decoded = split.num_examples * int(np.prod(image_shape))
  keep = in_memory == 'always' or (in_memory == 'auto' and decoded <= IN_MEMORY_BYTES)
  if keep and split.storage != 'memory':
    logging.info(
      '%s: %d examples (%.0f MiB decoded) held in memory (in_memory=%s, limit %d MiB)',
      what,
      split.num_examples,
      decoded / 2**20,
      in_memory,
      IN_MEMORY_BYTES // 2**20,
    )
    return _to_memory(split, image_shape)
  logging.info(
    '%s: %d examples (%.0f MiB decoded) read on demand from %s (in_memory=%s)',
    what,
    split.num_examples,
    decoded / 2**20,
    split.storage,
    in_memory,
  )
  return split


class TFRecordReader:
  """Random access to the records of TFRecord files, by index over the files in order.

  A file's record offsets are found the first time one of its records is read, by
  reading only the 12-byte record headers (8 bytes per record kept in memory).

  Args:
    files: `(path, skip, take)` per file: its records `skip .. skip + take - 1`.
  """

  def __init__(self, files):
    self._files = [(os.fspath(path), int(skip), int(take)) for path, skip, take in files]
    self._starts = np.cumsum([0] + [take for _, _, take in self._files])
    self._offsets = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _index(self, number):
    with self._lock:
      if number not in self._offsets:
        path = self._files[number][0]
        offsets, position, size = [], 0, os.path.getsize(path)
        with open(path, 'rb') as f:
          while position < size:
            offsets.append(position)
            f.seek(position)
            header = f.read(8)
            length = struct.unpack('<Q', header)[0] if len(header) == 8 else size
            position += 8 + 4 + length + 4  # length, its CRC, data, the data's CRC
            if position > size:
              raise DataError(
                f'{path!r} ends inside a record at byte {offsets[-1]} (size {size}); '
                'expected whole TFRecord records: prepare the dataset again.'
              )
        self._offsets[number] = np.array(offsets, np.int64)
      return self._offsets[number]

  def __getitems__(self, indices) -> list[bytes]:
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'record indices must be in [0, {len(self)}); got {indices.tolist()}')
    numbers = np.searchsorted(self._starts, indices, side='right') - 1
    records, handles = [], {}
    try:
      for index, number in zip(indices, numbers):
        path, skip, _ = self._files[number]
        offset = int(self._index(number)[index - self._starts[number] + skip])
        if number not in handles:
          handles[number] = open(path, 'rb')  # noqa: SIM115 (closed below)
        f = handles[number]
        f.seek(offset)
        (length,) = struct.unpack('<Q', f.read(8))
        f.seek(offset + 12)
        records.append(f.read(length))
    finally:
      for f in handles.values():
        f.close()
    return records


def records_split(reader, decode: Callable, storage: str) -> Split:
  """A split read on demand: `reader.__getitems__(indices)` -> encoded records."""

  def read(indices):
    return np.array(reader.__getitems__(indices.tolist()), dtype=object)

  def fetch(indices):
    records = tf.numpy_function(read, [indices], tf.string, stateful=False)
    return tf.ensure_shape(records, indices.shape)

  return Split(len(reader), fetch, decode, storage)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which dataset, and how its images become the model's input."""

  dataset: str = option(
    'digits',
    '"digits" (embedded), a TFDS name (mnist, cifar10, celeb_a, ...), or "folder:PATH" '
    'with PATH/train/<label>/*.png.',
    identity=True,
  )
  data_dir: str | None = option(
    None, 'TFDS data directory, or a prepared dataset version directory.'
  )
  download: bool = option(
    False,
    'Let TFDS download and prepare the dataset (needs internet). Off by default: an '
    'unprepared dataset fails at once.',
  )
  image_size: int | None = option(
    None, 'Centre-crop to square and resize to this size.', minimum=1, identity=True
  )
  n_bits: int | None = option(
    None,
    "Bits per value for 8-bit datasets (5 for the paper's CelebA-HQ).",
    minimum=1,
    maximum=8,
    identity=True,
  )
  bad_files: str = option(
    'skip',
    'folder: datasets: skip unreadable, corrupt or wrong-mode files (counted and logged), '
    'or fail up front listing them.',
    choices=BAD_FILE_POLICIES,
  )
  validation_size: float = option(
    0.1,
    'Validation images carved from the training split when the dataset has no validation '
    'split of its own: a fraction of the training split in (0, 1), or a number of images '
    "(as scikit-learn's test_size); 0: no validation (the latest weights are the result).",
    check=lambda v: v == 0 or 0 < v < 1 or (v >= 1 and float(v).is_integer()),
    expected='0, a fraction in (0, 1), or a whole number of images',
    identity=True,
  )
  validation_seed: int = option(
    0,
    'Seeds which training images the carved validation split takes (fixed, whatever --seed).',
    minimum=configs.INT32[0],
    maximum=configs.INT32[1],
    identity=True,
  )
  in_memory: str = option(
    'auto',
    'Hold the decoded splits in memory: "auto" when a split takes at most '
    f'{IN_MEMORY_BYTES // 2**20} MiB decoded, "always", or "never" (read the examples of '
    'each batch from the prepared files or image files). The digits are always in memory.',
    choices=IN_MEMORY_CHOICES,
  )

  def __post_init__(self):
    configs.validate(self)


def digits_arrays():
  """The digits as `((train_images, train_labels), (test_images, test_labels))`, fixed split."""
  from sklearn.datasets import load_digits  # Only the default dataset needs scikit-learn.

  digits = load_digits()
  images = digits.images.astype(np.int32)[..., np.newaxis]
  order = np.random.RandomState(0).permutation(len(images))
  train, test = order[:-DIGITS_NUM_TEST], order[-DIGITS_NUM_TEST:]
  labels = digits.target.astype(np.int32)
  return (images[train], labels[train]), (images[test], labels[test])


def _load_digits(n_bits, image_size) -> DataSource:
  if n_bits is not None:
    raise DataError(
      f'--n_bits applies to 8-bit image datasets; digits has {DIGITS_NUM_BINS} '
      f'levels (got n_bits={n_bits}).'
    )
  if image_size not in (None, 8):
    raise DataError(
      f'digits are 8x8; resizing them is not supported (got image_size={image_size}).'
    )
  (train_x, train_y), (test_x, test_y) = digits_arrays()
  return DataSource(
    DIGITS,
    memory_split(train_x.astype(np.uint8), train_y),
    memory_split(test_x.astype(np.uint8), test_y),
    (8, 8, 1),
    DIGITS_NUM_BINS,
    10,
  )


def _resize(image, size):
  """Centre-crops to a square, then resizes (area) to `size x size`; stays uint8."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(height, width)
  image = tf.image.crop_to_bounding_box(
    image, (height - side) // 2, (width - side) // 2, side, side
  )
  image = tf.image.resize(image, [size, size], method='area', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _to_bins(image, n_bits):
  """uint8 -> int32 in `[0, 2**n_bits)`, as the official code reduces precision."""
  return tf.cast(image, tf.int32) // (2 ** (8 - n_bits))


def _image_shape(name, image_shape, image_size):
  """The `(H, W, C)` the model sees: the images' own, or `image_size` square."""
  height, width, channels = image_shape
  if image_size is not None:
    height = width = image_size
  if height is None or width is None:
    raise DataError(f'images of {name!r} vary in size; pass --image_size to resize them.')
  return (height, width, channels)


def _converter(shape, n_bits, image_size):
  """A TFDS-style feature dict -> `(image, label)`: resized, in bins, of shape `shape`."""

  def convert(example):
    image = example['image']
    if image_size is not None:
      image = _resize(image, image_size)
    label = tf.cast(example.get('label', 0), tf.int32)
    return tf.ensure_shape(_to_bins(image, n_bits), shape), label

  return convert


def _empty_split(shape) -> Split:
  return memory_split(np.zeros([0, *shape], np.uint8), np.zeros([0], np.int32))


def _split_names(split_names) -> tuple[str, str | None]:
  """The TFDS splits used as `(test, validation)`: 'test' and 'validation' when the
  dataset has both; a 'validation' split alone is the test split (no own validation)."""
  if 'test' in split_names:
    return 'test', 'validation' if 'validation' in split_names else None
  return ('validation' if 'validation' in split_names else 'test'), None


def _tfds_split(builder, split, convert, shape, in_memory, what) -> Split:
  """A prepared split read by index from its files (ArrayRecord or TFRecord), sized by its
  metadata; without prepared files (e.g. `tfds.testing.mock_data`), read once into memory."""
  import tensorflow_datasets as tfds

  info = builder.info
  if builder.is_prepared():
    split_info = info.splits[split]
    file_format = info.file_format
    if file_format == tfds.core.FileFormat.ARRAY_RECORD:
      reader = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
      )
    elif file_format == tfds.core.FileFormat.TFRECORD:
      reader = TFRecordReader((f.filename, f.skip, f.take) for f in split_info.file_instructions)
    else:
      raise DataError(
        f'{what} is stored as {file_format.value}; expected TFDS files in array_record or '
        'tfrecord format.'
      )
    files = len(split_info.file_instructions)
    split = records_split(
      reader,
      lambda record: convert(info.features.deserialize_example(record)),
      f'{files} {file_format.value} file(s)',
    )
    return _held(split, shape, in_memory, what)
  if in_memory == 'never':
    raise DataError(
      f'{what} has no prepared files to read examples from (got in_memory="never"); '
      'expected a prepared dataset, or in_memory="auto".'
    )
  images, labels = [np.zeros([0, *shape], np.uint8)], [np.zeros([0], np.int32)]
  examples = (
    builder.as_dataset(split=split, shuffle_files=False).map(_as_written(convert)).batch(1024)
  )
  for image, label in examples.as_numpy_iterator():
    images.append(image.astype(np.uint8))
    labels.append(label)
  logging.info('%s: no prepared files; its examples are held in memory', what)
  return memory_split(np.concatenate(images), np.concatenate(labels))


def _load_tfds(name, data_dir, download, n_bits, image_size, in_memory) -> DataSource:
  import tensorflow_datasets as tfds

  try:
    if data_dir and os.path.exists(os.path.join(data_dir, 'dataset_info.json')):
      builder = tfds.builder_from_directory(data_dir)  # A prepared dataset version directory.
    else:
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
      f'unknown dataset {name!r}: expected "digits", "folder:PATH" or a TFDS '
      f'name such as mnist, cifar10, celeb_a ({str(e).splitlines()[0]})'
    ) from e
  features = builder.info.features
  if 'image' not in features:
    raise DataError(
      f'TFDS dataset {name!r} has no "image" feature; got features {list(features.keys())}.'
    )
  if download and not builder.is_prepared():
    problem = unreachable(TFDS_DOWNLOAD_URL)
    if problem:
      raise DataError(
        f'--download of {name!r} needs internet, and {TFDS_DOWNLOAD_URL} (where TFDS '
        f'downloads from) does not answer: {problem}. Connect, or pass --data_dir pointing '
        'at a prepared copy.'
      )
    try:
      builder.download_and_prepare()
    except OSError as e:  # requests' ConnectionError and friends are OSErrors.
      reason = ' '.join(str(e).split())[:200]
      raise DataError(
        f'--download of {name!r} failed ({type(e).__name__}: {reason}); pass --data_dir '
        'pointing at a prepared copy, or retry once the connection works.'
      ) from e
  shape = _image_shape(name, features['image'].shape, image_size)
  convert = _converter(shape, n_bits, image_size)
  known_splits = dict(builder.info.splits)
  test_split, validation_split = _split_names(known_splits)
  splits = {}
  try:
    for key, split in (('train', 'train'), ('test', test_split), ('validation', validation_split)):
      if split is None:
        splits[key] = None
      elif known_splits and split not in known_splits:  # Training refuses; sampling uses train.
        splits[key] = _empty_split(shape)
      else:
        splits[key] = _tfds_split(builder, split, convert, shape, in_memory, f'{name} {split}')
  except AssertionError as e:  # TFDS's "could not find data", raised at once without download.
    raise DataError(
      f'TFDS dataset {name!r} is not prepared in {data_dir or tfds.core.constants.DATA_DIR}; '
      'pass --download (needs internet) or --data_dir pointing at a prepared copy.'
    ) from e
  num_classes = features['label'].num_classes if 'label' in features else None
  return DataSource(
    name,
    splits['train'],
    splits['test'],
    shape,
    2**n_bits,
    num_classes,
    splits['validation'],
    f"{name}'s own {validation_split!r} split" if validation_split else 'none',
  )


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
  """None if `url` answers an HTTP HEAD within `timeout` seconds (any status), else why not.

  Honours the usual proxy variables, as TFDS's downloads do. A DNS lookup that hangs
  counts against the same `timeout`.
  """
  outcome = []

  def probe():
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout).close()
      outcome.append(None)
    except urllib.error.HTTPError:  # An answer, even an error status: the host is reachable.
      outcome.append(None)
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, bad URLs.
      outcome.append(str(getattr(e, 'reason', None) or e))

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 1.0)
  return outcome[0] if outcome else f'no answer within {timeout:g} s'


_LISTED = 20  # Bad files named in a message; the rest are counted.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'  # Then IHDR: length, type, width, height, bit depth.


def _folder_split(root, split, labels=None):
  """Files and integer labels of `root/split/<label>/*`.

  Labels are numbered in sorted order of the names given in `labels` (the training
  split's), or of this split's own names when `labels` is None; a class directory
  whose name is not among `labels` is refused, naming it.
  """
  directory = os.path.join(root, split)
  names = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
  labels = names if labels is None else labels
  unknown = [n for n in names if n not in labels]
  if unknown:
    raise DataError(
      f'{directory!r} has classes {unknown} that {os.path.join(root, "train")!r} does not; '
      f'expected some of {labels} (labels are numbered by the training classes).'
    )
  files, ids = [], []
  for label in names:
    with os.scandir(os.path.join(directory, label)) as entries:
      paths = sorted((e.name, e.path) for e in entries if e.is_file())
    files.extend(path for _, path in paths)
    ids.extend([labels.index(label)] * len(paths))
  return files, ids, labels


def _inspect(path):
  """`(height, width, channels)` of an 8-bit image file, or the reason it cannot be used."""
  try:
    contents = tf.io.read_file(path)
    header = contents.numpy()[:25]
    if header[:8] == _PNG_SIGNATURE and len(header) == 25 and header[24] == 16:
      return '16-bit PNG where 8-bit images are expected'
    image = tf.io.decode_image(contents, expand_animations=False, dtype=tf.uint8)
  except (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.PermissionDeniedError,
    tf.errors.UnimplementedError,
  ) as e:
    return f'unreadable or not an image ({type(e).__name__})'
  return tuple(int(d) for d in image.shape)


def cache_dir() -> str:
  """Where glow_tf keeps what it learnt about image folders: $GLOW_TF_CACHE_DIR, else
  $XDG_CACHE_HOME/glow_tf, else ~/.cache/glow_tf."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  return os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'glow_tf'
  )


def _inspected(files, directory):
  """`(shapes, reasons)` of `files` (all under `directory`), as `_inspect` says: int32
  `[N, 3]` shapes, zero for a file that cannot be used, and `{i: why}` for those.

  A file whose size and modification time are those of an earlier inspection (kept
  in `cache_dir()`, one file per folder split) is not opened again: loading a large
  folder a second time costs a `stat` per file instead of a decode.
  """
  key = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:24]
  path = os.path.join(cache_dir(), 'folders', f'{key}.npz')
  count = len(files)
  stats = np.fromiter(
    itertools.chain.from_iterable((s.st_size, s.st_mtime_ns) for s in map(os.stat, files)),
    np.int64,
    2 * count,
  ).reshape(count, 2)
  names = '\n'.join(files).encode()
  shapes, reasons = np.zeros([count, 3], np.int32), {}
  known = np.zeros([count], bool)
  try:
    with np.load(path) as cached:
      cached_names = cached['names'].tobytes()
      cached_stats, cached_shapes = cached['stats'], cached['shapes']
      cached_reasons = json.loads(cached['reasons'].tobytes().decode())
    if cached_names == names:  # The same listing: compare row by row.
      rows = np.arange(count)
    else:  # Files came or went: find each one's row, if it has one.
      row_of = {n: i for i, n in enumerate(cached_names.decode().split('\n'))}
      rows = np.array([row_of.get(f, -1) for f in files], np.int64).reshape(count)
    found = rows >= 0
    known[found] = (cached_stats[rows[found]] == stats[found]).all(axis=1)
    shapes[known] = cached_shapes[rows[known]]
    reasons = {
      int(i): cached_reasons[str(rows[i])] for i in np.flatnonzero(known) if shapes[i, 0] == 0
    }
  except (OSError, ValueError, KeyError, IndexError):  # No cache yet, or an unusable one.
    known[:] = False
  fresh = np.flatnonzero(~known)
  for i in fresh:
    result = _inspect(files[i])
    if isinstance(result, tuple):
      shapes[i] = result
    else:
      shapes[i], reasons[int(i)] = 0, result
  if len(fresh) or not os.path.exists(path):
    partial = f'{path}.{os.getpid()}.tmp.npz'
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(
        partial,
        names=np.frombuffer(names, np.uint8),
        stats=stats,
        shapes=shapes,
        reasons=np.frombuffer(json.dumps(reasons).encode(), np.uint8),
      )
      os.replace(partial, path)
    except OSError as e:
      logging.warning('cannot keep the inspection of %s in %s (%s)', directory, path, e)
      with contextlib.suppress(OSError):
        os.remove(partial)
  logging.info(
    '%s: %d files, %d inspected, %d known from %s',
    directory,
    count,
    len(fresh),
    count - len(fresh),
    path,
  )
  return shapes, reasons


def _validated(files, ids, bad_files, root, directory):
  """Keeps the files that decode, in the most common channel count; logs or refuses the rest."""
  shapes, reasons = _inspected(files, directory)
  usable = shapes[:, 0] > 0
  values, counts = np.unique(shapes[usable, 2], return_counts=True)
  channels = int(values[np.argmax(counts)]) if len(values) else None
  wrong_mode = usable & (shapes[:, 2] != channels)
  for i in np.flatnonzero(wrong_mode):
    reasons[int(i)] = f"{shapes[i, 2]} channels where the folder's images have {channels}"
  bad = [(files[i], reasons[i]) for i in sorted(reasons)]
  if bad:
    listing = '; '.join(f'{os.path.relpath(f, root)}: {why}' for f, why in bad[:_LISTED])
    more = f' (and {len(bad) - _LISTED} more)' if len(bad) > _LISTED else ''
    if bad_files == 'fail':
      raise DataError(
        f'{len(bad)} of {len(files)} files in {root!r} cannot be used: '
        f'{listing}{more}. Fix or remove them, or pass --bad_files=skip.'
      )
    logging.warning(
      'skipping %d of %d files in %s that cannot be used: %s%s',
      len(bad),
      len(files),
      root,
      listing,
      more,
    )
  good = np.flatnonzero(usable & ~wrong_mode)
  kept = [(files[i], ids[i]) for i in good]
  heights, widths = shapes[good, 0].astype(np.int64), shapes[good, 1].astype(np.int64)
  sizes = {divmod(int(k), 2**31) for k in np.unique(heights * 2**31 + widths)}
  return kept, sizes, channels, len(bad)


def _load_folder(path, n_bits, image_size, bad_files, in_memory) -> DataSource:
  if not os.path.isdir(path):
    raise DataError(f'image folder {path!r} does not exist or is not a directory.')
  subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  if 'train' not in subdirs:
    raise DataError(
      f'image folder {path!r} needs the layout {path}/train/<label>/*.png (and '
      f'{path}/test/...); found subdirectories {subdirs}.'
    )
  splits, sizes, labels, channels = {}, set(), None, None
  for split in ('train', 'test', 'validation'):
    if split not in subdirs:
      splits[split] = None if split == 'validation' else []
      continue
    files, ids, labels = _folder_split(path, split, labels)
    kept, split_sizes, split_channels, _ = _validated(
      files, ids, bad_files, path, os.path.join(path, split)
    )
    if channels is not None and split_channels not in (None, channels):
      raise DataError(
        f'the {split} images of {path!r} differ in mode from the train images: '
        f'{split_channels} and {channels} channels.'
      )
    channels = channels or split_channels
    splits[split], sizes = kept, sizes | split_sizes
  if not splits['train']:
    raise DataError(f'image folder {path!r} has no usable training images.')
  if image_size is None:
    square = {h for h, w in sizes if h == w}
    if len(sizes) != 1 or not square:
      raise DataError(
        f'images in {path!r} have sizes {sorted(sizes)[:5]}; pass --image_size '
        'to centre-crop and resize them to one square size.'
      )
    image_size = square.pop()

  shape = (image_size, image_size, channels)
  convert = _converter(shape, n_bits, image_size)

  def decode(file, label):
    image = tf.io.decode_image(tf.io.read_file(file), channels=channels, expand_animations=False)
    return convert({'image': image, 'label': label})

  def split(kept, what):
    files = tf.constant([f for f, _ in kept], tf.string, shape=[len(kept)])  # Typed if empty.
    ids = tf.constant([i for _, i in kept], tf.int32, shape=[len(kept)])
    return _held(
      Split(
        len(kept),
        lambda indices: (tf.gather(files, indices), tf.gather(ids, indices)),
        decode,
        f'{len(kept)} image files',
      ),
      shape,
      in_memory,
      what,
    )

  own_validation = splits['validation'] is not None
  return DataSource(
    FOLDER_PREFIX + path,
    split(splits['train'], f'{path}/train'),
    split(splits['test'], f'{path}/test'),
    shape,
    2**n_bits,
    len(labels) if labels and len(labels) > 1 else None,
    split(splits['validation'], f'{path}/validation') if own_validation else None,
    f'{path}/validation' if own_validation else 'none',
  )


def load(
  dataset: str = DIGITS,
  data_dir: str | None = None,
  download: bool = False,
  n_bits: int | None = None,
  image_size: int | None = None,
  bad_files: str = 'skip',
  in_memory: str = 'auto',
  validation_size: float = 0.1,
  validation_seed: int = 0,
) -> DataSource:
  """Loads `dataset`: 'digits', 'folder:PATH', or a TFDS name.

  Args:
    dataset: 'digits' (embedded, offline), 'folder:PATH' (PATH/train/<label>/*
      and optionally PATH/test/<label>/*), or a TFDS name such as 'mnist'.
    data_dir: TFDS data directory, or a prepared dataset version directory.
    download: let TFDS download and prepare (needs internet). Off: an
      unprepared dataset fails at once with a clear error.
    n_bits: reduce 8-bit images to `2**n_bits` levels (default 8).
    image_size: centre-crop to square and resize to this size.
    bad_files: for image folders, what to do with files that are unreadable, not
      images, not 8-bit, or of another channel count than most: 'skip' them
      (logged with their names) or 'fail' with the list.
    in_memory: hold the decoded splits in memory: 'auto' (when a split takes at most
      IN_MEMORY_BYTES decoded; said in the log), 'always', or 'never' (read each
      batch's examples from the prepared files or the image files).
    validation_size, validation_seed: the validation split carved from the training
      split when the dataset has none of its own (see `with_validation`).

  Raises:
    DataError: for anything that makes the dataset unusable, with the reason.
  """
  return load_config(
    DataConfig(
      dataset=dataset,
      data_dir=data_dir,
      download=download,
      image_size=image_size,
      n_bits=n_bits,
      bad_files=bad_files,
      in_memory=in_memory,
      validation_size=validation_size,
      validation_seed=validation_seed,
    )
  )


def load_config(config: DataConfig) -> DataSource:
  """Loads the dataset `config` names (see `load` for what each field means).

  Raises:
    DataError: for anything that makes the dataset unusable, with the reason.
  """
  dataset, n_bits = config.dataset, config.n_bits
  if dataset == DIGITS:
    source = _load_digits(n_bits, config.image_size)
  elif dataset.startswith(FOLDER_PREFIX):
    source = _load_folder(
      dataset[len(FOLDER_PREFIX) :],
      8 if n_bits is None else n_bits,
      config.image_size,
      config.bad_files,
      config.in_memory,
    )
  else:
    source = _load_tfds(
      dataset,
      config.data_dir,
      config.download,
      8 if n_bits is None else n_bits,
      config.image_size,
      config.in_memory,
    )
  if source.num_train == 0:
    raise DataError(f'dataset {dataset!r} has no training images.')
  return with_validation(source, config.validation_size, config.validation_seed)


def with_validation(source: DataSource, size: float, seed: int) -> DataSource:
  """`source` with a validation split: its own if it has one, else `size` training images
  (a fraction in (0, 1), or a count) carved out of the training split, which keeps the
  rest. Which images are carved depends only on `seed` and the split's size: the
  positions `[0, n)` of the permutation `index_shuffle(., (seed, -1, 0))` of the
  training split are the validation split, the positions after it the training split.

  Raises:
    DataError: if carving would leave no training image.
  """
  if source.validation_split is not None:
    logging.debug('%s: validation on %s', source.name, source.validation_origin)
    return source
  if size == 0:
    return source
  total = source.num_train
  count = int(round(size * total)) if size < 1 else int(size)
  if not 0 < count < total:
    raise DataError(
      f'validation_size={size:g} of the {total} training images of {source.name!r} gives '
      f'{count} validation images; expected at least 1 and fewer than {total}.'
    )
  parent = source.train_split

  def permuted(positions):
    return shuffled_index(positions, total, (seed, -1, 0))

  origin = f'{count} of the {total} training images (validation_seed {seed})'
  logging.debug('%s: validation on %s; %d left to train on', source.name, origin, total - count)
  return dataclasses.replace(
    source,
    train_split=parent.subset(
      total - count, lambda i: permuted(i + count), f'{parent.storage}, less validation'
    ),
    validation_split=parent.subset(count, permuted, f'{parent.storage}, validation part'),
    validation_origin=origin,
  )


def check_splits(source: DataSource, global_batch: int) -> None:
  """Refuses, before training starts, a source without the splits a training run reads.

  Training needs at least one global batch of training images, and test images:
  it evaluates on them every `eval_every` steps and at the end.
  """
  if source.num_train < global_batch:
    raise DataError(
      f'the training split of {source.name!r} has {source.num_train} images, '
      f'fewer than one global batch ({global_batch}).'
    )
  if source.num_test == 0:
    if source.name.startswith(FOLDER_PREFIX):
      root = source.name[len(FOLDER_PREFIX) :]
      expected = f'usable images in {os.path.join(root, "test")}/<label>/*.png'
    else:
      expected = 'a "test" or "validation" split'
    raise DataError(
      f'dataset {source.name!r} has no test images; training evaluates on them every '
      f'eval_every steps and at the end, so it needs {expected}.'
    )


def _share(input_context, global_batch):
  """`(first, count, replicas)`: this worker's rows `[first, first + count)` of a global
  batch, split evenly over its `replicas` (all rows and 1 without `input_context`)."""
  if input_context is None:
    return 0, global_batch, 1
  replicas = input_context.num_replicas_in_sync
  if global_batch % replicas or replicas % input_context.num_input_pipelines:
    raise DataError(
      f'a global batch of {global_batch} over {replicas} replicas and '
      f'{input_context.num_input_pipelines} input pipelines: expected the batch divisible '
      'by the replicas and the replicas by the pipelines.'
    )
  local = replicas // input_context.num_input_pipelines
  per_replica = global_batch // replicas
  return input_context.input_pipeline_id * local * per_replica, local * per_replica, local


def _batches(split, steps, indices, global_batch, num_bins, seed, input_context):
  """`(x, label)` for each `step` of `steps`: this worker's rows of the global batch
  whose examples are `indices(step, rows)` (rows: int64 positions in the global batch),
  dequantised with the noise those rows get in the global batch, seed `(seed, step)`;
  then one per-replica batch at a time when `input_context` is given."""
  first, count, replicas = _share(input_context, global_batch)
  rows = tf.range(first, first + count, dtype=tf.int64)
  examples = (
    steps.map(
      _as_written(lambda step: split.fetch(indices(step, rows))),
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    .unbatch()
    .map(_as_written(split.decode), num_parallel_calls=tf.data.AUTOTUNE)
    .batch(count, drop_remainder=True)
  )

  batches = tf.data.Dataset.zip((steps, examples)).map(
    _as_written(
      lambda step, batch: (
        dequantize(batch[0], num_bins, tf.stack([seed, step]), (first, global_batch)),
        batch[1],
      )
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  if input_context is not None:
    batches = batches.map(
      _as_written(
        lambda *tensors: tuple(
          tf.reshape(t, [replicas, count // replicas, *t.shape[1:]]) for t in tensors
        )
      )
    ).unbatch()
  return batches


def shuffled_index(index, num_examples: int, seed):
  """`index_shuffle(index, seed, num_examples - 1)` elementwise: a permutation of
  `[0, num_examples)` computed per index (none is held). `seed` is three int64 scalars
  or three tensors shaped like `index`."""
  index = tf.convert_to_tensor(index, tf.int64)
  seeds = tf.stack(
    [tf.broadcast_to(tf.cast(part, tf.int64), tf.shape(index)) for part in seed], axis=-1
  )
  # The raw op: tf.random.experimental.index_shuffle pads a [n, 2] seed along the wrong axis.
  return tf.raw_ops.RandomIndexShuffle(
    index=index,
    seed=seeds,
    max_index=tf.fill(tf.shape(index), tf.constant(num_examples - 1, tf.int64)),
    rounds=4,
  )


def epoch_indices(positions, num_examples: int, seed: int):
  """The example at each position of the stream of epochs: epoch `e = p // N` is the
  permutation `index_shuffle(., seed=(seed, e, 0))` of `[0, N)`, computed per position
  (no permutation is held), so any position is found in O(1)."""
  positions = tf.convert_to_tensor(positions, tf.int64)
  epoch = positions // num_examples
  return shuffled_index(positions % num_examples, num_examples, (seed, epoch, 0))


def train_dataset(
  source: DataSource,
  global_batch: int,
  seed: int,
  start_step: int = 0,
  input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
  """Endless `(x, label)` training batches from step `start_step` on.

  Global batch `i` holds the examples at positions `[i B, (i + 1) B)` of the stream
  of epochs (`epoch_indices`), dequantised with seed `(seed, i)`. Starting at any
  step reads nothing before it. Without `input_context`, yields global batches;
  with it (from `strategy.distribute_datasets_from_function`), yields this worker's
  per-replica slices of the same global batches, reading only their examples.
  """
  split = source.train_split
  if split.num_examples == 0:
    raise DataError(f'dataset {source.name!r} has no training images.')
  batches = _batches(
    split,
    tf.data.Dataset.range(start_step, 2**62),
    lambda step, rows: epoch_indices(step * global_batch + rows, split.num_examples, seed),
    global_batch,
    source.num_bins,
    seed,
    input_context,
  )
  return batches.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
  source: DataSource,
  global_batch: int,
  seed: int,
  input_context: tf.distribute.InputContext | None = None,
  split: str = 'test',
) -> tf.data.Dataset:
  """The `split` ('test' or 'validation') once, as `(x, label, weight)` batches,
  dequantised with fixed noise.

  The last batch is padded to a full global batch with weight-0 copies, so every
  replica gets equal batches and `sum(weight * bpd) / sum(weight)` is exact.
  """
  name, split = split, getattr(source, f'{split}_split')
  if split is None or split.num_examples == 0:
    raise DataError(f'dataset {source.name!r} has no {name} images to evaluate on.')
  num_batches = math.ceil(split.num_examples / global_batch)
  first, count, replicas = _share(input_context, global_batch)
  # Batch b is dequantised with seed (seed, -1 - b): never a training batch's noise.
  batches = _batches(
    split,
    tf.data.Dataset.range(-1, -1 - num_batches, -1),
    lambda step, rows: ((-1 - step) * global_batch + rows) % split.num_examples,
    global_batch,
    source.num_bins,
    seed,
    input_context,
  )
  # Positions past the end wrap around (weight 0).
  weights = tf.data.Dataset.range(num_batches).map(
    _as_written(
      lambda b: tf.cast(
        b * global_batch + tf.range(first, first + count, dtype=tf.int64) < split.num_examples,
        tf.float32,
      )
    )
  )
  if input_context is not None:
    weights = weights.map(
      _as_written(lambda w: tf.reshape(w, [replicas, count // replicas]))
    ).unbatch()
  return (
    tf.data.Dataset.zip((batches, weights))
    .map(_as_written(lambda b, w: (*b, w)))
    .prefetch(tf.data.AUTOTUNE)
  )
