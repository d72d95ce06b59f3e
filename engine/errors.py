"""Engine exceptions: errors on bad input (each names the file, tensor or limit at fault), and the
signal of a cancelled forward pass."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on bad input."""


class ModelNotFoundError(EngineError):
    """No model directory or locally cached Hugging Face repo by that name."""


class ModelFormatError(EngineError):
    """A model directory whose files are missing, truncated or inconsistent."""


class UnsupportedArchitectureError(EngineError):
    """config.json names an architecture the engine does not implement."""


class ContextLengthError(EngineError):
    """A prompt (plus the tokens asked for) longer than the model's context."""


class PassCancelled(Exception):
    """A forward pass stopped between two layers because its `cancel` check said so (not an error).
    Model.forward takes the unfinished chunk back out of the cache; earlier chunks of the call stay."""


class KVPagesLost(EngineError):
    """Pages of a KV cache whose numbers can no longer be trusted (the block file under a mapped page
    was truncated or rewritten by another process) hold positions whose tokens the cache does not know,
    so they cannot be recomputed."""
