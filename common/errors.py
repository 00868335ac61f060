"""Error types shared by the codec, models, config and both services."""

from __future__ import annotations


class DraftlinkError(Exception):
    """Base class of every error draftlink raises on purpose."""


class CodecError(DraftlinkError, ValueError):
    """A codec spec, a distribution or a payload is invalid (wire: INVALID_ARGUMENT)."""


class ConfigError(DraftlinkError, ValueError):
    """A configuration value (flag or DRAFTLINK_* env key) is invalid."""


class ModelError(DraftlinkError):
    """A model spec cannot be loaded (unknown, not fetched, or incompatible)."""


class TokenizerMismatchError(ModelError):
    """Drafter and verifier tokenizers differ (wire: FAILED_PRECONDITION)."""
