"""glow_tf.images: grids and labelled sample sheets."""

import numpy as np
import pytest

from glow_tf.model import images


def test_text_draws_each_glyph_in_its_cell():
  one = images.text('1', scale=1)
  assert one.shape == (5, 3) and one.dtype == np.uint8
  assert (one == 0).sum() == 8  # The 8 ink pixels of the glyph '1'.
  assert images.text('T=0.85', scale=2).shape == (10, 2 * (6 * 4 - 1))


def test_text_refuses_characters_it_cannot_draw():
  with pytest.raises(ValueError, match=r"got \['K'\] in 'K=3'"):
    images.text('K=3')


def test_labelled_rows_put_each_label_above_its_grid():
  grids = [np.full((6, 40, 3), 128, np.uint8), np.full((6, 30, 3), 128, np.uint8)]
  sheet = images.labelled_rows(grids, ['T=0', 'T=0.7'], padding=2)
  band = 10 + 2 * 2  # Label height at scale 2, and the padding around it.
  width = max(40, images.text('T=0.7').shape[1] + 2 * 2)  # The widest grid or label.
  assert sheet.shape == (2 * (band + 6), width, 3)
  for i, label in enumerate(['T=0', 'T=0.7']):
    top = i * (band + 6)
    drawn = sheet[top + 2 : top + 12, 2 : 2 + images.text(label).shape[1], 0]
    np.testing.assert_array_equal(drawn, images.text(label))  # The label, in its band.
    np.testing.assert_array_equal(sheet[top + band : top + band + 6, :30], 128)  # Its grid below.


def test_labelled_rows_needs_one_label_per_grid():
  with pytest.raises(ValueError, match='one label per grid; got 1 for 2'):
    images.labelled_rows([np.zeros((2, 2, 1), np.uint8)] * 2, ['T=0'])


def test_a_png_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
  def full_disk(path, contents):
    with open(path, 'wb') as f:
      f.write(b'\x89PNG half')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(images.tf.io, 'write_file', full_disk)
  with pytest.raises(OSError, match='No space left'):
    images.write_png(str(tmp_path / 'a.png'), np.zeros((2, 2, 1), np.uint8))
  assert list(tmp_path.iterdir()) == []
