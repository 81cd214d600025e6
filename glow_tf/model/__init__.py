"""The model: `GlowConfig`, the flow built from glow_tf's bijectors, and what is done with it.

config (the architecture), flow (build, initialise, sample, encode, decode, bits/dim),
health (figures of the flow's layers), sampling (sample sheets, reconstructions,
interpolations, manipulations), pixels (model space and bins), images (PNGs).
"""
