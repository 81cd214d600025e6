"""Benchmarks glow_tf against tfp.bijectors.Glow at the same architecture.

Run: `python -m glow_tf.benchmark` (or bin/glow_benchmark). The input pipeline at
scale is measured with `--measures=data` (see `glow_tf.tools.data_benchmark`).

Every measurement runs in a fresh subprocess (so one model's graphs, caches and
memory never affect another's); this process collects them and prints one
table with medians, min-max over repeats, and the ratios the targets are about.
Compare ratios, not absolute figures: this machine is noisy, and both models are
measured side by side in the same run.
"""

import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import glow_tf
from glow_tf import configs
from glow_tf.configs import option
from glow_tf.errors import ConfigError
from glow_tf.tools import data_benchmark
from glow_tf.training import data, optim
from glow_tf.training.config import TrainConfig
from glow_tf.training.loss import Loss
from glow_tf.training.trainer import Trainer

tfb, tfd = tfp.bijectors, tfp.distributions

MODEL_MEASURES = (
  'train',
  'first_step',
  'log_prob',
  'sample',
  'memory',
  'params',
  'flops',
  'mirrored',
  'depth',
  'precision',
)
MEASURES = (*MODEL_MEASURES, 'data')  # 'data' writes datasets to disk: asked for by name.
MODELS = ('glow_tf', 'tfb_glow')
XLA_MODES = {'off': [False], 'on': [True], 'both': [False, True]}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What `glow_tf.benchmark` measures, and at which size (its flags are these fields)."""

  image_size: int = option(32, 'Images are image_size x image_size x channels.', minimum=2)
  channels: int = option(3, 'Image channels.', minimum=1)
  levels: int = option(3, 'L.', minimum=1)
  depth: int = option(8, 'K, steps per level.', minimum=1)
  width: int = option(400, 'Coupling network width.', minimum=1)
  batch_size: int = option(16, 'Images per step.', minimum=1)
  xla: str = option('off', 'XLA for the training step.', choices=tuple(XLA_MODES))
  measures: tuple[str, ...] = option(
    MODEL_MEASURES,
    f'Which of {",".join(MEASURES)} (data: the input pipeline at scale, not by default).',
    check=lambda ms: len(ms) > 0 and set(ms) <= set(MEASURES),
    expected=f'some of {list(MEASURES)}',
  )
  models: tuple[str, ...] = option(
    MODELS,
    'Which of glow_tf, tfb_glow.',
    check=lambda ms: len(ms) > 0 and set(ms) <= set(MODELS),
    expected=f'some of {list(MODELS)}',
  )
  repeats: int = option(5, 'Timed repeats per throughput figure.', minimum=1)
  steps: int = option(3, 'Steps per timed repeat.', minimum=1)
  memory_depth: int = option(
    32,
    "K of the depth measures (the Trainer's first step, throughput and step memory at K "
    'and at --depth; --recompute also at 2K).',
    minimum=1,
  )
  mirrored_devices: int = option(2, 'Logical CPU devices for the mirrored ratio.', minimum=2)
  data_sizes: tuple[int, ...] = option(
    (30_000, 300_000),
    'Training images of the synthetic datasets the data measure writes and reads.',
    check=lambda sizes: len(sizes) > 0 and all(s >= 1000 for s in sizes),
    expected='one or more sizes >= 1000',
  )
  data_formats: tuple[str, ...] = option(
    data_benchmark.DEFAULT_FORMATS,
    f'Dataset formats of the data measure, some of {",".join(data_benchmark.FORMATS)}.',
    check=lambda formats: len(formats) > 0 and set(formats) <= set(data_benchmark.FORMATS),
    expected=f'some of {list(data_benchmark.FORMATS)}',
  )
  data_batch: int = option(64, 'Global batch of the data measure.', minimum=1)
  data_batches: int = option(1000, 'Batches iterated for peak RSS and img/s.', minimum=2)
  data_root: str = option(
    '/tmp/glow_tf_data_benchmark', 'Where the data measure writes its datasets (kept).'
  )

  def __post_init__(self):
    configs.validate(self)
    if self.image_size % (2**self.levels):
      raise ConfigError(
        f'image_size must be a multiple of 2**levels = {2**self.levels}; got {self.image_size}.'
      )

  @property
  def shape(self) -> 'Shape':
    return Shape(
      self.image_size, self.channels, self.levels, self.depth, self.width, self.batch_size
    )


TEMPERATURE = 0.7
TARGETS = {  # name: (description, threshold, higher is better)
  'train_vs_tfb': ('training throughput vs tfb.Glow', 2.5),
  'train_vs_peak': ('training FLOP rate vs conv peak', 0.75),
  'first_step': ('time to first step (s)', 10.0),
  'log_prob_vs_tfb': ('log_prob throughput vs tfb.Glow', 2.0),
  'sample_vs_tfb': ('sampling throughput vs tfb.Glow', 2.0),
  'mirrored': ('mirrored (N CPUs) vs one device', 0.9),
  'recompute_memory': ('recompute step memory vs without', 1 / 3),
  'trainer_first_step': ("Trainer's time to first step (s)", None),  # Threshold by depth.
  'compiled_vs_layers': ('compiled steps training throughput vs per-layer', 0.95),
  'recompute_flat': ('recompute step memory per image at 2K vs K', 1.05),
  'memory_measure': ('step memory measured vs analytic', 0.75),
  'resume': ('resume at K: restore and first step (s)', 10.0),
  'bfloat16_train': ('bfloat16 training throughput vs float32', 1.4),
}
# float16 is for GPUs; on CPUs its convolutions are not faster, so it is not timed here.
BENCHMARK_PRECISIONS = ('float32', 'bfloat16')
FIRST_STEP_TARGETS = {8: 5.0, 32: 8.0}  # Seconds, by K (issue 18).
BATCH_FACTOR = 4  # --recompute's memory per image: steps at batch B and 4B.
LOWER_IS_BETTER = (
  'first_step',
  'recompute_memory',
  'trainer_first_step',
  'recompute_flat',
  'resume',
)


@dataclasses.dataclass(frozen=True)
class Shape:
  image_size: int
  channels: int
  levels: int
  depth: int
  width: int
  batch_size: int


# ---- analytic FLOPs ------------------------------------------------------------------------


def forward_flops(shape: Shape) -> int:
  """Multiply-adds x 2 of one forward pass (convolutions, 1x1 mixing), per batch.

  Per flow step at a level with C channels on an h x w grid: the 1x1 invertible
  convolution (C * C), the coupling network (3x3: C/2 -> width, 1x1: width ->
  width, 3x3: width -> C) per position; each split prior adds a 3x3 conv C/2 -> C.
  Elementwise work (ActNorm, ReLU, the affine map) is left out.
  """
  size, channels, total = shape.image_size, shape.channels, 0
  for level in range(shape.levels):
    size, channels = size // 2, channels * 4
    positions = shape.batch_size * size * size
    kept = channels // 2
    step = (
      channels * channels
      + 9 * kept * shape.width
      + shape.width**2
      + (9 * shape.width * 2 * (channels - kept))
    )
    total += shape.depth * positions * step
    if level < shape.levels - 1:
      total += positions * 9 * kept * 2 * (channels - kept)
      channels = kept
  return 2 * total


def activation_bytes(shape: Shape, dtype_bytes: int = 4) -> int:
  """What backprop with a tape keeps of one training step that grows with depth, in bytes.

  Per flow step, the coupling network's two hidden activations of `width`
  channels (the ReLU outputs, which its convolutions' gradients read) on the
  level's h x w grid; the flow's own C-channel tensors are a few percent of
  that at the paper's widths and are left out, as are the split priors (one per
  level, not per step).
  """
  size, total = shape.image_size, 0
  for _ in range(shape.levels):
    size //= 2
    total += shape.depth * 2 * shape.batch_size * size * size * shape.width
  return dtype_bytes * total


# ---- worker side ---------------------------------------------------------------------------


def _timed(fn, repeats, steps):
  """Per-repeat seconds per call of `fn`, after the caller's warm-up."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      result = fn()
    _block(result)
    times.append((time.perf_counter() - start) / steps)
  return times


