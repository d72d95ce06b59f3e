"""Helpers of the agent tests: a real engine model steered to say given replies, and tool-call text."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class Steered:
    """A real model whose greedy replies are the queued texts (each then its end-of-turn token).

    A random-weight model says nothing useful; adding a large bonus to the logit of the next scripted
    token makes greedy decoding produce exactly the script, through the model's real forward passes,
    KV cache and tokenizer. A forward of several tokens is a prompt chunk: the first after a finished
    script starts the next queued reply (once the queue is empty the model speaks freely).
    """

    def __init__(self, model: Any, replies: list[str] | None = None) -> None:
        self._model = model
        self.replies = list(replies or [])
        self._script: list[int] = []
        self._k = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def say(self, *replies: str) -> None:
        self.replies.extend(replies)

    def script(self, *replies: str) -> None:
        """Say these replies next, dropping whatever a cancelled reply left of its script."""
        self.replies, self._script, self._k = list(replies), [], 0

    def forward(self, ids: list[int], cache: Any, cancel: Callable[[], bool] | None = None,
                **kwargs: Any) -> np.ndarray:  # fmt: skip
        logits = self._model.forward(ids, cache, cancel=cancel, **kwargs).copy()
        if len(ids) > 1:
            if self._k >= len(self._script) - 1:  # the previous script is done: a new prompt
                tok = self._model.tokenizer
                text = self.replies.pop(0) if self.replies else None
                self._script = [*tok.encode(text), min(tok.eos_token_ids)] if text is not None else []
            self._k = 0
        else:
            self._k += 1
        if self._k < len(self._script):
            logits[self._script[self._k]] += 1e4
        return logits


def call(name: str, **args: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def long_context_copy(model_dir: Path, target: Path, positions: int = 8192) -> Path:
    """The same weights with a longer context: prompts with tool schemas outgrow the fixtures' 128."""
    shutil.copytree(model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (target / "config.json").write_text(json.dumps(config))
    return target
