"""Tests of `python -m glow_tf.benchmark`: its FLOP count, its report, and a tiny real run."""

import os
import re
import subprocess
import sys

import pytest

from glow_tf.tools import benchmark, data_benchmark

FACTS = dict(
  date='2026-11-23', cpu='test cpu', cores=2, python='3', tensorflow='2', tensorflow_probability='0'
)


def test_forward_flops_by_hand():
  # 8x8x1 images, L=2, K=1, width 4, batch 1.
  # Level 0 (4x4x4, 16 positions): 1x1 conv 4*4 + coupling 3x3 2->4 (72), 1x1 4->4 (16),
  #   3x3 4->2*2 (144) = 248 per position; split prior 3x3 2->2*2 = 72 per position.
  # Level 1 (2x2x8, 4 positions): 64 + 9*4*4 + 16 + 9*4*8 = 512 per position; no split.
  shape = benchmark.Shape(image_size=8, channels=1, levels=2, depth=1, width=4, batch_size=1)
  assert benchmark.forward_flops(shape) == 2 * (16 * (248 + 72) + 4 * 512)
  doubled = benchmark.Shape(image_size=8, channels=1, levels=2, depth=1, width=4, batch_size=2)
  assert benchmark.forward_flops(doubled) == 2 * benchmark.forward_flops(shape)


