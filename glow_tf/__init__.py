"""glow_tf: Glow (Kingma & Dhariwal, 2018) as TensorFlow Probability bijectors.

Layers, lowest first: `nn` (convolutions, ActNorm, the coupling network),
`bijectors` (Glow's layers as TFP bijectors), `model` (the flow and what is done
with it), `training`, `tools` (runs, serving, checks, figures, benchmark), and the
command-line modules `glow_tf.train`, `.sample`, `.export`, `.check`, `.benchmark`.

The names below are imported on first use (PEP 562), so that importing the package
does not import TensorFlow: `python -m glow_tf.train` runs `glow_tf/__init__.py`
first, and the commands quiet TensorFlow's start-up before they import it
(`glow_tf.startup`). `glow_tf.build_glow`, `from glow_tf import GlowConfig` and
`import glow_tf.bijectors` work as with eager imports.
"""

import importlib
import typing

__version__ = '0.2.0'

# Public name -> the module that defines it.
_HOMES = {
  'GlowConfig': 'glow_tf.model.config',
  **{
    name: 'glow_tf.model.flow'
    for name in (
      'GlowDistribution',
      'bits_per_dim',
      'build_classifier',
      'build_glow',
      'conditional_kwargs',
      'decode',
      'encode',
      'initialize',
      'multiscale_flow',
      'sample',
      'top_latent',
      'with_temperature',
    )
  },
}
_SUBMODULES = ('bijectors', 'errors', 'nn')

__all__ = sorted([*_HOMES, *_SUBMODULES])

if typing.TYPE_CHECKING:  # What linters and IDEs see: the same names, imported eagerly.
  from glow_tf import bijectors, errors, nn  # noqa: F401
  from glow_tf.model.config import GlowConfig  # noqa: F401
  from glow_tf.model.flow import (  # noqa: F401
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


def __getattr__(name: str):
  if name in _HOMES:
    value = getattr(importlib.import_module(_HOMES[name]), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f'{__name__}.{name}')
  else:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  globals()[name] = value
  return value


def __dir__():
  return sorted({*globals(), *__all__})
