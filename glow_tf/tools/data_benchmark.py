"""The input pipeline at scale: `python -m glow_tf.benchmark --measures=data`.

Writes random 32x32x3 datasets of each size in `data_sizes` under `data_root` (in
`data_formats`: a prepared TFDS dataset in ArrayRecord or TFRecord files, an image
folder; kept for the next
run, with the folder's inspection cache in `data_root/cache`: the first load of a
folder opens every file, later ones only `stat` them), then measures each in fresh
processes that run the input pipeline alone (no model), with `in_memory='never'` so
the pipeline streams whatever the size:

- peak RSS of the whole process while iterating `data_batches` global batches,
  and the throughput (img/s) over them;
- the time to load the dataset and get the first batch when resuming at a step
  in the last 10% of an epoch (the 4th): in a fresh process (cold, with
  TensorFlow's one-time tf.data warm-up), and building a second resumed pipeline
  in it (what resuming itself costs);
- examples decoded by each of two `MultiWorkerMirroredStrategy` workers on
  127.0.0.1 (one replica each) vs by a single worker, for the same steps.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

__all__ = ['TARGETS', 'collect', 'prepare', 'report', 'run_worker']

FORMATS = ('array_record', 'tfrecord', 'folder')
DEFAULT_FORMATS = ('array_record', 'folder')
SIZE = 32
TRAIN_IMG_S = 25.0  # glow_tf's training step at 32x32x3, L=3, K=8, width 400 (benchmarks.md).
RESUME_FRACTION = 3.95  # Resume at this many epochs: the last 10% of the 4th.
WORKER_STEPS = 200
TARGETS = {
  'rss_ratio': ('peak RSS, largest vs smallest size', 1.2, False),
  'resume_s': ('load + first batch when resuming late (warm process), s', 2.0, False),
  'decoded_ratio': ('examples decoded per worker, 2 loopback workers vs 1', 0.55, False),
  'input_vs_train': (f'input img/s vs training step ({TRAIN_IMG_S:g} img/s)', 5.0, True),
}


def prepare(root: str, size: int, formats=DEFAULT_FORMATS, log=print) -> dict[str, str]:
  """The datasets of `size` training images under `root` (written once): format -> path."""
  from glow_tf.tools import synthetic_data

  base = os.path.join(root, str(size))
  paths = {}
  for fmt in formats:
    if fmt == 'folder':
      folder = os.path.join(base, 'folder')
      done = os.path.join(folder, 'COMPLETE')
      if not os.path.exists(done):
        log(f'writing {size} images as an image folder ...')
        synthetic_data.write_folder(folder, size, 1000, SIZE)
        with open(done, 'w') as f:
          f.write('written by glow_tf.tools.data_benchmark\n')
      paths[fmt] = folder
      continue
    tfds_dir = os.path.join(base, 'tfds' if fmt == 'array_record' else f'tfds_{fmt}')
    version = os.path.join(tfds_dir, synthetic_data.NAME, '1.0.0')
    if not os.path.exists(os.path.join(version, 'dataset_info.json')):
      log(f'writing {size} images as a prepared TFDS dataset ({fmt}) ...')
      version = synthetic_data.prepare_tfds(tfds_dir, size, 1000, SIZE, fmt)
    paths[fmt] = version
  return paths


def proc_status_mib(key: str) -> float:
  """A memory figure of this process from /proc/self/status (e.g. 'VmHWM'), in MiB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key):
        return int(line.split()[1]) / 1024.0
  return float('nan')


def _load(spec):
  from glow_tf.tools import synthetic_data
  from glow_tf.training import data

  options = dict(in_memory='never', validation_size=0)  # Streamed, whole training split.
  if spec['format'] == 'folder':
    return data.load(f'folder:{spec["path"]}', **options)
  return data.load(synthetic_data.NAME, data_dir=spec['path'], **options)