def test_report_computes_ratios_and_judges_targets():
  shape = benchmark.Shape(32, 3, 3, 8, 400, 16)
  figures = {
    ('glow_tf', False): dict(
      params=100,
      train_img_s=[30.0, 28.0, 32.0],
      log_prob_img_s=[100.0],
      sample_img_s=[90.0],
      first_step_s=8.0,
    ),
    ('tfb_glow', False): dict(
      params=98,
      train_img_s=[10.0],
      log_prob_img_s=[60.0],
      sample_img_s=[30.0],
      first_step_s=40.0,
    ),
    'peak': dict(conv_peak_gflops=[1e9], conv_shape='3x3 conv'),
    # Gradients: 30 MiB at K=8, 120.25 at K=32, 240.5 at K=64 (4 bytes per parameter).
    ('trainer', 8, False, True): dict(
      first_step_s=4.0,
      build_s=1.0,
      init_s=1.0,
      data_s=0.1,
      trace_s=1.2,
      run_s=0.7,
      train_img_s=[20.0],
      step_mib=150.0,
      params=7864320,
    ),
    ('trainer', 8, True, True): dict(
      first_step_s=6.0, train_img_s=[14.0], step_mib=50.0, params=7864320
    ),
    ('trainer', 8, False, False): dict(
      first_step_s=9.0, train_img_s=[20.5], step_mib=150.0, params=7864320
    ),
    ('trainer', 32, False, True): dict(
      first_step_s=7.0, train_img_s=[5.0], step_mib=600.0, params=31522816
    ),
    ('trainer', 32, True, True): dict(
      first_step_s=7.5,
      build_s=1.0,
      init_s=2.0,
      data_s=0.2,
      trace_s=2.5,
      run_s=1.8,
      train_img_s=[3.5],
      step_mib=150.0,
      params=31522816,
    ),
    ('trainer', 32, False, False): dict(
      first_step_s=30.0, train_img_s=[5.5], step_mib=610.0, params=31522816
    ),
    ('trainer', 64, True, True): dict(first_step_s=12.0, step_mib=271.0, params=63045632),
    # On one thread, batch 16 and 64 (48 images more).
    ('one_thread', 32, 16): dict(first_step_s=9.0, step_mib=150.0, params=31522816),
    ('one_thread', 32, 64): dict(first_step_s=9.0, step_mib=246.0, params=31522816),
    ('one_thread', 64, 16): dict(first_step_s=15.0, step_mib=271.0, params=63045632),
    ('one_thread', 64, 64): dict(first_step_s=15.0, step_mib=376.6, params=63045632),
    ('resume', 32): dict(
      first_step_s=9.0, build_s=2.0, init_s=0.5, data_s=0.2, trace_s=2.5, run_s=3.8
    ),
    ('precision', 'float32'): dict(train_img_s=[20.0], log_prob_img_s=[60.0], sample_img_s=[50.0]),
    ('precision', 'bfloat16'): dict(train_img_s=[26.0], log_prob_img_s=[90.0], sample_img_s=[80.0]),
    ('peak', 'float32'): dict(conv_peak_gflops=[100.0]),
    ('peak', 'bfloat16'): dict(conv_peak_gflops=[190.0]),
    'memory_depth': 32,
    'allocator': 'BFC',
    'mirrored': dict(one_device_img_s=[20.0], mirrored_img_s=[17.0], devices=2),
  }
  text = benchmark.report(shape, figures, [False], 'python -m glow_tf.benchmark', FACTS)
  assert '| training step, img/s | 30.0 (28.0-32.0) | 10.0 (10.0-10.0) | 3.00x |' in text
  assert '| time to first training step, s | 8.0 | 40.0 | 5.00x faster |' in text
  assert '| parameters | 100 | 98 | 1.020x |' in text
  verdicts = dict(re.findall(r'^\| (.+?) \| [^|]+ \| (yes|no) \|$', text, re.M))
  assert verdicts['training throughput vs tfb.Glow >= 2.50'] == 'yes'
  assert verdicts['log_prob throughput vs tfb.Glow >= 2.00'] == 'no'  # 1.67
  assert verdicts['sampling throughput vs tfb.Glow >= 2.00'] == 'yes'
  assert verdicts['time to first step (s) <= 10.00'] == 'yes'
  assert verdicts['recompute step memory vs without at K=32 <= 0.33'] == 'yes'  # 0.25
  assert verdicts["Trainer's time to first step (s) at K=8 <= 5.00"] == 'yes'
  assert verdicts["Trainer's time to first step (s) at K=8 --recompute <= 5.00"] == 'no'  # 6
  assert verdicts["Trainer's time to first step (s) at K=32 <= 8.00"] == 'yes'
  # 20 / 20.5 = 0.976 and 5 / 5.5 = 0.909.
  assert verdicts['compiled steps training throughput vs per-layer at K=8 >= 0.95'] == 'yes'
  assert verdicts['compiled steps training throughput vs per-layer at K=32 >= 0.95'] == 'no'
  # Per image: (246 - 150) / 48 = 2.0 and (376.6 - 271) / 48 = 2.2 MiB, 1.10x; beyond the
  # gradients (271 - 240.5) and (150 - 120.25), a figure without a target.
  assert verdicts['recompute step memory per image at 2K vs K (64 vs 32) <= 1.05'] == 'no'
  assert 'batch 16 / 64: K=32 150.0 / 246.0 MiB, K=64 271.0 / 376.6 MiB.' in text
  assert 'over 48 images): K=32 2.00 MiB, K=64 2.20 MiB (analytic: ' in text
  # One level-0 step: 2 x 256 x 400 x 4 bytes = 0.78 MiB; 32 steps of 3 levels: 32.8.
  assert "first level 0.78 MiB; every step's, with a tape, at K=32 32.8 MiB)" in text
  assert 'grow with K): K=32 30 MiB, K=64 30 MiB.' in text
  # Analytic at K=32: 3 levels, 2 x 16 x (256 + 64 + 16) x 400 x 4 bytes of activations
  # per step = 16.4 MiB, x 32 = 525 MiB; plus 120.25 of gradients; 600 / 645 = 0.93.
  assert verdicts['step memory measured vs analytic at K=32 >= 0.75'] == 'yes'
  assert verdicts['resume at K: restore and first step (s) at K=32 <= 10.00'] == 'yes'
  # --recompute: one level-0 step's activations, 2 x 16 x 256 x 400 x 4 bytes = 12.5 MiB.
  row = (
    '| 32 | compiled steps, --recompute | 7.5 (1.0 + 2.0 + 0.2 + 2.5 + 1.8) | 3.5 (3.5-3.5) | 150 |'
  )
  assert 'first step in 9.0 s (2.0 + 0.5 + 0.2 + 2.5 + 3.8: building, restore,' in text
  assert f'{row} 133 (120 gradients) |' in text
  assert verdicts['mirrored (N CPUs) vs one device >= 0.90'] == 'no'  # 0.85
  assert verdicts['bfloat16 training throughput vs float32 >= 1.40'] == 'no'  # 1.30
  assert '| --precision=bfloat16 (vs float32): log_prob, img/s | 60.0 (60.0-60.0) |' in text
  # 3 x 21.23 GFLOP per 16 images at 20 and 26 img/s: 79.6 and 103.5 GFLOP/s.
  assert "(of its precision's conv peak) | 79.6 (80%) | 103.5 (54%) |" in text
  assert 'Command: `python -m glow_tf.benchmark`' in text and 'test cpu, 2 cores' in text
  assert 'median of three steps; allocator: BFC' in text


