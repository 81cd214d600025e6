"""glow_tf.training.config: each field declared once; flags, checks and files derive from it."""

import dataclasses

import pytest
from absl import flags

from glow_tf import cli, errors
from glow_tf.training.config import NOT_FLAGS, PRESETS, TrainConfig, sections


def flag_values():
  values = flags.FlagValues()
  names = cli.define_config_flags(TrainConfig, values, skip=NOT_FLAGS)
  return values, names


def test_every_field_is_a_flag_with_the_help_of_its_declaration():
  values, names = flag_values()
  assert sorted(names) == sorted(sections())  # Every field but the data-derived model ones.
  for name in ('keep_checkpoints', 'log_every_secs', 'samples_per_temperature', 'width'):
    assert name in names
  width = next(f for f in dataclasses.fields(type(TrainConfig().model)) if f.name == 'width')
  assert values['width'].help == width.metadata['help']


def test_flags_set_fields_of_every_section_over_a_preset():
  values, _ = flag_values()
  values(
    [
      'prog',
      '--keep_checkpoints=7',
      '--log_every_secs=2.5',
      '--samples_per_temperature=9',
      '--width=32',
      '--dataset=folder:/images',
      '--temperatures=0,1',
      '--per_replica_batch_size=8',
    ]
  )
  overrides = cli.config_overrides(TrainConfig, values, skip=NOT_FLAGS)
  config = PRESETS['digits'].replace(**overrides)
  assert (config.keep_checkpoints, config.log_every_secs, config.samples_per_temperature) == (
    7,
    2.5,
    9,
  )
  assert config.model.width == 32 and config.model.depth == PRESETS['digits'].model.depth
  assert config.data.dataset == 'folder:/images' and config.temperatures == (0.0, 1.0)
  assert (config.batch_size, config.per_replica_batch_size) == (None, 8)


def test_a_list_flag_of_numbers_holding_words_is_one_named_error():
  values, _ = flag_values()
  values(['prog', '--temperatures=0,warm'])
  with pytest.raises(errors.ConfigError, match=r"--temperatures must be floats; got '0,warm'"):
    cli.config_overrides(TrainConfig, values, skip=NOT_FLAGS)


def test_flag_bounds_come_from_the_declaration():
  values, _ = flag_values()
  with pytest.raises(flags.IllegalFlagValueError, match='in the range \\[1, 8\\]'):
    values(['prog', '--n_bits=9'])


def test_replace_routes_each_field_to_its_section_and_refuses_unknown_ones():
  config = TrainConfig().replace(levels=3, n_bits=5, seed=4)
  assert (config.model.levels, config.data.n_bits, config.seed) == (3, 5, 4)
  with pytest.raises(errors.ConfigError, match=r"unknown TrainConfig fields \['widht'\]"):
    TrainConfig().replace(widht=3)


@pytest.mark.parametrize('derived', ['image_shape', 'num_classes'])
def test_the_data_derived_model_fields_cannot_be_set(derived):
  with pytest.raises(errors.ConfigError, match='unknown TrainConfig fields'):
    TrainConfig().replace(**{derived: None})
  model = dataclasses.replace(
    TrainConfig().model, **{derived: (8, 8, 1) if derived == 'image_shape' else 3}
  )
  with pytest.raises(errors.ConfigError, match=r'come from the data and --seed'):
    TrainConfig(model=model)


def test_dicts_round_trip_and_the_identity_is_the_model_and_its_data():
  config = PRESETS['cifar10_paper']
  assert TrainConfig.from_dict(config.to_dict()) == config
  assert set(config.identity()) == {
    'dataset',
    'image_size',
    'n_bits',
    'validation_size',
    'validation_seed',
    'levels',
    'depth',
    'width',
    'coupling',
    'permutation',
    'learn_top',
    'class_conditional',
    'seed',
  }


@pytest.mark.parametrize(
  'changes, message',
  [
    (dict(warmup_steps=-1), 'warmup_steps must be >= 0; got -1.'),
    (dict(learning_rate=0.0), 'learning_rate must be > 0.0; got 0.0.'),
    (dict(optimizer='sgd'), "optimizer must be one of ('adam', 'adamax'); got 'sgd'."),
    (dict(n_bits=0), 'n_bits must be in 1..8 or None; got 0.'),
    (dict(train_steps='many'), "train_steps must be a number; got 'many'."),
  ],
)
def test_each_rule_is_checked_where_it_is_declared(changes, message):
  with pytest.raises(errors.ConfigError) as error:
    TrainConfig().replace(**changes)
  assert str(error.value) == message
