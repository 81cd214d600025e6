"""glow_tf: Glow (Kingma & Dhariwal, 2018) as TensorFlow Probability bijectors."""

from glow_tf import bijectors, nn
from glow_tf.flow import (
  GlowConfig,
  GlowDistribution,
  bits_per_dim,
  build_classifier,
  build_glow,
  conditional_kwargs,
  decode,
  encode,
  initialize,
  multiscale_flow,
  sample,
  top_latent,
  with_temperature,
)

__version__ = '0.1.0'

__all__ = [
  'GlowConfig',
  'GlowDistribution',
  'bijectors',
  'bits_per_dim',
  'build_classifier',
  'build_glow',
  'conditional_kwargs',
  'decode',
  'encode',
  'initialize',
  'multiscale_flow',
  'nn',
  'sample',
  'top_latent',
  'with_temperature',
]
