"""Test-session settings: quiet TF logs; two logical CPU devices for tf.distribute tests.

The logical devices must exist before TensorFlow's runtime starts, so they are
configured here, at import, before any test runs an op.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_CPU_DEVICES = 2

tf.config.set_logical_device_configuration(
  tf.config.list_physical_devices('CPU')[0],
  [tf.config.LogicalDeviceConfiguration()] * NUM_CPU_DEVICES,
)


@pytest.fixture(autouse=True, scope='session')
def _private_cache_dir(tmp_path_factory):
  """glow_tf's cache (image folder inspections) in the session's temporary directory, for
  this process and the commands tests start, never in the user's ~/.cache."""
  os.environ['GLOW_TF_CACHE_DIR'] = str(tmp_path_factory.mktemp('glow_tf_cache'))
