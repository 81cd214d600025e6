"""glow_tf.ablation: the permutation x coupling table over seeds, and what it concludes."""

import json
import os
import subprocess
import sys

import pytest

from glow_tf import errors
from glow_tf.tools import ablation


def cell(permutation, coupling, *values):
  results = tuple(
    dict(test_bits_per_dim=v, best=dict(step=10 * (i + 1), weights='averaged'))
    for i, v in enumerate(values)
  )
  return ablation.Cell(permutation, coupling, results)


def test_the_report_gives_mean_and_std_and_judges_the_paper_s_order():
  config = ablation.AblationConfig(seeds=(0, 1))
  cells = [
    cell('reverse', 'additive', 3.0, 3.2),
    cell('shuffle', 'additive', 2.9, 2.9),
    cell('conv1x1', 'additive', 2.5, 2.7),
    cell('reverse', 'affine', 2.0, 2.0),
    cell('shuffle', 'affine', 2.2, 2.2),  # Worse than reverse: the order breaks here.
    cell('conv1x1', 'affine', 1.9, 1.9),
  ]
  text = ablation.report(config, cells, 'python -m glow_tf.ablation --seeds=0,1')
  assert (
    '| additive | reverse | 3.1000 ± 0.1414 | 3.0000, 3.2000 | 10 (averaged), 20 (averaged) |'
    in text
  )
  assert 'additive: the paper has reverse >= shuffle >= 1x1 conv; here reverse 3.1000 >= ' in text
  assert 'conv1x1 2.6000: **holds**' in text
  assert (
    'affine: the paper has reverse >= shuffle >= 1x1 conv; here reverse 2.0000 >= '
    'shuffle 2.2000 >= conv1x1 1.9000: **does not hold**' in text
  )
  assert (
    'reverse: the paper has affine <= additive; here affine 2.0000, additive 3.1000: **holds**'
    in text
  )
  assert '`python -m glow_tf.ablation --seeds=0,1`' in text


@pytest.mark.parametrize(
  ('kwargs', 'match'),
  [
    (dict(permutations=('reverse', 'plain')), r"permutations must be one or more of \('reverse'"),
    (dict(seeds=(1, 1)), 'seeds must be one or more distinct seeds; got'),
    (dict(preset='cifar'), 'preset must be one of'),
  ],
)
def test_bad_ablation_settings_are_named(kwargs, match):
  with pytest.raises(errors.UserError, match=match):
    ablation.AblationConfig(**kwargs)


@pytest.mark.slow
def test_the_ablation_command_trains_each_cell_and_reuses_finished_runs(tmp_path):
  runs = str(tmp_path / 'runs')
  command = [
    sys.executable,
    '-m',
    'glow_tf.ablation',
    '--preset=tiny',
    '--seeds=0,1',
    '--permutations=reverse,conv1x1',
    '--couplings=additive',
    f'--runs_dir={runs}',
    f'--output={tmp_path / "ablation.md"}',
  ]
  first = subprocess.run(command, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-2000:]
  names = sorted(os.listdir(runs))
  assert names == [f'{p}-additive-seed{s}' for p in ('conv1x1', 'reverse') for s in (0, 1)]
  values = {}
  for name in names:
    with open(os.path.join(runs, name, 'results.json')) as f:
      values[name] = json.load(f)['test_bits_per_dim']
    with open(os.path.join(runs, name, 'config.json')) as f:
      model = json.load(f)['model']
    assert (model['permutation'], model['coupling']) == tuple(name.split('-')[:2])
  report = (tmp_path / 'ablation.md').read_text()
  mean = (values['reverse-additive-seed0'] + values['reverse-additive-seed1']) / 2
  assert f'| additive | reverse | {mean:.4f} ± ' in report
  assert report in first.stdout
  stamps = {n: os.path.getmtime(os.path.join(runs, n, 'results.json')) for n in names}
  again = subprocess.run(command, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0 and (tmp_path / 'ablation.md').read_text() == report
  assert stamps == {n: os.path.getmtime(os.path.join(runs, n, 'results.json')) for n in names}