def _block(result):

  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, result)


def _build(spec, x):
  """(flow, variables) for spec['model'], initialised on `x`."""

  shape = Shape(**spec['shape'])
  if spec['model'] == 'glow_tf':
    flow = glow_tf.build_glow(
      glow_tf.GlowConfig(
        image_shape=(shape.image_size, shape.image_size, shape.channels),
        levels=shape.levels,
        depth=shape.depth,
        width=shape.width,
        precision=spec.get('precision', 'float32'),
      )
    )
    glow_tf.initialize(flow, x)
  else:
    glow = tfb.Glow(
      output_shape=(shape.image_size, shape.image_size, shape.channels),
      num_glow_blocks=shape.levels,
      num_steps_per_block=shape.depth,
      coupling_bijector_fn=functools.partial(tfb.GlowDefaultNetwork, num_hidden=shape.width),
      exit_bijector_fn=tfb.GlowDefaultExitNetwork,
      grab_after_block=(0.5,) * shape.levels,
      use_actnorm=True,
      seed=1,
    )
    base = tfd.Sample(
      tfd.Normal(0.0, 1.0),
      glow.inverse_event_shape([shape.image_size, shape.image_size, shape.channels]),
    )
    flow = tfd.TransformedDistribution(base, glow)
    flow.log_prob(x)  # Builds its Keras layers (and runs its ActNorm initialisation).
  return flow, list(flow.trainable_variables)


def _with_temperature(spec, flow):

  if spec['model'] == 'glow_tf':
    return glow_tf.with_temperature(flow, TEMPERATURE)
  base = tfd.Sample(tfd.Normal(0.0, TEMPERATURE), flow.distribution.sample_shape)
  return tfd.TransformedDistribution(base, flow.bijector)


