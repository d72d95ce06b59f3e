"""How long the HTTP door's KV blocks are kept: pins for the most recent conversations.

An OpenAI request has no session to pin its blocks under, and unpinned blocks are what `workbench cache
gc` removes once idle past its grace. So the door pins the history of each request it answers under a
holder of its own (`http:<key>`), keeps the `keep` most recent ones, and unpins the oldest beyond that.
A request that extends an earlier one (an editor resending the chat with one more turn) replaces that
one's pin instead of adding another, so `keep` counts conversations, not requests. Pins protect only
against gc: the Redis TTL (refreshed on every read) and the disk tier's size budget still apply.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

PREFIX = "http:"
DEFAULT_KEEP = 32


class RecentPins:
    def __init__(self, blocks: Any, keep: int = DEFAULT_KEEP) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.blocks, self.keep = blocks, keep
        self._lock = threading.Lock()
        # identity (the last complete block's key, or the tail's) -> holder, oldest first
        self._recent: OrderedDict[str, str] = OrderedDict()
        if blocks.refs is not None:  # adopt what an earlier run of the door pinned, then trim to `keep`
            for holder in sorted(h for h in blocks.refs.holders() if h.startswith(PREFIX)):
                self._recent[holder[len(PREFIX) :]] = holder
            with self._lock:
                self._trim()

    def holders(self) -> list[str]:
        with self._lock:
            return list(self._recent.values())

    def pin(self, space: Any, token_ids: list[int], prompt_len: int) -> None:
        """Pin the history `token_ids` (a prompt of `prompt_len` tokens and its reply) as the newest
        conversation. Its identity is the last block wholly inside the prompt: the next request of the
        same chat resends that prompt (the reply comes back re-rendered, so its tokens may differ)."""
        if self.blocks.refs is None or self.keep == 0 or not token_ids:
            return
        keys = self.blocks.session_keys(space, token_ids)
        in_prompt = min(prompt_len // self.blocks.block_size, len(keys) - 1)
        identity = keys[in_prompt - 1] if in_prompt > 0 else keys[-1]  # a prompt under one block: its tail
        blocks = set(keys[:-1])
        with self._lock:
            for old in [k for k in self._recent if k in blocks and k != identity]:
                self.blocks.unpin(self._recent.pop(old))  # an earlier request of this conversation
            holder = PREFIX + identity
            self.blocks.pin(holder, space, token_ids)
            self._recent[identity] = holder
            self._recent.move_to_end(identity)
            self._trim()

    def _trim(self) -> None:
        while len(self._recent) > self.keep:
            _, holder = self._recent.popitem(last=False)
            self.blocks.unpin(holder)