def test_a_failed_measurement_is_reported_not_hidden():
  shape = benchmark.Shape(8, 1, 2, 1, 4, 2)
  figures = {('glow_tf', False): dict(error='ResourceExhaustedError: OOM')}
  text = benchmark.report(shape, figures, [False], 'cmd', FACTS)
  assert "Measurement ('glow_tf', False) failed: ResourceExhaustedError: OOM" in text


@pytest.mark.parametrize('onednn, allocator', [('0', 'BFC'), ('1', 'default')])
def test_step_memory_is_read_from_an_allocator_that_keeps_statistics(
  monkeypatch, onednn, allocator
):
  # TF's default CPU allocator keeps statistics only with oneDNN on; BFC always does,
  # but its peaks include fragmentation, so it is the fallback, probed in a fresh process.
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', onednn)
  monkeypatch.delenv('TF_CPU_ALLOCATOR_USE_BFC', raising=False)
  assert benchmark._statistics_allocator() == allocator
  monkeypatch.setenv('TF_CPU_ALLOCATOR_USE_BFC', 'true')  # The caller's choice wins.
  assert benchmark._statistics_allocator() == 'BFC'


@pytest.mark.slow
def test_a_tiny_benchmark_runs_every_measure_and_writes_its_table(tmp_path):
  output = tmp_path / 'bench.md'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'glow_tf.benchmark',
      '--image_size=8',
      '--channels=1',
      '--levels=2',
      '--depth=1',
      '--width=8',
      '--batch_size=4',
      '--repeats=2',
      '--steps=1',
      '--memory_depth=2',
      f'--output={output}',
    ],
    capture_output=True,
    text=True,
    timeout=900,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  text = output.read_text()
  assert text.strip() == result.stdout.strip()
  assert 'failed' not in text, text
  for row in (
    'training step, img/s',
    'log_prob, img/s',
    'sampling at T=0.7, img/s',
    'time to first training step, s',
    'parameters',
    'training FLOP rate, GFLOP/s',
    'machine peak',
    'peak RSS in training steps',
    '2 | compiled steps, --recompute',
    '4 | compiled steps, --recompute',
    '2 | per layer',
    'MirroredStrategy over 2 logical CPUs',
  ):
    assert f'| {row}' in text, row
  params = re.search(r'^\| parameters \| ([\d,]+) \| ([\d,]+) \| ([\d.]+)x \|$', text, re.M)
  assert params and 0.9 < float(params.group(3)) < 1.1, text  # the same architecture


