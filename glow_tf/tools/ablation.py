"""The paper's ablation (Kingma & Dhariwal 2018, section 5.1) on any preset.

Permutation (fixed reverse, fixed shuffle, learned 1x1 convolution) x coupling
(additive, affine), each trained with several seeds by `python -m glow_tf.train`
in its own process and run directory (a rerun reuses finished runs and resumes
unfinished ones). Every run reports the test bits/dim of the weights its
validation split chose (`results.json`); the report gives their mean and standard
deviation per cell, and says whether the paper's order holds.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import ConfigError
from glow_tf.training import rundir
from glow_tf.training.config import PRESETS

__all__ = ['AblationConfig', 'Cell', 'ablation', 'report', 'run_dir']

# The paper's figure 3, in its order (best last): reverse, shuffle, 1x1 convolution.
PERMUTATIONS = ('reverse', 'shuffle', 'conv1x1')
COUPLINGS = ('additive', 'affine')


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """Which runs the ablation trains, and where."""

  preset: str = option('digits', 'The training preset every run starts from.', choices=PRESETS)
  seeds: tuple[int, ...] = option(
    (0, 1, 2),
    'Seeds per cell, e.g. 0,1,2.',
    check=lambda seeds: len(seeds) >= 1 and len(set(seeds)) == len(seeds),
    expected='one or more distinct seeds',
  )
  permutations: tuple[str, ...] = option(
    PERMUTATIONS,
    'Permutations to compare.',
    check=lambda names: len(names) >= 1 and set(names) <= set(PERMUTATIONS),
    expected=f'one or more of {PERMUTATIONS}',
  )
  couplings: tuple[str, ...] = option(
    COUPLINGS,
    'Couplings to compare.',
    check=lambda names: len(names) >= 1 and set(names) <= set(COUPLINGS),
    expected=f'one or more of {COUPLINGS}',
  )
  runs_dir: str = option('runs/ablation', 'Where the run directories go.')
  train_steps: int | None = option(None, "Steps per run (default: the preset's).", minimum=1)

  def __post_init__(self):
    configs.validate(self)


@dataclasses.dataclass(frozen=True)
class Cell:
  """The runs of one permutation x coupling, one per seed."""

  permutation: str
  coupling: str
  results: tuple[dict, ...]

  @property
  def test_bpd(self) -> list[float]:
    return [r['test_bits_per_dim'] for r in self.results]

  @property
  def mean(self) -> float:
    return statistics.fmean(self.test_bpd)

  @property
  def std(self) -> float:
    return statistics.stdev(self.test_bpd) if len(self.results) > 1 else 0.0


def run_dir(config: AblationConfig, permutation: str, coupling: str, seed: int) -> str:
  return os.path.join(config.runs_dir, f'{permutation}-{coupling}-seed{seed}')


def _flags(config: AblationConfig, permutation: str, coupling: str, seed: int) -> list[str]:
  flags = [
    f'--preset={config.preset}',
    f'--model_dir={run_dir(config, permutation, coupling, seed)}',
    f'--permutation={permutation}',
    f'--coupling={coupling}',
    f'--seed={seed}',
  ]
  return flags + ([f'--train_steps={config.train_steps}'] if config.train_steps else [])


def _finished(directory: str, train_steps: int) -> dict | None:
  """The results of a run directory that trained `train_steps` steps, else None."""
  path = os.path.join(directory, rundir.RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get('step') == train_steps else None


def train_one(config: AblationConfig, permutation: str, coupling: str, seed: int) -> dict:
  """Trains (or resumes, or reuses) one run with `python -m glow_tf.train`; its results.

  Raises:
    ConfigError: if the training fails, with the last line it printed.
  """
  directory = run_dir(config, permutation, coupling, seed)
  train_steps = config.train_steps or PRESETS[config.preset].train_steps
  results = _finished(directory, train_steps)
  if results is not None:
    return results
  command = [sys.executable, '-m', 'glow_tf.train', *_flags(config, permutation, coupling, seed)]
  done = subprocess.run(command, capture_output=True, text=True)
  results = _finished(directory, train_steps)
  if done.returncode or results is None:
    last = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise ConfigError(
      f'training {directory} failed (exit {done.returncode}): {last}; rerun to resume it.'
    )
  return results


def ablation(config: AblationConfig, log: Callable[[str], None] = print) -> list[Cell]:
  """Trains every cell's runs (reusing finished ones); returns the cells, in table order."""
  cells = []
  for coupling in COUPLINGS:
    for permutation in PERMUTATIONS:
      if permutation not in config.permutations or coupling not in config.couplings:
        continue
      results = []
      for seed in config.seeds:
        started = time.time()
        results.append(train_one(config, permutation, coupling, seed))
        log(
          f'{permutation} {coupling} seed {seed}: test bits/dim '
          f'{results[-1]["test_bits_per_dim"]:.4f} ({time.time() - started:.0f} s)'
        )
      cells.append(Cell(permutation, coupling, tuple(results)))
  return cells


