"""Workbench engine: load local models and run them on numpy or mlx."""

# blas_threads first: it sets how long OpenBLAS's idle workers spin, which OpenBLAS reads when numpy loads it
from engine.backends import blas_threads  # noqa: F401
from engine.loader import load_model
from engine.model import Model

__all__ = ["Model", "load_model"]

# Tokenizer, sampling and generation: tokens (engine/steps.py), text on top (engine/generate.py).
from engine.detok import ReasoningSplitter, StreamingDetokenizer
from engine.generate import Delta, GenerationResult, generate
from engine.hub import DEFAULT_MODEL
from engine.sampling import SamplingParams, make_sampler
from engine.steps import Step, TokenStream, decode_from, generate_tokens
from engine.tokenizer import Tokenizer

__all__ += [
    "DEFAULT_MODEL",
    "Delta",
    "GenerationResult",
    "ReasoningSplitter",
    "SamplingParams",
    "Step",
    "StreamingDetokenizer",
    "TokenStream",
    "Tokenizer",
    "decode_from",
    "generate",
    "generate_tokens",
    "make_sampler",
]
