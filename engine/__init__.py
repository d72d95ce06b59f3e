"""Workbench engine: load local models and run them on numpy or mlx."""

from engine.loader import load_model
from engine.model import Model

__all__ = ["Model", "load_model"]

# Tokenizer, sampling and generation (engine-gen).
from engine.detok import ReasoningSplitter, StreamingDetokenizer  # noqa: E402
from engine.generate import Delta, GenerationResult, generate  # noqa: E402
from engine.hub import DEFAULT_MODEL  # noqa: E402
from engine.sampling import SamplingParams, make_sampler  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

__all__ += [  # noqa: PLE0605
    "DEFAULT_MODEL",
    "Delta",
    "GenerationResult",
    "ReasoningSplitter",
    "SamplingParams",
    "StreamingDetokenizer",
    "Tokenizer",
    "generate",
    "make_sampler",
]