def _order(cells: list[Cell]) -> list[str]:
  """The paper's claims, each with what the table shows."""
  by = {(c.permutation, c.coupling): c for c in cells}
  lines = []
  for coupling in COUPLINGS:
    row = [by[p, coupling] for p in PERMUTATIONS if (p, coupling) in by]
    if len(row) > 1:
      holds = all(a.mean >= b.mean for a, b in zip(row, row[1:]))
      chain = ' >= '.join(f'{c.permutation} {c.mean:.4f}' for c in row)
      lines.append(
        f'- {coupling}: the paper has reverse >= shuffle >= 1x1 conv; here {chain}: '
        f'**{"holds" if holds else "does not hold"}**.'
      )
  for permutation in PERMUTATIONS:
    pair = [by[permutation, c] for c in COUPLINGS if (permutation, c) in by]
    if len(pair) == 2:
      additive, affine = pair
      holds = affine.mean <= additive.mean
      lines.append(
        f'- {permutation}: the paper has affine <= additive; here affine {affine.mean:.4f}, '
        f'additive {additive.mean:.4f}: **{"holds" if holds else "does not hold"}** '
        f'(difference {additive.mean - affine.mean:+.4f}; standard deviations '
        f'{affine.std:.4f} and {additive.std:.4f}).'
      )
  return lines


def report(config: AblationConfig, cells: list[Cell], command: str) -> str:
  """The markdown table of `cells`, with the command that reproduces it."""
  preset = PRESETS[config.preset]
  steps = config.train_steps or preset.train_steps
  lines = [
    f'Reproduce with `{command}` (one run per cell and seed, each `python -m glow_tf.train '
    f'--preset={config.preset}` with `--permutation`, `--coupling` and `--seed`, {steps} '
    'steps; finished runs are reused, so a rerun only trains what is missing).',
    '',
    'Test bits/dim of the weights each run chose by its validation split (best checkpoint), '
    f'mean ± standard deviation over seeds {", ".join(map(str, config.seeds))}:',
    '',
    '| coupling | permutation | test bits/dim | per seed | chosen step (weights) |',
    '|---|---|---|---|---|',
  ]
  for cell in cells:
    per_seed = ', '.join(f'{v:.4f}' for v in cell.test_bpd)
    chosen = ', '.join(
      f'{r["best"]["step"]} ({r["best"]["weights"]})' if r.get('best') else 'last'
      for r in cell.results
    )
    lines.append(
      f'| {cell.coupling} | {cell.permutation} | {cell.mean:.4f} ± {cell.std:.4f} | '
      f'{per_seed} | {chosen} |'
    )
  lines += ['', "The paper's order (its figure 3 on CIFAR-10):", '', *_order(cells)]
  return '\n'.join(lines) + '\n'
