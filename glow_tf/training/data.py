"""Datasets for Glow: the embedded digits, TFDS by name, image folders; one input pipeline.

Every source becomes a `DataSource`: integer images in `[0, num_bins)` with
labels. `train_dataset` and `eval_dataset` then build the one pipeline

    (cache) -> shuffle per epoch -> global batch -> uniform dequantisation
            -> this worker's share of the batch, per replica -> prefetch

in which batch `i` depends only on `(seed, i)`, so a resumed run sees exactly the
batches an uninterrupted run would, and every strategy (one device, mirrored,
multi-worker) sees the same global batches.
"""

import collections
import dataclasses
import math
import os
import threading
import urllib.error
import urllib.request

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


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A dataset ready for the pipeline.

  Attributes:
    name: as given to `load`.
    train, test: finite `tf.data.Dataset`s of `(image, label)`: images int32
      `[H, W, C]` with values in `[0, num_bins)`, labels int32 scalars (0 when
      the dataset has none).
    num_train, num_test: number of examples.
    image_shape: `(H, W, C)`.
    num_bins: levels per value (`2**n_bits`, or 17 for the digits).
    num_classes: number of labels, or None.
  """

  name: str
  train: tf.data.Dataset
  test: tf.data.Dataset
  num_train: int
  num_test: int
  image_shape: tuple[int, int, int]
  num_bins: int
  num_classes: int | None


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
  train, test = digits_arrays()
  return DataSource(
    DIGITS,
    tf.data.Dataset.from_tensor_slices(train),
    tf.data.Dataset.from_tensor_slices(test),
    len(train[0]),
    len(test[0]),
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


def _count(dataset) -> int:
  cardinality = int(dataset.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))


def _from_features(
  name, splits, image_shape, n_bits, image_size, num_classes, split_sizes
) -> DataSource:
  """Maps TFDS-style feature dicts to `(image, label)` and builds the DataSource."""

  def convert(example):
    image = example['image']
    if image_size is not None:
      image = _resize(image, image_size)
    label = tf.cast(example.get('label', 0), tf.int32)
    return _to_bins(image, n_bits), label

  train, test = [
    splits[k].map(convert, num_parallel_calls=tf.data.AUTOTUNE) for k in ('train', 'test')
  ]
  height, width, channels = image_shape
  if image_size is not None:
    height = width = image_size
  if height is None or width is None:
    raise DataError(f'images of {name!r} vary in size; pass --image_size to resize them.')
  num_train = split_sizes.get('train') or _count(train)
  num_test = split_sizes.get('test') or _count(test)
  return DataSource(
    name, train, test, num_train, num_test, (height, width, channels), 2**n_bits, num_classes
  )


def _test_split(split_names):
  for candidate in ('test', 'validation'):
    if candidate in split_names:
      return candidate
  return 'test'


def _load_tfds(name, data_dir, download, n_bits, image_size) -> DataSource:
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
  known_splits = dict(builder.info.splits)
  test_split = _test_split(known_splits)
  try:
    splits = {'train': builder.as_dataset(split='train', shuffle_files=False)}
    if known_splits and test_split not in known_splits:  # Training refuses; sampling uses train.
      splits['test'] = splits['train'].take(0)
    else:
      splits['test'] = builder.as_dataset(split=test_split, shuffle_files=False)
  except AssertionError as e:  # TFDS's "could not find data", raised at once without download.
    raise DataError(
      f'TFDS dataset {name!r} is not prepared in {data_dir or tfds.core.constants.DATA_DIR}; '
      'pass --download (needs internet) or --data_dir pointing at a prepared copy.'
    ) from e
  num_classes = features['label'].num_classes if 'label' in features else None
  sizes = {
    k: known_splits[s].num_examples
    for k, s in (('train', 'train'), ('test', test_split))
    if s in known_splits
  }
  return _from_features(
    name, splits, features['image'].shape, n_bits, image_size, num_classes, sizes
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
    for name in sorted(os.listdir(os.path.join(directory, label))):
      path = os.path.join(directory, label, name)
      if os.path.isfile(path):
        files.append(path)
        ids.append(labels.index(label))
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


def _validated(files, ids, bad_files, root):
  """Keeps the files that decode, in the most common channel count; logs or refuses the rest."""
  shapes = {f: _inspect(f) for f in files}
  channel_counts = collections.Counter(s[2] for s in shapes.values() if isinstance(s, tuple))
  channels = channel_counts.most_common(1)[0][0] if channel_counts else None
  bad = []
  for f, shape in shapes.items():
    if not isinstance(shape, tuple):
      bad.append((f, shape))
    elif shape[2] != channels:
      bad.append((f, f"{shape[2]} channels where the folder's images have {channels}"))
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
  unusable = {f for f, _ in bad}
  kept = [(f, i) for f, i in zip(files, ids) if f not in unusable]
  return kept, {shapes[f][:2] for f, _ in kept}, channels, len(bad)


def _load_folder(path, n_bits, image_size, bad_files) -> DataSource:
  if not os.path.isdir(path):
    raise DataError(f'image folder {path!r} does not exist or is not a directory.')
  subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  if 'train' not in subdirs:
    raise DataError(
      f'image folder {path!r} needs the layout {path}/train/<label>/*.png (and '
      f'{path}/test/...); found subdirectories {subdirs}.'
    )
  splits, sizes, labels, channels = {}, set(), None, None
  for split in ('train', 'test'):
    if split not in subdirs:
      splits[split] = []
      continue
    files, ids, labels = _folder_split(path, split, labels)
    kept, split_sizes, split_channels, _ = _validated(files, ids, bad_files, path)
    if channels is not None and split_channels not in (None, channels):
      raise DataError(
        f'the train and test images of {path!r} differ in mode: {channels} and '
        f'{split_channels} channels.'
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

  def dataset(kept):
    files = [f for f, _ in kept]
    ids = np.array([i for _, i in kept], np.int32)
    files = tf.constant(files, tf.string, shape=[len(files)])  # Typed even when empty.
    return tf.data.Dataset.from_tensor_slices((files, ids)).map(
      lambda f, i: (
        {
          'image': tf.io.decode_image(
            tf.io.read_file(f), channels=channels, expand_animations=False
          ),
          'label': i,
        }
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
    )

  return _from_features(
    FOLDER_PREFIX + path,
    {k: dataset(v) for k, v in splits.items()},
    (None, None, channels),
    n_bits,
    image_size,
    len(labels) if labels and len(labels) > 1 else None,
    {k: len(v) for k, v in splits.items()},
  )


def load(
  dataset: str = DIGITS,
  data_dir: str | None = None,
  download: bool = False,
  n_bits: int | None = None,
  image_size: int | None = None,
  bad_files: str = 'skip',
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
    )
  else:
    source = _load_tfds(
      dataset, config.data_dir, config.download, 8 if n_bits is None else n_bits, config.image_size
    )
  if source.num_train == 0:
    raise DataError(f'dataset {dataset!r} has no training images.')
  return source


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


def _per_replica(batches, input_context, global_batch):
  """This worker's replicas' shares of each global batch, one per-replica batch at a time."""
  replicas = input_context.num_replicas_in_sync
  local = replicas // input_context.num_input_pipelines
  first = input_context.input_pipeline_id * local

  def share(*tensors):
    return tuple(
      tf.reshape(t, [replicas, global_batch // replicas, *t.shape[1:]])[first : first + local]
      for t in tensors
    )

  return batches.map(share).unbatch()


def train_dataset(
  source: DataSource,
  global_batch: int,
  seed: int,
  start_step: int = 0,
  input_context: tf.distribute.InputContext | None = None,
  shuffle_buffer: int = 50_000,
) -> tf.data.Dataset:
  """Endless `(x, label)` training batches from step `start_step` on.

  Epoch `e` is shuffled with seed `(seed, e)`; batch `i` is dequantised with seed
  `(seed, i)`. Without `input_context`, yields global batches; with it (from
  `strategy.distribute_datasets_from_function`), yields this worker's
  per-replica slices of the same global batches.
  """
  examples = source.train.cache()
  buffer = min(shuffle_buffer, source.num_train)

  def epoch(index):
    return examples.shuffle(buffer, seed=seed * 1_000_003 + index, reshuffle_each_iteration=False)

  first_example = start_step * global_batch
  first_epoch, offset = divmod(first_example, source.num_train)
  stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(offset)
  batches = tf.data.Dataset.zip(
    (tf.data.Dataset.range(start_step, 2**62), stream.batch(global_batch, drop_remainder=True))
  )
  batches = batches.map(
    lambda step, batch: (dequantize(batch[0], source.num_bins, tf.stack([seed, step])), batch[1]),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  if input_context is not None:
    batches = _per_replica(batches, input_context, global_batch)
  return batches.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
  source: DataSource,
  global_batch: int,
  seed: int,
  input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
  """The test split once, as `(x, label, weight)` batches, dequantised with fixed noise.

  The last batch is padded to a full global batch with weight-0 copies, so every
  replica gets equal batches and `sum(weight * bpd) / sum(weight)` is exact.
  """
  if source.num_test == 0:
    raise DataError(f'dataset {source.name!r} has no test images to evaluate on.')
  padded = math.ceil(source.num_test / global_batch) * global_batch
  weights = tf.data.Dataset.from_tensor_slices(np.arange(padded) < source.num_test).map(
    lambda w: tf.cast(w, tf.float32)
  )
  # No cache: each evaluation builds this dataset anew, so a cache would be filled and
  # dropped every time, and a reader that takes one batch (the health figures) would
  # leave it partly filled, which tf.data reports with a warning. The padding reads
  # the first `padded - num_test` images once more; their weight is 0.
  examples = source.test.repeat().take(padded)
  batches = tf.data.Dataset.zip(
    (
      tf.data.Dataset.range(padded // global_batch),
      tf.data.Dataset.zip((examples, weights)).batch(global_batch),
    )
  )
  batches = batches.map(
    lambda index, batch: (
      dequantize(batch[0][0], source.num_bins, tf.stack([seed, -1 - index])),
      batch[0][1],
      batch[1],
    )
  )
  if input_context is not None:
    batches = _per_replica(batches, input_context, global_batch)
  return batches.prefetch(tf.data.AUTOTUNE)
