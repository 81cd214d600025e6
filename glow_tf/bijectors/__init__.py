"""Glow's layers as TFP bijectors. Each `forward` is the paper's direction: data -> latent."""

from glow_tf.bijectors.actnorm import ActNorm
from glow_tf.bijectors.additive_coupling import AdditiveCoupling
from glow_tf.bijectors.affine_coupling import AffineCoupling
from glow_tf.bijectors.call_cache import call_scope
from glow_tf.bijectors.channel_permutation import ChannelPermutation
from glow_tf.bijectors.compiled_steps import CompiledSteps
from glow_tf.bijectors.flow_bijector import FlowBijector
from glow_tf.bijectors.flow_chain import FlowChain
from glow_tf.bijectors.invertible_conv1x1 import InvertibleConv1x1
from glow_tf.bijectors.multiscale_flow import MultiScaleFlow
from glow_tf.bijectors.plain_conv1x1 import PlainConv1x1
from glow_tf.bijectors.split_prior import SplitPrior
from glow_tf.bijectors.squeeze import Squeeze
from glow_tf.bijectors.top_prior import TopPrior

__all__ = [
  'ActNorm',
  'AdditiveCoupling',
  'AffineCoupling',
  'ChannelPermutation',
  'CompiledSteps',
  'FlowBijector',
  'FlowChain',
  'InvertibleConv1x1',
  'MultiScaleFlow',
  'PlainConv1x1',
  'SplitPrior',
  'Squeeze',
  'TopPrior',
  'call_scope',
]