def run_worker(spec):
  """One measurement of the input pipeline alone; returns a dict of figures."""
  import tensorflow as tf

  from glow_tf.training import data

  batch = spec['batch']
  if spec['kind'] == 'data_loopback':  # Before any op runs: it configures collective ops.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  started = time.perf_counter()
  source = _load(spec)
  load_s = time.perf_counter() - started
  if spec['kind'] == 'data_memory':
    iterator = iter(data.train_dataset(source, batch, seed=0))
    next(iterator)
    started = time.perf_counter()
    for _ in range(spec['batches'] - 1):
      next(iterator)
    seconds = time.perf_counter() - started
    return dict(
      load_s=load_s,
      peak_rss_mib=proc_status_mib('VmHWM'),
      img_s=(spec['batches'] - 1) * batch / seconds,
    )
  if spec['kind'] == 'data_resume':
    # Cold: this process's first tf.data pipeline, which also pays TensorFlow's one-time
    # tracing warm-up (~2 s here). Warm: a second resumption, at another late step.
    step = int(RESUME_FRACTION * source.num_train) // batch
    next(iter(data.train_dataset(source, batch, seed=0, start_step=step)))
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    next(iter(data.train_dataset(source, batch, seed=0, start_step=step - 7)))
    return dict(load_s=load_s, cold_s=cold_s, resume_s=time.perf_counter() - started, step=step)
  # data_workers / data_loopback: examples this worker decodes in WORKER_STEPS steps.
  decoded = tf.Variable(0, dtype=tf.int64)
  split = source.train_split

  def counted(*stored):
    with tf.control_dependencies([decoded.assign_add(1)]):
      return split.decode(*stored)

  source = dataclasses.replace(source, train_split=dataclasses.replace(split, decode=counted))
  if spec['kind'] == 'data_loopback':  # One of two MultiWorkerMirroredStrategy workers.
    contexts = []

    def dataset_fn(context):
      contexts.append(context)
      return data.train_dataset(source, batch, seed=0, input_context=context)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    for _ in range(WORKER_STEPS):
      next(iterator)
    return dict(
      decoded=int(decoded.numpy()),
      steps=WORKER_STEPS,
      pipelines=contexts[0].num_input_pipelines,
      replicas=strategy.num_replicas_in_sync,
    )
  iterator = iter(data.train_dataset(source, batch, seed=0))  # One worker: whole batches.
  for _ in range(WORKER_STEPS):
    next(iterator)
  return dict(decoded=int(decoded.numpy()), steps=WORKER_STEPS)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def spawn_loopback(spec, env=None, timeout=600):
  """Runs `spec` as two MultiWorkerMirroredStrategy workers on 127.0.0.1; returns the
  figures of worker 0 with `decoded_by_worker` listing both (or an error)."""
  workers = [f'127.0.0.1:{_free_port()}' for _ in range(2)]
  processes = []
  for index in range(2):
    config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
    processes.append(
      subprocess.Popen(
        [sys.executable, '-m', 'glow_tf.benchmark', f'--worker={json.dumps(spec)}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
          **os.environ,
          'TF_CPP_MIN_LOG_LEVEL': '2',
          **(env or {}),
          'TF_CONFIG': json.dumps(config),
        },
      )
    )
  results = []
  for process in processes:
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      return dict(error=f'two loopback workers did not finish within {timeout} s')
    figures = [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]
    if not figures:
      return dict(error=(stderr.strip().splitlines() or ['no output'])[-1])
    results.append(figures[-1])
  return dict(results[0], decoded_by_worker=[r['decoded'] for r in results])


def collect(spawn, sizes, batch, batches, root, formats=DEFAULT_FORMATS, log=print):
  """Runs every data measurement; returns `{(kind, format, size[, pipelines]): figures}`."""
  figures = {}
  env = {'GLOW_TF_CACHE_DIR': os.path.join(root, 'cache')}  # Folder inspections, kept too.
  for size in sizes:
    paths = prepare(root, size, formats, log)
    for fmt in formats:
      base = dict(format=fmt, path=paths[fmt], batch=batch, batches=batches)
      log(f'measuring the input pipeline on {size} images ({fmt}) ...')
      figures[('data_memory', fmt, size)] = spawn(dict(base, kind='data_memory'), env)
      figures[('data_resume', fmt, size)] = spawn(dict(base, kind='data_resume'), env)
      figures[('data_workers', fmt, size, 1)] = spawn(dict(base, kind='data_workers'), env)
      figures[('data_workers', fmt, size, 2)] = spawn_loopback(
        dict(base, kind='data_loopback'), env
      )
  return figures


