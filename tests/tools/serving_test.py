"""Tests of glow_tf.export: the SavedModel, loaded where glow_tf cannot be imported."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import errors
from glow_tf.tools import runs, serving
from glow_tf.training import trainer
from glow_tf.training.config import PRESETS

# Loads the export in a fresh interpreter in which `import glow_tf` fails and TFP
# is never imported, runs every signature on inputs.npz, writes outputs.npz.
LOADER = textwrap.dedent("""
    import sys
    sys.modules['glow_tf'] = None  # any `import glow_tf` now raises ImportError
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, outputs_path = sys.argv[1:]
    inputs = dict(np.load(inputs_path))
    model = tf.saved_model.load(export_dir)
    label = {k: tf.constant(inputs[k]) for k in ['label'] if k in inputs}
    outputs = {}
    for batch in (1, 3, 17):
      images = tf.constant(inputs['images'][:batch])
      kw = {k: v[:batch] for k, v in label.items()}
      scores = model.signatures['serving_default'](images=images, **kw)
      for key, value in scores.items():
        outputs[f'{key}_{batch}'] = value.numpy()
      latents = model.signatures['encode'](images=images, **kw)
      for key, value in latents.items():
        outputs[f'{key}_{batch}'] = value.numpy()
      decoded = model.signatures['decode'](**latents, **kw)
      outputs[f'decoded_{batch}'] = decoded['images'].numpy()
    sample_kw = {k: v[:5] for k, v in label.items()}
    for seed in (3, 3, 4):
      out = model.signatures['sample'](num_samples=tf.constant(5), temperature=tf.constant(0.7),
                                       seed=tf.constant(seed, tf.int64), **sample_kw)
      outputs.setdefault(f'sample_{seed}', out['images'].numpy())
      outputs[f'sample_{seed}_again'] = out['images'].numpy()
    floats = model.signatures['log_prob_float'](x=tf.constant(inputs['x']), **{
        k: v[:len(inputs['x'])] for k, v in label.items()})
    outputs['log_prob_float'] = floats['log_prob'].numpy()
    assert 'glow_tf' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]
    assert not any(m.startswith('tensorflow_probability') for m in sys.modules)
    np.savez(outputs_path, **outputs)
