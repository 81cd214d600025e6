"""Random image datasets on disk, in the formats `glow_tf.training.data` reads.

`prepare_tfds` writes a prepared TFDS dataset (ArrayRecord or TFRecord files with
their metadata, as `download_and_prepare` leaves them); `write_folder` writes an
image folder `root/{train,test}/<label>/*.png`. Image `k` of a split is the same in
both (uniform random uint8 pixels), label `k % num_classes`. The benchmark and the
tests of the input pipeline use them; nothing here needs a network.
"""

import os

import numpy as np

__all__ = ['FILE_FORMATS', 'NAME', 'prepare_tfds', 'synthetic_images', 'write_folder']

NAME = 'synthetic_images'
FILE_FORMATS = ('array_record', 'tfrecord')
_CHUNK = 1000  # Images drawn per random generator call.


def synthetic_images(split: str, count: int, size: int, num_classes: int = 10):
  """Yields `(k, image uint8 [size, size, 3], label)` for k in `[0, count)`, deterministically."""
  salt = sum(split.encode())  # A fixed number per split name.
  for start in range(0, count, _CHUNK):
    rng = np.random.default_rng([salt, start])
    chunk = rng.integers(0, 256, size=(min(_CHUNK, count - start), size, size, 3), dtype=np.uint8)
    for offset, image in enumerate(chunk):
      yield start + offset, image, (start + offset) % num_classes


def prepare_tfds(
  data_dir: str,
  num_train: int,
  num_test: int,
  size: int = 32,
  file_format: str = 'array_record',
  num_validation: int = 0,
) -> str:
  """Writes a prepared TFDS dataset under `data_dir` (a 'validation' split too if
  `num_validation`); returns its version directory.

  Raises:
    ValueError: if `file_format` is not one of FILE_FORMATS.
  """
  import tensorflow_datasets as tfds

  if file_format not in FILE_FORMATS:
    raise ValueError(f'file_format must be one of {FILE_FORMATS}; got {file_format!r}.')

  class SyntheticImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Uniform random images with labels k % 10."""

    VERSION = tfds.core.Version('1.0.0')
    name = NAME

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            'image': tfds.features.Image(shape=(size, size, 3)),
            'label': tfds.features.ClassLabel(num_classes=10),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      counts = dict(train=num_train, validation=num_validation, test=num_test)
      return {
        split: self._generate_examples(split, count) for split, count in counts.items() if count
      }

    def _generate_examples(self, split, count):
      for k, image, label in synthetic_images(split, count, size):
        yield k, {'image': image, 'label': label}

  builder = SyntheticImages(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(verify_ssl=False, try_download_gcs=False)
  )
  return os.fspath(builder.data_dir)


def write_folder(root: str, num_train: int, num_test: int, size: int = 32) -> str:
  """Writes `root/{train,test}/<label>/<k>.png` (ten labels); returns `root`."""
  import tensorflow as tf

  for split, count in (('train', num_train), ('test', num_test)):
    for label in range(10):
      os.makedirs(os.path.join(root, split, f'class{label}'), exist_ok=True)
    for k, image, label in synthetic_images(split, count, size):
      with open(os.path.join(root, split, f'class{label}', f'{k:07d}.png'), 'wb') as f:
        f.write(tf.io.encode_png(image).numpy())
  return root