def _train_step_fn(spec, flow, variables):
  """A training step of `flow` on mean bits/dim: training's own loss for glow_tf."""
  shape = Shape(**spec['shape'])
  num_dims = shape.image_size**2 * shape.channels
  optimizer = optim.Optimizer(variables, 'adam')
  loss_fn = Loss(num_bins=256)

  def per_example(x):
    if spec['model'] == 'glow_tf':
      return loss_fn(flow, None, x)[0]
    return loss_fn.bits_per_dim(flow.log_prob(x), num_dims)  # tfb.Glow: a plain distribution.

  def grads(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(per_example(x))
    return loss, tape.gradient(loss, variables)

  grads = tf.function(grads, jit_compile=spec.get('xla', False), autograph=False)

  def step(x):
    loss, g = grads(x)
    context = tf.distribute.get_replica_context()  # Identity outside a strategy.
    g = [
      t / context.num_replicas_in_sync for t in context.all_reduce(tf.distribute.ReduceOp.SUM, g)
    ]
    optimizer.apply(g, 1e-4)
    return loss

  return step


def _synthetic_source(shape: Shape, count: int = 64):
  """Uniform random 8-bit images as a DataSource: the Trainer's own input path, no files."""
  rng = np.random.default_rng(0)
  count = max(count, shape.batch_size)
  image_shape = (shape.image_size, shape.image_size, shape.channels)
  split = data.memory_split(
    rng.integers(0, 256, (count, *image_shape), dtype=np.uint8), np.zeros([count], np.int32)
  )
  return data.DataSource(
    name='synthetic',
    train_split=split,
    test_split=split,
    image_shape=image_shape,
    num_bins=256,
    num_classes=None,
  )


def _allocated_mib(fn) -> float:
  """MiB the CPU allocator's peak rises above what is held before `fn()` runs."""
  tf.config.experimental.reset_memory_stats('CPU:0')
  before = tf.config.experimental.get_memory_info('CPU:0')['current']
  fn()
  return (tf.config.experimental.get_memory_info('CPU:0')['peak'] - before) / 2**20


# The parts of a Trainer's first step, as `_trainer_run` times them.
START_PARTS = ('build_s', 'init_s', 'data_s', 'trace_s', 'run_s')


def _start_parts(run) -> str:
  """A run's first step in its parts, in seconds: '0.7 + 3.3 + 0.2 + 2.2 + 2.3'."""
  return ' + '.join(f'{run[k]:.1f}' for k in START_PARTS if k in run)


def _trainer_run(spec):
  """glow_tf's own Trainer (as `glow_tf.train` runs it): first step, steady steps, memory.

  `first_step_s` runs from building the Trainer (model, optimiser, checkpoint) through
  restoring or initialising to the end of the first step, in parts (`build_s`,
  `init_s`, `data_s`, `trace_s`, `run_s`); with `resume`, `model_dir`
  holds a checkpoint to restore. `step_mib` is what one step adds to the CPU
  allocator's peak after warm-up: activations, gradients and temporaries.
  """
  shape = Shape(**spec['shape'])
  config = TrainConfig(
    model=TrainConfig().model.replace(
      levels=shape.levels,
      depth=shape.depth,
      width=shape.width,
      compile_steps=spec['compile_steps'],
      # The per-layer row is the path before either: every layer traced, each step
      # holding its own variables.
      stack_steps=spec['compile_steps'],
    ),
    batch_size=shape.batch_size,
    init_batch_size=64,
    recompute=spec['recompute'],
  )
  source, strategy = _synthetic_source(shape), tf.distribute.get_strategy()
  times = [time.perf_counter()]
  trainer = Trainer(config, spec['model_dir'], source, strategy)
  times.append(time.perf_counter())
  message = trainer.restore_or_initialize()
  times.append(time.perf_counter())
  if bool(spec.get('resume')) != message.startswith('restored'):
    raise RuntimeError(f'expected {"a restore" if spec.get("resume") else "a new run"}: {message}')
  iterator = trainer.train_iterator()
  times.append(time.perf_counter())
  trainer.trace_train_step(iterator)
  times.append(time.perf_counter())
  trainer.train_step(iterator)
  times.append(time.perf_counter())
  if trainer._train_step.experimental_get_tracing_count() != 1:  # pylint: disable=protected-access
    raise RuntimeError('the first training step traced again after trace_train_step')
  results = dict(
    first_step_s=times[-1] - times[0],
    build_s=times[1] - times[0],
    init_s=times[2] - times[1],  # ActNorm's data-dependent init, or the restore.
    data_s=times[3] - times[2],  # The input pipeline, to its iterator.
    trace_s=times[4] - times[3],  # The training step's trace.
    run_s=times[5] - times[4],  # Its first run: compute, and the runtime's first-run work.
    params=int(sum(np.prod(v.shape) for v in trainer.variables)),
  )
  if spec.get('resume'):
    return results
  if spec['repeats']:
    steps = [time.perf_counter()]
    for _ in range(spec['repeats'] * spec['steps']):
      trainer.train_step(iterator)
      steps.append(time.perf_counter())
    seconds = np.diff(steps).reshape(spec['repeats'], spec['steps']).mean(axis=1)
    results['train_img_s'] = [shape.batch_size / t for t in seconds]
  else:
    trainer.train_step(iterator)  # Warm-up: the allocator's pools and the prefetch settle.
  # The median of three steps: the executor's order, and so the peak, varies a little.
  results['step_mib'] = statistics.median(
    _allocated_mib(lambda: trainer.train_step(iterator)) for _ in range(3)
  )
  if spec.get('save'):
    trainer.save()
  return results


def run_worker(spec):
  """Runs one measurement; returns a dict of figures."""
  if spec['kind'].startswith('data_'):
    return data_benchmark.run_worker(spec)
  if spec['kind'] == 'allocator_probe':
    _block(tf.ones([256, 256]) @ tf.ones([256, 256]))
    try:
      tf.config.experimental.reset_memory_stats('CPU:0')
    except ValueError:  # "Cannot reset memory stats": this allocator keeps none.
      return dict(keeps_statistics=False)
    return dict(keeps_statistics=True)
  if spec.get('threads'):  # Before the runtime starts, as below.
    tf.config.threading.set_inter_op_parallelism_threads(spec['threads'])
    tf.config.threading.set_intra_op_parallelism_threads(spec['threads'])
  if spec.get('cpu_devices'):  # Before the runtime starts: no op has run in this process.
    tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices('CPU')[0],
      [tf.config.LogicalDeviceConfiguration()] * spec['cpu_devices'],
    )

  shape = Shape(**spec['shape'])
  repeats, steps = spec['repeats'], spec['steps']
  if spec['kind'] == 'peak':
    side = shape.image_size // 2
    dtype = spec.get('precision', 'float32')
    x = tf.random.normal([shape.batch_size, side, side, shape.width], dtype=dtype)
    kernel = tf.random.normal([3, 3, shape.width, shape.width], dtype=dtype)
    conv = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, 'SAME'))
    _block(conv())
    flops = 2 * 9 * shape.width**2 * shape.batch_size * side * side
    return dict(
      conv_peak_gflops=[flops / t / 1e9 for t in _timed(conv, repeats, steps)],
      conv_shape=f'3x3 conv {shape.width}->{shape.width} on {shape.batch_size}x{side}x{side}',
    )
  x = tf.random.uniform(
    [shape.batch_size, shape.image_size, shape.image_size, shape.channels], -0.5, 0.5, seed=1
  )
  if spec['kind'] == 'mirrored':
    return _mirrored(spec, x)
  if spec['kind'] == 'trainer':
    return _trainer_run(spec)
  flow, variables = _build(spec, x)
  results = dict(params=int(sum(np.prod(v.shape) for v in variables)))
  step = tf.function(_train_step_fn(spec, flow, variables), autograph=False)
  start = time.perf_counter()
  _block(step(x))
  results['first_step_s'] = time.perf_counter() - start
  _block(step(x))
  if spec['kind'] == 'memory':
    before = data_benchmark.proc_status_mib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # Resets the peak (VmHWM) to the current resident size.
    _timed(lambda: step(x), 1, steps)
    peak = data_benchmark.proc_status_mib('VmHWM')
    results.update(rss_before_mib=before, peak_rss_mib=peak, step_mib=peak - before)
    return results
  results['train_img_s'] = [shape.batch_size / t for t in _timed(lambda: step(x), repeats, steps)]
  log_prob = tf.function(flow.log_prob, autograph=False)
  _block(log_prob(x))
  results['log_prob_img_s'] = [
    shape.batch_size / t for t in _timed(lambda: log_prob(x), repeats, steps)
  ]
  warm = _with_temperature(spec, flow)
  sample = tf.function(lambda seed: warm.sample(shape.batch_size, seed=seed), autograph=False)
  seed = tf.constant([1, 2])
  _block(sample(seed))
  results['sample_img_s'] = [
    shape.batch_size / t for t in _timed(lambda: sample(seed), repeats, steps)
  ]
  return results


