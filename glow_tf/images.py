"""Images for people: model outputs to uint8 grids and PNG files."""

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf import data

__all__ = ['display_uint8', 'grid', 'labelled_rows', 'write_png']


def display_uint8(x, num_bins: int) -> np.ndarray:
  """Model-space images `[..., H, W, C]` in `[-0.5, 0.5)` -> uint8 spanning 0..255."""
  pixels = data.to_pixels(tf.convert_to_tensor(x, tf.float32), num_bins).numpy()
  return np.round(pixels * (255.0 / (num_bins - 1))).astype(np.uint8)


def grid(images: np.ndarray, columns: int, padding: int = 1, scale: int = 1) -> np.ndarray:
  """uint8 images `[N, H, W, C]` -> one `[rows*(H+p)+p, columns*(W+p)+p, C]` image.

  Each pixel is repeated `scale` times in both directions (8x8 digits need it to
  be seen); cells are separated by `padding` pixels of mid-grey.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'grid expects images [N, H, W, C]; got shape {images.shape}.')
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  rows = -(-n // columns)
  sheet = np.full(
    (rows * (h + padding) + padding, columns * (w + padding) + padding, c), 128, np.uint8
  )
  for i, image in enumerate(images):
    top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
    sheet[top : top + h, left : left + w] = image
  return sheet


def labelled_rows(rows: Sequence[np.ndarray], padding: int = 4) -> np.ndarray:
  """Stacks equally wide grids vertically with a white band between them."""
  width = max(r.shape[1] for r in rows)
  channels = rows[0].shape[2]
  band = np.full((padding, width, channels), 255, np.uint8)
  parts = []
  for r in rows:
    pad = np.full((r.shape[0], width - r.shape[1], channels), 255, np.uint8)
    parts += [np.concatenate([r, pad], axis=1), band]
  return np.concatenate(parts[:-1], axis=0)


def write_png(path: str, image: np.ndarray) -> str:
  """Writes uint8 `[H, W, C]` (C = 1 or 3) to `path` atomically; returns the path."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'write_png expects uint8 [H, W, 1 or 3]; got {image.dtype} {image.shape}.')
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = f'{path}.tmp-{os.getpid()}'
  tf.io.write_file(tmp, tf.io.encode_png(image))
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
