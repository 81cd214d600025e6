"""The name glow_tf 0.1 gave `glow_tf.model.sampling` (the README of 0.1 points here)."""

from glow_tf.model.sampling import *  # noqa: F403
from glow_tf.model.sampling import __all__  # noqa: F401