def _mirrored(spec, x):
  """One device vs MirroredStrategy over logical CPUs, same global batch, in one process."""
  shape = Shape(**spec['shape'])
  rates = {}
  strategies = {
    'one_device': tf.distribute.OneDeviceStrategy('/cpu:0'),
    'mirrored': tf.distribute.MirroredStrategy(
      [d.name for d in tf.config.list_logical_devices('CPU')]
    ),
  }
  spec = dict(spec, model='glow_tf')
  for name, strategy in strategies.items():
    with strategy.scope():
      flow, variables = _build(spec, x)
      step = _train_step_fn(spec, flow, variables)
    per_replica = shape.batch_size // strategy.num_replicas_in_sync
    dataset = tf.data.Dataset.from_tensors(x[:per_replica]).repeat()
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx, d=dataset: d))

    @tf.function
    def run(step=step, strategy=strategy, iterator=iterator):
      return strategy.experimental_local_results(strategy.run(step, args=(next(iterator),)))

    _block(run())
    rates[name] = [shape.batch_size / t for t in _timed(run, spec['repeats'], spec['steps'])]
  return dict(
    one_device_img_s=rates['one_device'],
    mirrored_img_s=rates['mirrored'],
    devices=len(tf.config.list_logical_devices('CPU')),
  )


# ---- parent side ---------------------------------------------------------------------------