""")


@pytest.fixture(scope='module', params=['unconditional', 'conditional'])
def exported(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(request.param)
  config = PRESETS['tiny'].replace(
    train_steps=4, eval_every=100, class_conditional=request.param == 'conditional'
  )
  run_dir = str(root / 'run')
  trainer.train_and_evaluate(config, run_dir)
  export_dir = str(root / 'export')
  facts = serving.export_run(run_dir, export_dir)
  return run_dir, export_dir, facts


def load_in_fresh_process(export_dir, inputs, tmp_path):
  np.savez(tmp_path / 'inputs.npz', **inputs)
  script = tmp_path / 'load.py'
  script.write_text(LOADER)
  result = subprocess.run(
    [
      sys.executable,
      str(script),
      export_dir,
      str(tmp_path / 'inputs.npz'),
      str(tmp_path / 'outputs.npz'),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=str(tmp_path),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(tmp_path / 'outputs.npz'))


def test_every_signature_matches_the_in_memory_model_without_glow_tf(exported, tmp_path):
  run_dir, export_dir, facts = exported
  run = runs.load_run(run_dir)
  module = serving.GlowServing(run.flow, run.num_bins, run.model_config)
  rng = np.random.RandomState(0)
  images = rng.randint(0, run.num_bins, size=(17, 8, 8, 1)).astype(np.uint8)
  x = (rng.rand(4, 8, 8, 1) - 0.5).astype(np.float32)
  inputs = dict(images=images, x=x)
  conditional = run.num_classes is not None
  label_kw = {}
  if conditional:
    inputs['label'] = (np.arange(17) % run.num_classes).astype(np.int32)
  outputs = load_in_fresh_process(export_dir, inputs, tmp_path)

  for batch in (1, 3, 17):
    if conditional:
      label_kw = dict(label=tf.constant(inputs['label'][:batch]))
    expected = module.log_prob(tf.constant(images[:batch]), **label_kw)
    np.testing.assert_allclose(outputs[f'log_prob_{batch}'], expected['log_prob'], rtol=1e-4)
    np.testing.assert_allclose(
      outputs[f'bits_per_dim_{batch}'], expected['bits_per_dim'], rtol=1e-4
    )
    assert outputs[f'log_prob_{batch}'].shape == (batch,)
    for i, shape in enumerate(facts['latent_shapes']):
      assert outputs[f'z_{i}_{batch}'].shape == (batch, *shape)
    np.testing.assert_array_equal(outputs[f'decoded_{batch}'], images[:batch])

  sample_kw = dict(label=tf.constant(inputs['label'][:5])) if conditional else {}
  expected = module.sample(tf.constant(5), tf.constant(0.7), tf.constant(3, tf.int64), **sample_kw)[
    'images'
  ].numpy()
  np.testing.assert_array_equal(outputs['sample_3'], expected)
  np.testing.assert_array_equal(outputs['sample_3_again'], outputs['sample_3'])
  assert not np.array_equal(outputs['sample_4'], outputs['sample_3'])
  assert outputs['sample_3'].dtype == np.uint8 and outputs['sample_3'].max() < run.num_bins

  float_kw = dict(label=tf.constant(inputs['label'][:4])) if conditional else {}
  np.testing.assert_allclose(
    outputs['log_prob_float'],
    module.log_prob_float(tf.constant(x), **float_kw)['log_prob'],
    rtol=1e-4,
  )


def test_log_prob_of_uint8_is_training_bpd_at_bin_centres(exported):
  run_dir, export_dir, _ = exported
  model = tf.saved_model.load(export_dir)
  run = runs.load_run(run_dir)
  pixels = np.random.RandomState(1).randint(0, 17, size=(2, 8, 8, 1))
  kw = {'label': tf.constant([0, 1])} if run.num_classes else {}
  out = model.signatures['log_prob'](images=tf.constant(pixels.astype(np.uint8)), **kw)
  centres = (pixels + 0.5) / 17 - 0.5
  bijector_kwargs = {'top_prior': {'label': kw['label']}} if kw else {}
  log_prob = run.flow.log_prob(centres.astype(np.float32), bijector_kwargs=bijector_kwargs)
  np.testing.assert_allclose(out['log_prob'], log_prob, rtol=1e-5)
  expected_bpd = (-log_prob.numpy() + 64 * np.log(17)) / (64 * np.log(2))
  np.testing.assert_allclose(out['bits_per_dim'], expected_bpd, rtol=1e-5)


def test_signatures_declare_every_image_and_latent_shape(exported):
  _, export_dir, facts = exported
  signatures = tf.saved_model.load(export_dir).signatures
  image = [None, *facts['image_shape']]
  expected = {
    'serving_default': {'images': (image, tf.uint8)},
    'log_prob': {'images': (image, tf.uint8)},
    'encode': {'images': (image, tf.uint8)},
    'log_prob_float': {'x': (image, tf.float32)},
    'decode': {
      f'z_{i}': ([None, *shape], tf.float32) for i, shape in enumerate(facts['latent_shapes'])
    },
    'sample': {
      'num_samples': ([], tf.int32),
      'temperature': ([], tf.float32),
      'seed': ([], tf.int64),
    },
  }
  for name, specs in expected.items():
    if facts['num_classes']:
      specs['label'] = ([None], tf.int32)
    _, declared = signatures[name].structured_input_signature
    assert {k: (v.shape.as_list(), v.dtype) for k, v in declared.items()} == specs, name


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 16, 16, 1), (8, 8, 1)])
def test_wrong_image_shape_is_a_clear_invalid_argument_error(exported, shape):
  run_dir, export_dir, _ = exported
  model = tf.saved_model.load(export_dir)
  kw = {'label': tf.constant([0, 1])} if runs.load_run(run_dir).num_classes else {}
  with pytest.raises(
    tf.errors.InvalidArgumentError,
    match=r'is not compatible with expected '
    r'shape \[\?,8,8,1\]',
  ):
    model.signatures['log_prob'](images=tf.zeros(shape, tf.uint8), **kw)


def test_saved_model_cli_shows_and_runs_the_signatures(exported, tmp_path):
  _, export_dir, facts = exported
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  shown = subprocess.run(
    [cli, 'show', '--all', '--dir', export_dir], capture_output=True, text=True, timeout=120
  )
  assert shown.returncode == 0, shown.stderr[-2000:]
  for name in serving.signature_names():
    assert f"signature_def['{name}']" in shown.stdout
  inputs = 'num_samples=2;temperature=0.7;seed=1'
  if facts['num_classes']:
    inputs += ';label=[3,4]'
  ran = subprocess.run(
    [
      cli,
      'run',
      '--dir',
      export_dir,
      '--tag_set',
      'serve',
      '--signature_def',
      'sample',
      '--input_exprs',
      inputs,
      '--outdir',
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert ran.returncode == 0, ran.stderr[-2000:]
  images = np.load(tmp_path / 'images.npy')
  assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8


def digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def run_export(*args):
  return subprocess.run(
    [sys.executable, '-m', 'glow_tf.export', *args], capture_output=True, text=True, timeout=300
  )


def user_lines(result):
  noise = ('WARNING: All log messages', 'I0000', 'E0000', 'W0000')
  return [line for line in result.stderr.splitlines() if line and not line.startswith(noise)]


@pytest.mark.slow
def test_export_cli_refuses_bad_input_and_overwrites_only_when_asked(exported, tmp_path):
  run_dir, export_dir, _ = exported
  before, run_before = digest(export_dir), digest(run_dir)
  cases = [
    ([f'--model_dir={tmp_path / "missing"}', f'--export_dir={tmp_path / "out"}'], 'does not exist'),
    (
      [f'--model_dir={run_dir}', f'--export_dir={export_dir}'],
      'exists and is not empty; pass --overwrite',
    ),
    (
      [f'--model_dir={run_dir}', f'--export_dir={run_dir}', '--overwrite'],
      'is the run directory',
    ),
  ]
  no_checkpoint = tmp_path / 'no_checkpoint'
  no_checkpoint.mkdir()
  (no_checkpoint / 'config.json').write_text(open(os.path.join(run_dir, 'config.json')).read())
  cases.append(
    ([f'--model_dir={no_checkpoint}', f'--export_dir={tmp_path / "out2"}'], 'has no checkpoint yet')
  )
  for args, message in cases:
    result = run_export(*args)
    assert result.returncode == 2
    lines = user_lines(result)
    assert len(lines) == 1 and message in lines[0], lines
  assert digest(export_dir) == before and digest(run_dir) == run_before
  assert not (tmp_path / 'out').exists() and not (tmp_path / 'out2').exists()

  replaced = run_export(f'--model_dir={run_dir}', f'--export_dir={export_dir}', '--overwrite')
  assert replaced.returncode == 0, replaced.stderr[-2000:]
  assert 'SavedModel of' in replaced.stdout
  assert tf.saved_model.load(export_dir).signatures['sample'] is not None
  leftovers = [n for n in os.listdir(os.path.dirname(export_dir)) if n.startswith('.glow_export')]
  assert leftovers == []


def test_tflite_log_prob_matches_the_saved_model(exported, tmp_path):
  run_dir, export_dir, facts = exported
  if facts['num_classes']:
    with pytest.raises(errors.ExportError, match='unconditional models only'):
      serving.export_run(run_dir, str(tmp_path / 'lite'), tflite=True)
    return
  serving.export_run(run_dir, str(tmp_path / 'lite'), tflite=True)
  interpreter = tf.lite.Interpreter(model_path=str(tmp_path / 'lite' / 'log_prob.tflite'))
  runner = interpreter.get_signature_runner()
  images = np.random.RandomState(2).randint(0, 17, size=(3, 8, 8, 1)).astype(np.uint8)
  lite = runner(images=images)
  saved = tf.saved_model.load(export_dir).signatures['log_prob'](images=tf.constant(images))
  np.testing.assert_allclose(lite['log_prob'], saved['log_prob'], rtol=1e-4)
  np.testing.assert_allclose(lite['bits_per_dim'], saved['bits_per_dim'], rtol=1e-4)


def test_overwrite_replaces_only_a_previous_export_never_a_run(exported, tmp_path):
  run_dir, export_dir, facts = exported
  if facts['num_classes']:
    return  # One model is enough: this is about directories.
  root = tmp_path / 'runs'
  run, other = root / 'a', root / 'b'
  shutil.copytree(run_dir, run)
  shutil.copytree(run_dir, other)
  notes = tmp_path / 'notes'
  notes.mkdir()
  (notes / 'todo.txt').write_text('keep me')
  previous, with_extra, hiding_a_run = [tmp_path / n for n in ('previous', 'extra', 'hiding')]
  for path in (previous, with_extra, hiding_a_run):
    shutil.copytree(export_dir, path)
  (with_extra / 'README').write_text('mine')
  shutil.copytree(run_dir, hiding_a_run / 'assets' / 'run')
  before = digest(tmp_path)
  cases = [
    (run, 'is the run directory'),
    (root, 'contains the run directory'),
    (tmp_path, 'contains the run directory'),
    (run / 'checkpoints', 'is inside the checkpoints of the run'),
    (run / 'checkpoints' / 'export', 'is inside the checkpoints of the run'),
    (other, 'is a training run directory; it is never replaced'),
    (notes, 'is not a glow_tf export (expected saved_model.pb and assets.extra/glow_tf.json)'),
    (with_extra, "holds files an export does not write: ['README']"),
    (hiding_a_run, f"holds the training run '{hiding_a_run / 'assets' / 'run'}'"),
    (notes / 'todo.txt' / 'export', "lies under '{}', which is a file".format(notes / 'todo.txt')),
  ]
  for path, message in cases:
    with pytest.raises(errors.ExportError, match=re.escape(message)):
      serving.export_run(str(run), str(path), overwrite=True)
  assert digest(tmp_path) == before
  facts = serving.export_run(str(run), str(previous), overwrite=True)
  assert facts['step'] == 4 and tf.saved_model.load(str(previous)).signatures['sample'] is not None
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.glow_export')]
  link = tmp_path / 'link'
  link.symlink_to(previous)
  serving.export_run(str(run), str(link), overwrite=True)  # Replaces the target.
  assert link.is_symlink() and (previous / 'saved_model.pb').exists()


def test_a_value_that_is_not_a_bin_or_a_class_is_refused(exported):
  run_dir, export_dir, _ = exported
  model = tf.saved_model.load(export_dir)
  conditional = runs.load_run(run_dir).num_classes is not None
  kw = {'label': tf.constant([0, 1])} if conditional else {}
  not_a_bin = np.zeros((2, 8, 8, 1), np.uint8)
  not_a_bin[1, 3, 3, 0] = 17  # The digits have 17 bins, 0..16.
  for name in ('log_prob', 'encode'):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'images hold bins 0\.\.16'):
      model.signatures[name](images=tf.constant(not_a_bin), **kw)
  if conditional:
    for label in ([0, 10], [-1, 0]):
      with pytest.raises(tf.errors.InvalidArgumentError, match=r'class labels in 0\.\.9'):
        model.signatures['log_prob'](images=tf.zeros([2, 8, 8, 1], tf.uint8), label=label)


@pytest.mark.parametrize('temperature', [float('nan'), float('inf'), -0.5])
def test_sample_refuses_a_temperature_that_is_not_a_standard_deviation(exported, temperature):
  run_dir, export_dir, _ = exported
  model = tf.saved_model.load(export_dir)
  kw = {'label': tf.constant([0, 1])} if runs.load_run(run_dir).num_classes else {}
  with pytest.raises(tf.errors.InvalidArgumentError, match='temperature must be a finite number'):
    model.signatures['sample'](
      num_samples=tf.constant(2),
      temperature=tf.constant(temperature),
      seed=tf.constant(1, tf.int64),
      **kw,
    )


def test_decode_refuses_non_finite_latents_instead_of_drawing_zeros(exported):
  run_dir, export_dir, facts = exported
  model = tf.saved_model.load(export_dir)
  kw = {'label': tf.constant([0, 1])} if runs.load_run(run_dir).num_classes else {}
  latents = {f'z_{i}': np.zeros((2, *s), np.float32) for i, s in enumerate(facts['latent_shapes'])}
  latents['z_0'][0, 0, 0, 0] = np.nan
  with pytest.raises(tf.errors.InvalidArgumentError, match='z_0 must be finite'):
    model.signatures['decode'](**latents, **kw)


def test_an_empty_batch_gives_empty_results_in_every_signature(exported):
  run_dir, export_dir, facts = exported
  model = tf.saved_model.load(export_dir)
  kw = {'label': tf.zeros([0], tf.int32)} if runs.load_run(run_dir).num_classes else {}
  empty = tf.zeros([0, 8, 8, 1], tf.uint8)
  assert model.signatures['log_prob'](images=empty, **kw)['bits_per_dim'].shape == (0,)
  latents = model.signatures['encode'](images=empty, **kw)
  assert [latents[f'z_{i}'].shape[1:] for i in range(len(latents))] == [
    tuple(s) for s in facts['latent_shapes']
  ]
  assert model.signatures['decode'](**latents, **kw)['images'].shape == (0, 8, 8, 1)
  out = model.signatures['sample'](
    num_samples=tf.constant(0), temperature=tf.constant(0.7), seed=tf.constant(1, tf.int64), **kw
  )
  assert out['images'].shape == (0, 8, 8, 1)


def test_tflite_refuses_an_input_resized_to_another_image_size(exported, tmp_path):
  run_dir, _, facts = exported
  if facts['num_classes']:
    return  # TFLite export is for unconditional models.
  serving.export_run(run_dir, str(tmp_path / 'lite'), tflite=True)
  interpreter = tf.lite.Interpreter(model_path=str(tmp_path / 'lite' / 'log_prob.tflite'))
  index = interpreter.get_input_details()[0]['index']
  interpreter.resize_tensor_input(index, [2, 16, 16, 1])
  with pytest.raises((RuntimeError, ValueError)):  # Four 8x8 images per 16x16 one, before.
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, np.zeros((2, 16, 16, 1), np.uint8))
    interpreter.invoke()