@pytest.mark.parametrize(
  'args, message',
  [
    (['--measures=speed'], "measures must be some of ['train', 'first_step'"),
    (['--models=distrax'], "models must be some of ['glow_tf', 'tfb_glow']; got ('distrax',)"),
    (['--image_size=20'], 'image_size must be a multiple of 2**levels = 8; got 20'),
  ],
)
def test_bad_flags_are_one_line_errors(args, message):
  result = subprocess.run(
    [sys.executable, '-m', 'glow_tf.benchmark', *args],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and message in result.stderr
  assert 'Traceback' not in result.stderr


DATA_FIGURES = {
  ('data_memory', 'array_record', 30_000): dict(load_s=0.3, peak_rss_mib=800.0, img_s=5000.0),
  ('data_memory', 'array_record', 300_000): dict(load_s=0.4, peak_rss_mib=880.0, img_s=4000.0),
  ('data_resume', 'array_record', 300_000): dict(load_s=0.4, cold_s=3.0, resume_s=0.5, step=9),
  ('data_workers', 'array_record', 300_000, 1): dict(decoded=1000, steps=200),
  ('data_workers', 'array_record', 300_000, 2): dict(decoded_by_worker=[600, 500], steps=200),
  ('data_memory', 'folder', 30_000): dict(error='MemoryError'),
}


def test_data_report_judges_its_targets_and_names_failures():
  lines = data_benchmark.report(DATA_FIGURES, (30_000, 300_000), 64, 1000)
  text = '\n'.join(lines)
  assert (
    '| array_record | 300,000 | 880 | 4000 | 0.40 | 3.00 | 0.50 | 1000 | 600 / 500 | 0.60x |'
    in text
  )
  verdicts = dict(re.findall(r'^\| (.+?) \| [^|]+ \| (yes|no) \|$', text, re.M))
  rss = 'peak RSS, largest vs smallest size (array_record, 300,000 vs 30,000) <= 1.20'
  assert verdicts[rss] == 'yes'  # 1.10
  key = 'load + first batch when resuming late (warm process), s (array_record, 300,000) <= 2.00'
  assert verdicts[key] == 'yes'  # 0.9
  decoded = 'examples decoded per worker, 2 loopback workers vs 1 (array_record) <= 0.55'
  assert verdicts[decoded] == 'no'  # the busier worker: 0.6
  assert verdicts['input img/s vs training step (25 img/s) (array_record) >= 5.00'] == 'yes'
  assert "Measurement ('data_memory', 'folder', 30000) failed: MemoryError" in text


def test_the_data_workers_measure_what_they_say(tmp_path):
  paths = data_benchmark.prepare(str(tmp_path), 1000, data_benchmark.FORMATS, lambda _: None)
  assert sorted(paths) == sorted(data_benchmark.FORMATS)
  steps = data_benchmark.WORKER_STEPS
  for fmt, path in paths.items():
    base = dict(format=fmt, path=path, batch=50, batches=5)
    memory = data_benchmark.run_worker(dict(base, kind='data_memory'))
    assert memory['peak_rss_mib'] > 0 and memory['img_s'] > 0
    resume = data_benchmark.run_worker(dict(base, kind='data_resume'))
    assert resume['step'] == 3950 // 50 and 0 < resume['resume_s'] < resume['cold_s'] + 5
    one = data_benchmark.run_worker(dict(base, kind='data_workers'))
    assert steps * 50 <= one['decoded'] < (steps + 20) * 50  # its steps and some read ahead
  assert sorted(os.listdir(os.path.join(paths['folder'], 'train'))) == [
    f'class{i}' for i in range(10)
  ]


@pytest.mark.slow
def test_two_loopback_workers_each_decode_half(tmp_path):
  paths = data_benchmark.prepare(str(tmp_path), 1000, log=lambda _: None)
  spec = dict(format='array_record', path=paths['array_record'], batch=50, kind='data_loopback')
  figures = data_benchmark.spawn_loopback(spec, timeout=300)
  assert figures.get('pipelines') == 2 and figures['replicas'] == 2, figures
  steps = data_benchmark.WORKER_STEPS
  for decoded in figures['decoded_by_worker']:
    assert steps * 25 <= decoded < (steps + 20) * 25


@pytest.mark.parametrize(
  'flag, message',
  [
    ('--data_sizes=10', 'data_sizes must be one or more sizes >= 1000; got (10,)'),
    ('--data_formats=csv', "data_formats must be some of ['array_record', 'tfrecord', 'folder']"),
  ],
)
def test_bad_data_flags_are_one_line_errors(flag, message):
  result = subprocess.run(
    [sys.executable, '-m', 'glow_tf.benchmark', '--measures=data', flag],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr and 'Traceback' not in result.stderr
