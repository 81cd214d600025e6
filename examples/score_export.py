"""Score image files with an exported glow_tf model, using TensorFlow alone (no glow_tf).

    python -m glow_tf.export --model_dir=runs/digits --export_dir=exports/digits
    python examples/score_export.py exports/digits a.png b.png [--label=3]

The export's `assets.extra/glow_tf.json` says what the model expects: the image
shape and `num_bins`, the levels per value it was trained on (256 for 8-bit
data, 2**n_bits after `--n_bits`, 17 for the digits). Its uint8 inputs are bins
`0 .. num_bins - 1`, so 8-bit pixels are reduced as in training:
`bins = floor(pixel * num_bins / 256)`.
"""

import argparse
import json
import os

import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument('export_dir')
parser.add_argument('images', nargs='+', help='PNG/JPEG/GIF/BMP files of the model image size')
parser.add_argument('--label', type=int, help='class, for class-conditional models')
args = parser.parse_args()

model = tf.saved_model.load(args.export_dir)
with open(os.path.join(args.export_dir, 'assets.extra', 'glow_tf.json')) as f:
  facts = json.load(f)
height, width, channels = facts['image_shape']

bins = []
for path in args.images:
  pixels = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
  if pixels.shape[:2] != (height, width):
    raise SystemExit(f'{path}: {pixels.shape[0]}x{pixels.shape[1]}, expected {height}x{width}')
  bins.append(tf.cast(tf.cast(pixels, tf.int32) * facts['num_bins'] // 256, tf.uint8))

inputs = {'images': tf.stack(bins)}
if facts['num_classes']:
  if args.label is None:
    raise SystemExit(f'this model is class-conditional ({facts["num_classes"]} classes): --label')
  inputs['label'] = tf.fill([len(bins)], tf.constant(args.label, tf.int32))
scores = model.signatures['log_prob'](**inputs)
for path, bpd in zip(args.images, scores['bits_per_dim'].numpy()):
  print(f'{path}: {bpd:.3f} bits/dim')
