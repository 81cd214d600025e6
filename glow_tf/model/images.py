"""Images for people: model outputs to uint8 grids and PNG files."""

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf.model import pixels

__all__ = ['display_uint8', 'grid', 'labelled_rows', 'text', 'write_png']


def display_uint8(x, num_bins: int) -> np.ndarray:
  """Model-space images `[..., H, W, C]` in `[-0.5, 0.5)` -> uint8 spanning 0..255."""
  bins = pixels.to_pixels(tf.convert_to_tensor(x, tf.float32), num_bins).numpy()
  return np.round(bins * (255.0 / (num_bins - 1))).astype(np.uint8)


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


# A 3x5 pixel font for the labels of sample sheets: enough for "T=0.85", "class 3".
_GLYPHS = {
  '0': ('###', '#.#', '#.#', '#.#', '###'),
  '1': ('.#.', '##.', '.#.', '.#.', '###'),
  '2': ('###', '..#', '###', '#..', '###'),
  '3': ('###', '..#', '.##', '..#', '###'),
  '4': ('#.#', '#.#', '###', '..#', '..#'),
  '5': ('###', '#..', '###', '..#', '###'),
  '6': ('###', '#..', '###', '#.#', '###'),
  '7': ('###', '..#', '.#.', '.#.', '.#.'),
  '8': ('###', '#.#', '###', '#.#', '###'),
  '9': ('###', '#.#', '###', '..#', '###'),
  '.': ('...', '...', '...', '...', '.#.'),
  '-': ('...', '...', '###', '...', '...'),
  '=': ('...', '###', '...', '###', '...'),
  '+': ('...', '.#.', '###', '.#.', '...'),
  'e': ('...', '###', '###', '#..', '###'),
  ' ': ('...', '...', '...', '...', '...'),
  'T': ('###', '.#.', '.#.', '.#.', '.#.'),
  'a': ('...', '##.', '.##', '#.#', '###'),
  'c': ('...', '###', '#..', '#..', '###'),
  'l': ('##.', '.#.', '.#.', '.#.', '###'),
  's': ('...', '.##', '#..', '..#', '##.'),
}


def text(label: str, scale: int = 2) -> np.ndarray:
  """`label` as a uint8 `[5*scale, 4*scale*len - scale]` image: black glyphs on white.

  Only the characters of sample-sheet labels are drawn (digits, `.-+=e `, so any
  `f'{x:g}'` of a finite number, `T`, `class`); anything else raises ValueError.
  """
  unknown = sorted(set(label) - set(_GLYPHS))
  if unknown:
    raise ValueError(f'text draws {"".join(sorted(_GLYPHS))!r}; got {unknown} in {label!r}.')
  columns = []
  for char in label:
    glyph = np.array([[c == '#' for c in row] for row in _GLYPHS[char]])
    columns += [glyph, np.zeros((5, 1), bool)]
  ink = np.concatenate(columns[:-1], axis=1) if columns else np.zeros((5, 0), bool)
  ink = ink.repeat(scale, axis=0).repeat(scale, axis=1)
  return np.where(ink, 0, 255).astype(np.uint8)


def labelled_rows(
  rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, padding: int = 4
) -> np.ndarray:
  """Stacks grids vertically; each under a white band with its label (if given) at the left."""
  if labels is not None and len(labels) != len(rows):
    raise ValueError(f'labelled_rows needs one label per grid; got {len(labels)} for {len(rows)}.')
  drawn = [None] * len(rows) if labels is None else [text(label) for label in labels]
  width = max(
    [r.shape[1] for r in rows] + [d.shape[1] + 2 * padding for d in drawn if d is not None]
  )
  channels = rows[0].shape[2]
  parts = []
  for r, label in zip(rows, drawn):
    band_height = padding if label is None else label.shape[0] + 2 * padding
    band = np.full((band_height, width, channels), 255, np.uint8)
    if label is not None:
      band[padding : padding + label.shape[0], padding : padding + label.shape[1]] = label[
        ..., None
      ]
    pad = np.full((r.shape[0], width - r.shape[1], channels), 255, np.uint8)
    parts += [band, np.concatenate([r, pad], axis=1)]
  return np.concatenate(parts if labels is not None else parts[1:], axis=0)


def write_png(path: str, image: np.ndarray) -> str:
  """Writes uint8 `[H, W, C]` (C = 1 or 3) to `path` atomically; returns the path."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'write_png expects uint8 [H, W, 1 or 3]; got {image.dtype} {image.shape}.')
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    tf.io.write_file(tmp, tf.io.encode_png(image))
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:  # Disk full, permissions, a signal: no half-written file stays.
    with contextlib.suppress(tf.errors.OpError, OSError):
      tf.io.gfile.remove(tmp)
    raise
  return path