def report(figures, sizes, batch, batches, formats=DEFAULT_FORMATS) -> list[str]:
  """Markdown lines: one table of figures per format and size, then the targets."""
  lines = [
    '',
    f'## Input pipeline at scale: random {SIZE}x{SIZE}x3 images, global batch {batch}',
    '',
    'Each figure from a fresh process running only the input pipeline '
    "(`in_memory='never'`). Resuming: at the last 10% of the 4th epoch. Decoded "
    f'per worker in {WORKER_STEPS} steps (read-ahead included): one worker, vs each of two '
    'MultiWorkerMirroredStrategy workers on 127.0.0.1 (the larger count).',
    '',
    '| format | images | peak RSS over '
    f'{batches} batches, MiB | input img/s | load, s | cold: load + first batch resuming, s '
    '| resuming: first batch, s | decoded, 1 worker | decoded by each of 2 workers | ratio |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  checks, errors = [], []
  for fmt in formats:
    rss = {}
    for size in sizes:
      memory = figures.get(('data_memory', fmt, size), {})
      resume = figures.get(('data_resume', fmt, size), {})
      one = figures.get(('data_workers', fmt, size, 1), {})
      two = figures.get(('data_workers', fmt, size, 2), {})
      for key, value in (
        (('data_memory', fmt, size), memory),
        (('data_resume', fmt, size), resume),
        (('data_workers', fmt, size, 1), one),
        (('data_workers', fmt, size, 2), two),
      ):
        if 'error' in value:
          errors.append(f'Measurement {key} failed: {value["error"]}')
      cells = [
        f'{memory["peak_rss_mib"]:.0f}' if 'peak_rss_mib' in memory else '-',
        f'{memory["img_s"]:.0f}' if 'img_s' in memory else '-',
        f'{resume["load_s"]:.2f}' if 'load_s' in resume else '-',
        f'{resume["cold_s"]:.2f}' if 'cold_s' in resume else '-',
        f'{resume["resume_s"]:.2f}' if 'resume_s' in resume else '-',
        str(one.get('decoded', '-')),
        ' / '.join(str(d) for d in two.get('decoded_by_worker', ['-'])),
        f'{max(two["decoded_by_worker"]) / one["decoded"]:.2f}x'
        if 'decoded' in one and 'decoded_by_worker' in two
        else '',
      ]
      lines.append(f'| {fmt} | {size:,} | ' + ' | '.join(cells) + ' |')
      if 'peak_rss_mib' in memory:
        rss[size] = memory['peak_rss_mib']
      if size == max(sizes):
        if 'resume_s' in resume:
          checks.append(('resume_s', f' ({fmt}, {size:,})', resume['load_s'] + resume['resume_s']))
        if 'decoded' in one and 'decoded_by_worker' in two:
          ratio = max(two['decoded_by_worker']) / one['decoded']
          checks.append(('decoded_ratio', f' ({fmt})', ratio))
        if 'img_s' in memory:
          checks.append(('input_vs_train', f' ({fmt})', memory['img_s'] / TRAIN_IMG_S))
    if len(rss) > 1:
      checks.append(
        ('rss_ratio', f' ({fmt}, {max(rss):,} vs {min(rss):,})', rss[max(rss)] / rss[min(rss)])
      )
  lines += ['', '| target | measured | met |', '| --- | --- | --- |']
  for name, tag, value in checks:
    description, threshold, higher = TARGETS[name]
    met = value >= threshold if higher else value <= threshold
    bound = '>=' if higher else '<='
    lines.append(
      f'| {description}{tag} {bound} {threshold:.2f} | {value:.2f} | {"yes" if met else "no"} |'
    )
  return lines + [''] + errors
