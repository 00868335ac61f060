"""Shared, mostly pure building blocks of draftlink: codec, sampling, models, config, rpc seam."""

__version__ = "0.1.0"