def spawn(spec, env=None):
  """Runs one worker in a fresh interpreter; returns its figures (or an error)."""
  command = [sys.executable, '-m', 'glow_tf.benchmark', f'--worker={json.dumps(spec)}']
  result = subprocess.run(
    command,
    capture_output=True,
    text=True,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})},
  )
  for line in reversed(result.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  return dict(error=(result.stderr.strip().splitlines() or ['no output'])[-1])


def median(values):
  return statistics.median(values) if isinstance(values, list) else values


def spread(values, digits=1):
  if not isinstance(values, list):
    return f'{values:.{digits}f}'
  return (
    f'{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})'
  )


def machine_facts():

  cpu = platform.processor() or ''
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return dict(
    date=datetime.date.today().isoformat(),
    cpu=cpu,
    cores=os.cpu_count(),
    python=platform.python_version(),
    tensorflow=tf.__version__,
    tensorflow_probability=tfp.__version__,
  )


# Environments of the CPU allocators whose statistics measure a step's memory.
ALLOCATORS = {'default': {}, 'BFC': {'TF_CPU_ALLOCATOR_USE_BFC': 'true'}}


def _statistics_allocator() -> str:
  """'default' if TF's default CPU allocator keeps statistics here, else 'BFC'.

  The default allocator keeps them only when oneDNN is on (off on some x86 CPUs, as
  on one CI machine); BFC keeps them everywhere, but counts each allocation as the
  whole free chunk it took (BFC splits a chunk only if it is at least twice the
  request), so its peaks carry up to 2x fragmentation that grows with the number of
  tensors: --recompute at K=64 read 1.31x K=32's memory beyond the gradients under
  BFC, 1.0x under the default allocator, same machine.
  """
  if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('1', 'true'):
    return 'BFC'  # Chosen by the caller; the workers inherit it.
  probe = spawn(dict(kind='allocator_probe'))
  return 'default' if probe.get('keeps_statistics') else 'BFC'


def _collect_depth(shape: Shape, deep: int, repeats: int, steps: int, log) -> dict:
  """glow_tf's Trainer at depth K = shape.depth and `deep`: compiled steps with and
  without --recompute, and the per-layer path; --recompute's memory at 2 x `deep`;
  --recompute's memory at K = `deep` and 2 x `deep`, at the batch and `BATCH_FACTOR` x
  the batch, on one thread (ops in a steadier order: the peak moved by up to 15 MiB
  between runs here, by 20-40 MiB on two threads): what one more image adds to a
  step, its activations, apart from the parameter-sized gradients and optimiser
  temporaries, which grow with K by design; a resume at `deep`. Keys: ('trainer', K,
  recompute, compiled), ('one_thread', K, batch) and ('resume', K)."""
  figures = {'allocator': _statistics_allocator()}
  allocator = ALLOCATORS[figures['allocator']]  # Every row the same: its ratios stay fair.
  with tempfile.TemporaryDirectory() as scratch:

    def run(depth, recompute, compiled, batch_size=shape.batch_size, **extra):
      name = f'k{depth}-{recompute}-{compiled}-b{batch_size}-{extra.get("threads", 0)}'
      directory = os.path.join(scratch, name)
      spec = dict(
        shape=dict(dataclasses.asdict(shape), depth=depth, batch_size=batch_size),
        kind='trainer',
        recompute=recompute,
        compile_steps=compiled,
        repeats=repeats,
        steps=steps,
        model_dir=directory,
      )
      return spawn({**spec, **extra}, allocator)

    for depth in sorted({shape.depth, deep}):
      for recompute, compiled in ((False, True), (True, True), (False, False)):
        log(f'measuring the Trainer at K={depth}, recompute={recompute}, compiled={compiled} ...')
        save = depth == deep and compiled and not recompute  # The resume below restores it.
        figures[('trainer', depth, recompute, compiled)] = run(
          depth, recompute, compiled, save=save
        )
    log(f'measuring --recompute memory at K={2 * deep} ...')
    figures[('trainer', 2 * deep, True, True)] = run(2 * deep, True, True, repeats=0)
    for depth in (deep, 2 * deep):
      for batch in (shape.batch_size, BATCH_FACTOR * shape.batch_size):
        log(f'measuring --recompute memory at K={depth}, batch {batch}, one thread ...')
        figures[('one_thread', depth, batch)] = run(depth, True, True, batch, repeats=0, threads=1)
    log(f'measuring a resume at K={deep} ...')
    figures[('resume', deep)] = run(deep, False, True, repeats=0, resume=True)
  figures['memory_depth'] = deep
  return figures


def collect(
  shape: Shape,
  measures,
  models,
  xla_modes,
  repeats,
  steps,
  memory_depth,
  mirrored_devices,
  log=print,
  data_options=None,
):
  """Runs every requested measurement; returns the figures.

  `data_options`: `sizes`, `batch`, `batches`, `root`, `formats` of the data measure.
  """
  base = dict(shape=dataclasses.asdict(shape), repeats=repeats, steps=steps)
  figures = {}
  timing = {'train', 'first_step', 'log_prob', 'sample', 'params', 'flops'} & set(measures)
  if timing:
    for xla in xla_modes:
      for model in models:
        log(f'measuring {model}{" with XLA" if xla else ""} ...')
        figures[(model, xla)] = spawn(dict(base, kind='model', model=model, xla=xla))
  if 'flops' in measures or 'train' in measures:
    log('measuring the conv peak ...')
    figures['peak'] = spawn(dict(base, kind='peak'))
  low_memory = {'MALLOC_MMAP_THRESHOLD_': '131072'}  # Freed buffers leave RSS at once.
  if 'memory' in measures:
    for model in models:
      log(f'measuring memory of {model} ...')
      figures[('memory', model)] = spawn(dict(base, kind='memory', model=model), low_memory)
  if 'depth' in measures:
    figures.update(_collect_depth(shape, memory_depth, repeats, steps, log))
  if 'precision' in measures:
    for precision in BENCHMARK_PRECISIONS:
      log(f'measuring glow_tf in {precision} ...')
      figures[('precision', precision)] = spawn(
        dict(base, kind='model', model='glow_tf', precision=precision)
      )
      figures[('peak', precision)] = spawn(dict(base, kind='peak', precision=precision))
  if 'mirrored' in measures:
    log(f'measuring mirrored over {mirrored_devices} logical CPUs ...')
    figures['mirrored'] = spawn(dict(base, kind='mirrored', cpu_devices=mirrored_devices))
  if 'data' in measures:
    figures['data_options'] = data_options
    figures.update(data_benchmark.collect(spawn, log=log, **data_options))
  return figures


def _precision_rows(shape: Shape, figures, pairs, checks) -> None:
  """float32 against bfloat16 (the networks' convolutions), same run; appends to `pairs`."""
  full, low = figures.get(('precision', 'float32'), {}), figures.get(('precision', 'bfloat16'), {})
  for key, label in (
    ('train_img_s', 'training step, img/s'),
    ('log_prob_img_s', 'log_prob, img/s'),
    ('sample_img_s', f'sampling at T={TEMPERATURE}, img/s'),
  ):
    if key in full and key in low:
      ratio = median(low[key]) / median(full[key])
      pairs.append(
        (
          f'--precision=bfloat16 (vs float32): {label}',
          spread(full[key]),
          spread(low[key]),
          f'{ratio:.2f}x',
        )
      )
      if key == 'train_img_s':
        checks.append(('bfloat16_train', '', ratio))
  step_flops = 3 * forward_flops(shape)
  peaks = [figures.get(('peak', p), {}) for p in BENCHMARK_PRECISIONS]
  if all('conv_peak_gflops' in p for p in peaks):
    pairs.append(
      (
        'conv peak (3x3, width->width), GFLOP/s',
        *(spread(p['conv_peak_gflops']) for p in peaks),
        f'{median(peaks[1]["conv_peak_gflops"]) / median(peaks[0]["conv_peak_gflops"]):.2f}x',
      )
    )
    if 'train_img_s' in full and 'train_img_s' in low:
      rates = [
        step_flops / (shape.batch_size / median(run['train_img_s'])) / 1e9 for run in (full, low)
      ]
      shares = [r / median(p['conv_peak_gflops']) for r, p in zip(rates, peaks)]
      pairs.append(
        (
          "training FLOP rate, GFLOP/s (of its precision's conv peak)",
          f'{rates[0]:.1f} ({shares[0]:.0%})',
          f'{rates[1]:.1f} ({shares[1]:.0%})',
          '',
        )
      )


def _gradient_mib(run) -> float:
  """MiB of a run's gradients, held until the update: 4 bytes per parameter."""
  return 4 * run.get('params', 0) / 2**20


def _depth_table(shape: Shape, figures, checks) -> list[str]:
  """The Trainer-at-depth table (see `_collect_depth`); appends its targets to `checks`."""
  runs = {k[1:]: v for k, v in figures.items() if isinstance(k, tuple) and k[0] == 'trainer'}
  if not runs:
    return []
  lines = [
    '',
    "glow_tf's Trainer (`glow_tf.train`'s steps: data pipeline, optimiser, averages, "
    'a `.numpy()` per step) on random images, each row a fresh process. First step: '
    'from building the Trainer to the end of its first step (in brackets: building, '
    "ActNorm's data-dependent init, the input pipeline, the step's trace, its first "
    'run). Step memory: what '
    "one step adds to the CPU allocator's peak after warm-up (median of three steps; "
    f'allocator: {figures.get("allocator", "default")}). Analytic: the gradients '
    '(4 bytes per parameter, held until the update) plus the activations the backward '
    "pass keeps: the coupling networks' hidden activations of every step with a tape "
    '(`activation_bytes`), one step at a time with --recompute. Compiled steps hold '
    "each level's steps' variables stacked; per layer is the path before both (every "
    'layer traced, each step its own variables).',
    '',
    '| K | path | first step, s | training img/s | step memory, MiB | analytic, MiB |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  mib = lambda depth: activation_bytes(dataclasses.replace(shape, depth=depth)) / 2**20
  # --recompute keeps one step's activations at a time: the largest, at the first level.
  one_step = activation_bytes(dataclasses.replace(shape, depth=1, levels=1)) / 2**20
  for (depth, recompute, compiled), run in sorted(runs.items()):
    path = ('compiled steps' if compiled else 'per layer') + (', --recompute' if recompute else '')
    if 'error' in run:
      lines.append(f'| {depth} | {path} | failed: {run["error"]} | | | |')
      continue
    img_s = spread(run['train_img_s']) if 'train_img_s' in run else '-'
    analytic = _gradient_mib(run) + (one_step if recompute else mib(depth))
    lines.append(
      f'| {depth} | {path} | {run["first_step_s"]:.1f} ({_start_parts(run)}) | {img_s} '
      f'| {run["step_mib"]:.0f} | {analytic:.0f} ({_gradient_mib(run):.0f} gradients) |'
    )
    tag = f' at K={depth}' + (' --recompute' if recompute else '')
    if compiled and depth in FIRST_STEP_TARGETS:
      checks.append(('trainer_first_step', tag, run['first_step_s'], FIRST_STEP_TARGETS[depth]))
    if compiled and not recompute:
      checks.append(('memory_measure', f' at K={depth}', run['step_mib'] / analytic))
      layers = runs.get((depth, False, False), {})
      if 'train_img_s' in run and 'train_img_s' in layers:
        ratio = median(run['train_img_s']) / median(layers['train_img_s'])
        checks.append(('compiled_vs_layers', f' at K={depth}', ratio))
  deep = figures.get('memory_depth')
  plain, recomputed = runs.get((deep, False, True), {}), runs.get((deep, True, True), {})
  # Ratios of step memory only where the denominator is measurable (tiny test models
  # add less than the allocator's granularity).
  if plain.get('step_mib', 0) >= 1 and 'step_mib' in recomputed:
    ratio = recomputed['step_mib'] / plain['step_mib']
    checks.append(('recompute_memory', f' at K={deep}', ratio))
  lines += _per_image_lines(shape, figures, deep, checks)
  resume = figures.get(('resume', deep), {})
  if 'first_step_s' in resume:
    lines += [
      '',
      f'Resume at K={deep}: restore and first step in {resume["first_step_s"]:.1f} s '
      f'({_start_parts(resume)}: building, restore, input pipeline, trace, first run).',
    ]
    checks.append(('resume', f' at K={deep}', resume['first_step_s']))
  return lines


def _per_image_lines(shape: Shape, figures, deep, checks) -> list[str]:
  """--recompute's step memory per image at K = `deep` and 2 x `deep`, on one thread:
  the activations the backward holds (one step's, whatever K); and beyond the gradients."""
  small, large = shape.batch_size, BATCH_FACTOR * shape.batch_size
  runs = {
    (k, b): figures.get(('one_thread', k, b), {}) for k in (deep, 2 * deep) for b in (small, large)
  }
  if not all('step_mib' in run for run in runs.values()):
    return []
  mib = {key: run['step_mib'] for key, run in runs.items()}
  images = large - small
  per_image = {k: (mib[k, large] - mib[k, small]) / images for k in (deep, 2 * deep)}
  # One step's activations at the first level, the largest: its network's two hidden
  # activations of `width` channels, per image; with a tape, every step's.
  one_step = activation_bytes(dataclasses.replace(shape, depth=1, levels=1, batch_size=1))
  taped = activation_bytes(dataclasses.replace(shape, depth=deep, batch_size=1))
  beyond = {k: mib[k, small] - _gradient_mib(runs[k, small]) for k in (deep, 2 * deep)}
  lines = [
    '',
    f'--recompute step memory on one thread, batch {small} / {large}: '
    + ', '.join(f'K={k} {mib[k, small]:.1f} / {mib[k, large]:.1f} MiB' for k in per_image)
    + f'. Per image (the difference over {images} images): '
    + ', '.join(f'K={k} {v:.2f} MiB' for k, v in per_image.items())
    + f" (analytic: one step's hidden activations at the first level {one_step / 2**20:.2f}"
    f" MiB; every step's, with a tape, at K={deep} {taped / 2**20:.1f} MiB). Beyond the "
    f'gradients at batch {small} (parameter-sized temporaries included, which grow with K): '
    + ', '.join(f'K={k} {v:.0f} MiB' for k, v in beyond.items())
    + '.',
  ]
  if per_image[deep] * images >= 1:  # Measurable (tiny test models add less).
    ratio = per_image[2 * deep] / per_image[deep]
    checks.append(('recompute_flat', f' ({2 * deep} vs {deep})', ratio))
  return lines


def report(shape: Shape, figures, xla_modes, command: str, facts) -> str:
  """The markdown report: facts, the table of figures, targets."""
  lines = [
    f'# glow_tf benchmark, {facts["date"]}',
    '',
    f'Machine: {facts["cpu"]}, {facts["cores"]} cores. Python {facts["python"]}, '
    f'TensorFlow {facts["tensorflow"]}, TFP {facts["tensorflow_probability"]}.',
    '',
    f'Command: `{command}`',
    '',
    f'Architecture: {shape.image_size}x{shape.image_size}x{shape.channels} images, '
    f'{shape.levels} levels x {shape.depth} steps, width {shape.width}, batch '
    f'{shape.batch_size}, affine coupling, LU 1x1 conv, learned split priors; the same '
    'for tfb.Glow (GlowDefaultNetwork, GlowDefaultExitNetwork, grab 0.5 per block, '
    'ActNorm). Both train with the same fused Adam step on mean bits/dim. Figures: '
    'median (min-max) over repeated timed runs after warm-up.',
    '',
  ]
  rows, checks = [], []
  for xla in xla_modes:
    ours, theirs = figures.get(('glow_tf', xla), {}), figures.get(('tfb_glow', xla), {})
    tag = ' (XLA)' if xla else ''
    for key, label in (
      ('train_img_s', 'training step, img/s'),
      ('log_prob_img_s', 'log_prob, img/s'),
      ('sample_img_s', f'sampling at T={TEMPERATURE}, img/s'),
      ('first_step_s', 'time to first training step, s'),
    ):
      if key in ours or key in theirs:
        ratio = ''
        if key in ours and key in theirs:
          ratio = f'{median(ours[key]) / median(theirs[key]):.2f}x'
          if key == 'first_step_s':
            ratio = f'{median(theirs[key]) / median(ours[key]):.2f}x faster'
        rows.append(
          (
            label + tag,
            spread(ours[key]) if key in ours else '-',
            spread(theirs[key]) if key in theirs else '-',
            ratio,
          )
        )
    if 'train_img_s' in ours and 'train_img_s' in theirs:
      checks.append(
        ('train_vs_tfb', tag, median(ours['train_img_s']) / median(theirs['train_img_s']))
      )
    if 'log_prob_img_s' in ours and 'log_prob_img_s' in theirs:
      checks.append(
        ('log_prob_vs_tfb', tag, median(ours['log_prob_img_s']) / median(theirs['log_prob_img_s']))
      )
    if 'sample_img_s' in ours and 'sample_img_s' in theirs:
      checks.append(
        ('sample_vs_tfb', tag, median(ours['sample_img_s']) / median(theirs['sample_img_s']))
      )
    if 'first_step_s' in ours:
      checks.append(('first_step', tag, ours['first_step_s']))
    if 'params' in ours or 'params' in theirs:
      rows.append(
        (
          'parameters' + tag,
          f'{ours.get("params", 0):,}',
          f'{theirs.get("params", 0):,}',
          f'{ours["params"] / theirs["params"]:.3f}x'
          if 'params' in ours and 'params' in theirs
          else '',
        )
      )
    peak = figures.get('peak', {})
    if 'train_img_s' in ours and 'conv_peak_gflops' in peak:
      step_flops = 3 * forward_flops(shape)
      achieved = step_flops / (shape.batch_size / median(ours['train_img_s'])) / 1e9
      rows.append(
        (
          'training FLOP rate, GFLOP/s' + tag,
          f'{achieved:.1f}',
          '',
          f'{achieved / median(peak["conv_peak_gflops"]):.0%} of peak',
        )
      )
      checks.append(('train_vs_peak', tag, achieved / median(peak['conv_peak_gflops'])))
  peak = figures.get('peak', {})
  if 'conv_peak_gflops' in peak:
    rows.append(
      (f'machine peak: {peak["conv_shape"]}, GFLOP/s', spread(peak['conv_peak_gflops']), '', '')
    )
  memories = [figures.get(('memory', m), {}) for m in ('glow_tf', 'tfb_glow')]
  if any('peak_rss_mib' in m for m in memories):
    cells = [
      f'{m["peak_rss_mib"]:.0f} ({m["step_mib"]:.0f})' if 'peak_rss_mib' in m else '-'
      for m in memories
    ]
    rows.append(('peak RSS in training steps, MiB (of it, added by the step)', *cells, ''))
  pairs = []  # Second table: one model, without / with a feature.
  depth_lines = _depth_table(shape, figures, checks)
  _precision_rows(shape, figures, pairs, checks)
  mirrored = figures.get('mirrored')
  if mirrored and 'mirrored_img_s' in mirrored:
    ratio = median(mirrored['mirrored_img_s']) / median(mirrored['one_device_img_s'])
    pairs.append(
      (
        f'MirroredStrategy over {mirrored["devices"]} logical CPUs (vs one device), training img/s',
        spread(mirrored['one_device_img_s']),
        spread(mirrored['mirrored_img_s']),
        f'{ratio:.2f}x',
      )
    )
    checks.append(('mirrored', '', ratio))
  errors = [
    (k, v['error'])
    for k, v in figures.items()
    if isinstance(v, dict) and 'error' in v and not str(k[0]).startswith('data_')
  ]
  data_lines = []
  if 'data_options' in figures:
    options = figures['data_options']
    data_lines = data_benchmark.report(
      figures, options['sizes'], options['batch'], options['batches'], options['formats']
    )
    if not (rows or pairs or checks or errors):  # The data measure alone.
      return '\n'.join(lines[:6] + data_lines) + '\n'
  lines += ['| measure | glow_tf | tfb.Glow | ratio |', '| --- | --- | --- | --- |']
  lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in rows]
  if pairs:
    lines += ['', '| glow_tf | without | with | ratio |', '| --- | --- | --- | --- |']
    lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in pairs]
  lines += depth_lines
  lines += ['', '| target | measured | met |', '| --- | --- | --- |']
  for name, tag, value, *bound in checks:
    description, threshold = TARGETS[name]
    threshold = bound[0] if bound else threshold
    lower_is_better = name in LOWER_IS_BETTER
    met = value <= threshold if lower_is_better else value >= threshold
    bound = '<=' if lower_is_better else '>='
    shown = f'{value:.2f}' if name != 'train_vs_peak' else f'{value:.0%}'
    target = f'{threshold:.0%}' if name == 'train_vs_peak' else f'{threshold:.2f}'
    lines.append(f'| {description}{tag} {bound} {target} | {shown} | {"yes" if met else "no"} |')
  lines += [
    '',
    f'Analytic FLOPs of one forward pass: {forward_flops(shape) / 1e9:.2f} GFLOP '
    '(convolutions and 1x1 mixing, x2 per multiply-add); a training step is counted '
    'as 3x that (forward, and a backward pass of twice the work).',
  ]
  for key, error in errors:
    lines.append(f'\nMeasurement {key} failed: {error}')
  return '\n'.join(lines + data_lines) + '\n'


def benchmark(config: BenchmarkConfig, command: str, log=print) -> str:
  """Runs every measurement `config` asks for, each in a fresh process; returns the report."""
  xla_modes = XLA_MODES[config.xla]
  figures = collect(
    config.shape,
    config.measures,
    list(config.models),
    xla_modes,
    config.repeats,
    config.steps,
    config.memory_depth,
    config.mirrored_devices,
    log=log,
    data_options=dict(
      sizes=config.data_sizes,
      batch=config.data_batch,
      batches=config.data_batches,
      root=config.data_root,
      formats=config.data_formats,
    ),
  )
  return report(config.shape, figures, xla_modes, command, machine_facts())
