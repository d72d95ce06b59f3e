"""The KV block store: a sequence's KV cache cut into content-addressed blocks, kept in tiers.

`BlockStore` (kvstore.store) over `MemoryTier`, `DiskTier` (kvstore.tiers) and `RedisTier`
(kvstore.tiers.redis), keyed by a `BlockSpace` value (kvstore.space); `kvstore.open.open_block_store`
wires them as Workbench uses them. Depends on `core` and the engine's KV cache only: the engine knows
nothing of blocks, tiers or sessions.
"""

from kvstore.space import BlockSpace, space_of, weights_identity
from kvstore.store import DEFAULT_BLOCK_SIZE, BlockStore, RestoreResult

__all__ = ["DEFAULT_BLOCK_SIZE", "BlockSpace", "BlockStore", "RestoreResult", "space_of", "weights_identity"]
