"""glow_tf.training.rundir: run directories of every config version resume, load and export.

tests/fixtures/run_v1 is a run written by glow_tf 0.1 (commit b17f03c, flat
config.json without a version key), made with

    python -m glow_tf.train --preset=tiny --train_steps=2 --checkpoint_every=2 \\
      --eval_every=2 --model_dir=run_v1

(then its TensorBoard logs and sample sheets removed).
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from glow_tf.tools import runs, serving
from glow_tf.training import data, rundir
from glow_tf.training import state as state_lib
from glow_tf.training import trainer as trainer_lib
from glow_tf.training.config import PRESETS
from glow_tf.training.state import TrainState

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'run_v1')
# What the fixture was trained with, in today's terms.
V1_CONFIG = PRESETS['tiny'].replace(train_steps=2, checkpoint_every=2, eval_every=2)


@pytest.fixture
def old_run(tmp_path):
  run = str(tmp_path / 'run_v1')
  shutil.copytree(FIXTURE, run)
  return run


def test_a_flat_version_1_config_reads_as_todays_config(old_run):
  with open(os.path.join(old_run, 'config.json')) as f:
    raw = json.load(f)
  assert 'version' not in raw and 'levels' in raw['train']  # Flat: version 1.
  loaded = rundir.load_run_config(old_run)
  assert loaded.train == V1_CONFIG.replace(validation_size=0)  # Trained without validation.
  assert loaded.model == V1_CONFIG.model_config(data.load('digits'))
  assert loaded.data['num_bins'] == 17


def test_an_old_run_resumes_where_it_stopped_and_is_rewritten_as_version_2(old_run):
  reader = tf.train.load_checkpoint(os.path.join(old_run, 'checkpoints', 'ckpt-2'))
  trainer = trainer_lib.Trainer(
    V1_CONFIG.replace(train_steps=4, validation_size=0),
    old_run,
    data.load('digits', validation_size=0),
    tf.distribute.get_strategy(),
  )
  assert trainer.restore_or_initialize().endswith('ckpt-2 at step 2')  # Not re-initialised.
  # The old run held each step's variables; today's flow stacks them, converted on restore.
  # A flow of the old layout lists its trained variables in the order the old run's
  # optimiser and Polyak averages index them, and the restored run holds their values.
  old_layout = TrainState.create(trainer.model_config.replace(stack_steps=False), 'adamax', 0.9)
  old_layout.restore(os.path.join(old_run, 'checkpoints', 'ckpt-2'))
  for i, variable in enumerate(old_layout.variables):
    saved = reader.get_tensor(f'ema/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE')
    np.testing.assert_array_equal(variable.numpy(), saved, err_msg=variable.name)
  assert len(trainer.variables) < len(old_layout.variables)
  for (old, old_row), (new, new_row) in zip(
    state_lib._slots(old_layout), state_lib._slots(trainer.state), strict=True
  ):
    assert old_row is None
    new_value = new.numpy() if new_row is None else new.numpy()[new_row]
    np.testing.assert_array_equal(new_value, old.numpy(), err_msg=old.name)
  results = trainer_lib.train_and_evaluate(V1_CONFIG.replace(train_steps=4), old_run)
  assert results['step'] == 4 and results['nonfinite_steps'] == 0
  with open(os.path.join(old_run, 'config.json')) as f:
    assert json.load(f)['version'] == rundir.CONFIG_VERSION
  # Resumed without a validation split, as it was trained (its flags left it at the default).
  expected = V1_CONFIG.replace(train_steps=4, validation_size=0)
  assert rundir.load_run_config(old_run).train == expected and results['best'] is None


def test_an_old_run_loads_and_exports(old_run, tmp_path):
  run = runs.load_run(old_run)
  assert run.step == 2 and run.checkpoint.endswith('ckpt-2') and run.num_bins == 17
  facts = serving.export_run(old_run, str(tmp_path / 'export'))
  assert facts['step'] == 2
  model = tf.saved_model.load(str(tmp_path / 'export'))
  bins = np.random.RandomState(0).randint(0, 17, size=(3, 8, 8, 1)).astype(np.uint8)
  exported = model.signatures['log_prob'](images=tf.constant(bins))['log_prob']
  in_memory = run.flow.log_prob((bins.astype(np.float32) + 0.5) / 17 - 0.5)
  np.testing.assert_allclose(exported, in_memory, rtol=1e-5)
