"""glow_tf: Glow (Kingma & Dhariwal, 2018) as TensorFlow Probability bijectors.

Layers, lowest first: `nn` (convolutions, ActNorm, the coupling network),
`bijectors` (Glow's layers as TFP bijectors), `model` (the flow and what is done
with it), `training`, `tools` (runs, serving, checks, figures, benchmark), and the
command-line modules `glow_tf.train`, `.sample`, `.export`, `.check`, `.benchmark`.
"""

from glow_tf import bijectors, errors, nn
from glow_tf.model.config import GlowConfig
from glow_tf.model.flow import (
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

__version__ = '0.2.0'

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
  'errors',
  'initialize',
  'multiscale_flow',
  'nn',
  'sample',
  'top_latent',
  'with_temperature',
]
